"""Pre-tokenized background: memory-mapped token shards with a JSON index, built once and reused.

Layout of a built corpus directory::

    index.json        # dtype, shard files and token counts, documents, tokenizer, source config
    tokenizer/        # the PreTrainedTokenizerFast used (every run copies it into its checkpoints)
    train_00000.bin   # raw uint16/uint32 token ids; every document is followed by <eod>
    holdout.bin       # held-out background documents (never trained on)
    .smalllm          # the ownership marker (kind "corpus"): only such a directory is ever replaced

Tokenization runs through ``datasets.map`` (``num_proc`` workers) in chunks, so corpora larger than
memory stream through. The directory is written under a temporary name and renamed when complete,
so a crash never leaves a half-built corpus that looks finished.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from smalllm.data.background import document_tokens, load_texts, token_documents
from smalllm.data.config import DataConfig
from smalllm.data.tokenizer import build_tokenizer, load_tokenizer, tokenizer_hash
from smalllm.errors import SmalllmError
from smalllm.run_record import (
    MARKER,
    DirKind,
    error_line,
    marker_kind,
    pid_alive,
    refuse_foreign,
    remove_owned,
    set_aside,
    write_marker,
)

INDEX = "index.json"
HOLDOUT = "holdout.bin"
TOKENIZER_DIR = "tokenizer"
SHARD_TOKENS = 1 << 27  # 128M tokens (256 MB at uint16) per shard file
FILE_HASHES_DIR = "file-hashes"  # under the cache root: remembered hashes of corpus files
TOKENIZER_TRAIN_DOCS = 50_000  # BPE is trained on a prefix of the corpus: plenty for small vocabularies


class ShardedTokens:
    """The training token stream over several memory-mapped shard files, never copied into memory.

    Training reads fixed-length windows; a window never crosses a shard boundary (the few tokens at
    the end of each shard that do not fill a window are skipped), so a window is one slice of one file.
    """

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = parts
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def num_windows(self, length: int) -> int:
        return sum(len(p) // length for p in self.parts)

    def windows(self, ids: np.ndarray, length: int) -> np.ndarray:
        """Windows ``ids`` (numbered across shards) as an int64 array [len(ids), length]."""
        counts = np.array([len(p) // length for p in self.parts])
        starts = np.concatenate([[0], np.cumsum(counts)])
        shard = np.searchsorted(starts, ids, side="right") - 1
        out = np.empty((len(ids), length), dtype=np.int64)
        offsets = np.arange(length)
        for s in np.unique(shard):
            sel = shard == s
            local = (ids[sel] - starts[s])[:, None] * length + offsets
            out[sel] = self.parts[s][local]
        return out

    def max(self) -> int:
        return max(int(p.max()) for p in self.parts)


@dataclass
class TokenShards:
    """A built corpus: train token shards, held-out tokens and the tokenizer."""

    path: Path
    train: ShardedTokens
    holdout: np.ndarray
    tokenizer: object
    index: dict

    @property
    def num_tokens(self) -> int:
        return int(len(self.train))


def default_cache_dir() -> Path:
    """$SMALLLM_CACHE, else ~/.cache/smalllm."""
    env = os.environ.get("SMALLLM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "smalllm"


def cache_root(cfg: DataConfig) -> Path:
    """The cache directory of ``cfg``: ``data.cache_dir``, else :func:`default_cache_dir`."""
    return Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()


_DIGESTS: dict[tuple, str] = {}
"""SHA-256 of the files hashed in this process, by (path, size, mtime, inode, ctime)."""


def _memo_file(memo_dir: Path, resolved: Path) -> Path:
    return memo_dir / f"{hashlib.sha1(str(resolved).encode()).hexdigest()}.json"


def _identity(resolved: Path) -> dict:
    # Trusted as "the same bytes" only for the very same inode unchanged since: ctime cannot be set
    # back by hand (unlike mtime), so an edit that keeps the size and restores the mtime is noticed.
    stat = resolved.stat()
    return {
        "path": str(resolved),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "inode": stat.st_ino,
        "ctime_ns": stat.st_ctime_ns,
    }


def file_fingerprint(path: Path, memo_dir: Path | None = None) -> dict:
    """Size, modification time and SHA-256 of a file's bytes.

    Hashing a large corpus takes a while (about 1 s/GB), so a hash is reused while the file is
    untouched (same inode, size, mtime and ctime): within the process, and across processes through
    ``memo_dir`` once :func:`remember_file_hashes` has written it there. Any write means a new hash.
    """
    resolved = path.resolve()
    identity = _identity(resolved)
    key = tuple(identity.values())
    facts = {k: identity[k] for k in ("path", "size", "mtime_ns")}
    if key not in _DIGESTS and memo_dir is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            known = json.loads(_memo_file(memo_dir, resolved).read_text())
            if all(known.get(k) == v for k, v in identity.items()) and isinstance(known.get("sha256"), str):
                _DIGESTS[key] = known["sha256"]
    if key not in _DIGESTS:
        with open(resolved, "rb") as fh:
            _DIGESTS[key] = hashlib.file_digest(fh, "sha256").hexdigest()
    return {**facts, "sha256": _DIGESTS[key]}


def _source_files(cfg: DataConfig) -> list[Path]:
    bg = cfg.background
    if bg.source not in ("files", "tokens"):
        return []
    return [Path(p) for p in bg.paths] + ([Path(bg.order_file)] if bg.order_file else [])


def remember_file_hashes(cfg: DataConfig) -> None:
    """Write the hashes of ``cfg``'s corpus files into the cache (``CACHE/file-hashes/``), so the next
    process need not read the files again. Only after a corpus was built or opened: a bad input
    leaves the cache as it was."""
    memo_dir = cache_root(cfg) / FILE_HASHES_DIR
    for path in _source_files(cfg):
        fingerprint = file_fingerprint(path, memo_dir)
        resolved = Path(fingerprint["path"])
        with contextlib.suppress(OSError):  # only a speed-up: a read-only cache still works
            memo_dir.mkdir(parents=True, exist_ok=True)
            memo = _memo_file(memo_dir, resolved)
            tmp = memo.with_name(f"{memo.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps({**_identity(resolved), "sha256": fingerprint["sha256"]}))
            tmp.rename(memo)


def source_fingerprint(cfg: DataConfig) -> object:
    """What identifies the background's content, beyond its config.

    Local files (``files``, ``tokens`` and an ``order_file``): each file's size and byte hash, and
    nothing else, so ``touch``, a copy in place or a ``git checkout`` of the same bytes keeps the
    corpus (mtime and inode only decide whether a remembered hash may be reused). A hub dataset is
    keyed by its name, config and split (in the config) and never opened here: naming its cache
    entry must not download it (``smalllm train --dry-run`` asks for the name). A dataset changed
    upstream therefore keeps its entry; delete ``corpus-*`` in the cache to rebuild it. A pretrained
    tokenizer adds the hash of its content.
    """
    bg = cfg.background
    facts: dict[str, object] = {}
    if bg.source in ("files", "tokens"):
        facts["files"] = [_file_fact(p, cache_root(cfg) / FILE_HASHES_DIR) for p in _source_files(cfg)]
    if cfg.tokenizer.kind == "pretrained":
        facts["tokenizer"] = tokenizer_hash(build_tokenizer(cfg.tokenizer))
    return facts


def _file_fact(path: Path, memo_dir: Path) -> object:
    """A file's content (size and SHA-256); a missing or unreadable one is left to the source's own
    checks, which name the field and the file in one line."""
    try:
        if not path.is_file():
            return str(path)
        fingerprint = file_fingerprint(path, memo_dir)
    except OSError:
        return str(path)
    return {"size": fingerprint["size"], "sha256": fingerprint["sha256"]}


def _content(sources: object) -> object:
    """The content part of a stored ``index["sources"]``: corpora built before the key was on content
    alone also recorded each file's path and mtime."""
    if not isinstance(sources, dict) or not isinstance(sources.get("files"), list):
        return sources
    files = [
        {k: f.get(k) for k in ("size", "sha256")} if isinstance(f, dict) else f for f in sources["files"]
    ]
    return {k: v for k, v in sources.items() if k != "dataset"} | {"files": files}


def corpus_config(cfg: DataConfig) -> dict:
    """The settings that shape the token shards: background and tokenizer configs, and ``seq_len``
    where it cuts the windows of token files. Shared by :func:`corpus_key` and the sweep's grouping
    of cells by corpus, so both agree on which runs read one corpus."""
    return {
        "background": asdict(cfg.background),
        "tokenizer": asdict(cfg.tokenizer),
        # Windows of token files are cut at seq_len: then it shapes the shards too.
        "seq_len": cfg.seq_len
        if cfg.background.source == "tokens" and cfg.background.order_unit == "window"
        else None,
    }


def corpus_key(cfg: DataConfig) -> str:
    """Hash of everything that determines the token shards: :func:`corpus_config` and the content it
    points to (:func:`source_fingerprint`)."""
    blob = json.dumps({**corpus_config(cfg), "content": source_fingerprint(cfg), "v": 3}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def corpus_dir(cfg: DataConfig) -> Path:
    """The cache entry of ``cfg``'s corpus: editing a corpus file (or swapping the tokenizer) gives
    a new entry, so a rerun rebuilds instead of serving the old shards. Only reads."""
    return cache_root(cfg) / f"corpus-{corpus_key(cfg)}"


def corpus_is_current(cfg: DataConfig, out: Path) -> bool:
    """Whether ``out`` holds a built corpus of ``cfg``'s current content and settings (what
    ``data build --if-missing --out DIR`` keeps; a directory outside the cache is not content-keyed)."""
    try:
        index = json.loads((Path(out) / INDEX).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(index, dict):
        return False
    settings = corpus_config(cfg)
    return {k: index.get(k) for k in settings} == settings and _content(index.get("sources")) == _content(
        source_fingerprint(cfg)
    )


def _cache_field(cfg: DataConfig) -> str:
    return "data.cache_dir" if cfg.cache_dir else "cache directory ($SMALLLM_CACHE)"


def check_corpus_target(cfg: DataConfig, out: Path | None = None, field: str | None = None) -> None:
    """The checks :func:`build_corpus` makes on its output directory (by default the cache's) before
    any work; they only read, so ``smalllm train --dry-run`` makes them too."""
    out = Path(out) if out is not None else corpus_dir(cfg)
    field = field or _cache_field(cfg)
    if out.parent.exists() and not out.parent.is_dir():
        raise SmalllmError(f"{field}: '{out.parent}' exists and is not a directory")
    # The nearest existing ancestor must be a directory, else creating the output fails (ENOTDIR).
    existing = next((p for p in out.parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise SmalllmError(f"{field}: cannot write to '{out.parent}' ({os.strerror(errno.ENOTDIR)})")
    refuse_foreign(out, "corpus", field, _corpus_owns)
    tokenizer_dir = out / TOKENIZER_DIR
    if marker_kind(out) == "corpus" and tokenizer_dir.is_dir():
        stray = sorted(p.name for p in tokenizer_dir.iterdir() if not _tokenizer_owns(p.name))
        if stray:
            raise SmalllmError(
                f"{field}: '{out}' also holds files smalllm did not write ({TOKENIZER_DIR}/{stray[0]}"
                f"{', ...' if len(stray) > 1 else ''}); refusing to replace it, move them out first"
            )


def ensure_corpus(cfg: DataConfig, num_proc: int = 1, log=print) -> TokenShards:
    """Open the cached corpus for ``cfg``, building it first if it does not exist."""
    path = corpus_dir(cfg)
    if not (path / INDEX).is_file():
        check_corpus_target(cfg, path)  # refused before saying that it is being built
        log(f"building background corpus in {path} (once; cached for later runs)")
        build_corpus(cfg, path, num_proc=num_proc)
    corpus = open_corpus(path)
    remember_file_hashes(cfg)
    return corpus


def export_tokenizer(cfg: DataConfig, out: Path, field: str = "--out", num_proc: int = 1):
    """Save the tokenizer of ``cfg`` (building its corpus if needed) as a directory ``out``.

    ``out`` may be absent, empty, or a tokenizer directory smalllm wrote before (it is replaced);
    anything else is refused before any work. Returns the tokenizer.
    """
    out = Path(out)
    refuse_foreign(out, "tokenizer", field, _tokenizer_owns)
    tokenizer = ensure_corpus(cfg, num_proc=num_proc, log=lambda _m: None).tokenizer
    with _staged(out, "tokenizer", field) as tmp:
        tokenizer.save_pretrained(str(tmp))
    return tokenizer


def _corpus_owns(name: str) -> bool:
    """The names a corpus build writes: a corpus directory holding anything else is not replaced."""
    return name in (MARKER, INDEX, HOLDOUT, TOKENIZER_DIR) or bool(re.fullmatch(r"train_\d{5}\.bin", name))


TOKENIZER_FILES = frozenset(
    {
        MARKER,
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "chat_template.jinja",
        "chat_template.json",
        "vocab.json",
        "merges.txt",
        "vocab.txt",
        "tokenizer.model",
        "spiece.model",
        "sentencepiece.bpe.model",
    }
)
"""The files a tokenizer's ``save_pretrained`` writes (fast, and the slow formats it may add)."""


def _tokenizer_owns(name: str) -> bool:
    """The names ``smalllm data tokenizer`` writes: a tokenizer directory holding anything else (a
    file a user put there) is not replaced."""
    return name in TOKENIZER_FILES


_OWNS: dict[str, Callable[[str], bool] | None] = {"corpus": _corpus_owns, "tokenizer": _tokenizer_owns}


def _staging_prefix(out: Path) -> str:
    """``NAME.tmp-HOST-``: a build's staging directory ends in its pid. The host is part of the name
    because a cache on a shared filesystem is written from several machines, whose pids collide."""
    return f"{out.name}.tmp-{socket.gethostname()}-"


def _crashed_staging(out: Path) -> list[Path]:
    """Staging directories of ``out`` left by crashed builds: this host's, of a process that is gone
    (or of this very pid, reused). Another host's, or a live process's, is still being written."""
    prefix = _staging_prefix(out)
    found = []
    with contextlib.suppress(OSError):
        for path in out.parent.iterdir():
            pid = path.name[len(prefix) :] if path.name.startswith(prefix) else ""
            if pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
                found.append(path)
    return sorted(found)


@contextlib.contextmanager
def _staged(out: Path, kind: DirKind, field: str) -> Iterator[Path]:
    """Build a directory under a temporary sibling name (marker first), then put it in place of
    ``out``, which is replaced only if smalllm made it as the same ``kind``."""
    tmp = out.with_name(f"{_staging_prefix(out)}{os.getpid()}")
    try:
        for stale in _crashed_staging(out):
            if stale == tmp:  # in the way: it must go (or the refusal says why not)
                remove_owned(stale, kind, field, _OWNS[kind])
            else:  # only tidying: one holding files smalllm did not write is left alone
                with contextlib.suppress(SmalllmError, OSError):
                    remove_owned(stale, kind, field, _OWNS[kind])
        tmp.mkdir(parents=True)
        write_marker(tmp, kind)
    except OSError as exc:
        raise SmalllmError(f"{field}: cannot write to '{tmp.parent}' ({exc.strerror})") from None
    try:
        yield tmp
        # The old directory is moved aside, not deleted, until the new one is in place.
        aside = set_aside(out, kind, field, _OWNS[kind])
        try:
            tmp.rename(out)
        except OSError as exc:
            if aside is not None:
                os.rename(aside, out)
            raise SmalllmError(f"{field}: cannot replace '{out}' ({exc.strerror})") from None
        if aside is not None:
            shutil.rmtree(aside)  # proven smalllm's own by set_aside
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_corpus(cfg: DataConfig, out: Path, num_proc: int = 1, field: str | None = None) -> Path:
    """Tokenize the background corpus of ``cfg`` into shards under ``out`` (atomically).

    An existing ``out`` is replaced only if it is a corpus smalllm built (or empty); anything else is
    refused before any work, naming ``field`` (by default the cache directory's setting).
    """
    out = Path(out)
    field = field or _cache_field(cfg)
    check_corpus_target(cfg, out, field)
    sources = source_fingerprint(cfg)
    if cfg.background.source == "tokens":
        tokenizer = build_tokenizer(cfg.tokenizer)
        files, spans = token_documents(cfg.background, tokenizer.eos_token_id, cfg.seq_len)
        _check_token_ids(cfg, files, len(tokenizer))
        with _staged(out, "corpus", field) as tmp:
            _write_token_corpus(cfg, tokenizer, files, spans, tmp, field, sources)
    else:
        # Opened (and its files checked) first: a bad source leaves no directory behind.
        texts = load_texts(cfg.background)
        with _staged(out, "corpus", field) as tmp:
            _write_corpus(cfg, texts, tmp, num_proc, field, sources)
    remember_file_hashes(cfg)
    return out


def _check_token_ids(cfg: DataConfig, files: list[np.ndarray], vocab_size: int) -> None:
    for path, tokens in zip(cfg.background.paths, files):
        top = int(tokens.max())  # one pass over the memory map, never loaded whole
        if top >= vocab_size:
            raise SmalllmError(
                f"{path}: token id {top} is outside the vocabulary of data.tokenizer ({vocab_size} tokens)"
            )


def _write_token_corpus(
    cfg: DataConfig, tokenizer, files: list[np.ndarray], spans: np.ndarray, tmp: Path, field: str, sources
) -> None:
    """Copy pre-tokenized documents, in reading order, into the corpus layout (held-out ones first)."""
    bg = cfg.background
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.uint32
    # Windows are copied whole (OLMo's instances span documents); documents end with <eod>.
    eod = tokenizer.eos_token_id if bg.order_unit == "document" else None
    try:
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        holdout = document_tokens(files, spans[: bg.holdout_documents], eod, dtype)
        with _naming(tmp / HOLDOUT):
            holdout.tofile(tmp / HOLDOUT)
        # Shards hold whole windows, so the stream's window k is the k-th window of the order.
        shard_tokens = SHARD_TOKENS - SHARD_TOKENS % cfg.seq_len if eod is None else SHARD_TOKENS
        writer, total = _ShardWriter(tmp, dtype, shard_tokens), 0
        for start in range(bg.holdout_documents, len(spans), 100_000):
            ids = document_tokens(files, spans[start : start + 100_000], eod, dtype)
            writer.write(ids)
            total += len(ids)
        if total == 0:
            raise SmalllmError(
                "data.background: the token files hold no training documents after the held-out split"
            )
        _write_index(
            cfg,
            tmp,
            dtype,
            writer.close(),
            total,
            len(spans) - bg.holdout_documents,
            holdout,
            min(bg.holdout_documents, len(spans)),
            tokenizer,
            sources,
        )
    except OSError as exc:
        where = exc.filename or tmp
        raise SmalllmError(f"{field}: cannot write '{where}' ({error_line(exc)})") from None


def _write_corpus(
    cfg: DataConfig, texts: Iterable[str], tmp: Path, num_proc: int, field: str, sources: object
) -> None:
    bg = cfg.background
    try:
        holdout_docs = list(itertools.islice(texts, bg.holdout_documents))
        # The BPE trains on training documents only; tee keeps the generator single-pass.
        head, texts = itertools.tee(texts)
        tokenizer = build_tokenizer(cfg.tokenizer, itertools.islice(head, TOKENIZER_TRAIN_DOCS))
        del head
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.uint32
        # Without end_of_document the documents keep their separators and are simply joined.
        eod = tokenizer.eos_token_id if bg.end_of_document else None

        holdout = _tokenize(holdout_docs, tokenizer, eod, dtype, num_proc)
        with _naming(tmp / HOLDOUT):
            holdout.tofile(tmp / HOLDOUT)
        shards, total, docs = [], 0, 0
        writer = _ShardWriter(tmp, dtype)
        for chunk in _chunks(texts, 20_000):
            ids = _tokenize(chunk, tokenizer, eod, dtype, num_proc)
            writer.write(ids)
            total += len(ids)
            docs += len(chunk)
        shards = writer.close()
        if total == 0:
            raise SmalllmError(
                "data.background: the corpus has no training documents after the held-out split"
            )
        _write_index(cfg, tmp, dtype, shards, total, docs, holdout, len(holdout_docs), tokenizer, sources)
    except OSError as exc:
        # A full disk or a file-size limit: say which file, in one line.
        where = exc.filename or tmp
        raise SmalllmError(f"{field}: cannot write '{where}' ({error_line(exc)})") from None


def _write_index(
    cfg: DataConfig,
    tmp: Path,
    dtype,
    shards: list[dict],
    total: int,
    docs: int,
    holdout: np.ndarray,
    holdout_docs: int,
    tokenizer,
    sources: object,
) -> None:
    index = {
        "dtype": np.dtype(dtype).name,
        "shards": shards,
        "train_tokens": total,
        "train_documents": docs,
        "holdout_tokens": int(len(holdout)),
        "holdout_documents": holdout_docs,
        "vocab_size": len(tokenizer),
        "eod_id": tokenizer.eos_token_id,
        **corpus_config(cfg),
        "sources": sources,
    }
    with _naming(tmp / INDEX):
        (tmp / INDEX).write_text(json.dumps(index, indent=2))


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Put ``path`` into a write error that lacks it (write() on a full disk or past the file-size
    limit names no file), so the one-line error says which write failed."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


class _ShardWriter:
    def __init__(self, root: Path, dtype, shard_tokens: int | None = None) -> None:
        self.root, self.dtype = root, dtype
        self.shard_tokens = shard_tokens or SHARD_TOKENS
        self.shards: list[dict] = []
        self._fh = None
        self._count = 0

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self._fh is None or self._count >= self.shard_tokens:
                self._open()
            take = min(len(ids), self.shard_tokens - self._count)
            with _naming(self.root / self.shards[-1]["file"]):
                self._fh.write(ids[:take].tobytes())
            self._count += take
            self.shards[-1]["tokens"] = self._count
            ids = ids[take:]

    def _open(self) -> None:
        if self._fh is not None:
            self._fh.close()
        name = f"train_{len(self.shards):05d}.bin"
        self._fh = open(self.root / name, "wb")  # noqa: SIM115 - closed in close()/_open()
        self._count = 0
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> list[dict]:
        if self._fh is not None:
            self._fh.close()
        return self.shards


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _tokenize(texts: list[str], tokenizer, eod: int | None, dtype, num_proc: int) -> np.ndarray:
    """The token ids of ``texts`` concatenated, each followed by ``eod`` (nothing when None)."""
    if not texts:
        return np.zeros(0, dtype=dtype)
    if num_proc > 1 and len(texts) >= 10_000:
        import datasets

        datasets.disable_progress_bars()
        ds = datasets.Dataset.from_dict({"text": texts})
        ds = ds.map(
            lambda b: {"ids": tokenizer(b["text"], add_special_tokens=False)["input_ids"]},
            batched=True,
            num_proc=num_proc,
            remove_columns=["text"],
        )
        encoded = ds["ids"]
    else:
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    extra = 0 if eod is None else 1
    lengths = np.fromiter((len(e) + extra for e in encoded), dtype=np.int64, count=len(encoded))
    out = np.empty(int(lengths.sum()), dtype=dtype)
    if eod is not None:
        out[:] = eod
    ends = np.cumsum(lengths)
    for start, ids in zip(ends - lengths, encoded):
        out[start : start + len(ids)] = ids
    return out


def open_corpus(path: str | Path) -> TokenShards:
    """Memory-map a built corpus; a missing or inconsistent file is a one-line error naming it."""
    path = Path(path)
    index_file = path / INDEX
    try:
        index = json.loads(index_file.read_text())
        dtype = np.dtype(index["dtype"])
        shards = [(path / shard["file"], int(shard["tokens"])) for shard in index["shards"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SmalllmError(f"{index_file}: unreadable corpus index ({type(exc).__name__}: {exc})") from None
    if not shards:
        raise SmalllmError(f"{index_file}: lists no token shards; rebuild the corpus")
    parts = []
    for f, tokens in shards:
        expected = tokens * dtype.itemsize
        if not f.is_file() or f.stat().st_size != expected:
            size = f.stat().st_size if f.is_file() else "missing"
            raise SmalllmError(
                f"{f}: corrupt token shard (expected {expected} bytes, found {size}); rebuild it"
            )
        parts.append(np.memmap(f, dtype=dtype, mode="r"))
    train = ShardedTokens(parts)
    holdout_file = path / HOLDOUT
    holdout = np.fromfile(holdout_file, dtype=dtype) if holdout_file.is_file() else np.zeros(0, dtype)
    if holdout_file.is_file() and len(holdout) != index.get("holdout_tokens", len(holdout)):
        raise SmalllmError(f"{holdout_file}: corrupt held-out shard; rebuild the corpus")
    tokenizer = load_tokenizer(path / TOKENIZER_DIR, field=str(path / TOKENIZER_DIR))
    vmax = int(train.max()) if len(train) < 50_000_000 else None
    if vmax is not None and vmax >= len(tokenizer):
        raise SmalllmError(f"{path}: token id {vmax} outside the tokenizer's vocabulary of {len(tokenizer)}")
    return TokenShards(path=path, train=train, holdout=holdout, tokenizer=tokenizer, index=index)
