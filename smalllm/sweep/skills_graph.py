"""``smalllm skills-graph``: estimate a Skill-It skills graph over the sub-skills of one task family.

Skills are the sub-skills of one configured task (``lego`` depths, ``addition`` digit positions, a
plug-in's skills). Each run restricts the family to a set of skills through
``data.tasks.N.skill_weights`` (1 for a skill in the set, 0 for the others) and keeps everything
else of the config: the task's total frequency, the background, the model, ``train.seed`` (the model
initialisation, the same in every run, so differences between runs come from the data alone) and the
step count H. A ``data.mixture`` policy is switched off in these runs (static weights). Two estimators (Chen et al. 2023, App. B.2):

* ``brute`` (Alg. 2): train H steps on each skill j alone and on each pair {i, j}.
  ``difference[i][j] = L_j(j alone) - L_j({i, j})``: how much lower skill j's held-out loss is when
  skill i is added (at the same total task frequency, so the pair sees half as much of skill j).
  There is an edge i -> j when the difference exceeds ``margin``; the matrix is the binary edge
  matrix with a diagonal of 1 (a skill is its own prerequisite), as in Skill-It. k + k(k-1)/2 runs.
* ``linear`` (Alg. 3): train h steps on each skill i alone. ``drop[i][j] = L_j(init) - L_j(after)``;
  the matrix is the drop clipped at 0 (Skill-It keeps positive changes only), optionally divided by
  the column's diagonal (``normalize``: the share of skill j's own improvement that training on skill
  i gives). An edge where the drop exceeds ``margin``. k runs.

Runs live in ``OUT/runs/h<H>-skills-<i>[-<j>]``; a rerun reuses every completed run whose config is
the one it would train, and continues a run that was interrupted. The result is written to
``OUT/skills_graph.json`` and drawn in ``OUT/skills_graph.png``; :func:`smalllm.data.skills_graph.
load_skills_graph` reads it back (format in ``docs/mixtures.md``, "Skills graph").
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from smalllm.config import RunConfig, config_to_dict, load_config, validate
from smalllm.data.config import MixtureConfig
from smalllm.errors import ConfigError, SmalllmError
from smalllm.labels import Label
from smalllm.run_record import (
    RunDir,
    atomic_write_json,
    marker_kind,
    refuse_foreign,
    skills_graph_json_file,
    skills_graph_png_file,
    skills_graph_runs_dir,
    write_marker,
)
from smalllm.validation import COUNT_MAX, integer, number, one_of

Method = Literal["brute", "linear"]
METHODS: tuple[str, ...] = ("brute", "linear")
METRIC = "loss"
"""Held-out metric the graph is built from: answer-token cross-entropy per sub-skill (nats)."""
SEED_KEY = "train.seed"
"""The seed shared by every run of a graph: the model initialisation."""


@dataclass
class Family:
    """The task family whose sub-skills are the graph's skills."""

    index: int
    """Position of the task in ``data.tasks``."""
    task: str
    """Registered task name."""
    skills: list[str]
    """Sub-skill names without the ``task/`` prefix, in the task's order (``skill_weights`` order)."""
    labels: list[Label]
    """Metric label of each sub-skill (``eval/<task>/<skill>/loss``)."""


def estimate_skills_graph(
    config: RunConfig | str | Path,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    task: str | None = None,
    method: Method = "linear",
    steps: int | None = None,
    out: str | Path | None = None,
    margin: float = 0.0,
    normalize: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Train the runs of ``method`` (reusing finished ones in ``out``), write ``skills_graph.json``
    and its heatmap there, and return the JSON record.

    ``config``: a run config (YAML path or :class:`RunConfig`) with ``overrides`` (``key=value``
    strings, or a mapping of dotted keys); its ``run_dir`` is not used. ``task``: the family (default:
    the only task of the config with two or more sub-skills). ``steps``: H (default: the config's own
    step count). ``out``: default ``runs/skills-graph-<task>``. ``margin``: nats a loss difference must
    exceed to count as an edge. ``normalize``: linear only, divide each column by its diagonal.
    """
    say = log or (lambda _msg: None)
    one_of(method, METHODS, "--method")
    number(margin, "--margin", ge=0, le=1e6)
    if normalize and method != "linear":
        raise SmalllmError("--normalize: only with --method linear (brute force gives a binary graph)")
    if out is not None:  # refused before the corpus is built or anything is written
        refuse_foreign(Path(out), "skills_graph", "--out")
    cfg = _resolve(config, overrides)
    family = find_family(cfg, task, say)
    tokens_per_step = cfg.train.global_batch_size * cfg.data.seq_len
    if steps is None:
        steps = max(1, math.ceil(cfg.train.max_tokens / tokens_per_step))
    integer(steps, "--steps", ge=1, le=COUNT_MAX)
    root = Path(out) if out is not None else Path("runs") / f"skills-graph-{family.task}"
    prepare_out_dir(root)
    k = len(family.skills)
    sets = [(i,) for i in range(k)]
    if method == "brute":
        sets += [(i, j) for i in range(k) for j in range(i + 1, k)]
    say(
        f"skills graph of '{family.task}' ({k} skills: {', '.join(family.skills)}), {method}: "
        f"{len(sets)} runs of {steps} steps, {SEED_KEY}={cfg.train.seed} -> {root}"
    )
    losses: dict[tuple[int, ...], tuple[list[float], list[float]]] = {}
    runs: dict[str, str] = {}
    for n, chosen in enumerate(sets, 1):
        run_cfg = subset_config(cfg, family, chosen, steps * tokens_per_step, root, steps)
        path = Path(run_cfg.run_dir)
        reused = _train_or_reuse(run_cfg)
        losses[chosen] = read_losses(path, family, steps)
        runs["+".join(family.skills[i] for i in chosen)] = str(path.relative_to(root))
        say(f"[{n}/{len(sets)}] {'reused' if reused else 'trained'} {path.name}")
    record = graph_record(family, method, steps, cfg.train.seed, losses, margin, normalize)
    record["runs"] = runs
    atomic_write_json(skills_graph_json_file(root), record)
    plot_skills_graph(record, skills_graph_png_file(root))
    say(f"wrote {skills_graph_json_file(root)} and {skills_graph_png_file(root)}")
    return record


def _resolve(
    config: RunConfig | str | Path, overrides: Mapping[str, Any] | Sequence[str] | None
) -> RunConfig:
    if isinstance(overrides, Mapping):
        from smalllm.train.api import resolve_config

        return resolve_config(config, overrides)
    lines = list(overrides or [])
    if isinstance(config, RunConfig):
        return _with_lines(config, lines)
    if not Path(config).is_file():
        raise SmalllmError(f"config: '{config}' not found")
    return load_config(config, lines)


def _with_lines(cfg: RunConfig, lines: list[str]) -> RunConfig:
    """``cfg`` with ``key=value`` override lines laid over it (through a file, as the API does)."""
    if not lines:
        validate(cfg)
        return cfg
    import tempfile

    from smalllm.config import save_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "from_python.yaml"
        save_config(cfg, path)
        return load_config(path, lines)


def find_family(cfg: RunConfig, task: str | None, say: Callable[[str], None] = print) -> Family:
    """The configured task family named ``task`` (default: the only one with two or more skills)."""
    from smalllm.data.shards import ensure_corpus
    from smalllm.data.task_tokens import task_vocab
    from smalllm.tasks import build_task, skill_labels, skill_names

    names = [t.name for t in cfg.data.tasks]
    if task is not None and task not in names:
        listed = ", ".join(names) or "none"
        raise SmalllmError(f"--task: no task '{task}' in data.tasks (configured: {listed})")
    # Skill names come from the task object, which draws its tables from the run's tokenizer: the
    # corpus is built (or found in the cache) as the first run would do anyway.
    corpus = ensure_corpus(cfg.data, log=say)
    vocab = task_vocab(cfg.data, corpus.tokenizer, corpus)
    families = []
    for index, tcfg in enumerate(cfg.data.tasks):
        if task is not None and tcfg.name != task:
            continue
        built = build_task(tcfg.name, tcfg.params, vocab, seed=tcfg.seed, where=f"data.tasks.{index}")
        families.append(Family(index, tcfg.name, skill_names(built), skill_labels(built)))
    if task is not None:
        family = families[0]
        if len(family.skills) < 2:
            raise SmalllmError(
                f"--task: task '{task}' has one sub-skill; a skills graph needs a family of two or more"
            )
    else:
        many = [f for f in families if len(f.skills) >= 2]
        if not many:
            raise SmalllmError(
                "data.tasks: no task with two or more sub-skills (lego, addition, ...) to build a graph over"
            )
        if len(many) > 1:
            raise SmalllmError(
                f"--task: the config has several task families ({', '.join(f.task for f in many)}); name one"
            )
        family = many[0]
    if cfg.data.tasks[family.index].peak_frequency() <= 0:
        raise SmalllmError(
            f"data.tasks.{family.index}.frequency: task '{family.task}' is never trained on (frequency 0)"
        )
    return family


def prepare_out_dir(root: Path) -> None:
    """Create ``root`` (or reopen one ``smalllm skills-graph`` made) and mark it before writing into it;
    any other non-empty directory is refused untouched."""
    refuse_foreign(root, "skills_graph", "--out")
    try:
        skills_graph_runs_dir(root).mkdir(parents=True, exist_ok=True)
        if marker_kind(root) is None:
            write_marker(root, "skills_graph")
    except OSError as exc:
        raise SmalllmError(f"--out: cannot write to '{root}' ({exc.strerror})") from None


def run_name(chosen: Sequence[int], steps: int) -> str:
    """Directory of the run trained on the skills ``chosen`` (indices) for ``steps`` steps: the step
    count is in the name, so graphs of several H share one ``--out`` without clashing."""
    return f"h{steps}-skills-{'-'.join(str(i) for i in chosen)}"


def subset_config(
    cfg: RunConfig, family: Family, chosen: Sequence[int], max_tokens: int, root: Path, steps: int
) -> RunConfig:
    """``cfg`` restricted to the skills ``chosen`` of ``family``: their weights 1, the others 0 (the
    family's total frequency unchanged), trained ``max_tokens`` tokens in its own run directory."""
    run_cfg = copy.deepcopy(cfg)
    run_cfg.data.tasks[family.index].skill_weights = [
        1.0 if s in chosen else 0.0 for s in range(len(family.skills))
    ]
    # The runs train fixed weights: a mixture policy would change them round by round, and an online
    # one by each run's own losses, so the runs would no longer differ by their skill sets alone.
    run_cfg.data.mixture = MixtureConfig()
    run_cfg.train.max_tokens = max_tokens
    # The graph is read from the held-out losses at step 0 and at the end, which every run evaluates.
    run_cfg.eval.enabled = True
    run_cfg.run_dir = str(skills_graph_runs_dir(root) / run_name(chosen, steps))
    try:
        validate(run_cfg)
    except ConfigError as exc:
        raise ConfigError(f"skills-graph run {run_name(chosen, steps)}: {exc}") from None
    return run_cfg


def _train_or_reuse(run_cfg: RunConfig) -> bool:
    """Train the run of ``run_cfg`` unless it completed already (True: reused). A run killed or
    interrupted is continued from its checkpoint, or started over when it has none; a run of another
    config is refused, never replaced."""
    from smalllm.train.trainer import train

    run = RunDir(run_cfg.run_dir)
    if run.has_config():
        # run_dir aside: an --out directory moved elsewhere still reuses its runs.
        saved = {**config_to_dict(load_config(run.config_file)), "run_dir": run_cfg.run_dir}
        if saved != config_to_dict(run_cfg):
            raise SmalllmError(
                f"--out: '{run.path}' holds a run of another config; "
                "use another --out for a changed config, or move that run away"
            )
    if run.is_done():
        return True
    mode = run.restart_mode()
    summary = train(run_cfg, resume=mode == "resume", overwrite=mode == "overwrite", log=lambda _m: None)
    if summary.get("status") != "completed" or not run.is_done():
        raise SmalllmError(f"{run.path}: the run ended {summary.get('status')!r}, not completed")
    return False


def read_losses(path: Path, family: Family, steps: int) -> tuple[list[float], list[float]]:
    """Held-out loss of every skill of ``family`` at step 0 and at step ``steps`` of the run in ``path``."""
    from smalllm.train.api import load_run

    evals = {int(r.get("step", -1)): r for r in load_run(path).evals}
    out = []
    for step in (0, steps):
        record = evals.get(step)
        if record is None:
            raise SmalllmError(f"{path}: no evaluation at step {step} (the graph needs steps 0 and {steps})")
        values = []
        for label in family.labels:
            value = record.get(label.key(METRIC))
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise SmalllmError(f"{path}: step {step} has no finite {label.key(METRIC)}")
            values.append(float(value))
        out.append(values)
    return out[0], out[1]


def graph_record(
    family: Family,
    method: str,
    steps: int,
    seed: int,
    losses: Mapping[tuple[int, ...], tuple[list[float], list[float]]],
    margin: float,
    normalize: bool,
) -> dict:
    """The ``skills_graph.json`` record from each run's (step-0, final) losses, keyed by the trained
    skill indices (``(i,)`` alone, ``(i, j)`` with i < j a pair)."""
    k = len(family.skills)
    record: dict[str, Any] = {
        "task": family.task,
        "skills": list(family.skills),
        "method": method,
        "steps": steps,
        "metric": METRIC,
        "seed": seed,
        "seed_key": SEED_KEY,
        "margin": margin,
    }
    if method == "linear":
        before = [losses[(i,)][0] for i in range(k)]
        after = [losses[(i,)][1] for i in range(k)]
        drop = [[before[i][j] - after[i][j] for j in range(k)] for i in range(k)]
        matrix = [[max(d, 0.0) for d in row] for row in drop]
        if normalize:
            # Column j in units of skill j's own improvement; a skill that its own data does not
            # improve gives nothing to compare with, so its column is 0.
            diagonal = [matrix[j][j] for j in range(k)]
            matrix = [
                [matrix[i][j] / diagonal[j] if diagonal[j] > 0 else 0.0 for j in range(k)] for i in range(k)
            ]
        edges = [[int(drop[i][j] > margin) for j in range(k)] for i in range(k)]
        record.update(
            matrix=matrix,
            edges=edges,
            normalize=normalize,
            raw={"loss_before": before, "loss_after": after, "drop": drop},
        )
        return record
    init = [losses[(j,)][0][j] for j in range(k)]
    alone = [losses[(j,)][1][j] for j in range(k)]
    pair: list[list[float | None]] = [[None] * k for _ in range(k)]
    for (i, j), (_, final) in ((s, v) for s, v in losses.items() if len(s) == 2):
        pair[i][j], pair[j][i] = final[j], final[i]
    difference = [[0.0 if i == j else alone[j] - pair[i][j] for j in range(k)] for i in range(k)]  # type: ignore[operator]
    edges = [[int(i == j or difference[i][j] > margin) for j in range(k)] for i in range(k)]
    record.update(
        matrix=[[float(e) for e in row] for row in edges],
        edges=edges,
        normalize=False,
        raw={
            "loss_init": init,
            "loss_alone": alone,
            "loss_pair": pair,
            "difference": difference,
            "self_drop": [init[j] - alone[j] for j in range(k)],
        },
    )
    return record


def plot_skills_graph(record: Mapping[str, Any], path: Path) -> Path:
    """Heatmap of the graph: rows the trained skill, columns the evaluated one, each cell's number
    written in it and an edge marked with ``*``. Brute force shows the loss differences (its matrix
    is binary), linear its matrix."""
    from smalllm.figures import new_figure, save_figure

    skills = list(record["skills"])
    brute = record["method"] == "brute"
    values = record["raw"]["difference"] if brute else record["matrix"]
    edges = record["edges"]
    k = len(skills)
    side = max(3.5, 0.9 * k + 2.0)
    fig = new_figure(side + 1.0, side, dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(values, cmap="RdBu_r" if brute else "viridis")
    if brute:  # differences are signed: centre the colour scale on 0
        top = max((abs(v) for row in values for v in row), default=1.0) or 1.0
        image.set_clim(-top, top)
    unit = "loss difference (nats)" if brute else "loss drop (nats)"
    fig.colorbar(image, ax=ax, label="share of the skill's own drop" if record.get("normalize") else unit)
    ax.set_xticks(range(k), skills, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), skills, fontsize=8)
    ax.set_xlabel("evaluated skill j")
    ax.set_ylabel("trained skill i")
    for i in range(k):
        for j in range(k):
            # Brute force has no difference on the diagonal (a skill is its own prerequisite).
            text = (
                "self" if brute and i == j else f"{values[i][j]:.2f}{'*' if edges[i][j] and i != j else ''}"
            )
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=7,
                color="black",
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.6, "linewidth": 0},
            )
    what = "brute force: L_j(j) - L_j(i+j)" if brute else "linear: L_j(init) - L_j(after i)"
    ax.set_title(f"{record['task']} skills graph, {what}, H={record['steps']} (* edge)", fontsize=9)
    return save_figure(fig, path)
