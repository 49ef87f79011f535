"""Sweep configs: parse and validate a sweep YAML, expand its grids into cells.

A sweep file names a base run config, overrides applied to every cell, and one or more *grids*. A
grid maps dotted config keys to lists of values; its cells are the Cartesian product of those lists.
The cells of all grids are unioned, so a sweep can hold sub-grids with different axes (Huang et al.
sweep T_CMP and T_ADD over different sizes and frequencies)::

    name: cpu_frontier
    sweep_dir: runs/cpu_frontier          # relative to the current directory
    base: null                            # run config YAML, relative to this file (null: built-in default)
    overrides: ["train.max_tokens=2000000"]   # or a mapping {dotted.key: value}
    grids:
      - model.preset: [micro-w48, micro-w96]
        data.tasks.0.frequency: [3.0e-3, 7.0e-3]
        train.seed: [0]
      - name: add                         # optional: prefixes its cell names
        overrides: ["data.seq_len=128"]   # optional: applied to this grid's cells only
        model.preset: [micro-w96]
    seeds: {data: [0, 1, 2], init: [0]}   # optional seed axis, crossed with every grid (see below)
    axes: {size: model.preset, tasks: [t_cmp]}   # what the report plots (both optional)
    target: {device: gpu, gpu: H100, gpus_per_cell: 8, mfu: 0.4}   # for --dry-run estimates and --emit
    slurm: {options: {partition: gpu, time: "48:00:00"}, max_parallel: 4, setup: "source .venv/bin/activate"}

``target.accelerate`` picks the ``accelerate launch --config_file`` of each cell in emitted scripts
(see :class:`AccelerateChoice`): DDP for the small cells, FSDP from a given size up::

    target: {accelerate: {default: ../accelerate/ddp_8gpu.yaml,
                          fsdp: ../accelerate/fsdp_8gpu.yaml, fsdp_from: 300m}}

**Seeds.** ``seeds`` is the sweep's seed axis, crossed with every grid. Two kinds of randomness:

* ``data``: the *data seed* sets ``data.seed`` (where task instances are placed in the stream and the
  background order) and every ``data.tasks.N.seed`` (each task's token table and its train/test pool
  split), all to the same value, so tasks that share a table keep sharing it. Between data seeds the
  task itself changes, which is what decides a cell (issue 12: loss ratio 0.96 / 0.89 / 0.69 for
  table seeds 0 / 1 / 2 at one size and frequency).
* ``init``: the *init seed* sets ``train.seed`` (weight initialisation, dropout, and the model-side
  RNG), with the data held fixed.

``seeds: {data: [0, 1, 2], init: [0]}`` runs the product (independent axes); ``init: data`` runs
one cell per data seed with ``train.seed`` equal to it (together). Either list may be left out
(that seed stays as configured). Cell names end in ``dseed-<d>_iseed-<i>``, and every size sees the
same data seeds, so comparisons across sizes are paired on them (:mod:`smalllm.sweep.frontier`).
Grids may still sweep ``train.seed`` / ``data.seed`` / ``data.tasks.N.seed`` themselves, but a key set
both there (or in overrides) and by ``seeds`` is refused.

Every cell's run config is built with :func:`smalllm.config.load_config` before anything runs, so a
typo in any key fails fast with a one-line :class:`~smalllm.errors.ConfigError` naming it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smalllm.config import RunConfig, load_config
from smalllm.errors import ConfigError, did_you_mean
from smalllm.model.presets import PRESETS, ModelShape
from smalllm.safe_yaml import load_yaml_file, load_yaml_text
from smalllm.sweep.records import SAFE_NAME_RULE, check_name, is_safe_name, run_dir_of
from smalllm.validation import seed as check_seed

SWEEP_KEYS = (
    "name",
    "description",
    "sweep_dir",
    "base",
    "overrides",
    "grids",
    "seeds",
    "axes",
    "target",
    "slurm",
)
SEEDS_KEYS = ("data", "init")
INIT_WITH_DATA = "data"
"""``seeds.init: data``: each cell's init seed is its data seed (the two axes move together)."""
_DATA_SEED_KEY = re.compile(r"^data\.(seed|tasks\.\d+\.seed)$")
_INIT_SEED_KEY = "train.seed"
GRID_KEYS = ("name", "overrides")
AXES_KEYS = ("size", "tasks")
TARGET_KEYS = ("device", "gpu", "gpus_per_cell", "mfu", "peak_flops", "overhead_s", "accelerate")
ACCELERATE_KEYS = ("default", "fsdp", "fsdp_from")
SLURM_KEYS = ("options", "max_parallel", "setup")
TARGET_DEVICES = ("current", "cpu", "gpu")


@dataclass
class Grid:
    """One sub-grid: the product of ``axes`` values, with extra overrides for its cells."""

    name: str | None
    overrides: list[str]
    axes: dict[str, list[Any]]


@dataclass
class Target:
    """What the sweep is meant to run on: used for ``--dry-run`` estimates and ``--emit`` scripts."""

    device: str = "current"
    """current (this machine), cpu, or gpu (estimate GPU hours on ``gpu``)."""
    gpu: str = "H100"
    """GPU model for the peak FLOP/s table of :mod:`smalllm.train.plan` (H100, H200, A100, ...)."""
    gpus_per_cell: int = 1
    """Processes (GPUs) per cell: ``accelerate launch --num_processes``."""
    mfu: float | None = None
    """Assumed model FLOP utilisation for time estimates (None: the defaults in estimates.py)."""
    peak_flops: float | None = None
    """Peak FLOP/s per device (None: the device table / the cell's train.peak_flops)."""
    overhead_s: float | None = None
    """Fixed seconds per cell for start-up (process, imports, corpus) added to estimates."""
    accelerate: AccelerateChoice | None = None
    """Which ``accelerate launch --config_file`` each emitted cell gets (None: flags from
    ``gpus_per_cell`` alone, ``--multi_gpu`` above one GPU)."""


@dataclass
class AccelerateChoice:
    """``target.accelerate``: the accelerate config of each cell of an emitted script.

    The rule: a cell whose model has at least as many non-embedding parameters as the preset
    ``fsdp_from`` runs under ``fsdp``; every other cell under ``default``. Paths are relative to the
    sweep file. A plain string ``target.accelerate: PATH`` is ``{default: PATH}``.
    """

    default: Path | None = None
    """accelerate config of the cells below ``fsdp_from`` (None: flags from ``gpus_per_cell``)."""
    fsdp: Path | None = None
    """accelerate config (normally FSDP) of the cells of ``fsdp_from``'s size and above."""
    fsdp_from: str | None = None
    """Smallest preset (``smalllm models``) that runs under ``fsdp``; required with ``fsdp``."""

    def config_for(self, shape: ModelShape) -> Path | None:
        """The accelerate config file of a cell training a model of ``shape``."""
        large = self.fsdp_from is not None and (
            shape.non_embedding_params() >= PRESETS[self.fsdp_from].non_embedding_params()
        )
        return self.fsdp if large and self.fsdp is not None else self.default


@dataclass
class Seeds:
    """The sweep's seed axis: which data and init seeds every grid cell is run with."""

    data: list[int] | None = None
    """Data seeds: each sets ``data.seed`` and every ``data.tasks.N.seed`` (None: as configured)."""
    init: list[int] | None = None
    """Init seeds: each sets ``train.seed`` (None: as configured, or the data seed when ``together``)."""
    together: bool = False
    """``init: data``: one cell per data seed, with ``train.seed`` equal to it."""

    def pairs(self) -> list[tuple[int | None, int | None]]:
        """(data seed, init seed) of the cells each grid point is run with (None: not set by the axis)."""
        data = self.data if self.data is not None else [None]
        if self.together:
            return [(d, d) for d in data]
        init = self.init if self.init is not None else [None]
        return [(d, i) for d in data for i in init]

    def describe(self) -> str:
        """One line for ``--dry-run``: the seeds and what each one covers."""
        data = "as configured" if self.data is None else ", ".join(map(str, self.data))
        init = (
            "= data seed"
            if self.together
            else ("as configured" if self.init is None else ", ".join(map(str, self.init)))
        )
        return (
            f"seeds: data [{data}] (data.seed + every data.tasks.N.seed: tables, pool split, placement) x "
            f"init [{init}] (train.seed: initialisation); {len(self.pairs())} per grid point"
        )


@dataclass
class SweepSpec:
    """A parsed sweep file."""

    name: str
    source: Path | None
    sweep_dir: Path
    base: Path | None
    overrides: list[str]
    grids: list[Grid]
    size_key: str = "model.preset"
    tasks: list[str] | None = None
    target: Target = field(default_factory=Target)
    slurm: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    seeds: Seeds | None = None


@dataclass
class Cell:
    """One run of the sweep: its directory name, grid values and the full override list."""

    name: str
    grid: str | None
    params: dict[str, Any]
    """Grid key -> value of this cell (only the swept keys)."""
    overrides: list[str]
    """Sweep overrides, then the grid's, then one ``key=value`` per swept key (``run_dir`` excluded)."""
    grid_index: int = 0
    """Position of the (first) grid this cell comes from, for error messages."""
    seeds: dict[str, int] = field(default_factory=dict)
    """The sweep seed axis's values for this cell: ``data`` and/or ``init`` (empty without one)."""

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "grid": self.grid,
            "grid_index": self.grid_index,
            "params": self.params,
            "overrides": self.overrides,
            "seeds": self.seeds,
        }

    @classmethod
    def from_json(cls, d: dict) -> Cell:
        return cls(
            name=d["name"],
            grid=d.get("grid"),
            params=dict(d.get("params") or {}),
            overrides=list(d["overrides"]),
            grid_index=int(d.get("grid_index", 0)),
            seeds={str(k): int(v) for k, v in (d.get("seeds") or {}).items()},
        )


# ---------------------------------------------------------------------------------------------- parsing


def _where(source: Path | None, key: str) -> str:
    return f"{source}: {key}" if source is not None else key


def _check_keys(raw: dict, allowed: tuple[str, ...], prefix: str, source: Path | None) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(_where(source, f"{prefix}{key}: unknown key{did_you_mean(str(key), allowed)}"))


def format_value(value: Any) -> str:
    """``value`` as text that YAML (hence an override) reads back as the same value.

    Floats always get a mantissa dot (``1.0e-08``): PyYAML reads ``1e-08`` as a string.
    """
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        try:
            same = load_yaml_text(value, "value") == value
        except ConfigError:
            same = False
        return value if same and value.strip() == value and value else json.dumps(value)
    # Lists and mappings: JSON is valid YAML flow syntax.
    return json.dumps(value)


def _override_list(raw: Any, where: str, source: Path | None) -> list[str]:
    """Overrides given as ``["k=v", ...]`` or as a mapping ``{k: v}``."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [f"{k}={format_value(v)}" for k, v in raw.items()]
    if isinstance(raw, list):
        out = []
        for i, item in enumerate(raw):
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(_where(source, f"{where}.{i}: expected 'key=value', got {item!r}"))
            out.append(item)
        return out
    raise ConfigError(_where(source, f"{where}: expected a list of 'key=value' or a mapping"))


def _parse_grid(raw: Any, i: int, source: Path | None) -> Grid:
    where = f"grids.{i}"
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(_where(source, f"{where}: expected a mapping of config keys to lists of values"))
    name = raw.get("name")
    if name is not None and not is_safe_name(name):
        raise ConfigError(_where(source, f"{where}.name: {SAFE_NAME_RULE}, got {name!r}"))
    axes: dict[str, list[Any]] = {}
    for key, values in raw.items():
        if key in GRID_KEYS:
            continue
        key = str(key)
        if "." not in key:
            # Every swept key is a dotted config key; a bare word is a typo of a grid option.
            raise ConfigError(_where(source, f"{where}.{key}: unknown key{did_you_mean(key, GRID_KEYS)}"))
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise ConfigError(_where(source, f"{where}.{key}: empty list of values"))
        if len({format_value(v) for v in values}) != len(values):
            raise ConfigError(_where(source, f"{where}.{key}: repeated value"))
        axes[key] = values
    overrides = _override_list(raw.get("overrides"), f"{where}.overrides", source)
    return Grid(name=name, overrides=overrides, axes=axes)


def _seed_list(raw: Any, where: str, source: Path | None) -> list[int]:
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        raise ConfigError(_where(source, f"{where}: expected a non-empty list of seeds"))
    for i, value in enumerate(values):
        try:
            check_seed(value, f"{where}.{i}")
        except ConfigError as exc:
            raise ConfigError(_where(source, str(exc))) from None
    if len(set(values)) != len(values):
        raise ConfigError(_where(source, f"{where}: repeated seed"))
    return list(values)


def _parse_seeds(raw: Any, source: Path | None) -> Seeds | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(_where(source, "seeds: expected a mapping {data: [...], init: [...] or 'data'}"))
    _check_keys(raw, SEEDS_KEYS, "seeds.", source)
    data = _seed_list(raw["data"], "seeds.data", source) if raw.get("data") is not None else None
    init_raw = raw.get("init")
    together = init_raw == INIT_WITH_DATA
    if together and data is None:
        raise ConfigError(_where(source, "seeds.init: 'data' needs a seeds.data list"))
    init = None if together or init_raw is None else _seed_list(init_raw, "seeds.init", source)
    return Seeds(data=data, init=init, together=together)


def _check_seed_keys(seeds: Seeds, overrides: list[str], grids: list[Grid], source: Path | None) -> None:
    """Refuse a seed key set both by the seed axis and by overrides or a grid (which one would win?)."""
    claimed = []
    if seeds.data is not None:
        claimed.append(("seeds.data", lambda key: _DATA_SEED_KEY.match(key) is not None))
    if seeds.init is not None or seeds.together:
        claimed.append(("seeds.init", lambda key: key == _INIT_SEED_KEY))
    places = [("overrides", [o.split("=", 1)[0].strip() for o in overrides])]
    for i, grid in enumerate(grids):
        places.append((f"grids.{i}.overrides", [o.split("=", 1)[0].strip() for o in grid.overrides]))
        places.append((f"grids.{i}", list(grid.axes)))
    for axis, owns in claimed:
        for where, keys in places:
            for key in keys:
                if owns(key):
                    raise ConfigError(
                        _where(source, f"{axis}: {where} also sets '{key}'; set each seed in one place only")
                    )


def load_sweep(path: str | Path, sweep_dir: str | Path | None = None) -> SweepSpec:
    """Parse the sweep file at ``path`` (``sweep_dir`` replaces its ``sweep_dir``); checks keys and types."""
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"{source}: sweep file not found")
    raw = load_yaml_file(source)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping (name, sweep_dir, grids, ...)")
    return parse_sweep(raw, source=source, sweep_dir=sweep_dir)


def parse_sweep(raw: dict, source: Path | None = None, sweep_dir: str | Path | None = None) -> SweepSpec:
    """Build a :class:`SweepSpec` from an already-loaded mapping (``source`` anchors relative ``base``)."""
    _check_keys(raw, SWEEP_KEYS, "", source)
    name = raw.get("name")
    if name is None or name == "":
        # Only an explicit name is refused: a file called "my sweep.yaml" still names its sweep.
        name = _slug(source.stem) if source is not None else "sweep"
    elif not is_safe_name(name):
        raise ConfigError(_where(source, f"name: {SAFE_NAME_RULE}, got {name!r}"))
    base_path = _config_relative_file(raw.get("base"), "base", "run config", source)
    out_dir = sweep_dir if sweep_dir is not None else raw.get("sweep_dir") or f"runs/{name}"
    grids_raw = raw.get("grids")
    if not isinstance(grids_raw, list) or not grids_raw:
        raise ConfigError(_where(source, "grids: expected a non-empty list of grids"))
    grids = [_parse_grid(g, i, source) for i, g in enumerate(grids_raw)]
    overrides = _override_list(raw.get("overrides"), "overrides", source)
    seeds = _parse_seeds(raw.get("seeds"), source)
    if seeds is not None:
        _check_seed_keys(seeds, overrides, grids, source)

    axes = raw.get("axes") or {}
    if not isinstance(axes, dict):
        raise ConfigError(_where(source, "axes: expected a mapping"))
    _check_keys(axes, AXES_KEYS, "axes.", source)
    tasks = axes.get("tasks")
    if isinstance(tasks, str):
        tasks = [tasks]

    target_raw = raw.get("target") or {}
    if not isinstance(target_raw, dict):
        raise ConfigError(_where(source, "target: expected a mapping"))
    _check_keys(target_raw, TARGET_KEYS, "target.", source)
    target = Target(**{k: v for k, v in target_raw.items() if k != "accelerate"})
    target.accelerate = _parse_accelerate(target_raw.get("accelerate"), source)
    if target.device not in TARGET_DEVICES:
        raise ConfigError(
            _where(source, f"target.device: '{target.device}' is not one of {', '.join(TARGET_DEVICES)}")
        )
    if not isinstance(target.gpus_per_cell, int) or target.gpus_per_cell < 1:
        raise ConfigError(
            _where(source, f"target.gpus_per_cell: must be an integer >= 1, got {target.gpus_per_cell}")
        )
    if target.mfu is not None and not 0 < float(target.mfu) <= 1:
        raise ConfigError(_where(source, f"target.mfu: must be in (0, 1], got {target.mfu}"))

    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise ConfigError(_where(source, "slurm: expected a mapping"))
    _check_keys(slurm, SLURM_KEYS, "slurm.", source)

    return SweepSpec(
        name=name,
        source=source.resolve() if source is not None else None,
        sweep_dir=Path(out_dir),
        base=base_path,
        overrides=overrides,
        grids=grids,
        size_key=str(axes.get("size") or "model.preset"),
        tasks=list(tasks) if tasks else None,
        target=target,
        slurm=slurm,
        description=str(raw.get("description") or ""),
        seeds=seeds,
    )


def _config_relative_file(raw: Any, key: str, what: str, source: Path | None) -> Path | None:
    """The existing file ``raw`` names (relative to the sweep config's folder), or None when unset."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw:
        raise ConfigError(_where(source, f"{key}: expected the path of the {what}, got {raw!r}"))
    path = Path(raw).expanduser()
    if not path.is_absolute() and source is not None:
        path = source.parent / path
    if not path.is_file():
        raise ConfigError(_where(source, f"{key}: {what} '{path}' not found"))
    return path.resolve()


def _parse_accelerate(raw: Any, source: Path | None) -> AccelerateChoice | None:
    """``target.accelerate``: a path (every cell) or ``{default, fsdp, fsdp_from}``."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"default": raw}
    if not isinstance(raw, dict):
        raise ConfigError(_where(source, "target.accelerate: expected a path or a mapping"))
    _check_keys(raw, ACCELERATE_KEYS, "target.accelerate.", source)
    fsdp_from = raw.get("fsdp_from")
    if fsdp_from is not None and str(fsdp_from) not in PRESETS:
        raise ConfigError(
            _where(
                source,
                f"target.accelerate.fsdp_from: unknown preset '{fsdp_from}'{did_you_mean(str(fsdp_from), PRESETS)}",
            )
        )
    choice = AccelerateChoice(
        default=_config_relative_file(
            raw.get("default"), "target.accelerate.default", "accelerate config", source
        ),
        fsdp=_config_relative_file(raw.get("fsdp"), "target.accelerate.fsdp", "accelerate config", source),
        fsdp_from=str(fsdp_from) if fsdp_from is not None else None,
    )
    if (choice.fsdp is None) != (choice.fsdp_from is None):
        raise ConfigError(
            _where(source, "target.accelerate.fsdp_from: give both fsdp and fsdp_from, or neither")
        )
    return choice


# ---------------------------------------------------------------------------------------------- cells


def _short_keys(keys: list[str]) -> dict[str, str]:
    """Shortest distinct dotted suffix of each key (``data.tasks.0.frequency`` -> ``frequency``)."""
    depth = {k: 1 for k in keys}
    while True:
        short = {k: ".".join(k.split(".")[-depth[k] :]) for k in keys}
        clash = [k for k in keys if list(short.values()).count(short[k]) > 1 and depth[k] < len(k.split("."))]
        if not clash:
            return short
        for k in clash:
            depth[k] += 1


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "x"


def cell_name(grid_name: str | None, params: dict[str, Any], seeds: dict[str, int] | None = None) -> str:
    """Directory name of a cell: readable, a pure function of its grid name, values and seeds.

    Names do not depend on the cell's position in the grid, so adding a value to a grid leaves the
    finished cells where they are. ``model.preset`` contributes its value alone; other keys appear as
    ``<short key>-<value>``; the seed axis adds ``dseed-<data seed>`` and ``iseed-<init seed>``.
    """
    short = _short_keys(list(params))
    parts = [grid_name] if grid_name else []
    for key, value in params.items():
        text = format_value(value).strip('"')
        parts.append(_slug(text) if key == "model.preset" else f"{_slug(short[key])}-{_slug(text)}")
    for axis, tag in (("data", "dseed"), ("init", "iseed")):
        if seeds and axis in seeds:
            parts.append(f"{tag}-{seeds[axis]}")
    name = "_".join(parts) or "cell"
    if len(name) > 120:  # keep paths usable; the hash keeps long names distinct
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:100]}_{digest}"
    return name


def seed_overrides(data_seed: int | None, init_seed: int | None, num_tasks: int) -> list[str]:
    """The overrides of one (data seed, init seed) pair of the seed axis, for a config with ``num_tasks``."""
    out = []
    if data_seed is not None:
        out.append(f"data.seed={data_seed}")
        out += [f"data.tasks.{n}.seed={data_seed}" for n in range(num_tasks)]
    if init_seed is not None:
        out.append(f"{_INIT_SEED_KEY}={init_seed}")
    return out


def expand(spec: SweepSpec) -> list[Cell]:
    """All cells of all grids (times the seed axis), in grid order; identical cells appear once."""
    cells: dict[str, Cell] = {}
    pairs = spec.seeds.pairs() if spec.seeds is not None else [(None, None)]
    for i, grid in enumerate(spec.grids):
        keys = list(grid.axes)
        for combo in itertools.product(*(grid.axes[k] for k in keys)):
            params = dict(zip(keys, combo))
            overrides = [
                *spec.overrides,
                *grid.overrides,
                *(f"{k}={format_value(v)}" for k, v in params.items()),
            ]
            num_tasks = 0
            if any(d is not None for d, _ in pairs):
                # The data seed reaches every task of the cell, whose list the grid may itself change.
                try:
                    num_tasks = len(load_config(spec.base, overrides).data.tasks)
                except ConfigError as exc:
                    raise ConfigError(_where(spec.source, f"grids.{i}: {exc}")) from None
            for data_seed, init_seed in pairs:
                seeds = {
                    axis: value
                    for axis, value in (("data", data_seed), ("init", init_seed))
                    if value is not None
                }
                cell = Cell(
                    cell_name(grid.name, params, seeds),
                    grid.name,
                    params,
                    [*overrides, *seed_overrides(data_seed, init_seed, num_tasks)],
                    grid_index=i,
                    seeds=seeds,
                )
                # A value such as '.x' would lead a name: refuse it here rather than as a directory.
                check_name(cell.name, _where(spec.source, f"grids.{i}: cell name"))
                prior = cells.get(cell.name)
                if prior is not None and prior.overrides != cell.overrides:
                    raise ConfigError(
                        _where(
                            spec.source,
                            f"grids.{i}: cell '{cell.name}' also comes from an earlier grid with other "
                            "overrides; give the grids distinct names",
                        )
                    )
                cells.setdefault(cell.name, cell)
    return list(cells.values())


def sweep_manifest(spec: SweepSpec, cells: list[Cell]) -> dict:
    """The expanded sweep as ``sweep.json`` keeps it: what ``smalllm report`` reads back."""
    return {
        "name": spec.name,
        "description": spec.description,
        "source": str(spec.source) if spec.source else None,
        "base": str(spec.base) if spec.base else None,
        "size_key": spec.size_key,
        "tasks": spec.tasks,
        "grid_keys": list(dict.fromkeys(k for c in cells for k in c.params)),
        "seeds": spec.seeds.describe() if spec.seeds is not None else None,
        "cells": [c.to_json() for c in cells],
    }


def cell_config(spec: SweepSpec, cell: Cell, run_dir: str | Path | None = None) -> RunConfig:
    """The validated run config of ``cell`` (``run_dir`` defaults to its place in the sweep)."""
    run_dir = run_dir if run_dir is not None else run_dir_of(spec.sweep_dir, cell.name)
    return load_config(spec.base, [*cell.overrides, f"run_dir={run_dir}"])


def validate_cells(spec: SweepSpec, cells: list[Cell]) -> dict[str, RunConfig]:
    """Build every cell's config; the first error names where it came from and the bad key.

    Shared overrides are checked on their own first, so a typo there is reported as such rather than
    as a failure of the first cell.
    """
    try:
        load_config(spec.base, spec.overrides)
    except ConfigError as exc:
        raise ConfigError(_where(spec.source, f"overrides: {exc}")) from None
    for i, grid in enumerate(spec.grids):
        if not grid.overrides:
            continue
        try:
            load_config(spec.base, [*spec.overrides, *grid.overrides])
        except ConfigError as exc:
            raise ConfigError(_where(spec.source, f"grids.{i}.overrides: {exc}")) from None
    configs: dict[str, RunConfig] = {}
    for cell in cells:
        try:
            configs[cell.name] = cell_config(spec, cell)
        except ConfigError as exc:
            raise ConfigError(
                _where(spec.source, f"grids.{cell.grid_index} (cell {cell.name}): {exc}")
            ) from None
    return configs
