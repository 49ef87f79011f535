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


# ---------------------------------------------------------------------------------------------- shapes

NANOGPT = [
    "model.preset=null",
    "model.arch=gpt2",
    "model.num_layers=4",
    "model.hidden_size=128",
    "model.num_heads=4",
    "model.intermediate_size=512",
    "model.tie_embeddings=true",
    "data.seq_len=64",
]


def test_a_nanogpt_shape_without_a_preset_is_built_as_given():
    from smalllm.config import load_config
    from smalllm.model.build import hf_config

    cfg = load_config(None, NANOGPT)
    hf = hf_config(cfg.model, vocab_size=65, max_seq_len=cfg.data.seq_len)
    assert (hf.n_layer, hf.n_embd, hf.n_head, hf.n_inner, hf.n_positions) == (4, 128, 4, 512, 64)
    assert hf.tie_word_embeddings
    model = build_model(cfg.model, 65, cfg.data.seq_len)
    assert model.lm_head.weight is model.transformer.wte.weight
    total, non_emb = count_params(model)
    shape = cfg.model.shape(cfg.data.seq_len)
    assert shape.name == "L4-d128-h4-i512" and shape.mlp_dim == 512
    # The analytic count leaves out biases and LayerNorm weights (4 layers x (9d + 4d) + 2d here).
    extras = 4 * (128 * 3 + 128 + 512 + 128 + 4 * 128) + 2 * 128
    assert non_emb == shape.non_embedding_params() + extras == 12 * 128 * 128 * 4 + extras
    assert total == shape.params(65) + extras == non_emb + (65 + 64) * 128


def test_shape_keys_override_a_preset_and_gqa_counts_match_the_built_model():
    cfg = ModelConfig(preset="micro-w64", num_layers=2, num_kv_heads=2)
    cfg.validate()
    shape = cfg.shape(32)
    assert (shape.layers, shape.width, shape.heads, shape.kv_heads, shape.intermediate) == (2, 64, 4, 2, 256)
    assert shape.name == "L2-d64-h4-i256-kv2"
    model = build_model(cfg, 100, 32)
    assert model.config.num_key_value_heads == 2
    total, non_emb = count_params(model)
    assert (total, non_emb) == (shape.params(100), shape.non_embedding_params())
    # A preset alone keeps its name, and the plain-MLP architectures keep 1.5 x its SwiGLU width.
    assert ModelConfig(preset="micro-w64").shape(32).name == "micro-w64"
    assert ModelConfig(preset="micro-w64", arch="gpt_neox").shape(32).intermediate == 384
    assert ModelConfig(preset="micro-w64", hidden_size=96).shape(32).intermediate == 384  # 4 x width


@pytest.mark.parametrize(
    "overrides,expect",
    [
        (
            ["model.preset=null", "model.num_layers=2"],
            "model.hidden_size: required when model.preset is null",
        ),
        (["model.num_heads=3"], "model.num_heads: 3 heads do not divide hidden size 64"),
        (
            ["model.hidden_size=72", "model.num_heads=8"],
            "model.num_heads: head dimension 72 / 8 = 9 must be even",
        ),
        (
            ["model.arch=gpt2", "model.num_kv_heads=2"],
            "model.num_kv_heads: grouped-query attention needs arch",
        ),
        (["model.num_kv_heads=3"], "model.num_kv_heads: 3 key/value heads do not divide 4 heads"),
        (["model.num_layers=0"], "model.num_layers: must be >= 1"),
        (["model.intermediate_size=-5"], "model.intermediate_size: must be >= 1"),
        (["model.hidden_size=1e9"], "model.hidden_size"),
        (
            ["data.seq_len=64", "model.max_position_embeddings=32"],
            "model.max_position_embeddings: 32 is shorter",
        ),
    ],
)
def test_bad_shapes_are_one_line_errors_naming_the_field(overrides, expect):
    from smalllm.config import load_config
    from smalllm.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(expect)):
        load_config(None, overrides)


def test_models_command_shows_the_configured_shape(capsys):
    assert main(["models", "--vocab-size", "65", *NANOGPT]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("L4-d128-h4-i512"))
    assert row.split()[1:3] == ["809,856", "793,344"]  # counted on the built model, biases included


def test_a_custom_shape_trains(tmp_path):
    from conftest import quiet, tiny_config

    from smalllm.train.trainer import Trainer

    cfg = tiny_config(tmp_path / "run", *[o for o in NANOGPT if not o.startswith("data.seq_len")])
    summary = Trainer(cfg, log=quiet).fit()
    assert summary["status"] == "completed"
    assert summary["non_embedding_params"] == count_params(build_model(cfg.model, 300, 32))[1]


@pytest.mark.parametrize("arch", ["olmo", "llama", "gpt2", "gpt_neox"])
def test_every_architecture_takes_the_shape_keys(arch):
    kv = 2 if arch in ("olmo", "llama") else None
    cfg = ModelConfig(
        preset=None,
        arch=arch,
        num_layers=3,
        hidden_size=48,
        num_heads=6,
        num_kv_heads=kv,
        intermediate_size=80,
    )
    cfg.validate()
    model = build_model(cfg, vocab_size=50, max_seq_len=16)
    hf = model.config
    assert (hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads) == (3, 48, 6)
    assert getattr(hf, "n_inner", None) == 80 or hf.intermediate_size == 80
    assert getattr(hf, "num_key_value_heads", 6) == (kv or 6)
    total, non_emb = count_params(model)
    shape = cfg.shape(16)
    if arch in ("olmo", "llama"):  # no biases; llama's RMSNorm weights are the only extra
        norms = 0 if arch == "olmo" else (2 * 3 + 1) * 48
        assert non_emb == shape.non_embedding_params() + norms
