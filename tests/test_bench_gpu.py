"""``make bench-gpu``'s CPU dry path (scripts/bench_gpu.py) and the bench's nanoGPT-style reference."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench_gpu = load_script("bench_gpu")
ref_gpt = load_script("ref_gpt")


def test_dry_run_prints_every_measurement_as_an_estimate(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench_gpu.main(["--dry-run", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ESTIMATES, not measurements" in text and "H100-80GB" in text and "assumed MFU of 40%" in text
    rows = json.loads(out.read_text())
    # 3 presets x (compile off/on) x (activation checkpointing off/on), at the paper's context.
    assert [(r["preset"], r["compile"], r["act_ckpt"]) for r in rows][:4] == [
        ("20m", False, False),
        ("20m", False, True),
        ("20m", True, False),
        ("20m", True, True),
    ]
    assert len(rows) == 12 and {r["preset"] for r in rows} == {"20m", "300m", "1b"}
    for r in rows:
        # The expected step time is the assumed MFU's: tokens per step over the estimated tokens/s.
        assert r["step_s"] == pytest.approx(r["micro_batch"] * 2048 / r["tokens_per_s"])
        assert r["mfu"] == pytest.approx(0.3 if r["act_ckpt"] else 0.4)
        assert r["estimated_memory"] < 0.9 * 81559 * 1024**2
        assert "peak_memory" not in r  # nothing measured
    by = {(r["preset"], r["act_ckpt"]): r for r in rows}
    assert by["1b", True]["estimated_memory"] < by["1b", False]["estimated_memory"]


def test_micro_batch_follows_the_named_gpu(capsys):
    assert bench_gpu.main(["--dry-run", "--gpu", "A100-40GB", "--presets", "1b"]) == 0
    assert "A100-40GB" in capsys.readouterr().out
    assert bench_gpu.pick_micro("1b", "A100-40GB") < bench_gpu.pick_micro("1b", "H200-141GB")


@pytest.mark.skipif(torch.cuda.is_available(), reason="measures for real on a GPU")
def test_without_a_gpu_it_points_at_the_dry_run(capsys):
    assert bench_gpu.main(["--presets", "20m"]) == 2
    assert "--dry-run" in capsys.readouterr().err


def test_reference_is_transformers_gpt2_at_the_same_shape():
    ref = ref_gpt.RefGPT(vocab=100, block=64, layers=2, width=64, heads=4, mlp=256)
    hf = GPT2LMHeadModel(
        GPT2Config(vocab_size=100, n_positions=64, n_embd=64, n_layer=2, n_head=4, n_inner=256)
    )
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in hf.parameters())
    assert ref.head.weight is ref.tok.weight


def test_reference_loop_learns():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the suite's runs do: tiny matmuls only lose to thread hand-offs
    try:
        torch.manual_seed(0)
        batches, vocab = ref_gpt.char_batches(ref_gpt.TEXT * 4, block=32, batch=8, steps=30)
        model = ref_gpt.RefGPT(vocab, 32, layers=2, width=32, heads=2)
        losses: list = []
        ref_gpt.train_steps(model, ref_gpt.make_optimizer(model, 3e-3), batches, losses=losses)
    finally:
        torch.set_num_threads(threads)
    assert len(losses) == 30 and float(losses[-1]) < float(losses[0]) - 0.5
