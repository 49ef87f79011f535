"""Hugging Face models of a configured shape (a ladder preset or a custom one).

Every model is a stock ``transformers`` causal LM, so a checkpoint is a ``save_pretrained`` directory
that plain ``AutoModelForCausalLM.from_pretrained`` opens. The shape (width, depth, heads, MLP width)
is :meth:`ModelConfig.shape`'s, in every architecture.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    OlmoConfig,
    PretrainedConfig,
    PreTrainedModel,
)

from smalllm.model.config import ModelConfig


def hf_config(
    cfg: ModelConfig, vocab_size: int, max_seq_len: int, pad_id: int = 0, eos_id: int = 1
) -> PretrainedConfig:
    """The transformers config of ``cfg``'s shape in architecture ``cfg.arch``; the embedding has
    ``vocab_size`` rounded up to ``cfg.vocab_multiple`` rows and positions up to
    ``cfg.max_position_embeddings`` (default ``max_seq_len``)."""
    p = cfg.shape(max_seq_len)
    positions = cfg.max_position_embeddings or max_seq_len
    common = dict(
        vocab_size=cfg.embedding_rows(vocab_size),
        tie_word_embeddings=cfg.tie_embeddings,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
        use_cache=False,
        initializer_range=cfg.init_std,
    )
    # The shape under the names olmo, llama and gpt_neox share (gpt2 has names of its own).
    shape = dict(
        hidden_size=p.width,
        intermediate_size=p.intermediate,
        num_hidden_layers=p.layers,
        num_attention_heads=p.heads,
        max_position_embeddings=positions,
    )
    if cfg.arch in ("olmo", "llama"):
        config_cls = OlmoConfig if cfg.arch == "olmo" else LlamaConfig
        hf = config_cls(**shape, num_key_value_heads=p.kv_heads or p.heads, **common)
    elif cfg.arch == "gpt2":
        hf = GPT2Config(
            n_embd=p.width,
            n_layer=p.layers,
            n_head=p.heads,
            n_inner=p.intermediate,
            n_positions=positions,
            # GPT-2's tanh-approximated GELU as one fused kernel; GPT2Config's default "gelu_new" spells
            # it out in seven elementwise ops (about a fifth of a CPU step at the nanoGPT shape).
            activation_function="gelu_pytorch_tanh",
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
    elif cfg.arch == "gpt_neox":
        hf = GPTNeoXConfig(**shape, hidden_dropout=0.0, attention_dropout=0.0, **common)
    else:  # validated earlier; kept for direct callers
        raise ValueError(f"model.arch: unknown architecture '{cfg.arch}'")
    return hf


def build_model(
    cfg: ModelConfig, vocab_size: int, max_seq_len: int, pad_id: int = 0, eos_id: int = 1, meta: bool = False
) -> PreTrainedModel:
    """A freshly initialised model (seed torch before calling for reproducible weights).

    ``meta=True`` builds it without allocating memory, for counting parameters of large rungs.
    """
    hf = hf_config(cfg, vocab_size, max_seq_len, pad_id, eos_id)
    if meta:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(hf, attn_implementation="eager")
    return AutoModelForCausalLM.from_config(hf, attn_implementation=cfg.attn_implementation)


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(total, non-embedding) parameters; the output head counts as embedding when untied too."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    emb = embed.numel()
    if head is not None and head.weight is not embed:
        emb += head.weight.numel()
    pos = getattr(getattr(model, "transformer", None), "wpe", None)  # gpt2's learned positions
    if pos is not None:
        emb += pos.weight.numel()
    return total, total - emb
