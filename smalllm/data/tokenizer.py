"""Tokenizers, built with the ``tokenizers`` library and wrapped as ``PreTrainedTokenizerFast``.

Three kinds are built here, all sharing two special tokens (``<pad>`` = 0, ``<eod>`` = 1):

* ``bpe``  – byte-level BPE trained on the background corpus (every byte is a token, so every task
  symbol that is one character is one token);
* ``byte`` – the 256 byte tokens and no merges;
* ``char`` – one token per printable ASCII character (small vocabularies for quick experiments).

A fourth, ``pretrained``, loads an existing tokenizer by local directory or hub name (e.g. the
OLMo / GPT-NeoX tokenizer): its own special tokens are kept, ``eos`` marks document ends and a
missing pad token becomes ``eos``.

Every checkpoint carries its tokenizer (``save_pretrained``), so a run can be evaluated later
with nothing but the checkpoint directory.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from smalllm.data.config import TokenizerConfig
from smalllm.errors import ConfigError

PAD, EOD, UNK = "<pad>", "<eod>", "<unk>"
SPECIAL_TOKENS = [PAD, EOD]


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOD, pad_token=PAD)


def byte_level_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` (a vocabulary of 256 + 2 means no merges)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte (258 tokens with the specials)."""
    return byte_level_bpe([], vocab_size=len(SPECIAL_TOKENS) + 256)


def bpe_stand_in(vocab_size: int) -> PreTrainedTokenizerFast:
    """A tokenizer that looks to a task like a trained byte-level BPE of ``vocab_size``, without the
    corpus to train it on: the same special ids, the same id for every byte, the same size (the
    merges are placeholders that never match). A dry run checks tasks against it before the corpus
    exists; task symbols are single characters, so instances come out exactly as in the run.
    """
    vocab = byte_tokenizer().get_vocab()
    for i in range(len(vocab), vocab_size):
        vocab[f"<merge-{i}>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return _wrap(tok)


def char_tokenizer(charset: str | None = None) -> PreTrainedTokenizerFast:
    """One token per character of ``charset`` (default: printable ASCII); others map to ``<unk>``."""
    chars = charset if charset is not None else string.printable
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, UNK])}
    for ch in dict.fromkeys(chars):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    wrapped = _wrap(tok)
    wrapped.unk_token = UNK
    return wrapped


def build_tokenizer(cfg: TokenizerConfig, texts: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """Make the tokenizer a config asks for; ``texts`` trains the BPE."""
    if cfg.kind == "byte":
        return byte_tokenizer()
    if cfg.kind == "char":
        return char_tokenizer()
    if cfg.kind == "pretrained":
        return load_pretrained(cfg.pretrained_source(), field="data.tokenizer.name_or_path")
    if texts is None:
        raise ConfigError("data.tokenizer.kind: bpe needs background texts to train on")
    return byte_level_bpe(texts, cfg.vocab_size)


def load_tokenizer(path: str | Path, field: str = "tokenizer") -> PreTrainedTokenizerFast:
    """Load a saved tokenizer directory (local only: nothing is fetched from a hub)."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{field}: tokenizer directory '{path}' not found")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{field}: '{path}' holds no usable tokenizer ({str(exc).splitlines()[0]})"
        ) from None
    return _with_eos_and_pad(tok, field, str(path))


def _with_eos_and_pad(tok: PreTrainedTokenizerFast, field: str, where: str) -> PreTrainedTokenizerFast:
    if tok.eos_token_id is None:
        raise ConfigError(f"{field}: tokenizer in '{where}' has no end-of-document (eos) token")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_pretrained(
    name_or_path: str, field: str = "data.tokenizer.name_or_path", revision: str | None = None
) -> PreTrainedTokenizerFast:
    """A local tokenizer directory, else a hub tokenizer (from the HF cache, or downloaded once).

    A name that reads as a path (``/…``, ``./…``, ``~/…``) is only ever looked for locally, so a
    mistyped directory is reported as such instead of being asked of the hub. ``revision`` is a hub
    revision, or for a local directory its subdirectory of that name.
    """
    local = Path(name_or_path).expanduser()
    if local.is_dir() or name_or_path.startswith(("/", ".", "~")):
        return load_tokenizer(local / revision if revision else local, field=field)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, **({"revision": revision} if revision else {}))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{field}: '{name_or_path}' is neither a local tokenizer directory nor a loadable hub "
            f"tokenizer ({str(exc).splitlines()[0]})"
        ) from None
    return _with_eos_and_pad(tok, field, name_or_path)


def tokenizer_hash(tokenizer: PreTrainedTokenizerFast) -> str:
    """Content hash of a tokenizer: its full serialized vocabulary, merges, normalizer and specials."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (Python) tokenizer: no serialized form to hash
        where = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(
            f"data.tokenizer.name_or_path: '{where}' loads only as a slow tokenizer (no tokenizer.json); "
            "smalllm needs a fast one: convert it with transformers and save it with save_pretrained"
        )
    blob = backend.to_str() + repr(sorted(tokenizer.special_tokens_map.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
