"""Data at scale: content-keyed corpus caches, pre-tokenized token files in a given order, how text
files are cut into documents, passes over the background, and pretrained tokenizers with a padded
embedding. Nothing here downloads: the "pretrained" tokenizer is saved by the test itself."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import StopAt, quiet, tiny_config

from smalllm.cli import main
from smalllm.data.background import text_documents
from smalllm.data.shards import corpus_dir, ensure_corpus
from smalllm.data.stream import TaskStream
from smalllm.data.tokenizer import byte_tokenizer, char_tokenizer
from smalllm.errors import ConfigError, SmalllmError
from smalllm.model.build import build_model
from smalllm.model.presets import PRESETS
from smalllm.run_record import RunDir
from smalllm.train.plan import make_plan
from smalllm.train.trainer import Trainer, train

PLAY = "ACT I\n\nSCENE I. A heath.\nThunder.\n\n\nEnter three Witches.\n"


def flat(corpus) -> np.ndarray:
    return np.concatenate([np.asarray(p) for p in corpus.train.parts])


# ---------------------------------------------------------------------------------------------- text files


def test_text_units_cut_documents_with_or_without_an_end_token(tmp_path):
    path = tmp_path / "play.txt"
    path.write_text(PLAY)
    cut = {
        (unit, eod): list(text_documents([path], unit, eod))
        for unit in ("file", "paragraph", "line")
        for eod in (True, False)
    }
    assert cut["paragraph", True] == ["ACT I", "SCENE I. A heath.\nThunder.", "Enter three Witches."]
    assert cut["paragraph", False] == [
        "ACT I\n\n",
        "SCENE I. A heath.\nThunder.\n\n\n",
        "Enter three Witches.\n",
    ]
    assert cut["line", True] == ["ACT I", "SCENE I. A heath.", "Thunder.", "Enter three Witches."]
    assert cut["file", True] == [PLAY.strip("\n")]
    for unit in ("file", "paragraph", "line"):
        # Without an end token nothing is dropped: the documents are the file's exact text.
        assert "".join(cut[unit, False]) == PLAY


def test_a_character_model_can_see_the_blank_lines(tmp_path):
    path = tmp_path / "play.txt"
    path.write_text(PLAY * 3)
    cfg = tiny_config(
        tmp_path / "run",
        "data.background.source=files",
        f"data.background.paths=[{path}]",
        "data.background.holdout_documents=0",
        "data.background.text_unit=file",
        "data.background.end_of_document=false",
        "data.tokenizer.kind=char",
    ).data
    corpus = ensure_corpus(cfg, log=quiet)
    tokens = flat(corpus)
    assert corpus.tokenizer.decode(tokens.tolist()) == PLAY * 3  # blank lines kept, no <eod>
    assert corpus.tokenizer.eos_token_id not in tokens
    # The default cuts paragraphs and ends each with <eod>: 7 of them, since each copy's last line
    # runs on into the next copy's first ("Enter three Witches.\nACT I").
    default = ensure_corpus(
        tiny_config(tmp_path / "run", *_files(path), "data.tokenizer.kind=char").data, log=quiet
    )
    assert int((flat(default) == default.tokenizer.eos_token_id).sum()) == 7


def _files(path) -> list[str]:
    return [
        "data.background.source=files",
        f"data.background.paths=[{path}]",
        "data.background.holdout_documents=0",
    ]


# ---------------------------------------------------------------------------------------------- cache keys


def test_editing_a_corpus_file_rebuilds_its_shards(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"old document {i}" for i in range(30)))
    cfg = tiny_config(tmp_path / "run", *_files(path), "data.tokenizer.kind=byte").data
    first = ensure_corpus(cfg, log=quiet)
    assert first.tokenizer.decode(flat(first)[:14].tolist()) == "old document 0"
    assert first.index["sources"]["files"][0]["size"] == path.stat().st_size
    assert ensure_corpus(cfg, log=quiet).path == first.path  # unchanged: the cache is reused

    mtime = path.stat().st_mtime_ns
    path.write_text("\n\n".join(f"new document {i}" for i in range(30)))  # same size, new bytes
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, mtime))  # even the mtime
    second = ensure_corpus(cfg, log=quiet)
    assert second.path != first.path and second.path == corpus_dir(cfg)
    assert second.tokenizer.decode(flat(second)[:14].tolist()) == "new document 0"
    assert first.path.is_dir()  # the old entry is left alone (another run may be reading it)


def test_touching_or_checking_out_the_same_bytes_keeps_the_corpus(tmp_path):
    text = "\n\n".join(f"document {i}" for i in range(30))
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    cfg = tiny_config(tmp_path / "run", *_files(path), "data.tokenizer.kind=byte").data
    first = corpus_dir(cfg)
    os.utime(path, ns=(10**18, 10**18))  # touch: another mtime (and ctime), same bytes
    assert corpus_dir(cfg) == first
    # A git checkout writes a new file (new inode) and renames it over the old one.
    fresh = tmp_path / "checkout.tmp"
    fresh.write_text(text)
    fresh.rename(path)
    assert corpus_dir(cfg) == first
    path.write_text(text + "\n\none more document")
    assert corpus_dir(cfg) != first


def test_resume_refuses_a_corpus_edited_since_the_run_started(tmp_path):
    words = ["alpha", "beta", "gamma", "delta", "omega"]
    text = "\n\n".join(" ".join(words[(i + j) % 5] for j in range(12)) for i in range(300))
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    cfg = tiny_config(
        tmp_path / "run",
        *_files(path),
        "data.background.holdout_documents=50",
        "data.tokenizer.kind=byte",
        "data.task_tokens.source=vocabulary",
    )
    started_on = corpus_dir(cfg.data).name
    trainer = Trainer(cfg, log=quiet)
    trainer.callbacks.insert(0, StopAt(4))
    assert trainer.fit()["status"] == "interrupted"
    assert RunDir(cfg.run_dir).read_summary()["corpus"] == started_on

    path.write_text(text.replace("omega", "OMEGA"))  # same data config, other content
    edited = corpus_dir(cfg.data).name
    assert edited != started_on
    with pytest.raises(SmalllmError) as refused:
        train(cfg, resume=True, log=quiet)
    assert str(refused.value) == (
        f"data: the background corpus changed since this run started ({started_on} -> {edited}); "
        "a resumed run must read the same stream: restore the corpus files, or start over with --overwrite"
    )
    assert not (corpus_dir(cfg.data)).exists()  # refused before building the edited corpus
    path.write_text(text)  # restored: the run continues on the corpus it started on
    summary = train(cfg, resume=True, log=quiet)
    assert (summary["status"], summary["corpus"]) == ("completed", started_on)


def test_a_hub_dataset_is_keyed_by_name_and_a_dry_run_downloads_nothing(tmp_path, monkeypatch, capsys):
    import datasets

    def no_download(*args, **kwargs):
        raise AssertionError(f"datasets.load_dataset{args} was called")

    monkeypatch.setattr(datasets, "load_dataset", no_download)
    hub = ["data.background.source=hub", "data.background.hub_name=some/corpus"]
    cfg = tiny_config(tmp_path / "run", *hub).data
    first = corpus_dir(cfg)
    assert corpus_dir(cfg) == first
    for other in ("data.background.split=validation", "data.background.hub_config=en"):
        assert corpus_dir(tiny_config(tmp_path / "run", *hub, other).data) != first
    streamed = tiny_config(
        tmp_path / "run", *hub, "data.background.streaming=true", "data.background.max_documents=2000"
    )
    assert corpus_dir(streamed.data) != first  # streaming is part of the config, so of the key
    # The dry run of a downloaded (not streamed) hub corpus: estimated, 430 tokens per document.
    args = ["train", *tiny_config_args(tmp_path), *hub, "data.background.max_documents=2000", "--dry-run"]
    assert main(args) == 0
    windows = (2000 - 50) * 430 // 32  # 50 held-out documents, seq_len 32
    out = capsys.readouterr().out
    assert f"about {256 / windows:.3g} passes over the corpus ({windows:,} windows, 256 rows)" in out
    assert not first.exists()


# ---------------------------------------------------------------------------------------------- token files


DOCS = [f"doc {i}: " + "abcdefgh"[i] * (20 + 7 * i) for i in range(6)]
ORDER = [3, 0, 5, 1, 4, 2]


def _token_file(tmp_path, suffix: str = ".npy", dtype=np.uint16):
    tok = byte_tokenizer()
    eos = tok.eos_token_id
    ids = [tok(d, add_special_tokens=False)["input_ids"] + [eos] for d in DOCS]
    tokens = np.concatenate(ids).astype(dtype)
    path = tmp_path / f"part-0{suffix}"
    if suffix == ".npy":
        np.save(path, tokens)
    else:
        tokens.tofile(path)
    order = tmp_path / "global_indices.npy"
    np.save(order, np.array(ORDER, dtype=np.uint32))
    return path, order, ids


def test_olmo_token_file_trains_as_the_background_in_the_given_order(tmp_path):
    path, order, ids = _token_file(tmp_path)
    source = [
        "data.background.source=tokens",
        f"data.background.paths=[{path}]",
        f"data.background.order_file={order}",
        "data.background.holdout_documents=1",
        "data.background.shuffle=false",
        "data.tokenizer.kind=byte",
    ]
    # A corpus of ~300 tokens has no token seen 100 times: the task tables come from the vocabulary.
    cfg = tiny_config(
        tmp_path / "run",
        *source,
        "train.max_tokens=768",
        "eval.every_steps=2",
        "data.task_tokens.source=vocabulary",
    )
    corpus = ensure_corpus(cfg.data, log=quiet)
    # Document ORDER[0] is held out; the others follow in the order file's order.
    assert np.asarray(corpus.holdout).tolist() == ids[ORDER[0]]
    expected = np.concatenate([ids[i] for i in ORDER[1:]])
    assert flat(corpus).tolist() == expected.tolist()
    assert corpus.index["train_documents"] == 5

    # Unshuffled, row g of the stream is window g of that order.
    no_tasks = tiny_config(tmp_path / "run", *source, "data.tasks=[]").data
    rows = TaskStream(no_tasks, corpus, 8).rows(0, 3).input_ids
    assert rows.reshape(-1).tolist() == expected[: 3 * 32].tolist()

    summary = train(cfg, log=quiet)
    assert summary["status"] == "completed" and summary["steps"] == 3
    windows = len(expected) // 32  # non-overlapping windows of seq_len 32
    assert summary["background_passes"] == pytest.approx(3 * 8 / windows)

    # The same tokens as a raw uint32 .bin file make the same corpus.
    bin_path, _, _ = _token_file(tmp_path, ".bin", np.uint32)
    as_bin = tiny_config(
        tmp_path / "run2",
        *source,
        f"data.background.paths=[{bin_path}]",
        "data.background.token_dtype=uint32",
    ).data
    assert flat(ensure_corpus(as_bin, log=quiet)).tolist() == expected.tolist()


def test_olmo_global_indices_order_windows_of_seq_len(tmp_path):
    # OLMo numbers fixed-length instances file by file (each file's tail dropped); global_indices.npy
    # orders them. Two files of 100 and 70 tokens at seq_len 32 hold 3 + 2 instances.
    a, b = np.arange(2, 102, dtype=np.uint16), np.arange(102, 172, dtype=np.uint16)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    np.save(tmp_path / "global_indices.npy", np.array([4, 1, 3, 0, 2], dtype=np.uint32))
    cfg = tiny_config(
        tmp_path / "run",
        "data.background.source=tokens",
        f"data.background.paths=[{tmp_path / 'a.npy'}, {tmp_path / 'b.npy'}]",
        f"data.background.order_file={tmp_path / 'global_indices.npy'}",
        "data.background.order_unit=window",
        "data.background.holdout_documents=0",
        "data.background.shuffle=false",
        "data.tokenizer.kind=char",  # 103 ids: too few for these token files
        "data.tasks=[]",
    ).data
    with pytest.raises(
        SmalllmError, match=r"b.npy: token id 171 is outside the vocabulary of data.tokenizer \(103 tokens\)"
    ):
        ensure_corpus(cfg, log=quiet)
    cfg.tokenizer.kind = "byte"  # 258 ids
    corpus = ensure_corpus(cfg, log=quiet)
    instances = [a[0:32], a[32:64], a[64:96], b[0:32], b[32:64]]
    expected = np.concatenate([instances[i] for i in (4, 1, 3, 0, 2)])
    assert flat(corpus).tolist() == expected.tolist()  # no <eod> added between windows
    rows = TaskStream(cfg, corpus, 8).rows(0, 5).input_ids
    assert rows.tolist() == [instances[i].tolist() for i in (4, 1, 3, 0, 2)]


def test_token_files_and_order_are_checked_with_one_line_errors(tmp_path):
    path, order, _ = _token_file(tmp_path)
    base = ["data.background.source=tokens", f"data.background.paths=[{path}]", "data.tokenizer.kind=byte"]
    bad_order = tmp_path / "bad.npy"
    np.save(bad_order, np.array([0, 6]))
    floats = tmp_path / "floats.npy"
    np.save(floats, np.zeros(4, dtype=np.float32))
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x00\x01\x02")
    cases = [
        (
            [f"data.background.order_file={bad_order}"],
            r"data.background.order_file: .* names piece 6 .* hold 6 of data.background.order_unit",
        ),
        (
            [f"data.background.paths=[{floats}]"],
            r"floats.npy: expected a 1-D uint16 or uint32 token array, got float32",
        ),
        ([f"data.background.paths=[{odd}]"], r"odd.bin: 3 bytes is not a whole number of uint16 tokens"),
        (["data.tokenizer.kind=bpe"], r"^data.tokenizer.kind: source=tokens needs the tokenizer"),
        (["data.background.paths=[]"], r"^data.background.paths: required when source=tokens"),
    ]
    for extra, message in cases:
        with pytest.raises(ConfigError, match=message):
            ensure_corpus(tiny_config(tmp_path / "run", *base, *extra).data, log=quiet)
    with pytest.raises(ConfigError, match=r"^data.background.order_file: only for source=tokens"):
        tiny_config(tmp_path / "run", f"data.background.order_file={order}")
    with pytest.raises(ConfigError, match=r"^data.background.text_unit: "):
        tiny_config(tmp_path / "run", "data.background.text_unit=sentence")


# ---------------------------------------------------------------------------------------------- passes


def test_dry_run_reports_passes_over_the_background_and_warns_above_one(tmp_path, capsys):
    path, _, ids = _token_file(tmp_path)
    tokens = sum(len(i) for i in ids)
    args = [
        "train",
        *tiny_config_args(tmp_path),
        "data.background.source=tokens",
        f"data.background.paths=[{path}]",
        "data.background.holdout_documents=1",
        "data.tokenizer.kind=byte",
    ]
    assert main([*args, "train.max_tokens=256", "--dry-run"]) == 0
    # Not built yet: estimated from the file's length, 256 tokens = 8 rows of 32.
    windows = tokens // 32
    out = capsys.readouterr().out
    assert f"background   about {8 / windows:.3g} passes over the corpus ({windows:,} windows, 8 rows)" in out
    assert "WARNING" not in out
    assert main([*args, "train.max_tokens=8192", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"about {256 / windows:.3g} passes" in out and "WARNING: every background document is seen" in out


def tiny_config_args(tmp_path) -> list[str]:
    from conftest import TINY_OVERRIDES, TINY_TASKS

    return [*TINY_OVERRIDES, *TINY_TASKS, f"run_dir={tmp_path / 'run'}"]


# ---------------------------------------------------------------------------------------------- tokenizers


def test_pretrained_tokenizer_from_a_local_directory_with_a_padded_embedding(tmp_path):
    saved = tmp_path / "my tokenizer"
    char_tokenizer().save_pretrained(str(saved))
    vocab = len(char_tokenizer())  # 100 printable characters + <pad>, <eod>, <unk>
    assert vocab == 103
    cfg = tiny_config(
        tmp_path / "run",
        "data.tokenizer.kind=pretrained",
        f"data.tokenizer.name_or_path={saved}",
        "model.vocab_multiple=64",
        "train.max_tokens=512",
        "eval.enabled=false",
        # One task: over 103 characters, t_cmp's held-out triples occur inside copy's training
        # instances, and the pre-flight leak check rightly refuses the pair.
        "data.tasks=[{name: t_cmp, frequency: 0.01, params: {num_values: 20}, eval_size: 32}]",
    )
    model = build_model(cfg.model, vocab_size=vocab, max_seq_len=32)
    assert model.get_input_embeddings().weight.shape[0] == 128  # 103 rounded up to 2 x 64
    assert make_plan(cfg, vocab_size=vocab).vocab_size == 128
    summary = train(cfg, log=quiet)
    assert summary["status"] == "completed"
    assert summary["params"] == PRESETS["micro-w32"].params(128)
    with pytest.raises(
        ConfigError, match=r"^data.tokenizer.name_or_path: required when data.tokenizer.kind=pretrained"
    ):
        tiny_config(tmp_path / "run", "data.tokenizer.kind=pretrained")
    with pytest.raises(
        ConfigError, match=r"^data.tokenizer.name_or_path: tokenizer directory '.*nowhere' not found"
    ):
        ensure_corpus(
            tiny_config(
                tmp_path / "run",
                "data.tokenizer.kind=pretrained",
                f"data.tokenizer.name_or_path={tmp_path / 'nowhere'}",
            ).data,
            log=quiet,
        )
    with pytest.raises(ConfigError, match=r"^model.vocab_multiple: "):
        tiny_config(tmp_path / "run", "model.vocab_multiple=0")
    # A run saved before the rename (data.tokenizer.path) still loads, from the same directory.
    old = tiny_config(tmp_path / "run", "data.tokenizer.kind=pretrained", f"data.tokenizer.path={saved}")
    assert corpus_dir(old.data) != corpus_dir(cfg.data)  # the config differs, the tokenizer does not
    assert len(ensure_corpus(old.data, log=quiet).tokenizer) == vocab
    # A changed tokenizer in the same directory is a different corpus.
    before = corpus_dir(cfg.data)
    char_tokenizer("abc").save_pretrained(str(saved))
    assert corpus_dir(cfg.data) != before


# ---------------------------------------------------------------------------------------------- building


def test_data_build_if_missing_at_an_explicit_out_rebuilds_a_stale_corpus(tmp_path, capsys):
    from smalllm.data.shards import open_corpus

    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"old document {i}" for i in range(40)))
    out = tmp_path / "built"
    args = ["data", "build", *tiny_config_args(tmp_path), *_files(path), "data.tokenizer.kind=byte"]
    args += ["--out", str(out), "--if-missing"]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"built {out}: ")
    os.utime(path, ns=(10**18, 10**18))  # touched, same bytes: still current
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"kept {out}: ")
    path.write_text("\n\n".join(f"new document {i}" for i in range(40)))
    assert main(args) == 0
    assert capsys.readouterr().out.startswith(f"built {out}: ")  # stale: rebuilt in place
    corpus = open_corpus(out)
    assert corpus.tokenizer.decode(flat(corpus)[:14].tolist()) == "new document 0"
    assert main([*args, "data.tokenizer.kind=char"]) == 0  # another tokenizer: stale too
    assert capsys.readouterr().out.startswith(f"built {out}: ")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("built")) == ["built"]


def test_a_build_clears_only_this_hosts_staging_left_by_dead_processes(tmp_path):
    import socket
    import subprocess

    from smalllm.data import shards
    from smalllm.run_record import write_marker

    host = socket.gethostname()
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process now
    crashed = tmp_path / f"corpus.tmp-{host}-{gone.pid}"
    running = tmp_path / f"corpus.tmp-{host}-{os.getppid()}"  # a live process of this host
    elsewhere = tmp_path / f"corpus.tmp-other-host-{gone.pid}"  # another machine's: never judged here
    for staging in (crashed, running, elsewhere):
        staging.mkdir()
        write_marker(staging, "corpus")
    out = tmp_path / "corpus"
    with shards._staged(out, "corpus", "--out") as tmp:
        assert tmp.name == f"corpus.tmp-{host}-{os.getpid()}"
        (tmp / "index.json").write_text("{}")
    assert (out / "index.json").read_text() == "{}"
    assert (crashed.exists(), running.is_dir(), elsewhere.is_dir()) == (False, True, True)


def test_end_of_document_false_only_for_text_files(tmp_path):
    off = "data.background.end_of_document=false"
    message = (
        r"^data.background.end_of_document: false is only for source=files with .txt paths "
        r"\(other documents would run together\)"
    )
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path / "run", off)  # the synthetic corpus
    rows = tmp_path / "rows.jsonl"
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path / "run", *_files(rows), off)
    text = tmp_path / "play.TXT"
    assert tiny_config(tmp_path / "run", *_files(text), off).data.background.end_of_document is False


def test_a_slow_tokenizer_is_a_one_line_error():
    from types import SimpleNamespace

    from smalllm.data.tokenizer import tokenizer_hash

    slow = SimpleNamespace(name_or_path="some/slow-tokenizer", special_tokens_map={})
    with pytest.raises(ConfigError) as refused:
        tokenizer_hash(slow)
    assert str(refused.value) == (
        "data.tokenizer.name_or_path: 'some/slow-tokenizer' loads only as a slow tokenizer (no "
        "tokenizer.json); smalllm needs a fast one: convert it with transformers and save it with "
        "save_pretrained"
    )
    assert tokenizer_hash(byte_tokenizer()) == tokenizer_hash(byte_tokenizer())
