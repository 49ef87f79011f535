"""Benchmarks behind ``make bench``: this machine's matmul peak, smalllm vs a hand-written nanoGPT-style
reference at its own shape, trainer throughput vs a plain PyTorch loop, stream throughput, and per-task
generation throughput. Prints tables; ``--json PATH`` also writes the numbers.

Matmul peak: the best of a few n x n x n matmuls (2·n³ FLOPs each) in fp32 and bf16 at the bench's
thread count. MFU = training FLOPs per token x tokens/s / the measured fp32 peak (every run here is
fp32), with FLOPs per token as ``Preset.flops_per_token`` counts them: 6 x the matmul parameters
(LM head included) + 12 x layers x width x context for the attention scores.

smalllm vs reference: ``scripts/ref_gpt.py`` (pre-LayerNorm GPT-2 block, GELU MLP 4x, learned
positions, tied head, SDPA, AdamW, clipping) against smalllm's trainer running transformers' GPT-2
at the same shape (4 layers x 128, 4 heads, MLP 512, tied, learned positions), on the same
character-level rows of smalllm's built-in corpus, batch 12 x 64, lr 1e-3 on smalllm's schedule, same
threads. Repeats of both alternate; the ratio is the median over the pairs (min-max printed), and
both losses over the last steps of the same number of steps are compared against a stated tolerance.

Trainer vs plain loop: both train the same transformers model from the same initial weights with
the same AdamW, gradient clipping, batch and precision. The plain loop gets its batches
pre-materialised as tensors and does nothing else; the trainer pays for everything its public
``Trainer.run_step`` does (stream batch assembly, per-task loss bookkeeping, the metrics logger with
its throughput window). Measurements
alternate between the two; throughput is the best repeat of each, and the ratio is the median of
the back-to-back pairs, so background load hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/ref_gpt.py, run as a script or imported
from ref_gpt import RefGPT, make_optimizer, train_steps  # noqa: E402

from smalllm.config import RunConfig, load_config
from smalllm.data.shards import default_cache_dir, ensure_corpus
from smalllm.data.stream import TaskStream
from smalllm.model.build import build_model
from smalllm.tasks import TaskVocab, build_task, registered_tasks
from smalllm.train.callbacks.metrics_logger import MetricsLogger
from smalllm.train.plan import default_peak_flops, measure_matmul_peak, record_cpu_peak
from smalllm.train.schedule import lr_factor
from smalllm.train.trainer import Trainer, build_optimizer

BENCH_TASKS = (
    "data.tasks=[{name: t_cmp, frequency: 2.4e-3, unit: per_token},"
    " {name: t_add, frequency: 9.8e-4, unit: per_token},"
    " {name: lego, frequency: 0.01, unit: example_fraction, placement: document}]"
)


def timed_run(seq_len: int, batch: int, steps: int, run_dir: str) -> list[str]:
    """Overrides every benchmarked run shares: ``steps`` steps of ``batch`` x ``seq_len`` tokens at
    the bench's thread count, no evaluation, no TensorBoard, no progress bar."""
    return [
        f"data.seq_len={seq_len}",
        f"train.global_batch_size={batch}",
        f"train.micro_batch_size={batch}",
        f"train.max_tokens={steps * batch * seq_len}",
        f"train.num_threads={torch.get_num_threads()}",
        "train.log_every=10",
        "eval.enabled=false",
        "logging.tensorboard=false",
        "logging.progress=false",
        f"run_dir={run_dir}",
    ]


def bench_config(preset: str, seq_len: int, batch: int, run_dir: str, steps: int) -> RunConfig:
    return load_config(
        None, [f"model.preset={preset}", BENCH_TASKS, *timed_run(seq_len, batch, steps, run_dir)]
    )


def time_trainer(trainer: Trainer, steps: int) -> float:
    """Seconds for ``steps`` full trainer steps (step + per-step callbacks), as ``fit`` runs them."""
    start = time.perf_counter()
    for _ in range(steps):
        trainer.run_step()
    return time.perf_counter() - start


def time_plain(model, optimizer, batches: list[torch.Tensor], clip: float) -> float:
    """Seconds for one minimal training step per batch."""
    start = time.perf_counter()
    for ids in batches:
        logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


# nanoGPT's CPU recipe for character-level Shakespeare: its model shape and batch.
NANOGPT = {"layers": 4, "width": 128, "heads": 4, "mlp": 512, "block": 64, "batch": 12, "lr": 1e-3}


def nanogpt_model_overrides() -> list[str]:
    """smalllm's model at the nanoGPT shape: transformers' GPT-2, tied embeddings, learned positions."""
    n = NANOGPT
    return [
        "model.preset=null",
        "model.arch=gpt2",
        f"model.num_layers={n['layers']}",
        f"model.hidden_size={n['width']}",
        f"model.num_heads={n['heads']}",
        f"model.intermediate_size={n['mlp']}",
        "model.tie_embeddings=true",
    ]


def nanogpt_config(run_dir: str, steps: int) -> RunConfig:
    """A run of ``steps`` steps at the nanoGPT shape on character-level rows of the built-in corpus."""
    n = NANOGPT
    return load_config(
        None,
        [
            *nanogpt_model_overrides(),
            "data.tokenizer.kind=char",
            "data.tasks=[]",
            f"train.lr={n['lr']}",
            *timed_run(n["block"], n["batch"], steps, run_dir),
        ],
    )


def bench_reference(steps: int, repeats: int, last: int, peak: float, tolerance: float) -> dict:
    """smalllm's trainer vs ``ref_gpt`` at the nanoGPT shape, in alternating repeats of ``steps`` steps."""
    n = NANOGPT
    block, batch = n["block"], n["batch"]
    total = 2 + steps * repeats  # one warm-up pair of 2 steps, then the timed repeats
    with tempfile.TemporaryDirectory() as tmp:
        cfg = nanogpt_config(str(Path(tmp) / "run"), total)
        trainer = Trainer(cfg, callbacks=[MetricsLogger()], log=lambda _m: None)
        trainer.open_run()
        try:
            t = cfg.train
            vocab = trainer.plan.vocab_size
            # The reference trains on the very rows the trainer's stream gives for each step.
            batches = [torch.from_numpy(trainer.stream.batch(k).input_ids) for k in range(total)]
            torch.manual_seed(t.seed)
            ref = RefGPT(vocab, block, n["layers"], n["width"], n["heads"], n["mlp"])
            opt = make_optimizer(ref, t.lr, t.weight_decay, (t.beta1, t.beta2))

            def lr_at(step: int) -> float:
                return t.lr * lr_factor(step, trainer.plan.steps, t)

            smalllm_losses: list = []
            ref_losses: list = []

            def run_smalllm(k: int) -> float:
                start = time.perf_counter()
                for _ in range(k):
                    smalllm_losses.append(trainer.run_step().loss)
                return time.perf_counter() - start

            def run_ref(first: int, k: int) -> float:
                return train_steps(
                    ref, opt, batches[first : first + k], t.grad_clip, lr_at, first, ref_losses
                )

            trainer.begin()
            run_smalllm(2)
            run_ref(0, 2)
            t_smalllm, t_ref = [], []
            for i in range(repeats):
                first = 2 + i * steps
                for which in (0, 1) if i % 2 == 0 else (1, 0):
                    if which == 0:
                        t_smalllm.append(run_smalllm(steps))
                    else:
                        t_ref.append(run_ref(first, steps))
        finally:
            trainer.run.release()
    tokens = steps * batch * block
    ratios = np.array(t_ref) / np.array(t_smalllm)  # smalllm tokens/s over the reference's, per pair
    loss_smalllm = float(torch.stack(smalllm_losses[-last:]).mean())
    loss_ref = float(torch.stack(ref_losses[-last:]).mean())
    flops = trainer.plan.flops_per_token  # the same shape for both: GPT-2 blocks, MLP 512, tied head
    tps_smalllm, tps_ref = tokens / min(t_smalllm), tokens / min(t_ref)
    return {
        "shape": dict(n),
        "vocab": vocab,
        "params_reference": sum(p.numel() for p in ref.parameters()),
        "steps": total,
        "smalllm_tok_s": tps_smalllm,
        "reference_tok_s": tps_ref,
        "smalllm_ms_per_step": 1000 * min(t_smalllm) / steps,
        "reference_ms_per_step": 1000 * min(t_ref) / steps,
        "ratio": float(np.median(ratios)),
        "ratio_min": float(ratios.min()),
        "ratio_max": float(ratios.max()),
        "last_steps": last,
        "loss_smalllm": loss_smalllm,
        "loss_reference": loss_ref,
        "loss_diff": loss_smalllm - loss_ref,
        "loss_tolerance": tolerance,
        "same_quality": abs(loss_smalllm - loss_ref) <= tolerance,
        "flops_per_token": flops,
        "mfu_smalllm": flops * tps_smalllm / peak,
        "mfu_reference": flops * tps_ref / peak,
    }


def bench_trainer(
    preset: str, seq_len: int, batch: int, steps: int | None, repeats: int, peak: float, repeat_s: float
) -> dict:
    """Trainer vs plain loop on ``preset``: ``repeats`` alternating pairs of ``steps`` steps each
    (None: as many as take about ``repeat_s`` seconds, measured after the warm-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        # Enough steps for the warm-up, the step-time probe and every repeat of the longest plan.
        budget = steps or max(2, int(repeat_s / 0.002))
        cfg = bench_config(preset, seq_len, batch, str(Path(tmp) / "run"), budget * (repeats + 1) + 8)
        trainer = Trainer(cfg, callbacks=[MetricsLogger()], log=lambda _m: None)
        # The metrics logger writes into the run directory: open it (and its lock) as fit() would.
        trainer.open_run()
        try:
            # The plain loop trains an identical copy on the same rows, with the same optimizer settings.
            torch.manual_seed(cfg.train.seed)
            plain = build_model(cfg.model, len(trainer.tokenizer), seq_len, trainer.tokenizer.pad_token_id)
            plain.load_state_dict(trainer.unwrapped_model.state_dict())
            opt = build_optimizer(plain, cfg.train, trainer.plan.device)
            trainer.begin()  # training mode and the callbacks' start, as Trainer.fit does before its loop
            probe = time_trainer(trainer, 3) / 3  # warm-up, and the step time that sizes a repeat
            if steps is None:
                steps = max(2, min(budget, round(repeat_s / probe)))
            batches = [torch.from_numpy(trainer.stream.batch(k).input_ids) for k in range(steps)]
            time_plain(plain, opt, batches[:2], cfg.train.grad_clip)
            t_trainer, t_plain = [], []
            for i in range(repeats):
                # Alternate which loop goes first, so a slow patch of the machine hits both alike.
                order = (0, 1) if i % 2 == 0 else (1, 0)
                for which in order:
                    if which == 0:
                        t_trainer.append(time_trainer(trainer, steps))
                    else:
                        t_plain.append(time_plain(plain, opt, batches, cfg.train.grad_clip))
        finally:
            trainer.run.release()
        tokens = steps * batch * seq_len
        tps_trainer, tps_plain = tokens / min(t_trainer), tokens / min(t_plain)
        # The ratio is the median over back-to-back pairs: robust to load that changes over minutes.
        ratios = np.array(t_plain) / np.array(t_trainer)
        q25, q75 = np.percentile(ratios, [25, 75])
        plan = trainer.plan
        return {
            "preset": preset,
            "params": plan.params,
            "vocab": plan.vocab_size,
            "seq_len": seq_len,
            "batch": batch,
            "steps_per_repeat": steps,
            "repeats": repeats,
            "trainer_tok_s": tps_trainer,
            "plain_tok_s": tps_plain,
            "ratio": float(np.median(ratios)),
            "ratio_q25": float(q25),
            "ratio_q75": float(q75),
            "overhead": 1 - float(np.median(ratios)),
            "mfu": plan.flops_per_token * tps_trainer / peak,
            "peak_flops": peak,
        }


def bench_stream(seq_len: int, batch: int, seconds: float = 3.0) -> dict:
    """Rows per second of the stream on one core (background pre-tokenized, tasks injected)."""
    torch.set_num_threads(1)
    cfg = load_config(None, [f"data.seq_len={seq_len}", BENCH_TASKS])
    corpus = ensure_corpus(cfg.data, log=lambda _m: None)
    stream = TaskStream(cfg.data, corpus, batch)
    stream.batch(0)
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        stream.batch(step)
        step += 1
    elapsed = time.perf_counter() - start
    table = stream.frequency_table(step * batch)
    return {
        "seq_len": seq_len,
        "batch": batch,
        "tokens_per_s": step * batch * seq_len / elapsed,
        "instances_per_batch": sum(r["realised"] for r in table if "/" not in r["label"]) / step,
    }


def bench_tasks(seconds: float = 0.3) -> list[dict]:
    from smalllm.data.tokenizer import byte_tokenizer

    vocab = TaskVocab(byte_tokenizer())
    rows = []
    for name in registered_tasks():
        task = build_task(name, {}, vocab)
        rng = np.random.default_rng(0)
        n, tokens, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for skill in range(len(task.skills)):
                tokens += task.generate(rng, skill).length
                n += 1
        elapsed = time.perf_counter() - start
        rows.append({"task": name, "instances_per_s": n / elapsed, "tokens_per_s": tokens / elapsed})
    return rows


def bench_startup(preset: str = "micro-w64", repeats: int = 3) -> dict:
    """Start-up of a ``smalllm train`` process: a one-step run of the default config (its three tasks)
    at ``preset`` with the corpus already cached (a first run builds it). ``startup_s``: process start
    to the first step (``summary.json``'s ``startup_seconds``); ``imports_s``: a process that only
    imports what such a run imports (torch, transformers with the model's module, accelerate,
    smalllm), so ``startup_s - imports_s`` is smalllm's own setup. Medians of ``repeats``."""
    # Timed by the same clock as startup_seconds (process age), so teardown is left out of both.
    imports = (
        "import smalllm.cli, smalllm.train.trainer, transformers.models.olmo.modeling_olmo\n"
        "from smalllm.train.environment import process_age_seconds\nprint(process_age_seconds())"
    )
    with tempfile.TemporaryDirectory() as tmp:
        run = [
            sys.executable,
            "-m",
            "smalllm.cli",
            "train",
            f"model.preset={preset}",
            "train.max_tokens=1",
            "eval.enabled=false",
            "logging.progress=false",
            "train.checkpoint_every=0",
        ]
        subprocess.run([*run, f"run_dir={tmp}/warm"], check=True, capture_output=True)
        whole, startup, imported = [], [], []
        for i in range(repeats):
            start = time.perf_counter()
            subprocess.run([*run, f"run_dir={tmp}/run{i}"], check=True, capture_output=True)
            whole.append(time.perf_counter() - start)
            summary = json.loads((Path(tmp) / f"run{i}" / "summary.json").read_text())
            startup.append(summary.get("startup_seconds") or float("nan"))
            out = subprocess.run([sys.executable, "-c", imports], check=True, capture_output=True, text=True)
            imported.append(float(out.stdout.split()[-1]))
    return {
        "preset": preset,
        "repeats": repeats,
        "one_step_run_s": float(np.median(whole)),
        "startup_s": float(np.median(startup)),
        "imports_s": float(np.median(imported)),
    }


def bench_logging(steps: int = 200, repeats: int = 9) -> dict:
    """Milliseconds a step pays for logging every step (``train.log_every=1``), with TensorBoard on
    (``ms_per_step``, the default) and off (``ms_per_step_jsonl``): the metrics logger's step hook at
    log_every 1 against a window that never closes, on a real step's record, in alternating repeats
    (median of the pairs' differences)."""
    jsonl_only = _logging_cost(steps, repeats, tensorboard=False)
    return {**_logging_cost(steps, repeats, tensorboard=True), "ms_per_step_jsonl": jsonl_only["ms_per_step"]}


def _logging_cost(steps: int, repeats: int, tensorboard: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            None,
            [
                "model.preset=micro-w32",
                "eval.enabled=false",
                f"logging.tensorboard={str(tensorboard).lower()}",
                "logging.progress=false",
                f"run_dir={Path(tmp) / 'run'}",
            ],
        )
        trainer = Trainer(cfg, callbacks=[MetricsLogger()], log=lambda _m: None)
        trainer.open_run()
        try:
            trainer.begin()
            record = trainer.run_step()
            logger = trainer.callbacks[0]
            diffs = []
            for i in range(repeats):
                times = {}
                for every in (1, 10**9) if i % 2 == 0 else (10**9, 1):
                    cfg.train.log_every = every
                    start = time.perf_counter()
                    for _ in range(steps):
                        logger.on_step_end(record, trainer.control)
                    # The events still queued and the writer thread's work on them count to this phase.
                    trainer._flush_trackers()
                    times[every] = (time.perf_counter() - start) / steps
                diffs.append(times[1] - times[10**9])
        finally:
            trainer.accelerator.end_training()
            trainer.run.release()
    return {"ms_per_step": 1e3 * float(np.median(diffs)), "repeats": repeats, "steps": steps}


SECTIONS = ("peak", "reference", "trainer", "startup", "logging", "stream", "tasks")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", nargs="*", choices=SECTIONS, default=list(SECTIONS), help="what to run")
    ap.add_argument(
        "--presets", nargs="*", default=["micro-w32", "micro-w64", "micro-w128", "micro-w176", "4m", "20m"]
    )
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=None, help="steps per repeat (default: ~--repeat-seconds)")
    ap.add_argument(
        "--repeat-seconds", type=float, default=0.4, help="length of one repeat, trainer vs plain"
    )
    ap.add_argument("--repeats", type=int, default=25, help="alternating pairs, trainer vs plain")
    ap.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n x n peak matmuls")
    ap.add_argument("--ref-steps", type=int, default=25, help="steps per repeat, smalllm vs reference")
    ap.add_argument("--ref-repeats", type=int, default=9, help="alternating repeats, smalllm vs reference")
    ap.add_argument("--ref-last", type=int, default=50, help="the loss check averages the last K steps")
    ap.add_argument("--ref-tolerance", type=float, default=0.05, help="largest |loss difference| (nats)")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args(argv)
    runs_cache = default_cache_dir()  # where training runs look up the measured peak
    os.environ.setdefault("SMALLLM_CACHE", str(Path(".smalllm_cache").absolute()))
    threads = torch.get_num_threads()
    results: dict = {"threads": threads, "torch": torch.__version__, "trainer": [], "stream": [], "tasks": []}

    # MFU needs a peak: measured here unless the section is skipped (then the old per-thread guess).
    peak = default_peak_flops("cpu")
    if "peak" in args.sections:
        n = args.matmul_size
        peak = measure_matmul_peak(torch.float32, n)
        peak_bf16 = measure_matmul_peak(torch.bfloat16, n)
        results["peak"] = {"n": n, "fp32": peak, "bf16": peak_bf16}
        kept = record_cpu_peak(
            peak, peak_bf16, runs_cache
        )  # training runs on this machine compute MFU against it
        print(f"# matmul peak (CPU, {threads} threads, best of 5 {n}x{n}x{n} torch.mm, 2n^3 FLOPs each)")
        print(f"fp32 {peak / 1e9:,.1f} GFLOP/s    bf16 {peak_bf16 / 1e9:,.1f} GFLOP/s")
        if kept is not None:
            print(f"(kept in {kept}: training runs here report MFU against it)")
        print(
            "MFU below = FLOPs/token x tokens/s / fp32 peak; FLOPs/token = 6 x matmul params + 12 x L x d x T\n"
        )
    else:
        print(f"(peak not measured: MFU against the guessed {peak / 1e9:,.0f} GFLOP/s)\n")

    if "reference" in args.sections:
        r = bench_reference(args.ref_steps, args.ref_repeats, args.ref_last, peak, args.ref_tolerance)
        results["reference"] = r
        n = r["shape"]
        print(
            f"# smalllm vs reference at the nanoGPT shape ({n['layers']} layers x {n['width']}, {n['heads']} heads, "
            f"MLP {n['mlp']}, tied, vocab {r['vocab']} chars; batch {n['batch']} x {n['block']}, lr {n['lr']:g}, "
            f"{threads} threads)"
        )
        print(f"{'':<10} {'tok/s':>9} {'ms/step':>8} {'MFU':>6} {'loss':>7}")
        for name, key in (("smalllm", "smalllm"), ("reference", "reference")):
            print(
                f"{name:<10} {r[key + '_tok_s']:>9,.0f} {r[key + '_ms_per_step']:>8.1f} "
                f"{r['mfu_' + key]:>6.1%} {r['loss_' + key]:>7.3f}"
            )
        print(
            f"ratio smalllm/reference tokens/s: {r['ratio']:.3f} (median of {args.ref_repeats} interleaved pairs, "
            f"min-max {r['ratio_min']:.3f}-{r['ratio_max']:.3f})"
        )
        verdict = "same within tolerance" if r["same_quality"] else "DIFFERENT"
        print(
            f"quality: mean train loss over the last {r['last_steps']} of {r['steps']} equal steps, "
            f"difference {r['loss_diff']:+.3f} (tolerance {r['loss_tolerance']:.3f}): {verdict}\n"
        )

    if "trainer" in args.sections:
        print(f"# trainer vs plain PyTorch loop (CPU, {threads} threads, fp32, vocabulary 512 BPE)")
        print(
            f"{'preset':<11} {'params':>11} {'T x B':>9} {'smalllm tok/s':>14} {'plain tok/s':>12} "
            f"{'ratio':>6} {'IQR':>12} {'overhead':>9} {'MFU':>6}"
        )
        for preset in args.presets:
            r = bench_trainer(
                preset, args.seq_len, args.batch, args.steps, args.repeats, peak, args.repeat_seconds
            )
            results["trainer"].append(r)
            print(
                f"{preset:<11} {r['params']:>11,} {args.seq_len:>4}x{args.batch:<4} {r['trainer_tok_s']:>14,.0f} "
                f"{r['plain_tok_s']:>12,.0f} {r['ratio']:>6.3f} {r['ratio_q25']:>5.3f}-{r['ratio_q75']:<6.3f} "
                f"{r['overhead']:>8.1%} {r['mfu']:>6.1%}"
            )
        print(
            f"(ratio: median over {args.repeats} alternating pairs of ~{args.repeat_seconds:g} s each, IQR over "
            f"the pairs; goal >= 0.97; MFU against {peak:.3g} FLOP/s)"
        )

    one_line_sections = {
        "startup": (
            bench_startup,
            lambda r: (
                f"# start-up of `smalllm train` (default config at {r['preset']}, corpus cached; medians of "
                f"{r['repeats']}): {r['startup_s']:.1f} s from process start to the first step (goal <= 5 s), "
                f"of which imports (torch, transformers, accelerate, smalllm) {r['imports_s']:.1f} s and "
                f"smalllm's setup {r['startup_s'] - r['imports_s']:.1f} s; the one-step process "
                f"{r['one_step_run_s']:.1f} s in all"
            ),
        ),
        "logging": (
            bench_logging,
            lambda r: (
                f"# logging every step (JSONL record + TensorBoard scalars): {r['ms_per_step']:.2f} ms "
                f"per step, {r['ms_per_step_jsonl']:.2f} ms without TensorBoard (medians of "
                f"{r['repeats']} alternating repeats; goal <= 0.5 ms)"
            ),
        ),
    }
    for name, (measure, line) in one_line_sections.items():
        if name in args.sections:
            results[name] = measure()
            print("\n" + line(results[name]))

    if "stream" in args.sections:
        print("\n# stream throughput (one core, pre-tokenized background, 3 tasks injected)")
        print(f"{'T x B':>11} {'tokens/s':>14} {'instances/batch':>16} {'x trainer@4m':>13}")
        trainer_4m = next((r["trainer_tok_s"] for r in results["trainer"] if r["preset"] == "4m"), None)
        for seq_len, batch in ((1024, 64), (4096, 16), (128, 16)):
            r = bench_stream(seq_len, batch)
            results["stream"].append(r)
            vs = f"{r['tokens_per_s'] / trainer_4m:>12.0f}x" if trainer_4m else "-"
            print(
                f"{seq_len:>5}x{batch:<5} {r['tokens_per_s']:>14,.0f} {r['instances_per_batch']:>16.2f} {vs:>13}"
            )
        torch.set_num_threads(threads)

    if "tasks" in args.sections:
        print("\n# task generation (one core, byte tokenizer, default parameters)")
        print(f"{'task':<16} {'instances/s':>12} {'tokens/s':>12}")
        for r in bench_tasks():
            results["tasks"].append(r)
            print(f"{r['task']:<16} {r['instances_per_s']:>12,.0f} {r['tokens_per_s']:>12,.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
