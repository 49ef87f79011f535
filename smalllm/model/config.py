"""The ``model`` section of a run config: which preset of the ladder, in which architecture."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from smalllm.errors import did_you_mean, require
from smalllm.model.presets import PRESETS
from smalllm.validation import choices, integer, number, one_of

Arch = Literal["olmo", "llama", "gpt2", "gpt_neox"]
AttnImplementation = Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"]

ARCHS = choices(Arch)
ATTN_IMPLEMENTATIONS = choices(AttnImplementation)


@dataclass
class ModelConfig:
    preset: str = "micro-w64"
    """Model size from the ladder (``smalllm models`` lists them): micro-w40 … micro-w176, 4m … 4b."""
    arch: Arch = "olmo"
    """Hugging Face architecture: olmo (OlmoForCausalLM), llama, gpt2 or gpt_neox."""
    init_std: float = 0.02
    """Standard deviation of the normal initialisation of weight matrices."""
    tie_embeddings: bool = False
    """Share input embedding and output projection (the ladder's counts assume untied)."""
    attn_implementation: AttnImplementation = "sdpa"
    """Attention kernel passed to transformers: sdpa, eager, flash_attention_2, flash_attention_3 or
    flex_attention."""
    vocab_multiple: int = 1
    """Embedding rows are the tokenizer's vocabulary rounded up to a multiple of this (64 or 128 keep
    the embedding and output matmuls on fast GPU tile sizes; OLMo pads 50,280 to 50,304 = 128 x 393).
    The extra rows are never a target, so training learns to give them no probability."""

    def embedding_rows(self, vocab_size: int) -> int:
        """Rows of the embedding (and output) matrix for a tokenizer of ``vocab_size`` tokens."""
        return -(-vocab_size // self.vocab_multiple) * self.vocab_multiple

    def validate(self, prefix: str = "model") -> None:
        """Raise a one-line :class:`~smalllm.errors.ConfigError` naming the first bad field."""
        require(
            self.preset in PRESETS,
            f"{prefix}.preset",
            f"unknown preset '{self.preset}'{did_you_mean(self.preset, PRESETS)}",
        )
        one_of(self.arch, ARCHS, f"{prefix}.arch")
        one_of(self.attn_implementation, ATTN_IMPLEMENTATIONS, f"{prefix}.attn_implementation")
        # A std near 1 already saturates every activation of these widths; beyond is a typo.
        number(self.init_std, f"{prefix}.init_std", gt=0, le=1)
        integer(self.vocab_multiple, f"{prefix}.vocab_multiple", ge=1, le=4096)
