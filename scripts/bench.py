"""Benchmarks behind ``make bench``: trainer throughput vs a plain PyTorch loop, stream throughput,
and per-task generation throughput. Prints tables; ``--json PATH`` also writes the numbers.

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
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from smalllm.config import load_config
from smalllm.data.shards import ensure_corpus
from smalllm.data.stream import TaskStream
from smalllm.model.build import build_model
from smalllm.model.presets import PRESETS
from smalllm.tasks import TaskVocab, build_task, registered_tasks
from smalllm.train.callbacks.metrics_logger import MetricsLogger
from smalllm.train.trainer import Trainer, build_optimizer

BENCH_TASKS = (
    "data.tasks=[{name: t_cmp, frequency: 2.4e-3, unit: per_token},"
    " {name: t_add, frequency: 9.8e-4, unit: per_token},"
    " {name: lego, frequency: 0.01, unit: example_fraction, placement: document}]"
)


def bench_config(preset: str, seq_len: int, batch: int, run_dir: str, steps: int):
    return load_config(
        None,
        [
            f"model.preset={preset}",
            f"data.seq_len={seq_len}",
            BENCH_TASKS,
            f"train.global_batch_size={batch}",
            f"train.micro_batch_size={batch}",
            f"train.max_tokens={steps * batch * seq_len}",
            f"train.num_threads={torch.get_num_threads()}",
            "train.log_every=10",
            "eval.enabled=false",
            "logging.tensorboard=false",
            "logging.progress=false",
            f"run_dir={run_dir}",
        ],
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


def bench_trainer(preset: str, seq_len: int, batch: int, steps: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bench_config(preset, seq_len, batch, str(Path(tmp) / "run"), steps * (repeats + 1) + 2)
        trainer = Trainer(cfg, callbacks=[MetricsLogger()], log=lambda _m: None)
        # The metrics logger writes into the run directory: open it (and its lock) as fit() would.
        trainer.open_run()
        try:
            # The plain loop trains an identical copy on the same rows, with the same optimizer settings.
            torch.manual_seed(cfg.train.seed)
            plain = build_model(cfg.model, len(trainer.tokenizer), seq_len, trainer.tokenizer.pad_token_id)
            plain.load_state_dict(trainer.unwrapped_model.state_dict())
            opt = build_optimizer(plain, cfg.train, trainer.plan.device)
            batches = [torch.from_numpy(trainer.stream.batch(k).input_ids) for k in range(steps)]
            trainer.begin()  # training mode and the callbacks' start, as Trainer.fit does before its loop
            time_trainer(trainer, 2)  # warm-up both
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
        ratio = float(np.median(np.array(t_plain) / np.array(t_trainer)))
        plan = trainer.plan
        return {
            "preset": preset,
            "params": plan.params,
            "vocab": plan.vocab_size,
            "seq_len": seq_len,
            "batch": batch,
            "trainer_tok_s": tps_trainer,
            "plain_tok_s": tps_plain,
            "ratio": ratio,
            "overhead": 1 - ratio,
            "mfu": plan.mfu(tps_trainer),
            "peak_flops": plan.peak_flops,
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--presets", nargs="*", default=["micro-w32", "micro-w64", "micro-w128", "micro-w176", "4m", "20m"]
    )
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    os.environ.setdefault("SMALLLM_CACHE", str(Path(".smalllm_cache").absolute()))
    threads = torch.get_num_threads()
    results: dict = {"threads": threads, "torch": torch.__version__, "trainer": [], "stream": [], "tasks": []}

    print(f"# trainer vs plain PyTorch loop (CPU, {threads} threads, fp32, vocabulary 512 BPE)")
    print(
        f"{'preset':<11} {'params':>11} {'T x B':>9} {'smalllm tok/s':>14} {'plain tok/s':>12} {'ratio':>6} {'overhead':>9} {'MFU':>6}"
    )
    for preset in args.presets:
        steps = args.steps if PRESETS[preset].non_embedding_params() < 5e6 else max(3, args.steps // 3)
        r = bench_trainer(preset, args.seq_len, args.batch, steps, args.repeats)
        results["trainer"].append(r)
        print(
            f"{preset:<11} {r['params']:>11,} {args.seq_len:>4}x{args.batch:<4} {r['trainer_tok_s']:>14,.0f} "
            f"{r['plain_tok_s']:>12,.0f} {r['ratio']:>6.3f} {r['overhead']:>8.1%} {r['mfu']:>6.1%}"
        )
    print(
        f"(MFU against {results['trainer'][0]['peak_flops']:.3g} FLOP/s; set train.peak_flops for your CPU/GPU)"
    )

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
