"""Bad command lines and bad corpus files: one ``smalllm: error:`` line naming the option or file, a
non-zero exit, no traceback, and nothing written (the scratch directory and the corpus cache are
compared file by file, directories included, before and after).

Also here: options anywhere on the command line, and the safety net in ``main()`` that turns any
other exception into one line (exit 1) unless ``--debug`` asks for the traceback.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import TINY_OVERRIDES, assert_one_line_error, tiny_config, tree_snapshot

from smalllm import cli
from smalllm.cli import main
from smalllm.data import background
from smalllm.data.background import load_texts
from smalllm.errors import ConfigError

Builder = Callable[[Path, pytest.MonkeyPatch], tuple[list[str], str]]
CASES: dict[str, Builder] = {}


def case(name: str) -> Callable[[Builder], Builder]:
    def register_case(fn: Builder) -> Builder:
        assert name not in CASES, name
        CASES[name] = fn
        return fn

    return register_case


def argv_case(name: str, expect: str, *argv: str) -> None:
    """A case that needs no files: the command line alone is wrong."""
    CASES[name] = lambda _tmp, _mp: (list(argv), expect)


# ----------------------------------------------------------------------------------------------
# Numeric options
# ----------------------------------------------------------------------------------------------

argv_case(
    "models-vocab-size-zero",
    "--vocab-size: must be between 1 and 4,294,967,296, got 0",
    "models",
    "--vocab-size",
    "0",
)
argv_case("models-vocab-size-negative", "--vocab-size: must be between 1", "models", "--vocab-size", "-5")
argv_case(
    "models-vocab-size-not-a-number",
    "argument --vocab-size: invalid int value: 'lots'",
    "models",
    "--vocab-size",
    "lots",
)
argv_case("models-seq-len-zero", "--seq-len: must be between 1 and", "models", "--seq-len", "0")
argv_case("models-seq-len-huge", "--seq-len: must be between 1 and", "models", "--seq-len", str(2**40))
argv_case(
    "tasks-show-n-negative",
    "--n: must be between 0 and 10,000 (tasks show prints at most 10,000 instances), got -4",
    "tasks",
    "show",
    "t_cmp",
    "--n",
    "-4",
)
argv_case(
    "tasks-show-n-huge",  # hung before: it generated 10^11 instances
    "--n: must be between 0 and 10,000 (tasks show prints at most 10,000 instances), got 100000000000",
    "tasks",
    "show",
    "t_cmp",
    "--n",
    "100000000000",
)
argv_case(
    "tasks-show-seed-negative",
    "--seed: must be between 0 and 2^63 - 1, got -1",
    "tasks",
    "show",
    "t_cmp",
    "--seed",
    "-1",
)
argv_case(
    "tasks-show-seed-huge",
    f"--seed: must be between 0 and 2^63 - 1, got {2**70}",
    "tasks",
    "show",
    "t_cmp",
    "--seed",
    str(2**70),
)
argv_case(
    "data-build-num-proc-zero",
    "--num-proc: must be between 1 and 1,024, got 0",
    "data",
    "build",
    *TINY_OVERRIDES,
    "--num-proc",
    "0",
)
argv_case(
    "data-inspect-negative-steps",
    "--rows and --steps must be >= 0, got --steps -3",
    "data",
    "inspect",
    *TINY_OVERRIDES,
    "--steps",
    "-3",
)
argv_case(
    "data-inspect-steps-huge",
    "--steps: must be between 0 and 10,000,000",
    "data",
    "inspect",
    *TINY_OVERRIDES,
    "--steps",
    "100000000000",
)
argv_case(
    "data-inspect-rows-huge",
    "--rows: must be between 0 and 4,096",
    "data",
    "inspect",
    *TINY_OVERRIDES,
    "--rows",
    "5000",
)


@case("sweep-workers-zero")
def _(tmp: Path, _mp: pytest.MonkeyPatch) -> tuple[list[str], str]:
    return [
        "sweep",
        str(tmp / "sweep.yaml"),
        "--workers",
        "0",
    ], "--workers: must be between 1 and 1,024, got 0"


@case("sweep-workers-negative")
def _(tmp: Path, _mp: pytest.MonkeyPatch) -> tuple[list[str], str]:
    return ["sweep", str(tmp / "sweep.yaml"), "--workers", "-2"], "--workers: must be between 1 and 1,024"


# ----------------------------------------------------------------------------------------------
# Task parameters of `tasks show`: the task's own checks, as for a run
# ----------------------------------------------------------------------------------------------

argv_case(
    "tasks-show-param-unknown",
    "num_vals: unknown parameter of task 't_cmp' (did you mean 'num_values'?)",
    "tasks",
    "show",
    "t_cmp",
    "num_vals=3",
)
argv_case(
    "tasks-show-param-range",
    "num_values: must be at least 2, got 1",
    "tasks",
    "show",
    "t_cmp",
    "num_values=1",
)
argv_case(
    "tasks-show-param-range-high",
    "length: must be between 1 and 512, got 100000",
    "tasks",
    "show",
    "copy",
    "length=100000",
)
argv_case(
    "tasks-show-param-type",
    "num_values: expected an integer, got 'abc'",
    "tasks",
    "show",
    "t_cmp",
    "num_values=abc",
)
argv_case(
    "tasks-show-param-not-yaml",
    "task parameter 'num_values': '[1,' is not a valid value",
    "tasks",
    "show",
    "t_cmp",
    "num_values=[1,",
)
argv_case(
    "tasks-show-param-twice",
    "task parameter 'num_values' is given twice",
    "tasks",
    "show",
    "t_cmp",
    "num_values=3",
    "num_values=4",
)
argv_case(
    "tasks-show-param-empty-name", "task parameter '=4': expected name=value", "tasks", "show", "t_cmp", "=4"
)
argv_case(
    "tasks-show-param-nan",
    "alpha: expected a finite number, got nan",
    "tasks",
    "show",
    "sparse_parity",
    "alpha=.nan",
)

# ----------------------------------------------------------------------------------------------
# The command line itself
# ----------------------------------------------------------------------------------------------

argv_case("unknown-flag", "unrecognized arguments: --bogus (see 'smalllm train --help')", "train", "--bogus")
argv_case("unknown-command", "argument COMMAND: invalid choice: 'trian'", "trian")
argv_case("no-command", "the following arguments are required: COMMAND")
argv_case("no-action", "the following arguments are required: ACTION", "tasks")
argv_case("tasks-show-no-name", "the following arguments are required: name", "tasks", "show")
argv_case("flag-missing-value", "argument --vocab-size: expected one argument", "models", "--vocab-size")
argv_case("bad-choice", "argument --emit: invalid choice: 'pbs'", "sweep", "sweep.yaml", "--emit", "pbs")
argv_case(
    "resume-and-overwrite",  # "no checkpoint to resume from; start over with --overwrite" before
    "argument --overwrite: not allowed with argument --resume",
    "train",
    "--resume",
    "run_dir=run",
    "--overwrite",
)

# ----------------------------------------------------------------------------------------------
# Corpus files (data.background.source=files), through `smalllm data build`
# ----------------------------------------------------------------------------------------------


def build_argv(*paths: Path, out: Path | None = None) -> list[str]:
    listed = ", ".join(f"'{p}'" for p in paths)
    extra = ["--out", str(out)] if out is not None else []
    return [
        "data",
        "build",
        *TINY_OVERRIDES,
        "data.background.source=files",
        f"data.background.paths=[{listed}]",
        *extra,
    ]


def corpus_case(name: str, filename: str, content: bytes, expect: str) -> None:
    """A case building from one corpus file; ``{path}`` in ``expect`` is the file's path."""

    def build(tmp: Path, _mp: pytest.MonkeyPatch) -> tuple[list[str], str]:
        path = tmp / filename
        path.write_bytes(content)
        return build_argv(path), expect.format(path=path)

    CASES[name] = build


GOOD_LINE = b'{"text": "a fine document"}\n'

corpus_case(
    "txt-not-utf8", "corpus.txt", b"first\n\nsecond \xff\xfe here\n", "{path}: line 3 is not UTF-8 text"
)
corpus_case(
    "txt-truncated-character",
    "corpus.txt",
    b"first\n\nsecond \xc3",
    "{path}: line 3 is not UTF-8 text (a truncated character)",
)
corpus_case("txt-empty", "corpus.txt", b"", "{path}: empty file (no documents)")
corpus_case("txt-only-blank-lines", "corpus.txt", b"\n\n  \n\t\n", "{path}: empty file (no documents)")
corpus_case("jsonl-empty", "corpus.jsonl", b"", "{path}: empty file (no documents)")
corpus_case(
    "jsonl-bad-line",
    "corpus.jsonl",
    GOOD_LINE + GOOD_LINE + b'{"text": "unterminated\n',
    "{path}: line 3 is not valid JSON (Unterminated string starting at column 10); expected one object per line",
)
corpus_case(
    "jsonl-line-not-an-object",
    "corpus.jsonl",
    GOOD_LINE + b"[1, 2]\n",
    "{path}: line 2 is not a JSON object (got an array)",
)
corpus_case(
    "jsonl-missing-text-field",
    "corpus.jsonl",
    GOOD_LINE + b"\n" + b'{"body": "no text here"}\n',
    "{path}: line 3 has no 'text' field (data.background.text_field)",
)
corpus_case(
    "jsonl-text-not-a-string",
    "corpus.jsonl",
    GOOD_LINE + b'{"text": 42}\n',
    "{path}: line 2: 'text' is a number, not a string",
)
corpus_case(
    "jsonl-text-null", "corpus.jsonl", b'{"text": null}\n', "{path}: line 1: 'text' is null, not a string"
)
corpus_case(
    "jsonl-not-utf8", "corpus.jsonl", GOOD_LINE + b'{"text": "\xff"}\n', "{path}: line 2 is not UTF-8 text"
)
corpus_case(
    "json-array-item-not-an-object",
    "corpus.json",
    b'[{"text": "a"}, 3]',
    "{path}: item 1 is not a JSON object (got a number)",
)
corpus_case(
    "csv-missing-column",
    "corpus.csv",
    b"body,id\nhello,1\n",
    "{path}: no column 'text' in the CSV header (have body, id)",
)
corpus_case("parquet-not-parquet", "corpus.parquet", b"just text", "{path}: not a readable parquet file")


@case("parquet-missing-column")
def _(tmp: Path, _mp: pytest.MonkeyPatch) -> tuple[list[str], str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp / "corpus.parquet"
    pq.write_table(pa.table({"body": ["one", "two"]}), path)
    return build_argv(path), f"{path}: no column 'text' (have body); set data.background.text_field"


@case("corpus-path-is-a-directory")
def _(tmp: Path, _mp: pytest.MonkeyPatch) -> tuple[list[str], str]:
    path = tmp / "corpus.txt"
    path.mkdir()
    return build_argv(path), f"data.background.paths: '{path}' is a directory, not a file"


@case("corpus-path-is-a-fifo")
def _(tmp: Path, _mp: pytest.MonkeyPatch) -> tuple[list[str], str]:
    path = tmp / "corpus.txt"
    os.mkfifo(path)  # opening it to read would block until a writer came
    return build_argv(path), f"data.background.paths: '{path}' is not a regular file"


@case("corpus-file-unreadable")
def _(tmp: Path, mp: pytest.MonkeyPatch) -> tuple[list[str], str]:
    # Tests run as root, for whom chmod 000 does not stop reading: refuse the open instead.
    path = tmp / "corpus.txt"
    path.write_text("a document\n")
    real_open = open

    def refusing_open(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, *args, **kwargs)

    mp.setattr(background, "open", refusing_open, raising=False)
    return build_argv(path), f"{path}: cannot read (Permission denied)"


@case("corpus-second-file-bad")
def _(tmp: Path, _mp: pytest.MonkeyPatch) -> tuple[list[str], str]:
    good, bad = tmp / "a.jsonl", tmp / "b.jsonl"
    good.write_bytes(GOOD_LINE * 3)
    bad.write_bytes(GOOD_LINE + b"not json\n")
    return build_argv(good, bad), f"{bad}: line 2 is not valid JSON"


@case("corpus-bad-file-with-out")
def _(tmp: Path, _mp: pytest.MonkeyPatch) -> tuple[list[str], str]:
    """With --out, no output directory (nor its parents, nor a temporary one) is created."""
    path = tmp / "corpus.jsonl"
    path.write_bytes(b"oops\n")
    return build_argv(path, out=tmp / "new" / "corpus"), f"{path}: line 1 is not valid JSON"


# ----------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------


def test_case_count() -> None:
    print(f"\n{len(CASES)} command-line and corpus-file cases")
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(
    name: str,
    tmp_path: Path,
    corpus_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.chdir(scratch)  # a relative write would land here and show in the comparison
    argv, expect = CASES[name](scratch, monkeypatch)
    before = tree_snapshot(scratch), tree_snapshot(corpus_cache)
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert_one_line_error(rc, out, err, expect)
    assert rc == 2
    assert (tree_snapshot(scratch), tree_snapshot(corpus_cache)) == before, "files or directories changed"


def run_cli(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "smalllm.cli", *argv], capture_output=True, text=True, timeout=300, **kwargs
    )


@pytest.mark.parametrize(
    "name", ["models-vocab-size-negative", "tasks-show-n-huge", "unknown-flag", "jsonl-bad-line"]
)
def test_bad_input_subprocess(name: str, tmp_path: Path) -> None:
    """End to end: the real process exits 2 with one stderr line and no traceback."""
    with pytest.MonkeyPatch.context() as mp:
        argv, expect = CASES[name](tmp_path, mp)
    before = tree_snapshot(tmp_path)
    proc = run_cli(*argv, cwd=tmp_path)
    assert proc.returncode == 2
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, expect)
    assert tree_snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------
# Options anywhere on the line
# ----------------------------------------------------------------------------------------------


def _without_free_memory(plan: str) -> str:
    """A dry-run plan without its line of the machine's free memory, which changes from call to call."""
    return "\n".join(line for line in plan.splitlines() if "of available" not in line)


def test_flag_between_config_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text("model:\n  preset: micro-w32\n")
    run_dir = tmp_path / "run"
    overrides = [*TINY_OVERRIDES, f"run_dir={run_dir}", "model.preset=4m"]
    assert main(["train", str(config), "--dry-run", *overrides]) == 0
    between = _without_free_memory(capsys.readouterr().out)
    assert main(["train", "--dry-run", str(config), *overrides]) == 0
    assert _without_free_memory(capsys.readouterr().out) == between
    assert "4m" in between and not run_dir.exists()


def test_flags_between_task_name_and_params(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks", "show", "--n", "2", "t_cmp", "--seed", "3", "num_values=5"]) == 0
    mixed = capsys.readouterr().out
    assert main(["tasks", "show", "t_cmp", "num_values=5", "--n", "2", "--seed", "3"]) == 0
    assert capsys.readouterr().out == mixed
    assert "num_values: int = 5 (default 100)" in mixed and "samples (seed 3):" in mixed
    assert len(mixed.split("samples (seed 3):\n")[1].splitlines()) == 2


def test_debug_after_the_command_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.lrr: unknown key"):
        main(["train", *TINY_OVERRIDES, "--debug", f"run_dir={tmp_path / 'run'}", "train.lrr=1"])


def test_help_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: smalllm train") and "--dry-run" in out
    assert main(["--help"]) == 0
    assert "COMMAND" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# The safety net for everything that is not a user error
# ----------------------------------------------------------------------------------------------


def raising(exc: BaseException) -> Callable[[object], None]:
    def command(_args: object) -> None:
        raise exc

    return command


def test_unexpected_exception_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.COMMANDS, "models", raising(RuntimeError("boom\nsecond line of detail")))
    rc = main(["models"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert_one_line_error(rc, out, err, "RuntimeError: boom (run with --debug for the traceback)")
    assert "second line" not in err


@pytest.mark.parametrize("argv", [["--debug", "models"], ["models", "--debug"]])
def test_unexpected_exception_with_debug_raises(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "models", raising(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        main(argv)


def test_os_error_names_the_file(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/r/metrics.jsonl")
    monkeypatch.setitem(cli.COMMANDS, "models", raising(full))
    rc = main(["models"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert_one_line_error(rc, out, err, "smalllm: error: /runs/r/metrics.jsonl: No space left on device")


def test_keyboard_interrupt_exits_130(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.COMMANDS, "models", raising(KeyboardInterrupt()))
    assert main(["models"]) == 130
    assert capsys.readouterr().err == "smalllm: interrupted\n"


PATCHED_MAIN = textwrap.dedent(
    """
    import sys
    from smalllm import cli

    def explode(args):
        raise RuntimeError("unexpected failure")

    cli.COMMANDS["models"] = explode
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def test_unexpected_exception_subprocess() -> None:
    """End to end: exit 1 and one line; with --debug, the traceback."""
    proc = subprocess.run(
        [sys.executable, "-c", PATCHED_MAIN, "models"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, "RuntimeError: unexpected failure")
    proc = subprocess.run(
        [sys.executable, "-c", PATCHED_MAIN, "models", "--debug"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "RuntimeError: unexpected failure" in proc.stderr


def test_closed_pipe_stops_quietly() -> None:
    """`smalllm tasks show … | head -1`: no error line about the reader going away."""
    argv = ["tasks", "show", "sparse_parity", "num_bits=1024", "--n", "500"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "smalllm.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout.readline().startswith(b"sparse_parity:")
    proc.stdout.close()  # about a megabyte is still to come: the next write finds no reader
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err == b""


def test_file_size_limit_during_build(tmp_path: Path) -> None:
    """A write past the file-size limit: one line naming the option and the file, exit 2, no half-built
    corpus (the build reports write errors as a refusal of ``--out``)."""
    limit = 20 * 1024  # above the tokenizer files, below the first token shard

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "corpus"
    proc = run_cli(
        "data", "build", *TINY_OVERRIDES, "--out", str(out), cwd=tmp_path, preexec_fn=limit_file_size
    )
    assert proc.returncode == 2
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, "--out: cannot write")
    assert "train_00000.bin" in proc.stderr and "File too large" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# Valid files read as before
# ----------------------------------------------------------------------------------------------


ACCEPTED = {
    "bom-and-blank-lines.jsonl": b'\xef\xbb\xbf{"text": "one"}\n\n   \n{"text": "two", "id": 2}\n',
    "objects.json": b'[{"text": "one"}, {"text": "two"}]',
    "strings.json": b'["one", "two"]',
    "with-header.csv": b"text,id\none,1\ntwo,2\n",
    "paragraphs.txt": b"one\n\ntwo\n",
}


@pytest.mark.parametrize("filename", list(ACCEPTED))
def test_accepted_corpus_files(tmp_path: Path, filename: str) -> None:
    path = tmp_path / filename
    path.write_bytes(ACCEPTED[filename])
    cfg = tiny_config(tmp_path / "run", "data.background.source=files", f"data.background.paths=['{path}']")
    assert [t.strip() for t in load_texts(cfg.data.background)] == ["one", "two"]


def test_json_lines_check_reports_the_first_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(5000)]
    lines[4321] = '{"text": "cut'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"big.jsonl: line 4322 is not valid JSON"):
        background.check_corpus_file(path, "json", "text")
