"""The lean training forward (smalllm.model.forward): the same logits and gradients as the model's
own forward in every architecture smalllm builds, and the trainer uses it only where it agrees."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import quiet, tiny_config

from smalllm.config import ModelConfig
from smalllm.model import forward as forward_mod
from smalllm.model.build import build_model
from smalllm.model.config import ARCHS
from smalllm.model.forward import LAYOUTS, agrees, training_forward
from smalllm.train import trainer as trainer_mod
from smalllm.train.callbacks.metrics_logger import MetricsLogger
from smalllm.train.trainer import Trainer


def small_model(arch: str, **shape) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        preset=None, arch=arch, num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128, **shape
    )
    return build_model(cfg, vocab_size=100, max_seq_len=32)


def gradients(model: torch.nn.Module, logits: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(logits.square().mean(), list(model.parameters())))


def test_every_architecture_smalllm_builds_has_a_layout():
    assert set(LAYOUTS) == set(ARCHS)


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_and_gradients_equal_the_models_own(arch: str, checkpointing: bool):
    model = small_model(arch)
    if checkpointing:
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    model.train()
    lean = training_forward(model)
    assert lean is not None
    ids = torch.randint(0, 100, (3, 32), generator=torch.Generator().manual_seed(1))
    own = model(input_ids=ids).logits
    layer_calls = count_layer_calls(model)
    mine = lean(ids)
    assert mine.shape == (3, 32, model.config.vocab_size)
    assert torch.equal(mine, own)
    forward_calls = sum(layer_calls)
    mine_grads = gradients(model, mine)
    # Checkpointed: the backward ran every layer again (the lean pass kept the recomputation).
    assert sum(layer_calls) - forward_calls == (len(layer_calls) if checkpointing else 0)
    for a, b in zip(mine_grads, gradients(model, own), strict=True):
        assert torch.equal(a, b)
    assert agrees(model, lean, ids[:1]) and model.training  # the check restores the mode


def count_layer_calls(model: torch.nn.Module) -> list[int]:
    """Per decoder layer, how many times its body ran from now on (a list updated in place): counted
    at the layer's MLP, since transformers checkpoints the layer's ``forward`` and the hooks of the
    layer itself stay outside the recomputation."""
    layers = getattr(
        getattr(model, LAYOUTS[model.config.model_type].trunk), LAYOUTS[model.config.model_type].layers
    )
    calls = [0] * len(layers)
    for i, layer in enumerate(layers):
        layer.mlp.register_forward_pre_hook(lambda _m, _a, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def test_checkpointing_in_the_models_layer_loop_gets_no_lean_pass(monkeypatch: pytest.MonkeyPatch):
    """Before transformers 4.52 the model's forward checkpointed around each layer call: skipping
    that loop would silently train without checkpointing."""
    model = small_model("olmo")
    model.model.gradient_checkpointing = True
    monkeypatch.setattr(forward_mod, "_checkpoints_itself", lambda _layers: False)
    assert training_forward(model) is None


def test_a_tied_head_and_an_untied_one_both_come_from_the_model():
    for tied in (True, False):
        model = small_model("olmo", tie_embeddings=tied)
        ids = torch.arange(10).unsqueeze(0)
        assert torch.equal(training_forward(model)(ids), model(input_ids=ids).logits)


def test_eager_attention_and_unknown_architectures_get_no_lean_pass():
    model = small_model("olmo")
    model.config._attn_implementation = "eager"  # needs the causal mask the lean pass does not build
    assert training_forward(model) is None
    assert training_forward(torch.nn.Linear(2, 2)) is None
    moved = small_model("olmo")
    moved.model.norm = None  # a release that keeps a part elsewhere: the model's own forward, no crash
    assert training_forward(moved) is None


def test_agrees_notices_a_different_forward():
    model = small_model("gpt2")
    lean = training_forward(model)
    ids = torch.arange(8).unsqueeze(0)
    assert agrees(model, lean, ids)
    assert not agrees(model, lambda x: lean(x) + 1e-6, ids)


def test_losses_are_bit_identical_with_the_models_own_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def losses(run: str) -> tuple[list[float], str]:
        trainer = Trainer(
            tiny_config(tmp_path / run, "train.max_tokens=4096"), callbacks=[MetricsLogger()], log=quiet
        )
        trainer.open_run()
        try:
            return [float(trainer.run_step().loss) for _ in range(5)], trainer.forward_kind
        finally:
            trainer.run.release()

    lean, kind = losses("lean")
    assert kind == "lean"
    monkeypatch.setattr(trainer_mod, "training_forward", lambda _model: None)
    own, kind = losses("own")
    assert kind == "model"
    assert lean == own


def test_a_disagreeing_lean_pass_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(trainer_mod, "agrees", lambda *_args: False)
    logged: list[str] = []
    trainer = Trainer(tiny_config(tmp_path / "run"), log=logged.append)
    assert trainer.forward_kind == "model"
    assert any("lean training forward differs" in line for line in logged)


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps one process-wide state with its mixed precision: a bf16 trainer needs a new one
    (and the tests after it the default again)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_bf16_runs_the_lean_pass_under_autocast(tmp_path: Path):
    trainer = Trainer(tiny_config(tmp_path / "run", "train.precision=bf16"), log=quiet)
    assert trainer.forward_kind == "lean"
    ids = torch.arange(16).unsqueeze(0)
    assert trainer._forward(ids).dtype == torch.bfloat16  # the prepared model's forward autocasts too
    trainer.open_run()
    try:
        assert trainer.run_step().loss.isfinite()
    finally:
        trainer.run.release()


def test_a_compiled_model_keeps_its_own_forward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch, "compile", lambda model, **_kw: model)  # compiling itself is not the point
    trainer = Trainer(tiny_config(tmp_path / "run", "train.compile=true"), log=quiet)
    assert trainer.forward_kind == "model"
