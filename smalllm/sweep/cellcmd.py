"""``python -m smalllm.sweep.cellcmd``: the cell bookkeeping that emitted launch scripts call.

A Slurm or shell script written by ``smalllm sweep --emit`` decides nothing about a cell in bash; it
asks :mod:`smalllm.sweep.records`, so a cell run through Slurm is judged by the same rule and leaves the
same records as one run by ``smalllm sweep``::

    state  SWEEP_DIR CELL      print done | failed | partial | pending
    start  SWEEP_DIR CELL      record a new attempt; print the train flag (--resume, --overwrite or nothing)
    finish SWEEP_DIR CELL RC   record how the attempt ended (RC: its exit status); print the outcome

Errors are one line on stderr and exit status 2. Only the standard library and the records are
imported: the script calls this three times per cell, and torch would add seconds to each.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from smalllm.errors import SmalllmError
from smalllm.sweep import records

USAGE = "usage: python -m smalllm.sweep.cellcmd {state,start} SWEEP_DIR CELL | finish SWEEP_DIR CELL RC"


def _start(sweep_dir: Path, name: str) -> str:
    records.prepare_sweep_dir(sweep_dir)
    mode = records.launch_mode(sweep_dir, name)
    attempt = records.begin_attempt(sweep_dir, name, mode, f"job {os.environ.get('SLURM_JOB_ID', 'local')}")
    records.mark_running(sweep_dir, name, attempt, mode)
    return f"--{mode}" if mode else ""


def _finish(sweep_dir: Path, name: str, rc_text: str) -> str:
    try:
        rc = int(rc_text)
    except ValueError:
        raise SmalllmError(f"RC: expected an exit status, got {rc_text!r}") from None
    record = records.finish_attempt(sweep_dir, name, rc)
    return f"{name}: {record['state']}" + (f": {record['error']}" if record.get("error") else "")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else None
    arity = {"state": 3, "start": 3, "finish": 4}
    if command not in arity or len(args) != arity[command]:
        print(USAGE, file=sys.stderr)
        return 2
    sweep_dir, name = Path(args[1]), args[2]
    try:
        if command == "state":
            print(records.cell_state(sweep_dir, name))
        elif command == "start":
            print(_start(sweep_dir, name))
        else:
            print(_finish(sweep_dir, name, args[3]))
    except (SmalllmError, OSError) as exc:
        print(f"smalllm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
