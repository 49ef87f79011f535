"""Background corpora: the text the task instances are injected into.

* ``synthetic`` – a built-in English-like corpus: a lexicon of pronounceable pseudo-words split into
  parts of speech, Zipfian word choice within each, and a small sentence grammar with agreement
  between a subject and its preferred verbs (so there is structure to learn). A small ``num_words``
  gives a simplified vocabulary in the spirit of Muckatira et al. Deterministic; no downloads.
* ``files`` – local ``.txt`` files, cut into documents by ``text_unit`` (each file, each blank-line
  separated paragraph, or each line; see :func:`text_documents`), and ``.jsonl``/``.json``, ``.csv``
  and ``.parquet`` files (one document per record), read through ``datasets``.
* ``hub`` – any ``datasets.load_dataset`` name (cached or streaming). Never used by the tests.
* ``tokens`` – pre-tokenized token files (OLMo's ``.npy``, raw ``.bin``), memory-mapped and cut into
  documents at the end-of-document id; see :func:`token_documents`.

``end_of_document`` decides what separates documents: ``<eod>`` (the separators of ``text_unit``
dropped), or nothing (the separators kept in the text, so the stream is the files' exact text).
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from smalllm.data.config import BackgroundConfig, SyntheticCorpusConfig
from smalllm.errors import ConfigError

_ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "w",
    "z",
    "br",
    "st",
    "tr",
    "pl",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "oo"]
_CODAS = ["", "", "n", "r", "s", "t", "m", "l", "nd", "st"]
_DETERMINERS = ["the", "a", "this", "every", "some", "my"]
_PREPOSITIONS = ["on", "in", "near", "under", "with", "from", "over"]
_CONJUNCTIONS = ["and", "but", "so", "while"]


class SyntheticCorpus:
    """Deterministic generator of Zipfian pseudo-English documents."""

    def __init__(self, cfg: SyntheticCorpusConfig, seed: int = 0) -> None:
        self.cfg = cfg
        rng = np.random.default_rng([seed, 0xC0, 0x12])
        words = self._lexicon(cfg.num_words, rng)
        # Parts of speech: half nouns, a quarter verbs, a quarter adjectives.
        n_noun, n_verb = len(words) // 2, len(words) // 4
        self.nouns = words[:n_noun]
        self.verbs = words[n_noun : n_noun + n_verb]
        self.adjectives = words[n_noun + n_verb :]
        self._zipf = {k: self._zipf_probs(len(v), cfg.zipf_exponent) for k, v in self._pos().items()}
        # Each noun prefers a small set of verbs: the learnable dependency of the grammar.
        self.preferred_verbs = rng.integers(0, len(self.verbs), size=(len(self.nouns), 4))
        self.seed = seed

    def _pos(self) -> dict[str, list[str]]:
        return {"noun": self.nouns, "verb": self.verbs, "adj": self.adjectives}

    @staticmethod
    def _zipf_probs(n: int, exponent: float) -> np.ndarray:
        p = 1.0 / np.arange(1, n + 1) ** exponent
        return p / p.sum()

    @staticmethod
    def _lexicon(n: int, rng: np.random.Generator) -> list[str]:
        seen: dict[str, None] = {}
        reserved = set(_DETERMINERS + _PREPOSITIONS + _CONJUNCTIONS)
        while len(seen) < n:
            syllables = rng.integers(1, 4)
            word = "".join(
                _ONSETS[rng.integers(len(_ONSETS))]
                + _VOWELS[rng.integers(len(_VOWELS))]
                + _CODAS[rng.integers(len(_CODAS))]
                for _ in range(syllables)
            )
            if word not in reserved:
                seen.setdefault(word, None)
        return list(seen)

    def _pick(self, rng: np.random.Generator, pos: str) -> str:
        words = self._pos()[pos]
        return words[rng.choice(len(words), p=self._zipf[pos])]

    def _noun_phrase(self, rng: np.random.Generator) -> tuple[str, int]:
        idx = int(rng.choice(len(self.nouns), p=self._zipf["noun"]))
        parts = [_DETERMINERS[rng.integers(len(_DETERMINERS))]]
        if rng.random() < 0.4:
            parts.append(self._pick(rng, "adj"))
        parts.append(self.nouns[idx])
        return " ".join(parts), idx

    def _clause(self, rng: np.random.Generator) -> str:
        subject, noun = self._noun_phrase(rng)
        if rng.random() < 0.8:
            verb = self.verbs[self.preferred_verbs[noun, rng.integers(4)]]
        else:
            verb = self._pick(rng, "verb")
        obj, _ = self._noun_phrase(rng)
        clause = f"{subject} {verb} {obj}"
        if rng.random() < 0.3:
            place, _ = self._noun_phrase(rng)
            clause += f" {_PREPOSITIONS[rng.integers(len(_PREPOSITIONS))]} {place}"
        return clause

    def document(self, index: int) -> str:
        """Document ``index`` (random access: each document has its own RNG stream)."""
        rng = np.random.default_rng([self.seed, index])
        sentences = []
        for _ in range(int(rng.integers(2, 6))):
            clause = self._clause(rng)
            if rng.random() < 0.25:
                clause += f" {_CONJUNCTIONS[rng.integers(len(_CONJUNCTIONS))]} {self._clause(rng)}"
            sentences.append(clause[0].upper() + clause[1:] + ".")
        return " ".join(sentences)

    def documents(self, start: int, stop: int) -> Iterator[str]:
        """Documents ``start`` … ``stop - 1``."""
        for i in range(start, stop):
            yield self.document(i)


def load_texts(cfg: BackgroundConfig, seed: int = 0) -> Iterator[str]:
    """Documents of the configured background corpus, in order (held-out ones included).

    The source is opened (and local files checked) before this returns, so that a bad corpus file
    fails before the caller creates any output.
    """
    if cfg.source == "synthetic":
        corpus = SyntheticCorpus(cfg.synthetic, seed)
        n = cfg.synthetic.num_documents
        if cfg.max_documents is not None:
            n = min(n, cfg.max_documents)
        return corpus.documents(0, n)
    if cfg.source == "files":
        paths, fmt = check_source_files(cfg)
        if fmt == "text":
            return _limited(cfg, text_documents(paths, cfg.text_unit, cfg.end_of_document))
    return _dataset_texts(cfg, load_text_dataset(cfg))


def _limited(cfg: BackgroundConfig, texts: Iterator[str]) -> Iterator[str]:
    return itertools.islice(texts, cfg.max_documents) if cfg.max_documents is not None else texts


def text_documents(paths: list[Path], unit: str, end_of_document: bool = True) -> Iterator[str]:
    """The documents of UTF-8 text files, read line by line (a ``file`` unit reads its file whole).

    With ``end_of_document`` each document is stripped of its separators (the blank lines after a
    paragraph, the line end of a line, the final newline of a file) and empty ones are skipped: the
    corpus build ends each with ``<eod>``. Without it nothing is dropped: the documents, joined,
    are the files' exact text (paragraphs keep the blank lines that follow them).
    """
    for path in paths:
        with open(path, encoding="utf-8", newline="") as fh:
            for doc in _cut(fh, unit):
                if end_of_document:
                    doc = doc.strip("\r\n") if unit != "line" else doc.rstrip("\r\n")
                    if not doc.strip():
                        continue
                yield doc


def _cut(lines: Iterable[str], unit: str) -> Iterator[str]:
    if unit == "file":
        yield "".join(lines)
        return
    if unit == "line":
        yield from lines
        return
    paragraph: list[str] = []
    after_blank = False
    for line in lines:
        blank = not line.strip()
        if not blank and after_blank:
            yield "".join(paragraph)  # a paragraph ends where text follows its blank lines
            paragraph = []
        paragraph.append(line)
        after_blank = blank
    if paragraph:
        yield "".join(paragraph)


def _dataset_texts(cfg: BackgroundConfig, dataset: Iterable[dict]) -> Iterator[str]:
    for i, row in enumerate(dataset):
        if cfg.max_documents is not None and i >= cfg.max_documents:
            break
        text = row.get(cfg.text_field)
        if text is None:
            raise ConfigError(
                f"data.background.text_field: column '{cfg.text_field}' not found (have {sorted(row)})"
            )
        if not isinstance(text, str):
            raise ConfigError(
                f"data.background.text_field: column '{cfg.text_field}' holds {type(text).__name__} "
                "values, not text"
            )
        if text:
            yield text


_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def check_local_files(cfg: BackgroundConfig) -> tuple[list[Path], str]:
    """The files of ``source=files`` and their ``datasets`` format, after checking that each exists
    and that all share one known extension (nothing is read: a dry run calls this too)."""
    paths = [Path(p) for p in cfg.paths]
    for p in paths:
        if p.is_dir():
            raise ConfigError(f"data.background.paths: '{p}' is a directory, not a file")
        if p.exists() and not p.is_file():  # a FIFO or device: reading it could block forever
            raise ConfigError(f"data.background.paths: '{p}' is not a regular file")
        if not p.is_file():
            raise ConfigError(f"data.background.paths: file '{p}' not found")
    formats = {_FORMATS.get(p.suffix.lower()) for p in paths}
    if None in formats or len(formats) != 1:
        raise ConfigError(
            f"data.background.paths: files must share one of the extensions {', '.join(_FORMATS)}"
        )
    (fmt,) = formats
    assert fmt is not None
    return paths, fmt


def check_source_files(cfg: BackgroundConfig) -> tuple[list[Path], str]:
    """:func:`check_local_files`, then each file's content (:func:`check_corpus_file`): everything a
    corpus build checks before it starts. Only reads, so ``smalllm train --dry-run`` calls it too."""
    paths, fmt = check_local_files(cfg)
    for p in paths:
        check_corpus_file(p, fmt, cfg.text_field)
    return paths, fmt


def load_text_dataset(cfg: BackgroundConfig):  # -> datasets.Dataset | IterableDataset
    """Open a local-file or hub dataset with ``datasets`` (hub loading needs network access)."""
    import datasets

    if cfg.source == "files":
        paths, fmt = check_source_files(cfg)
        datasets.disable_progress_bars()  # local files: no "Generating train split" bars on stderr
        kwargs = {"sample_by": "paragraph"} if fmt == "text" else {}
        return datasets.load_dataset(
            fmt, data_files=[str(p) for p in paths], split=cfg.split, streaming=cfg.streaming, **kwargs
        )
    if cfg.streaming and cfg.max_documents is None:
        raise ConfigError(
            "data.background.max_documents: required with streaming=true (the stream has no end)"
        )
    return datasets.load_dataset(cfg.hub_name, cfg.hub_config, split=cfg.split, streaming=cfg.streaming)


# ----------------------------------------------------------------------------------------------
# Local corpus files: checked before ``datasets`` reads them. Its own errors name neither the file
# nor the line, come after progress output, and some bad inputs (a missing field, a number where
# text should be) pass it and fail later inside the tokenizer.
# ----------------------------------------------------------------------------------------------

_CHUNK = 1 << 20


def check_corpus_file(path: Path, fmt: str, text_field: str) -> None:
    """Raise a one-line :class:`ConfigError` naming ``path`` (and the line) if it cannot be a corpus.

    ``fmt`` is the ``datasets`` builder the file goes to: ``text``, ``json``, ``csv`` or ``parquet``.
    Checked: readable, not empty, UTF-8 (text formats), one JSON object per line with a string
    ``text_field`` (JSON Lines; a JSON array of such objects also passes), the column present
    (CSV header, parquet schema).
    """
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                found = False
            elif fmt == "parquet":
                found = _check_parquet(path, text_field)
            elif fmt == "json":
                found = _check_json(path, f, text_field)
            else:
                found = _check_utf8(path, f)
                if found and fmt == "csv":
                    f.seek(0)
                    _check_csv_header(path, f.readline(), text_field)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not found:
        raise ConfigError(f"{path}: empty file (no documents)")


def _check_utf8(path: Path, f: BinaryIO) -> bool:
    """Whether the file holds any non-space text; raises on the first line that is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, found = 1, False
    while chunk := f.read(_CHUNK):
        try:
            decoder.decode(chunk)
        except UnicodeDecodeError as exc:
            # exc.object is the decoder's buffer: a partial character from the last chunk (never a
            # newline) followed by this chunk.
            line += exc.object[: exc.start].count(b"\n")
            raise ConfigError(f"{path}: line {line} is not UTF-8 text") from None
        line += chunk.count(b"\n")
        found = found or bool(chunk.strip())
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: line {line} is not UTF-8 text (a truncated character)") from None
    return found


def _check_json(path: Path, f: BinaryIO, text_field: str) -> bool:
    """Whether the file holds any record; raises naming the first bad line (or array item)."""
    start = f.read(_CHUNK).lstrip(codecs.BOM_UTF8).lstrip()
    f.seek(0)
    if start.startswith(b"["):
        # A JSON array, which datasets also reads whole: objects, or plain strings taken as `text`.
        _check_utf8(path, f)
        try:
            items = json.loads(path.read_bytes().decode("utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: line {exc.lineno} is not valid JSON ({_json_problem(exc)})") from None
        strings = bool(items) and isinstance(items[0], str) and text_field == "text"
        for i, item in enumerate(items):
            if not (strings and isinstance(item, str)):
                _check_record(item, text_field, f"{path}: item {i}")
        return bool(items)
    found = False
    for lineno, raw in enumerate(f, start=1):
        try:
            text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: line {lineno} is not UTF-8 text") from None
        if not text.strip():
            continue
        try:
            record = json.loads(text.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}: line {lineno} is not valid JSON ({_json_problem(exc)}); "
                "expected one object per line"
            ) from None
        _check_record(record, text_field, f"{path}: line {lineno}")
        found = True
    return found


def _json_problem(exc: json.JSONDecodeError) -> str:
    return f"{exc.msg.removesuffix(' at')} at column {exc.colno}"


def _check_record(record: object, text_field: str, where: str) -> None:
    if not isinstance(record, dict):
        raise ConfigError(f"{where} is not a JSON object (got {_json_kind(record)})")
    if text_field not in record:
        raise ConfigError(f"{where} has no '{text_field}' field (data.background.text_field)")
    if not isinstance(record[text_field], str):
        raise ConfigError(f"{where}: '{text_field}' is {_json_kind(record[text_field])}, not a string")


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _check_csv_header(path: Path, first_line: bytes, text_field: str) -> None:
    header = next(csv.reader([first_line.decode("utf-8-sig")]), [])
    if text_field not in header:
        raise ConfigError(
            f"{path}: no column '{text_field}' in the CSV header (have {', '.join(header)}); "
            "set data.background.text_field"
        )


def _check_parquet(path: Path, text_field: str) -> bool:
    """Whether the file holds any row; raises unless it is parquet with a string ``text_field``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
    except pa.ArrowException as exc:
        raise ConfigError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    if text_field not in schema.names:
        raise ConfigError(
            f"{path}: no column '{text_field}' (have {', '.join(schema.names)}); "
            "set data.background.text_field"
        )
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise ConfigError(f"{path}: column '{text_field}' holds {kind}, not text")
    return meta.num_rows > 0


# ----------------------------------------------------------------------------------------------
# Pre-tokenized token files (``source=tokens``): OLMo's ``.npy`` arrays or raw ``.bin`` files of
# uint16/uint32 ids, documents separated by the end-of-document id. Never copied into memory.
# ----------------------------------------------------------------------------------------------

TOKEN_SUFFIXES = (".npy", ".bin")


def open_token_file(path: Path, token_dtype: str = "uint16") -> np.ndarray:
    """``path`` memory-mapped as a 1-D array of uint16/uint32 ids (``.bin`` files as ``token_dtype``)."""
    try:
        if path.suffix.lower() == ".npy":
            tokens = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            size = path.stat().st_size
            itemsize = np.dtype(token_dtype).itemsize
            if size % itemsize:
                raise ConfigError(
                    f"{path}: {size} bytes is not a whole number of {token_dtype} tokens "
                    "(data.background.token_dtype)"
                )
            tokens = np.memmap(path, dtype=token_dtype, mode="r") if size else np.zeros(0, token_dtype)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable token file ({str(exc).splitlines()[0]})") from None
    if tokens.ndim != 1 or tokens.dtype not in (np.uint16, np.uint32):
        raise ConfigError(
            f"{path}: expected a 1-D uint16 or uint32 token array, got {tokens.dtype} of shape {tokens.shape}"
        )
    if len(tokens) == 0:
        raise ConfigError(f"{path}: empty file (no documents)")
    return tokens


def check_token_files(cfg: BackgroundConfig) -> list[np.ndarray]:
    """The token files of ``source=tokens``, each checked and memory-mapped (nothing is read yet)."""
    arrays = []
    for p in (Path(p) for p in cfg.paths):
        if not p.is_file():
            raise ConfigError(f"data.background.paths: token file '{p}' not found")
        if p.suffix.lower() not in TOKEN_SUFFIXES:
            raise ConfigError(f"data.background.paths: '{p}' is not a .npy or .bin token file")
        arrays.append(open_token_file(p, cfg.token_dtype))
    return arrays


def read_order(path: Path, num_documents: int) -> np.ndarray:
    """Document indices from an order file: a ``.npy`` integer array, or text with one per line."""
    field = "data.background.order_file"
    try:
        if path.suffix.lower() == ".npy":
            order = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            order = np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{field}: cannot read '{path}' ({str(exc).splitlines()[0]})") from None
    if order.ndim != 1 or order.dtype.kind not in "iu":
        raise ConfigError(f"{field}: '{path}' must hold a 1-D list of integer document indices")
    if len(order) and (int(order.min()) < 0 or int(order.max()) >= num_documents):
        raise ConfigError(
            f"{field}: '{path}' names piece {int(order.max())} (or a negative one); the token files "
            f"hold {num_documents} of data.background.order_unit (0..{num_documents - 1})"
        )
    return np.asarray(order, dtype=np.int64)


def token_documents(
    cfg: BackgroundConfig, eos_id: int, seq_len: int | None = None
) -> tuple[list[np.ndarray], np.ndarray]:
    """The memory-mapped token files and their documents (or windows) in reading order.

    Returns ``(files, spans)``: ``spans[k] = (file, start, stop)`` is the k-th piece read. With
    ``order_unit=document`` a piece ends with ``eos_id`` (a file's tail after its last ``eos_id`` is
    one more document); with ``window`` it is ``seq_len`` tokens, OLMo's instances. The order is that
    of ``paths``, or ``order_file`` over the pieces counted in that order.
    """
    files = check_token_files(cfg)
    spans = []
    for i, tokens in enumerate(files):
        if cfg.order_unit == "window":
            assert seq_len is not None, "windows need data.seq_len"
            starts = np.arange(len(tokens) // seq_len) * seq_len
            stops = starts + seq_len
        else:
            stops = np.flatnonzero(tokens == eos_id) + 1
            if len(stops) == 0 or stops[-1] != len(tokens):
                stops = np.append(stops, len(tokens))
            starts = np.concatenate([[0], stops[:-1]])
        spans.append(np.stack([np.full(len(stops), i), starts, stops], axis=1))
    all_spans = np.concatenate(spans)
    if cfg.order_file is not None:
        all_spans = all_spans[read_order(Path(cfg.order_file), len(all_spans))]
    if cfg.max_documents is not None:
        all_spans = all_spans[: cfg.max_documents]
    return files, all_spans


def document_tokens(files: list[np.ndarray], spans: np.ndarray, eos_id: int | None, dtype) -> np.ndarray:
    """The pieces ``spans`` concatenated, each ending with ``eos_id`` (added where a file's last
    document lacks it; None adds nothing, for windows)."""
    pieces = []
    for f, start, stop in spans:
        doc = files[f][start:stop]
        pieces.append(doc)
        if eos_id is not None and (len(doc) == 0 or doc[-1] != eos_id):
            pieces.append(np.array([eos_id], dtype=dtype))
    return np.concatenate(pieces).astype(dtype, copy=False) if pieces else np.zeros(0, dtype)
