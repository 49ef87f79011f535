"""The code on documentation pages runs: each page's Python blocks, in order, in one namespace."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from smalllm.tasks import _REGISTRY

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXECUTED = ["write_a_task.md", "api.md"]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks(page: Path) -> list[str]:
    return _BLOCK.findall(page.read_text())


@pytest.mark.parametrize("page", EXECUTED)
def test_page_code_runs(page, tmp_path, monkeypatch):
    blocks = python_blocks(DOCS / page)
    assert len(blocks) >= 4, f"{page}: expected its code blocks, found {len(blocks)}"
    monkeypatch.chdir(tmp_path)  # pages write runs/… relative to where they are run
    # A real module, as a reader's script would be: dataclasses and type hints look their names up there.
    module = types.ModuleType(f"docs_{Path(page).stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    try:
        for i, block in enumerate(blocks, start=1):
            code = compile(block, f"{DOCS / page} (python block {i})", "exec", dont_inherit=True)
            exec(code, module.__dict__)
    finally:
        for name in [n for n, cls in _REGISTRY.items() if cls.__module__ == module.__name__]:
            del _REGISTRY[name]
