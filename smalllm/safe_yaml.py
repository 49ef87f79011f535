"""A YAML loader for user files: safe tags only, no duplicate keys, no anchors or aliases.

PyYAML's ``safe_load`` keeps the last of two equal keys, so a pasted block silently replaces an
earlier one; and aliases let a few hundred bytes expand into billions of nodes ("billion laughs"),
which hangs whatever walks the result (OmegaConf copies it). Config files never need either, so
both are refused with a one-line :class:`~smalllm.errors.ConfigError` naming the file and line.

This module sits at the bottom of the package (it imports only :mod:`smalllm.errors`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from smalllm.errors import ConfigError

MAX_BYTES = 4 * 1024 * 1024
"""Largest YAML input read; configs are a few KB, and a bigger file is a mistake, not a config."""

MAX_DEPTH = 64
"""Deepest nesting accepted; the composer recurses per level, and configs nest four or five deep."""


class YamlSyntaxError(ConfigError):
    """The text is not YAML at all (as opposed to YAML that uses a refused feature)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses anchors, aliases and over-deep nesting while composing."""

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self.source = source
        self.depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        if isinstance(event, AliasEvent):
            raise ConfigError(
                f"{self.source}: line {line}: YAML aliases (*{event.anchor}) are not supported; "
                "write the value out"
            )
        if isinstance(event, ScalarEvent | CollectionStartEvent) and event.anchor is not None:
            raise ConfigError(
                f"{self.source}: line {line}: YAML anchors (&{event.anchor}) are not supported; "
                "write the value out"
            )
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise ConfigError(f"{self.source}: line {line}: nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


# YAML 1.1 reads ``1e-3`` as a string (it wants ``1.0e-3``); frequencies are written that way, and a
# value that silently stays a string would name a sweep cell, or reach a task parameter, by the wrong type.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    # A digit is required before the exponent: ".e5" or "-e5" stay strings (float() refuses them).
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _check_duplicates(node: Node, source: str, path: str) -> None:
    """Refuse a mapping that lists one key twice, naming the dotted key and both lines."""
    if isinstance(node, MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            key = (key_node.tag, key_node.value) if isinstance(key_node, ScalarNode) else None
            line = key_node.start_mark.line + 1
            name = key_node.value if isinstance(key_node, ScalarNode) else "?"
            dotted = f"{path}.{name}" if path else str(name)
            if key is not None:
                if key in first:
                    raise ConfigError(
                        f"{source}: line {line}: duplicate key '{dotted}' (first given at line {first[key]})"
                    )
                first[key] = line
            _check_duplicates(value_node, source, dotted)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, source, f"{path}.{i}" if path else str(i))


def load_yaml_text(text: str, source: str, root: str = "") -> Any:
    """Parse one YAML document; errors are one line starting with ``source``.

    ``root`` is the dotted key the document sits under (for an override value), so a duplicate
    key is named by its full path.
    """
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_BYTES // (1024 * 1024)} MiB; not a config")
    loader = _Loader(text, source)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(node, source, root)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise YamlSyntaxError(f"{source}:{where} is not valid YAML ({problem})") from None
    except ValueError as exc:  # a scalar a resolver claimed but its constructor refused
        raise YamlSyntaxError(f"{source}: is not valid YAML ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path) -> Any:
    """Read and parse a YAML file; a missing, unreadable, oversized or non-UTF-8 file is one line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_BYTES // (1024 * 1024)} MiB; not a config")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (UTF-8) YAML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    return load_yaml_text(text, str(path))
