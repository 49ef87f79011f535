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
class Preset:
    """Shape of one rung of the ladder (the vocabulary comes from the tokenizer)."""

    name: str
    layers: int
    width: int
    heads: int
    intermediate: int

    @property
    def mlp_dim(self) -> int:
        """Fused SwiGLU width, as reported in Huang et al. Table 1."""
        return 2 * self.intermediate

    def non_embedding_params(self) -> int:
        """Parameters in attention and MLP blocks (OLMo: bias-free, parameter-free LayerNorm)."""
        return self.layers * (4 * self.width * self.width + 3 * self.width * self.intermediate)

    def params(self, vocab_size: int, tied: bool = False) -> int:
        """Total parameters of the OLMo model at this vocabulary size."""
        return self.non_embedding_params() + vocab_size * self.width * (1 if tied else 2)

    def flops_per_token(self, vocab_size: int, seq_len: int) -> int:
        """Training FLOPs per token: 6 × (matmul params incl. the LM head) + attention scores (12·L·d·T)."""
        matmul = self.non_embedding_params() + vocab_size * self.width
        return 6 * matmul + 12 * self.layers * self.width * seq_len


def _micro(width: int) -> Preset:
    return Preset(f"micro-w{width}", layers=4, width=width, heads=width // 16, intermediate=4 * width)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        *(_micro(w) for w in (32, 48, 64, 96, 128, 176)),
        Preset("4m", layers=8, width=64, heads=8, intermediate=256),
        Preset("8m", layers=8, width=128, heads=8, intermediate=512),
        Preset("20m", layers=16, width=192, heads=8, intermediate=768),
        Preset("60m", layers=16, width=384, heads=12, intermediate=1536),
        Preset("150m", layers=16, width=768, heads=12, intermediate=3072),
        Preset("300m", layers=16, width=1024, heads=16, intermediate=4096),
        Preset("750m", layers=16, width=1536, heads=16, intermediate=6144),
        Preset("1b", layers=16, width=2048, heads=16, intermediate=8192),
        Preset("4b", layers=16, width=4096, heads=32, intermediate=16384),
    ]
}
