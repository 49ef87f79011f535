"""Where a block's MLP lives in each architecture, and which axis of each of its parameters indexes
the MLP's neurons (its hidden units), by parameter name alone.

A neuron ``i`` of block ``l`` owns row ``i`` of each input projection (gate and up for the SwiGLU
MLPs of olmo and llama, ``c_fc``/``dense_h_to_4h`` for gpt2 and gpt_neox), entry ``i`` of its bias,
and column ``i`` of the output projection. gpt2's ``Conv1D`` stores weights as ``[in, out]``, so its
axes are the other way round. The output projection's bias belongs to no neuron.
"""

from __future__ import annotations

import re

NEURON_AXIS: dict[str, int | None] = {
    # olmo, llama (nn.Linear weights are [out, in])
    "gate_proj.weight": 0,
    "gate_proj.bias": 0,
    "up_proj.weight": 0,
    "up_proj.bias": 0,
    "down_proj.weight": 1,
    "down_proj.bias": None,
    # gpt2 (Conv1D weights are [in, out])
    "c_fc.weight": 1,
    "c_fc.bias": 0,
    "c_proj.weight": 0,
    "c_proj.bias": None,
    # gpt_neox
    "dense_h_to_4h.weight": 0,
    "dense_h_to_4h.bias": 0,
    "dense_4h_to_h.weight": 1,
    "dense_4h_to_h.bias": None,
}
"""Parameter name suffix inside ``….mlp.`` -> the axis that indexes neurons (None: no neuron's)."""

_MLP = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.mlp\.(.+)$")


def in_mlp(name: str, layer: int) -> bool:
    """Whether parameter ``name`` (as ``named_parameters`` of a stock causal LM spells it) belongs to
    the MLP of block ``layer``."""
    match = _MLP.search(name)
    return match is not None and int(match.group(1)) == layer


def neuron_axis(name: str) -> int | None:
    """The axis of MLP parameter ``name`` that indexes the neurons; None for a parameter no neuron
    owns (the output bias) and for one this table does not know."""
    match = _MLP.search(name)
    return None if match is None else NEURON_AXIS.get(match.group(2))
