"""The training forward pass: next-token logits of full rows of token ids (no padding, no cache).

A transformers causal LM's ``forward`` prepares for every use it serves: a padding warning that
checks the first and last token of every row, a cache, position ids, a causal mask, a check of the
position ids for packed sequences, output dataclasses. Training rows need none of it, and two of
those steps read a tensor back to the host on every call (on a GPU, a wait for the device).

:func:`training_forward` runs the same modules of the same model in the order the model's forward
does (embedding, learned positions or rotary embeddings, the decoder layers with no mask, which
SDPA turns into ``is_causal``, final norm, head). Only the preparation is left out, so checkpoints,
evaluation and generation use the stock model as before. :func:`agrees` compares it with the
model's own forward; the trainer uses it only where the two give identical logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Forward = Callable[[torch.Tensor], torch.Tensor]
"""Token ids [batch, length] -> logits [batch, length, vocab]."""


@dataclass(frozen=True)
class Layout:
    """Where an architecture keeps the modules of its forward pass (attribute names)."""

    trunk: str
    """The decoder under the LM head (``model.model``, ``model.transformer``, ...)."""
    embed: str
    """The token embedding, on the trunk."""
    layers: str
    """The decoder layers, on the trunk."""
    norm: str
    """The final norm, on the trunk."""
    positions: str
    """Learned position embedding (``wpe``) or rotary embedding (``rotary_emb``), on the trunk."""
    dropout: str | None = None
    """Dropout after the embeddings, on the trunk (None: the architecture has none)."""


LAYOUTS: dict[str, Layout] = {
    "olmo": Layout("model", "embed_tokens", "layers", "norm", "rotary_emb"),
    "llama": Layout("model", "embed_tokens", "layers", "norm", "rotary_emb"),
    "gpt2": Layout("transformer", "wte", "h", "ln_f", "wpe", dropout="drop"),
    "gpt_neox": Layout("gpt_neox", "embed_in", "layers", "final_layer_norm", "rotary_emb", "emb_dropout"),
}
"""The architectures :mod:`smalllm.model.build` builds, by ``config.model_type``."""


def training_forward(model: torch.nn.Module) -> Forward | None:
    """The lean forward pass of ``model`` (a stock transformers causal LM), or None where there is
    none: an architecture not in :data:`LAYOUTS`, or attention other than SDPA (eager attention
    needs the causal mask this pass does not build). Check it with :func:`agrees` before use."""
    config = getattr(model, "config", None)
    layout = LAYOUTS.get(getattr(config, "model_type", None))
    if layout is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return None
    trunk = getattr(model, layout.trunk, None)
    parts = [
        getattr(trunk, name, None) for name in (layout.embed, layout.layers, layout.norm, layout.positions)
    ]
    head = model.get_output_embeddings()
    if any(part is None for part in (*parts, head)):  # laid out otherwise in this transformers release
        return None
    embed, layers, norm, positional = parts
    layers = list(layers)
    if getattr(trunk, "gradient_checkpointing", False) and not _checkpoints_itself(layers):
        return None  # transformers < 4.52/4.53 checkpoints in the model's layer loop, which this skips
    learned = isinstance(positional, torch.nn.Embedding)
    dropout = getattr(trunk, layout.dropout) if layout.dropout else None

    def forward(ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        hidden = embed(ids) + positional(positions) if learned else embed(ids)
        if dropout is not None:
            hidden = dropout(hidden)
        # Rotary architectures take the cos/sin tables of the positions into every layer.
        extra = (
            {}
            if learned
            else {"position_ids": positions, "position_embeddings": positional(hidden, positions)}
        )
        for layer in layers:
            hidden = layer(hidden, **extra)
            if isinstance(hidden, tuple):  # transformers < 5 returns (hidden, ...) from a layer
                hidden = hidden[0]
        return head(norm(hidden))

    return forward


def _checkpoints_itself(layers: list[torch.nn.Module]) -> bool:
    """Whether the layers do their own activation checkpointing when called (transformers'
    ``GradientCheckpointingLayer``); before it, the model's forward did it around each layer call."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:
        return False
    return all(isinstance(layer, GradientCheckpointingLayer) for layer in layers)


def agrees(model: torch.nn.Module, forward: Forward, ids: torch.Tensor) -> bool:
    """Whether ``forward`` gives exactly the logits of ``model(input_ids=ids)``, compared in fp32 (a
    model prepared for mixed precision returns fp32 logits). Without gradients and in eval mode, so
    dropout draws no random numbers; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.equal(forward(ids).float(), model(input_ids=ids).logits.float())
    finally:
        model.train(was_training)
