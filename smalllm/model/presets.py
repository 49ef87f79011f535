"""The model ladder.

The paper rungs (4m … 4b) are Huang et al. Table 1 (after the DataDecide configs): OLMo blocks with
a SwiGLU MLP whose *fused* width is the table's "MLP dim", so ``intermediate_size = mlp_dim / 2``.
At vocabulary 50,304 with untied embeddings the OLMo counts are exactly the table's.

The micro rungs are for CPU studies with small vocabularies: 4 layers, head dimension 16, the same
SwiGLU ratio (intermediate = 4 × width). Intermediate rungs (8m, 60m, 150m, 750m) fill the ladder.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """Shape of a model: a rung of the ladder, or one a config spells out (``model.num_layers`` …).

    The vocabulary comes from the tokenizer. Counts are of the weight matrices (biases and norm
    weights, a few thousand parameters at most, are left out), so they are exact for OLMo.
    """

    name: str
    layers: int
    width: int
    heads: int
    intermediate: int
    """MLP hidden width: the SwiGLU intermediate size (gated) or the width of the plain MLP."""
    kv_heads: int | None = None
    """Key/value heads (grouped-query attention); None: one per query head."""
    gated: bool = True
    """SwiGLU MLP with three matrices (olmo, llama), or a plain two-matrix MLP (gpt2, gpt_neox)."""
    tied: bool = False
    """The output projection shares the input embedding."""
    positions: int = 0
    """Rows of a learned position embedding (gpt2); 0 for rotary positions."""

    @property
    def mlp_dim(self) -> int:
        """MLP width as Huang et al. Table 1 reports it: the fused SwiGLU width, or the plain MLP's."""
        return 2 * self.intermediate if self.gated else self.intermediate

    def non_embedding_params(self) -> int:
        """Parameters in attention and MLP blocks."""
        kv_width = self.width // self.heads * (self.kv_heads or self.heads)
        attention = 2 * self.width * self.width + 2 * self.width * kv_width
        mlp = (3 if self.gated else 2) * self.width * self.intermediate
        return self.layers * (attention + mlp)

    def params(self, vocab_size: int) -> int:
        """Total parameters at this vocabulary size (input embedding, output head, learned positions)."""
        return (
            self.non_embedding_params() + (vocab_size * (1 if self.tied else 2) + self.positions) * self.width
        )

    def flops_per_token(self, vocab_size: int, seq_len: int) -> int:
        """Training FLOPs per token: 6 × (matmul params incl. the LM head) + attention scores (12·L·d·T)."""
        matmul = self.non_embedding_params() + vocab_size * self.width
        return 6 * matmul + 12 * self.layers * self.width * seq_len


def _micro(width: int) -> ModelShape:
    return ModelShape(f"micro-w{width}", layers=4, width=width, heads=width // 16, intermediate=4 * width)


PRESETS: dict[str, ModelShape] = {
    p.name: p
    for p in [
        *(_micro(w) for w in (32, 48, 64, 96, 128, 176)),
        ModelShape("4m", layers=8, width=64, heads=8, intermediate=256),
        ModelShape("8m", layers=8, width=128, heads=8, intermediate=512),
        ModelShape("20m", layers=16, width=192, heads=8, intermediate=768),
        ModelShape("60m", layers=16, width=384, heads=12, intermediate=1536),
        ModelShape("150m", layers=16, width=768, heads=12, intermediate=3072),
        ModelShape("300m", layers=16, width=1024, heads=16, intermediate=4096),
        ModelShape("750m", layers=16, width=1536, heads=16, intermediate=6144),
        ModelShape("1b", layers=16, width=2048, heads=16, intermediate=8192),
        ModelShape("4b", layers=16, width=4096, heads=32, intermediate=16384),
    ]
}
