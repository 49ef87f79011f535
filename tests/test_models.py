"""The model ladder: Huang et al. Table 1 counts, micro rungs, other architectures, CLI tables."""

from __future__ import annotations

import re

import pytest
from transformers import AutoModelForCausalLM

from smalllm.cli import main
from smalllm.config import ModelConfig
from smalllm.model.build import build_model, count_params
from smalllm.model.presets import PRESETS

TABLE_1 = {"4m": 6_963_200, "20m": 28_753_920, "300m": 371_458_048, "1b": 1_279_787_008, "4b": 4_707_057_664}


@pytest.mark.parametrize("preset,expected", TABLE_1.items())
def test_table_1_parameter_counts_at_vocab_50304(preset, expected):
    # Built on the meta device: no memory is allocated, even for 4b.
    model = build_model(ModelConfig(preset=preset), vocab_size=50304, max_seq_len=2048, meta=True)
    total, _ = count_params(model)
    assert total == expected == PRESETS[preset].params(50304)


def test_micro_rungs_cover_0_1m_to_2m_non_embedding_and_the_ladder_is_monotone():
    micro = [p for name, p in PRESETS.items() if name.startswith("micro-")]
    non_emb = [p.non_embedding_params() for p in micro]
    assert min(non_emb) < 0.1e6 < 2e6 > max(non_emb) > 1.5e6
    micro_sizes = [p.params(512) for p in micro]
    big = [p.params(50304) for n, p in PRESETS.items() if not n.startswith("micro-")]
    assert big == sorted(big) and micro_sizes == sorted(micro_sizes)


@pytest.mark.parametrize("arch", ["olmo", "llama", "gpt2", "gpt_neox"])
def test_every_architecture_builds_runs_and_round_trips(arch, tmp_path):
    import torch

    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="micro-w32", arch=arch), vocab_size=128, max_seq_len=32)
    ids = torch.randint(0, 128, (2, 16))
    logits = model(input_ids=ids).logits
    assert logits.shape == (2, 16, 128)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # plain transformers opens it
    assert torch.allclose(reloaded(input_ids=ids).logits, logits, atol=1e-5)


def test_models_command_prints_the_table(capsys):
    assert main(["models", "--vocab-size", "50304"]) == 0
    out = capsys.readouterr().out
    for preset, count in TABLE_1.items():
        assert f"{count:,}" in out and preset in out


def test_dry_run_of_1b_prints_a_plan(capsys):
    # Planned for a GPU (an assumed 80 GB one where there is none): on the CPU, whether 1b fits
    # depends on this machine's free memory, and a dry run now refuses a plan that does not fit.
    assert main(["train", "model.preset=1b", "train.device=cuda", "train.precision=fp32", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "FLOPs/token" in out and "steps" in out and "optimizer (AdamW)" in out
    # 1b is 16 layers of width 2048 with a SwiGLU of 8192; the defaults give a 512-token BPE
    # vocabulary, a 64-token context and 2M tokens in batches of 32 sequences.
    blocks = 16 * (4 * 2048**2 + 3 * 2048 * 8192)
    assert f"{blocks + 2 * 512 * 2048:,} parameters ({blocks:,} non-embedding)" in out
    assert f"FLOPs/token  {6 * (blocks + 512 * 2048) + 12 * 16 * 2048 * 64:,}" in out
    assert "steps        977  (2,000,896 tokens)" in out  # ceil(2,000,000 / 2,048) steps
    assert re.search(r"parameters +4\.01 GiB", out) and re.search(r"optimizer \(AdamW\) +8\.02 GiB", out)


def test_dry_run_that_does_not_fit_prints_the_plan_and_refuses(capsys):
    argv = ["train", "model.preset=4b", "data.seq_len=2048", "train.device=cpu", "--dry-run"]
    assert main(argv) == 3  # the exit status of a plan that does not fit
    captured = capsys.readouterr()
    assert "DOES NOT FIT" in captured.out and "optimizer (AdamW)" in captured.out
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("smalllm: error: model.preset: 4b needs ~")
