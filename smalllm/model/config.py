"""The ``model`` section of a run config: a preset of the ladder or a shape of its own, in which
architecture.

Shape keys (``num_layers``, ``hidden_size``, ``num_heads``, ``num_kv_heads``, ``intermediate_size``)
override the preset's; with ``preset: null`` they stand alone (layers, width and heads required). A
preset's intermediate size is the SwiGLU one; plain-MLP architectures (gpt2, gpt_neox) take 1.5 × it,
which matches the parameter count, unless ``intermediate_size`` is given (e.g. 4 × width for a
GPT-2-shaped model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from smalllm.errors import did_you_mean, require
from smalllm.model.presets import PRESETS, ModelShape
from smalllm.validation import choices, integer, number, one_of

Arch = Literal["olmo", "llama", "gpt2", "gpt_neox"]
AttnImplementation = Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"]

ARCHS = choices(Arch)
GATED_ARCHS = ("olmo", "llama")
"""Architectures with a SwiGLU MLP; the others have a plain two-matrix MLP."""
LEARNED_POSITIONS = ("gpt2",)
"""Architectures with a learned position embedding; the others use rotary positions."""
GQA_ARCHS = ("olmo", "llama")
"""Architectures whose transformers config takes ``num_key_value_heads``."""
MAX_DIM = 1 << 16
ATTN_IMPLEMENTATIONS = choices(AttnImplementation)


@dataclass
class ModelConfig:
    preset: str | None = "micro-w64"
    """Model size from the ladder (``smalllm models`` lists them): micro-w32 … micro-w176, 4m … 4b;
    null for a shape given entirely by the keys below."""
    num_layers: int | None = None
    """Transformer blocks (overrides the preset's)."""
    hidden_size: int | None = None
    """Residual width (overrides the preset's)."""
    num_heads: int | None = None
    """Attention heads; they divide ``hidden_size`` (overrides the preset's)."""
    num_kv_heads: int | None = None
    """Key/value heads for grouped-query attention (olmo, llama); they divide ``num_heads``. None: as
    many as ``num_heads``."""
    intermediate_size: int | None = None
    """MLP hidden width: the SwiGLU intermediate size (olmo, llama) or the plain MLP's (gpt2,
    gpt_neox). None: the preset's (see the module docstring), or 4 × ``hidden_size`` without one."""
    max_position_embeddings: int | None = None
    """Longest sequence the model takes (gpt2's learned position rows); None: ``data.seq_len``."""
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

    def shape(self, seq_len: int) -> ModelShape:
        """The model's shape for sequences of ``seq_len`` tokens (call :meth:`validate` first)."""
        base = PRESETS[self.preset] if self.preset is not None else None
        gated = self.arch in GATED_ARCHS
        layers = self.num_layers or base.layers
        width = self.hidden_size or base.width
        heads = self.num_heads or base.heads
        if self.intermediate_size is not None:
            intermediate = self.intermediate_size
        elif base is not None and width == base.width:
            intermediate = base.intermediate if gated else base.intermediate * 3 // 2
        else:
            intermediate = 4 * width
        overridden = any(v is not None for v in self._shape_keys().values())
        name = (
            self.preset
            if base is not None and not overridden
            else f"L{layers}-d{width}-h{heads}-i{intermediate}"
        )
        if self.num_kv_heads not in (None, heads):
            name += f"-kv{self.num_kv_heads}"
        positions = self.max_position_embeddings or seq_len
        return ModelShape(
            name,
            layers,
            width,
            heads,
            intermediate,
            kv_heads=self.num_kv_heads,
            gated=gated,
            tied=self.tie_embeddings,
            positions=positions if self.arch in LEARNED_POSITIONS else 0,
        )

    def _shape_keys(self) -> dict[str, int | None]:
        return {
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "intermediate_size": self.intermediate_size,
        }

    def validate(self, prefix: str = "model") -> None:
        """Raise a one-line :class:`~smalllm.errors.ConfigError` naming the first bad field."""
        if self.preset is not None:
            require(
                self.preset in PRESETS,
                f"{prefix}.preset",
                f"unknown preset '{self.preset}'{did_you_mean(self.preset, PRESETS)}",
            )
        else:
            for key in ("num_layers", "hidden_size", "num_heads"):
                require(
                    getattr(self, key) is not None,
                    f"{prefix}.{key}",
                    "required when model.preset is null (or name a preset to start from)",
                )
        for key, value in self._shape_keys().items():
            if value is not None:
                integer(value, f"{prefix}.{key}", ge=1, le=MAX_DIM)
        if self.max_position_embeddings is not None:
            integer(self.max_position_embeddings, f"{prefix}.max_position_embeddings", ge=1, le=1 << 24)
        one_of(self.arch, ARCHS, f"{prefix}.arch")
        one_of(self.attn_implementation, ATTN_IMPLEMENTATIONS, f"{prefix}.attn_implementation")
        # A std near 1 already saturates every activation of these widths; beyond is a typo.
        number(self.init_std, f"{prefix}.init_std", gt=0, le=1)
        integer(self.vocab_multiple, f"{prefix}.vocab_multiple", ge=1, le=4096)
        shape = self.shape(1)
        require(
            shape.width % shape.heads == 0,
            f"{prefix}.num_heads",
            f"{shape.heads} heads do not divide hidden size {shape.width}",
        )
        head_dim = shape.width // shape.heads
        if self.arch != "gpt2":  # rotary positions rotate pairs of dimensions
            require(
                head_dim % 2 == 0,
                f"{prefix}.num_heads",
                f"head dimension {shape.width} / {shape.heads} = {head_dim} must be even for rotary "
                f"positions ({self.arch})",
            )
        if self.num_kv_heads is not None and self.num_kv_heads != shape.heads:
            require(
                self.arch in GQA_ARCHS,
                f"{prefix}.num_kv_heads",
                f"grouped-query attention needs arch {' or '.join(GQA_ARCHS)}, not {self.arch}",
            )
            require(
                shape.heads % self.num_kv_heads == 0,
                f"{prefix}.num_kv_heads",
                f"{self.num_kv_heads} key/value heads do not divide {shape.heads} heads",
            )
