"""The ``smalllm`` command line (argparse). Each subcommand is a thin shell over a library function.

Every failure is one line on stderr, ``smalllm: error: …``: command-line mistakes and user errors
(:class:`~smalllm.errors.SmalllmError`) exit 2, anything else (a bug, a full disk) exits 1, an
interrupt 130. ``--debug`` shows the traceback instead. Options may come anywhere on the line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from smalllm.errors import SmalllmError
from smalllm.run_record import EVAL_RESULTS_FILE, PROBES_FILE


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, and options accepted anywhere among a command's positionals."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._has_commands = False
        self._intermixed = False

    def add_subparsers(self, **kwargs: Any) -> argparse._SubParsersAction:
        self._has_commands = True
        return super().add_subparsers(**kwargs)

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # A parser with sub-commands cannot parse intermixed (argparse refuses it); the command's own
        # parser, which the sub-command action calls with the rest of the line, can. The flag marks
        # the inner calls parse_known_intermixed_args makes back into this method.
        if self._has_commands or self._intermixed:
            return super().parse_known_args(args, namespace)
        self._intermixed = True
        try:
            namespace, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = False
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def error(self, message: str) -> NoReturn:
        # argparse prints the usage block first; one line that names the option, and where to look.
        _usage_error(f"{message} (see '{self.prog} --help')")


def _usage_error(message: str) -> NoReturn:
    print(f"smalllm: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _bounded(
    parser: argparse.ArgumentParser,
    flag: str,
    bounds: tuple[int, int],
    default: int | None,
    help: str,
    **messages: str,
) -> None:
    """Add an integer option that refuses values outside ``bounds`` (``messages``: see :class:`_Bounded`)."""
    parser.add_argument(
        flag, action=_Bounded, low=bounds[0], high=bounds[1], default=default, help=help, **messages
    )


class _Bounded(argparse.Action):
    """An integer option that refuses values outside ``[low, high]``, naming itself.

    ``why`` says what the bound protects (shown with it); ``below`` replaces the wording used for a
    value under ``low``.
    """

    def __init__(
        self,
        option_strings: list[str],
        dest: str,
        low: int,
        high: int,
        why: str = "",
        below: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("type", int)
        kwargs.setdefault("metavar", "N")
        super().__init__(option_strings, dest, **kwargs)
        self.low, self.high, self.why, self.below = low, high, why, below

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        flag = option_string or self.dest
        if values < self.low and self.below is not None:
            _usage_error(f"{self.below}, got {flag} {values}")
        if not self.low <= values <= self.high:
            why = f" ({self.why})" if self.why else ""
            _usage_error(f"{flag}: must be between {self.low:,} and {_number(self.high)}{why}, got {values}")
        setattr(namespace, self.dest, values)


def _number(n: int) -> str:
    """``n`` with thousands separators, or as ``2^k - 1`` when that is shorter to read."""
    if n >= 2**32 and (n + 1) & n == 0:
        return f"2^{(n + 1).bit_length() - 1} - 1"
    return f"{n:,}"


MAX_SEED = 2**63 - 1  # seeds go to numpy and torch generators as 64-bit integers
MAX_TOKEN_ID = 2**32  # token shards store ids as uint16 or uint32
MAX_PROCESSES = 1024
MAX_SHOW = 10_000
INSPECT_ROWS = 4096  # data inspect samples its rows from this many stream rows
MAX_INSPECT_STEPS = 10_000_000


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="smalllm",
        description="Small-LM pretraining testbed: when do rare skills emerge, by task frequency and model scale?",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    # Every command also takes --debug after its name; SUPPRESS keeps an absent one from resetting
    # the value the root parser set.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = _with_parents(sub, common)

    m = add("models", help="table of model presets (parameters, shape, FLOPs/token)")
    _bounded(m, "--vocab-size", (1, MAX_TOKEN_ID), 50304, "vocabulary for the counts (default 50304)")
    _bounded(m, "--seq-len", (1, 2**24), 2048, "context for FLOPs/token (default 2048)")
    m.add_argument("--arch", default="olmo", help="count parameters of this architecture (default olmo)")
    _config_args(m)  # a config and/or model.* overrides: show that one model instead of the ladder

    t = add("train", help="pretrain a model (config file and/or key=value overrides)")
    _config_args(t)
    t.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (sizes, steps, memory per GPU) and exit: 0 if it fits, 3 if it does not",
    )
    t.add_argument(
        "--accelerate-config",
        metavar="FILE",
        help="dry run: plan for this accelerate config's processes and sharding (e.g. FSDP)",
    )
    _bounded(
        t, "--num-processes", (1, MAX_PROCESSES * 64), None, "dry run: plan for this many processes (GPUs)"
    )
    t.add_argument(
        "--gpu",
        metavar="NAME",
        help="dry run: plan for this GPU: H100-80GB, H200-141GB, A100-80GB, A100-40GB, L40S-48GB, ...",
    )
    start = t.add_mutually_exclusive_group()  # continue the run, or replace it: not both
    start.add_argument(
        "--resume", action="store_true", help="continue the run in run_dir from its latest checkpoint"
    )
    start.add_argument("--overwrite", action="store_true", help="delete an existing run_dir and start over")

    tk = add("tasks", help="list or show task generators")
    tadd = _with_parents(tk.add_subparsers(dest="tasks_command", required=True, metavar="ACTION"), common)
    tadd("list", help="registered tasks with their parameters")
    ts = tadd("show", help="sample instances of a task")
    ts.add_argument("name")
    ts.add_argument("params", nargs="*", default=[], metavar="param=value")
    _bounded(
        ts,
        "--n",
        (0, MAX_SHOW),
        5,
        "instances to show",
        why=f"tasks show prints at most {MAX_SHOW:,} instances",
    )
    _bounded(ts, "--seed", (0, MAX_SEED), 0, "task seed")
    ts.add_argument(
        "--config",
        metavar="CONFIG.yaml",
        help="draw the task's token tables as a run of this config does (from its background corpus, "
        "built if needed) and show each table token's background count",
    )

    d = add("data", help="build tokenizers and token shards, inspect the stream")
    dadd = _with_parents(d.add_subparsers(dest="data_command", required=True, metavar="ACTION"), common)
    db = dadd("build", help="tokenize the background corpus into memory-mapped shards (cached)")
    _config_args(db)
    _bounded(db, "--num-proc", (1, MAX_PROCESSES), min(4, os.cpu_count() or 1), "tokenizer processes")
    db.add_argument("--out", help="build into this directory instead of the cache")
    db.add_argument(
        "--if-missing",
        action="store_true",
        help="keep a corpus already built there if its sources and settings are still current",
    )
    dt = dadd("tokenizer", help="train/build the tokenizer of a config and save it")
    _config_args(dt)
    dt.add_argument("--out", required=True, help="directory to save the tokenizer to")
    di = dadd("inspect", help="print stream rows with task spans marked, and realised frequencies")
    _config_args(di)
    # The lower bound keeps the wording these options have always had.
    _bounded(
        di,
        "--rows",
        (0, INSPECT_ROWS),
        4,
        "rows to print",
        why=f"rows are picked from the first {INSPECT_ROWS:,}",
        below="--rows and --steps must be >= 0",
    )
    _bounded(
        di,
        "--steps",
        (0, MAX_INSPECT_STEPS),
        None,
        "steps for the frequency table (default: the run's)",
        why="the frequency table counts every instance of every step",
        below="--rows and --steps must be >= 0",
    )
    di.add_argument(
        "--run",
        help="run directory of this config whose logged mixture rounds to show (an online policy's rounds)",
    )

    e = add(
        "eval",
        help="evaluate a checkpoint on a run's held-out sets, or any causal LM (--model) on smalllm's tasks",
    )
    e.add_argument("path", nargs="?", help="checkpoint directory (or a run directory: its latest checkpoint)")
    e.add_argument("--run", help="run directory whose eval sets to use (default: inferred from path)")
    e.add_argument(
        "--tasks", nargs="*", help="only these tasks (with --model: the tasks to build), e.g. t_cmp,t_add"
    )
    e.add_argument(
        "--out",
        help=f"JSONL file to append results to (default: <run>/{EVAL_RESULTS_FILE}); "
        "with --model: a JSON file for the curve, baselines and emergence",
    )
    e.add_argument(
        "--model",
        metavar="PATH_OR_HUB_ID",
        help="score this causal LM instead, its tasks built in its own tokenizer (no run needed)",
    )
    e.add_argument(
        "--revision",
        action="append",
        default=[],
        metavar="R",
        help="with --model, repeatable: a hub revision (e.g. Pythia's step1000), or for a local "
        "directory PATH its subdirectory PATH/R; several give a curve over the steps their names end in",
    )
    _task_building_args(e, "--model")

    x = add("export", help="export a run's task instances for other tools")
    xadd = _with_parents(x.add_subparsers(dest="export_command", required=True, metavar="FORMAT"), common)
    xl = xadd("lm-eval", help="lm-evaluation-harness task YAMLs and JSONL data, one group per run")
    xl.add_argument("run", nargs="?", help="run directory: its held-out sets in its tokenizer")
    xl.add_argument("--tasks", nargs="*", help="instead of a run: build these tasks, e.g. t_cmp,t_add")
    xl.add_argument(
        "--tokenizer", metavar="PATH_OR_HUB_ID", help="with --tasks: the tokenizer to build them in"
    )
    xl.add_argument("--out", required=True, help="directory to write the YAMLs and data files to")
    _task_building_args(xl, "--tasks")

    au = add(
        "audit",
        help="leakage audit: scan a run's training stream for its held-out instances and background n-grams",
    )
    au.add_argument(
        "args", nargs="*", metavar="RUN_DIR | [CONFIG.yaml] [key=value ...]", help="run directory or config"
    )
    _bounded(au, "--ngram", (1, 1024), 13, "n of the background n-gram overlap (default 13)")
    _bounded(au, "--max-rows", (1, 2**40), None, "scan at most this many rows (default: all the run reads)")
    au.add_argument("--out", metavar="FILE.json", help="also write the report as JSON")

    pr = add(
        "probe",
        help="representation probes of a run's checkpoints: T_CMP value R² and T_ADD Fourier modes per layer",
    )
    pr.add_argument(
        "run", metavar="RUN_DIR", help="run directory with checkpoints, or a sweep: each cell's run in turn"
    )
    pr.add_argument(
        "--checkpoints",
        default="all",
        metavar="all|last|STEP,...",
        help="which checkpoints to probe (default all)",
    )
    pr.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="NAME",
        help="repeatable: only this task (default every t_cmp / t_add task of the run)",
    )
    pr.add_argument("--out", metavar="DIR", help=f"write {PROBES_FILE} and the plots here instead of the run")
    _bounded(pr, "--max-instances", (1, 1 << 30), 2000, "held-out instances read per task (default 2000)")
    _bounded(pr, "--seed", (0, MAX_SEED), 0, "seed of the probe folds and controls (default 0)")

    r = add("report", help="plots and a markdown summary of a run or a sweep")
    r.add_argument("path", help="run directory or sweep directory")

    f = add("fit", help="scaling-law fits of a sweep: L(N), L(N, D), L(C), N_opt(C), per-task power laws")
    f.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a sweep directory with finished cells")
    f.add_argument("--out", help="directory for fits.json, fits.md and the plots (default: SWEEP_DIR)")
    _bounded(f, "--resamples", (0, 100_000), 400, "bootstrap resamples of runs per fit (default 400)")
    _bounded(f, "--seed", (0, MAX_SEED), 0, "seed of the bootstrap (default 0)")

    s = add("sweep", help="run a grid of model sizes x task frequencies x seeds")
    s.add_argument("config", help="sweep YAML (see configs/experiments/)")
    s.add_argument(
        "--dry-run", action="store_true", help="print each cell with tokens, FLOPs and estimated time"
    )
    _bounded(s, "--workers", (1, MAX_PROCESSES), 1, "cells run in parallel")
    s.add_argument("--emit", choices=["slurm", "shell"], help="write a launch script instead of running")
    s.add_argument("--retry-failed", action="store_true", help="rerun cells that failed before")
    s.add_argument("--sweep-dir", help="override the sweep directory")

    g = add(
        "skills-graph",
        help="estimate a Skill-It skills graph over one task family's sub-skills (docs/mixtures.md)",
    )
    _config_args(g)
    g.add_argument("--task", metavar="NAME", help="the task family (default: the config's only one)")
    g.add_argument(
        "--method",
        choices=["brute", "linear"],
        default="linear",
        help="brute: each skill alone and each pair, k + k(k-1)/2 runs; linear: each skill alone, "
        "k runs (default linear)",
    )
    _bounded(g, "--steps", (1, 10**9), None, "H, training steps of every run (default: the config's)")
    g.add_argument(
        "--out", metavar="DIR", help="directory for the runs and the graph (default runs/skills-graph-TASK)"
    )
    g.add_argument(
        "--margin",
        type=float,
        default=0.0,
        metavar="NATS",
        help="a loss difference (brute) or drop (linear) must exceed this to be an edge (default 0)",
    )
    g.add_argument(
        "--normalize",
        action="store_true",
        help="linear: divide each column by its diagonal (share of a skill's own improvement)",
    )

    pu = add("push", help="upload a run's checkpoint (model, tokenizer, card) to the Hugging Face Hub")
    pu.add_argument("run", metavar="RUN_DIR", help="run directory (or one checkpoint directory)")
    pu.add_argument("repo_id", metavar="REPO_ID", help="hub repository, OWNER/NAME (created if missing)")
    pu.add_argument("--revision", help="branch to push to (created if missing; default main)")
    pu.add_argument("--private", action="store_true", help="create the repository private")
    pu.add_argument("--checkpoint", metavar="STEP", help="this step's checkpoint (default: the latest)")

    add("demo", help="the embedded CPU demo: train, evaluate and report (no downloads)")
    add("env", help="the torch build, devices, library versions, world size and smalllm commit")
    _toy_args(add("toy", help="the linear-mixture toy and its exact theory (docs/toy.md)"))
    return p


def _toy_args(p: argparse.ArgumentParser) -> None:
    from smalllm.toy import CHOICES
    from smalllm.toy.config import PRESETS

    p.add_argument(
        "experiment", choices=CHOICES, help="heatmap (a), signal (b), retention (c), rank1 (d) or all"
    )
    p.add_argument("--preset", choices=list(PRESETS), default="quick", help="paper or quick (default quick)")
    p.add_argument("--config", help="YAML file laid over the preset (sections tasks, train, metrics, ...)")
    p.add_argument("--out", help="run directory (default runs/toy-EXPERIMENT-PRESET)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing toy run in --out")
    p.add_argument("--no-tensorboard", action="store_true", help="skip the TensorBoard event files")


def _with_parents(
    sub: argparse._SubParsersAction, *parents: argparse.ArgumentParser
) -> Callable[..., argparse.ArgumentParser]:
    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=list(parents), **kwargs)

    return add


def _task_building_args(p: argparse.ArgumentParser, mode: str) -> None:
    """Options of the commands that build task instances outside a run (``eval --model``,
    ``export lm-eval --tasks``): the seed, how many held-out instances, task parameters."""
    _bounded(p, "--seed", (0, MAX_SEED), 0, f"with {mode}: the seed of the task tables and instances")
    _bounded(
        p, "--eval-size", (1, 1_000_000), 256, f"with {mode}: held-out instances drawn per task (default 256)"
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="TASK.KEY=VALUE",
        help=f"with {mode}, repeatable: a task parameter, e.g. t_cmp.num_values=20",
    )


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]", help="config file then overrides"
    )


def _split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    """First positional is a config file unless it looks like an override."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, list(args)


def _load(args) -> object:
    from smalllm.config import load_config

    path, overrides = _split_config_args(args.args)
    return load_config(path, overrides)


# ---------------------------------------------------------------------------------------------- commands


def cmd_models(args) -> None:
    """The ladder, or (with a config or ``model.*`` overrides) the one shape a run would train."""
    from smalllm.config import ARCHS, ModelConfig
    from smalllm.model.build import build_model, count_params
    from smalllm.model.presets import PRESETS
    from smalllm.validation import one_of

    V, T = args.vocab_size, args.seq_len
    if args.args:
        cfg = _load(args)
        model, T = cfg.model, cfg.data.seq_len
        print(f"the config's model at vocabulary {V:,}, context {T} (arch {model.arch})")
        rows = [model]
    else:
        one_of(args.arch, ARCHS, "--arch")
        print(f"presets at vocabulary {V:,}, context {T} (arch {args.arch}, untied embeddings)")
        rows = [ModelConfig(preset=name, arch=args.arch) for name in PRESETS]
    header = (
        f"{'model':<22} {'params':>15} {'non-embedding':>15} {'layers':>6} {'width':>6} {'heads':>5} "
        f"{'kv':>3} {'MLP':>7} {'FLOPs/token':>15}"
    )
    print(header)
    print("-" * len(header))
    for model in rows:
        shape = model.shape(T)
        # Counted on a model built on the meta device: exact for every architecture (biases, norms).
        total, non_emb = count_params(build_model(model, V, T, meta=True))
        print(
            f"{shape.name:<22} {total:>15,} {non_emb:>15,} {shape.layers:>6} {shape.width:>6} "
            f"{shape.heads:>5} {shape.kv_heads or shape.heads:>3} {shape.mlp_dim:>7} "
            f"{shape.flops_per_token(V, T):>15,}"
        )


def cmd_train(args) -> None:
    from smalllm.config import load_config, load_run_config
    from smalllm.run_record import RunDir

    path, overrides = _split_config_args(args.args)
    cfg = load_config(path, overrides)
    run = RunDir(cfg.run_dir)
    if args.resume and run.has_config():
        # A resumed run keeps its own config; overrides (e.g. a larger train.max_tokens) still apply.
        cfg = load_run_config(run.config_file, overrides)
    planning = [flag for flag, value in _dry_run_flags(args) if value is not None]
    if planning and not args.dry_run:
        raise SmalllmError(f"{planning[0]}: only with --dry-run (a run takes them from accelerate launch)")
    if args.dry_run:
        from smalllm.train.launch import dry_run_target
        from smalllm.train.preflight import check_config

        if os.environ.get("RANK", "0") != "0":
            return  # under `accelerate launch`, one process plans for all of them
        # The run's own checks (the run directory read only, then config, tasks and plan) without
        # building the corpus; a plan that does not fit is refused like the run refuses it (exit 3).
        run.check_start(resume=args.resume, overwrite=args.overwrite)
        target = dry_run_target(cfg, args.accelerate_config, args.num_processes, args.gpu)
        check_config(
            cfg, build_corpus=False, strict=False, show=lambda plan: print(plan.describe()), target=target
        )
        return
    from smalllm.train.trainer import train

    summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per process
        print(
            f"run {summary['status']}: {summary['steps']} steps, {summary['tokens']:,} tokens -> {cfg.run_dir}"
        )


def _dry_run_flags(args) -> list[tuple[str, object]]:
    return [
        ("--accelerate-config", args.accelerate_config),
        ("--num-processes", args.num_processes),
        ("--gpu", args.gpu),
    ]


def cmd_env(args) -> None:
    from smalllm.train.environment import collect_environment, describe_environment

    print(describe_environment(collect_environment()))


def cmd_tasks(args) -> None:
    from smalllm.task_display import show_task, tasks_table

    if args.tasks_command == "list":
        print(tasks_table())
        return
    vocab = counts = None
    if args.config:
        from smalllm.config import load_config
        from smalllm.data.shards import ensure_corpus
        from smalllm.data.task_tokens import background_counts, task_vocab

        data = load_config(args.config).data
        corpus = ensure_corpus(data)
        vocab, counts = task_vocab(data, corpus.tokenizer, corpus), background_counts(corpus)
    print(
        show_task(
            args.name, n=args.n, params=_task_params(args.params), seed=args.seed, vocab=vocab, counts=counts
        )
    )


def _task_params(items: list[str]) -> dict[str, object]:
    """``name=value`` words as a dict, values read as YAML like config overrides; the task itself
    then checks names, types and ranges as it does for a run."""
    from smalllm.safe_yaml import YamlSyntaxError, load_yaml_text

    params: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SmalllmError(f"task parameter '{item}': expected name=value")
        if key in params:
            raise SmalllmError(f"task parameter '{key}' is given twice")
        try:
            params[key] = load_yaml_text(value, f"task parameter '{key}'")
        except YamlSyntaxError:
            raise SmalllmError(f"task parameter '{key}': {value!r} is not a valid value") from None
    return params


def cmd_data(args) -> None:
    cfg = _load(args)
    if args.data_command == "build":
        from smalllm.data.shards import build_corpus, corpus_dir, corpus_is_current, open_corpus

        out = Path(args.out) if args.out else corpus_dir(cfg.data)
        # A cache entry is named by its content; an explicit --out is not, so its index is compared.
        kept = args.if_missing and corpus_is_current(cfg.data, out)
        if not kept:
            build_corpus(cfg.data, out, num_proc=args.num_proc, field="--out" if args.out else None)
        corpus = open_corpus(out)
        print(
            f"{'kept' if kept else 'built'} {out}: {corpus.num_tokens:,} training tokens in {len(corpus.index['shards'])} shard(s), "
            f"{corpus.index['holdout_tokens']:,} held-out tokens, vocabulary {corpus.index['vocab_size']}"
        )
    elif args.data_command == "tokenizer":
        from smalllm.data.shards import export_tokenizer

        tokenizer = export_tokenizer(cfg.data, Path(args.out), field="--out")
        print(f"saved a {cfg.data.tokenizer.kind} tokenizer of {len(tokenizer)} tokens to {args.out}")
    else:
        from smalllm.data.inspect import inspect_stream
        from smalllm.run_record import RunDir

        if args.run is not None and not RunDir(args.run).mixture_file.is_file():
            raise SmalllmError(f"--run: {args.run} holds no mixture log (mixture.jsonl)")
        print(
            inspect_stream(
                cfg.data,
                cfg.train.global_batch_size,
                cfg.train.max_tokens,
                rows=args.rows,
                steps=args.steps,
                run_dir=args.run,
            )
        )


def cmd_audit(args) -> None:
    import math

    from smalllm.config import load_config, load_run_config
    from smalllm.data.leakage import audit_stream, check_leaks
    from smalllm.data.shards import ensure_corpus
    from smalllm.data.stream import TaskStream
    from smalllm.errors import ConfigError
    from smalllm.run_record import RunDir, atomic_write_text

    path, overrides = _split_config_args(args.args)
    run = None
    if path is not None and Path(path).is_dir():
        run = RunDir(path)
        if not run.has_config():
            raise SmalllmError(f"RUN_DIR: '{path}' holds no run ({run.config_file.name} missing)")
    cfg = load_run_config(run.config_file, overrides) if run is not None else load_config(path, overrides)
    corpus = ensure_corpus(cfg.data, num_proc=min(4, os.cpu_count() or 1))
    batch = cfg.train.global_batch_size
    stream = TaskStream(cfg.data, corpus, batch)
    known_rows = None
    if stream.mixture is not None and stream.mixture.needs_eval:
        # An online mixture's rounds after the first exist only in the run's log: scan those.
        if run is not None:
            stream.mixture.load_rounds(run.read_mixture())
        known_rows = stream.mixture.known_rounds() * cfg.data.mixture.round_steps * batch
    try:
        check_leaks(stream.families)
        print("preflight: pools disjoint, no held-out instance inside another task's training instances")
    except ConfigError as exc:
        print(f"preflight: {exc}")
    rows = max(1, math.ceil(cfg.train.max_tokens / (batch * cfg.data.seq_len))) * batch
    if args.max_rows is not None:
        rows = min(rows, args.max_rows)
    if known_rows is not None and rows > known_rows:
        print(f"online mixture: scanning the {known_rows:,} rows of the rounds known so far")
        rows = known_rows
    holdout = stream.background_holdout(cfg.eval.background_sequences)
    report = audit_stream(stream, rows, holdout, ngram=args.ngram)
    print("\n".join(report.lines()))
    if args.out:
        import json

        atomic_write_text(Path(args.out), json.dumps(report.to_dict(), indent=1))
        print(f"wrote {args.out}")


def cmd_eval(args) -> None:
    tasks = [t for item in args.tasks or [] for t in item.split(",") if t] or None
    if args.model is None:
        for flag, given in (("--revision", args.revision), ("--param", args.param)):
            if given:
                raise SmalllmError(f"{flag}: only with --model")
        if args.path is None:
            raise SmalllmError("eval: give a checkpoint or run directory, or --model PATH_OR_HUB_ID")
        from smalllm.eval.checkpoint_eval import evaluate_checkpoint

        evaluate_checkpoint(args.path, run_dir=args.run, tasks=tasks, out=args.out)
        return
    if args.path is not None or args.run is not None:
        raise SmalllmError("--model: scores a model on freshly built tasks; drop the run path and --run")
    from smalllm.eval.any_model import evaluate_any_model

    evaluate_any_model(
        args.model,
        tasks or [],
        revisions=args.revision,
        params=_per_task_params(args.param),
        seed=args.seed,
        eval_size=args.eval_size,
        out=args.out,
    )


def _per_task_params(items: list[str]) -> dict[str, dict[str, object]]:
    """``task.key=value`` words as {task: {key: value}}, values read as in ``tasks show``."""
    out: dict[str, dict[str, object]] = {}
    for item in items:
        task, dot, rest = item.partition(".")
        if not dot or not task or "=" not in rest:
            raise SmalllmError(f"--param: expected TASK.KEY=VALUE, got '{item}'")
        out.setdefault(task, {}).update(_task_params([rest]))
    return out


def cmd_export(args) -> None:
    from smalllm.eval.lm_eval_export import export_run, export_tasks

    tasks = [t for item in args.tasks or [] for t in item.split(",") if t]
    if args.run is not None:
        if tasks or args.tokenizer or args.param:
            raise SmalllmError("export lm-eval: give a run directory or --tasks with --tokenizer, not both")
        export_run(args.run, args.out)
        return
    if not tasks or not args.tokenizer:
        raise SmalllmError("export lm-eval: give a run directory, or --tasks and --tokenizer")
    export_tasks(
        args.tokenizer,
        tasks,
        args.out,
        params=_per_task_params(args.param),
        seed=args.seed,
        eval_size=args.eval_size,
    )


def cmd_probe(args) -> None:
    from smalllm.run_record import RunDir
    from smalllm.sweep import records

    path = Path(args.run)
    if not path.is_dir():
        raise SmalllmError(f"RUN_DIR: '{path}' is not a directory")
    if not records.is_sweep_dir(path):
        _probe_one(RunDir(path), args, args.out)
        return
    if args.out:
        raise SmalllmError("--out: a sweep's cells are probed in place (each into its own run)")
    probed = 0
    for name in records.cell_names_on_disk(path):
        run = records.cell_run(path, name)
        if not run.has_config() or not run.checkpoints_dir.is_dir():
            print(f"{name}: no run with checkpoints, skipped")
            continue
        print(f"{name}:")
        _probe_one(run, args, None)
        probed += 1
    if not probed:
        raise SmalllmError(f"RUN_DIR: sweep '{path}' has no cell with a checkpointed run to probe")


def _probe_one(run, args, out: str | None) -> None:
    from smalllm.config import load_run_config
    from smalllm.eval.probe_run import ProbeSettings, probe_run

    if not run.has_config():
        raise SmalllmError(f"RUN_DIR: '{run.path}' holds no run ({run.config_file.name} missing)")
    cfg = load_run_config(run.config_file)  # the run's own data config rebuilds its task tables
    probe_run(
        run.path,
        cfg.data,
        cfg.train.global_batch_size,
        checkpoints=args.checkpoints,
        tasks=[t for item in args.task for t in item.split(",") if t] or None,
        out=out,
        settings=ProbeSettings(max_instances=args.max_instances, seed=args.seed),
    )


def cmd_report(args) -> None:
    from smalllm.run_record import RunDir
    from smalllm.sweep.records import is_sweep_dir

    path = Path(args.path)
    run = RunDir(path)
    if is_sweep_dir(path):
        from smalllm.sweep.report import write_sweep_report

        written = write_sweep_report(path)
    else:
        from smalllm.eval.report import write_report

        if not run.has_metrics():
            raise SmalllmError(
                f"{path}: not a run directory (no {run.metrics_file.name}) nor a sweep directory"
            )
        written = write_report(path)
    for f in written:
        print(f)


def cmd_fit(args) -> None:
    from smalllm.sweep.fit_plots import plot_fits
    from smalllm.sweep.fits import fit_sweep, fits_markdown, write_fits

    fits = fit_sweep(args.sweep_dir, resamples=args.resamples, rng_seed=args.seed)
    out = Path(args.out) if args.out else Path(args.sweep_dir)
    written = write_fits(fits, out) + plot_fits(fits, out)
    print(fits_markdown(fits))
    for path in written:
        print(path)


def cmd_sweep(args) -> None:
    from smalllm.sweep.runner import run_sweep

    run_sweep(
        args.config,
        dry_run=args.dry_run,
        workers=args.workers,
        emit=args.emit,
        retry_failed=args.retry_failed,
        sweep_dir=args.sweep_dir,
    )


def cmd_skills_graph(args) -> None:
    from smalllm.sweep.skills_graph import estimate_skills_graph

    path, overrides = _split_config_args(args.args)
    if path is None:
        raise SmalllmError("skills-graph: give a config file (CONFIG.yaml [key=value ...])")
    estimate_skills_graph(
        path,
        overrides,
        task=args.task,
        method=args.method,
        steps=args.steps,
        out=args.out,
        margin=args.margin,
        normalize=args.normalize,
    )


def cmd_push(args) -> None:
    from smalllm.hub import push

    push(args.run, args.repo_id, revision=args.revision, private=args.private, checkpoint=args.checkpoint)


def cmd_demo(args) -> None:
    from smalllm.demo import run_demo

    run_demo()


def cmd_toy(args) -> None:
    from smalllm.toy.run import load_toy_config, run_toy

    cfg = load_toy_config(args.preset, args.config)
    out = args.out or f"runs/toy-{args.experiment}-{args.preset}"
    summary = run_toy(args.experiment, cfg, out, args.device, args.overwrite, not args.no_tensorboard)
    print(f"toy {args.experiment} finished in {summary['wall_time_s']:.0f} s; figures in {out}/report")


COMMANDS = {
    "models": cmd_models,
    "train": cmd_train,
    "tasks": cmd_tasks,
    "data": cmd_data,
    "eval": cmd_eval,
    "audit": cmd_audit,
    "export": cmd_export,
    "probe": cmd_probe,
    "report": cmd_report,
    "sweep": cmd_sweep,
    "fit": cmd_fit,
    "skills-graph": cmd_skills_graph,
    "push": cmd_push,
    "demo": cmd_demo,
    "env": cmd_env,
    "toy": cmd_toy,
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit status (0 ok, 1 unexpected error, 2 user error, 3 a plan that
    does not fit the device's memory, 130 interrupt)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0), or a usage error already printed as one line (2)
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("smalllm: interrupted", file=sys.stderr)
        return 130
    except SmalllmError as exc:
        if args.debug:
            raise
        print(f"smalllm: error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_status
    except Exception as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_gone():
            # The reader went away (`smalllm tasks show … | head`): stop quietly, like other Unix tools.
            return 1
        if args.debug:
            raise
        print(f"smalllm: error: {_describe(exc)} (run with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0


def _one_line(text: str) -> str:
    return " ".join(text.split("\n"))


def _describe(exc: BaseException) -> str:
    """One line for an exception that is not a user error: the file and reason of an OSError (a full
    disk, a file-size limit, a permission), else the type and the first line of the message."""
    if isinstance(exc, OSError) and exc.strerror:
        files = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        return f"{files}: {exc.strerror}" if files else f"{type(exc).__name__}: {exc.strerror}"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone; if so, point it at /dev/null, or flushing it
    at interpreter exit would fail once more and print a second error."""
    import select

    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file descriptor (e.g. captured in-process)
        return False
    if not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    if not any(events & select.POLLERR for _, events in poller.poll(0)):
        return False  # the broken pipe was another one: report it
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return True


if __name__ == "__main__":
    sys.exit(main())
