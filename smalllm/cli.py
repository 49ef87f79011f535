"""The ``smalllm`` command line (argparse). Each subcommand is a thin shell over a library function.

User errors (:class:`~smalllm.errors.SmalllmError`) print as one line on stderr and exit 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from smalllm.errors import SmalllmError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smalllm",
        description="Small-LM pretraining testbed: when do rare skills emerge, by task frequency and model scale?",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("models", help="table of model presets (parameters, shape, FLOPs/token)")
    m.add_argument("--vocab-size", type=int, default=50304, help="vocabulary for the counts (default 50304)")
    m.add_argument("--seq-len", type=int, default=2048, help="context for FLOPs/token (default 2048)")
    m.add_argument("--arch", default="olmo", help="count parameters of this architecture (default olmo)")

    t = sub.add_parser("train", help="pretrain a model (config file and/or key=value overrides)")
    _config_args(t)
    t.add_argument("--dry-run", action="store_true", help="print the plan (sizes, steps, memory) and exit")
    t.add_argument(
        "--resume", action="store_true", help="continue the run in run_dir from its latest checkpoint"
    )
    t.add_argument("--overwrite", action="store_true", help="delete an existing run_dir and start over")

    tk = sub.add_parser("tasks", help="list or show task generators")
    tsub = tk.add_subparsers(dest="tasks_command", required=True, metavar="ACTION")
    tsub.add_parser("list", help="registered tasks with their parameters")
    ts = tsub.add_parser("show", help="sample instances of a task")
    ts.add_argument("name")
    ts.add_argument("params", nargs="*", metavar="param=value")
    ts.add_argument("--n", type=int, default=5, help="instances to show")
    ts.add_argument("--seed", type=int, default=0)

    d = sub.add_parser("data", help="build tokenizers and token shards, inspect the stream")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    db = dsub.add_parser("build", help="tokenize the background corpus into memory-mapped shards (cached)")
    _config_args(db)
    db.add_argument("--num-proc", type=int, default=min(4, os.cpu_count() or 1))
    db.add_argument("--out", help="build into this directory instead of the cache")
    dt = dsub.add_parser("tokenizer", help="train/build the tokenizer of a config and save it")
    _config_args(dt)
    dt.add_argument("--out", required=True, help="directory to save the tokenizer to")
    di = dsub.add_parser("inspect", help="print stream rows with task spans marked, and realised frequencies")
    _config_args(di)
    di.add_argument("--rows", type=int, default=4, help="rows to print")
    di.add_argument(
        "--steps", type=int, default=None, help="steps for the frequency table (default: the run's)"
    )

    e = sub.add_parser("eval", help="evaluate a checkpoint or HF model directory on a run's held-out sets")
    e.add_argument("path", help="checkpoint directory (or a run directory: its latest checkpoint)")
    e.add_argument("--run", help="run directory whose eval sets to use (default: inferred from path)")
    e.add_argument("--tasks", nargs="*", help="only these tasks")
    e.add_argument("--out", help="JSONL file to append results to (default: <run>/eval_results.jsonl)")

    r = sub.add_parser("report", help="plots and a markdown summary of a run or a sweep")
    r.add_argument("path", help="run directory or sweep directory")

    s = sub.add_parser("sweep", help="run a grid of model sizes x task frequencies x seeds")
    s.add_argument("config", help="sweep YAML (see configs/experiments/)")
    s.add_argument(
        "--dry-run", action="store_true", help="print each cell with tokens, FLOPs and estimated time"
    )
    s.add_argument("--workers", type=int, default=1, help="cells run in parallel")
    s.add_argument("--emit", choices=["slurm", "shell"], help="write a launch script instead of running")
    s.add_argument("--retry-failed", action="store_true", help="rerun cells that failed before")
    s.add_argument("--sweep-dir", help="override the sweep directory")

    sub.add_parser("demo", help="the embedded CPU demo: train, evaluate and report (no downloads)")
    return p


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
    from smalllm.config import ARCHS, ModelConfig
    from smalllm.errors import did_you_mean
    from smalllm.model.build import build_model, count_params
    from smalllm.model.presets import PRESETS

    if args.arch not in ARCHS:
        raise SmalllmError(
            f"--arch: '{args.arch}' is not one of {', '.join(ARCHS)}{did_you_mean(args.arch, ARCHS)}"
        )
    V, T = args.vocab_size, args.seq_len
    print(f"presets at vocabulary {V:,}, context {T} (arch {args.arch}, untied embeddings)")
    header = f"{'preset':<11} {'params':>15} {'non-embedding':>15} {'layers':>6} {'width':>6} {'heads':>5} {'MLP':>7} {'FLOPs/token':>15}"
    print(header)
    print("-" * len(header))
    for name, p in PRESETS.items():
        if args.arch == "olmo":
            total, non_emb = p.params(V), p.non_embedding_params()
        else:
            total, non_emb = count_params(
                build_model(ModelConfig(preset=name, arch=args.arch), V, T, meta=True)
            )
        print(
            f"{name:<11} {total:>15,} {non_emb:>15,} {p.layers:>6} {p.width:>6} {p.heads:>5} {p.mlp_dim:>7} "
            f"{p.flops_per_token(V, T):>15,}"
        )


def cmd_train(args) -> None:
    from smalllm.config import load_config
    from smalllm.run_record import RunDir
    from smalllm.train.plan import make_plan

    path, overrides = _split_config_args(args.args)
    cfg = load_config(path, overrides)
    run = RunDir(cfg.run_dir)
    if args.resume and run.has_config():
        # A resumed run keeps its own config; overrides (e.g. a larger train.max_tokens) still apply.
        cfg = load_config(run.config_file, overrides)
    if args.dry_run:
        # The run directory is refused exactly as the real run would refuse it (reads only).
        run.check_start(resume=args.resume, overwrite=args.overwrite)
        plan = make_plan(cfg, strict=False)
        print(plan.describe())
        return
    from smalllm.train.trainer import train

    summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per process
        print(
            f"run {summary['status']}: {summary['steps']} steps, {summary['tokens']:,} tokens -> {cfg.run_dir}"
        )


def cmd_tasks(args) -> None:
    from smalllm.tasks.display import show_task, tasks_table

    if args.tasks_command == "list":
        print(tasks_table())
        return
    params = {}
    import yaml

    for item in args.params:
        if "=" not in item:
            raise SmalllmError(f"task parameter '{item}': expected name=value")
        key, value = item.split("=", 1)
        params[key] = yaml.safe_load(value)
    print(show_task(args.name, n=args.n, params=params, seed=args.seed))


def cmd_data(args) -> None:
    cfg = _load(args)
    if args.data_command == "build":
        from smalllm.data.shards import build_corpus, corpus_dir, open_corpus

        out = Path(args.out) if args.out else corpus_dir(cfg.data)
        build_corpus(cfg.data, out, num_proc=args.num_proc, field="--out" if args.out else None)
        corpus = open_corpus(out)
        print(
            f"built {out}: {corpus.num_tokens:,} training tokens in {len(corpus.index['shards'])} shard(s), "
            f"{corpus.index['holdout_tokens']:,} held-out tokens, vocabulary {corpus.index['vocab_size']}"
        )
    elif args.data_command == "tokenizer":
        from smalllm.data.shards import export_tokenizer

        tokenizer = export_tokenizer(cfg.data, Path(args.out), field="--out")
        print(f"saved a {cfg.data.tokenizer.kind} tokenizer of {len(tokenizer)} tokens to {args.out}")
    else:
        from smalllm.data.inspect import inspect_stream

        if args.rows < 0 or (args.steps is not None and args.steps < 0):
            raise SmalllmError("--rows and --steps must be >= 0")
        print(inspect_stream(cfg, rows=args.rows, steps=args.steps))


def cmd_eval(args) -> None:
    from smalllm.eval.checkpoint_eval import evaluate_checkpoint

    evaluate_checkpoint(args.path, run_dir=args.run, tasks=args.tasks, out=args.out)


def cmd_report(args) -> None:
    from smalllm.run_record import RunDir

    path = Path(args.path)
    run = RunDir(path)
    if (path / "sweep.json").is_file() or (path / "cells").is_dir():
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


def cmd_demo(args) -> None:
    from smalllm.demo import run_demo

    run_demo()


COMMANDS = {
    "models": cmd_models,
    "train": cmd_train,
    "tasks": cmd_tasks,
    "data": cmd_data,
    "eval": cmd_eval,
    "report": cmd_report,
    "sweep": cmd_sweep,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except SmalllmError as exc:
        if args.debug:
            raise
        print(f"smalllm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("smalllm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
