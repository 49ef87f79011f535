"""Sweeps: config parsing and errors, dry runs, launch scripts, and real tiny grids run as subprocesses
(end to end, a failing cell, and a sweep killed with SIGKILL then rerun)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_OVERRIDES, TINY_TASKS

from smalllm.cli import main
from smalllm.errors import ConfigError
from smalllm.sweep.grid import cell_name, expand, format_value, load_sweep, parse_sweep, validate_cells
from smalllm.sweep.runner import SweepFailed, cell_state, read_status, run_dir_of, run_sweep

# Cell runs are tiny: share one thread each and skip the per-run TensorBoard files.
TINY = [*TINY_OVERRIDES, *TINY_TASKS]


def write_sweep(tmp_path: Path, grids: list[dict], name: str = "tiny", **extra) -> Path:
    """A sweep file over the tiny run config of conftest, writing into ``tmp_path/sweep``."""
    data = {"name": name, "sweep_dir": str(tmp_path / "sweep"), "overrides": TINY, "grids": grids, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


GRID_2X2 = {"model.preset": ["micro-w32", "micro-w48"], "data.tasks.0.frequency": [0.01, 0.02]}


def log_attempts(sweep_dir: Path, cell: str) -> int:
    return (sweep_dir / "cells" / cell / "train.log").read_text().count("=== attempt")


# ---------------------------------------------------------------------------------------------- parsing


def test_expand_unions_grids_and_names_cells_by_values(tmp_path):
    path = write_sweep(
        tmp_path,
        [
            GRID_2X2,
            {"model.preset": ["micro-w32"], "data.tasks.0.frequency": [0.01]},  # a duplicate: unioned
            {"name": "lr", "model.preset": ["micro-w32"], "train.lr": [1e-3]},
        ],
    )
    spec = load_sweep(path)
    cells = expand(spec)
    names = [c.name for c in cells]
    assert len(cells) == 5 and len(set(names)) == 5
    assert "micro-w32_frequency-0.01" in names and "lr_micro-w32_lr-0.001" in names
    first = cells[0]
    assert first.overrides[: len(TINY)] == TINY
    assert first.overrides[-2:] == ["model.preset=micro-w32", "data.tasks.0.frequency=0.01"]
    configs = validate_cells(spec, cells)
    assert configs["micro-w48_frequency-0.02"].data.tasks[0].frequency == 0.02
    assert configs["micro-w48_frequency-0.02"].model.preset == "micro-w48"
    assert str(configs["lr_micro-w32_lr-0.001"].run_dir).endswith("cells/lr_micro-w32_lr-0.001/run")


def test_values_round_trip_through_overrides(tmp_path):
    for value in [1e-8, 2.4e-5, 0.0035, 3, "micro-w48", "true", True, None, [1, 2], {"a": 1}]:
        assert yaml.safe_load(format_value(value)) == value
    # YAML 1.1 reads 1e-3 as a string; sweep files read it as the number it looks like.
    path = tmp_path / "s.yaml"
    path.write_text("grids:\n  - data.tasks.0.frequency: [1e-3, 2.5E-4]\n")
    spec = load_sweep(path)
    assert spec.grids[0].axes["data.tasks.0.frequency"] == [1e-3, 2.5e-4]
    assert cell_name(None, {"data.tasks.0.frequency": 1e-8, "train.seed": 0}) == "frequency-1.0e-08_seed-0"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"grid": [{"model.preset": ["micro-w32"]}]}, "grid: unknown key (did you mean 'grids'?)"),
        (
            {"grids": [{"model.preset": ["micro-w32"], "overide": ["train.lr=1"]}]},
            "grids.0.overide: unknown key",
        ),
        (
            {"grids": [{"model.presett": ["micro-w32"]}]},
            "model.presett: unknown key (did you mean 'preset'?)",
        ),
        (
            {"overrides": ["train.lrr=3e-3"], "grids": [{"model.preset": ["micro-w32"]}]},
            "overrides: train.lrr: unknown key",
        ),
        ({"grids": [{"model.preset": ["micro-w32", "huge"]}]}, "model.preset: unknown preset 'huge'"),
        ({"grids": [{"model.preset": ["micro-w32"]}], "axes": {"szie": "x"}}, "axes.szie: unknown key"),
        ({"grids": [{"model.preset": ["micro-w32"]}], "target": {"device": "tpu"}}, "target.device: 'tpu'"),
        ({"grids": []}, "grids: expected a non-empty list"),
    ],
)
def test_sweep_config_errors_name_the_key(tmp_path, raw, expected):
    with pytest.raises(ConfigError) as err:
        spec = parse_sweep(raw, source=tmp_path / "s.yaml")
        validate_cells(spec, expand(spec))
    message = str(err.value)
    assert expected in message and "\n" not in message


def test_cli_reports_sweep_errors_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"grids": [{"model.preset": ["micro-w32"], "train.sed": [0, 1]}]}))
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.sed: unknown key (did you mean 'seed'?)" in err


# ---------------------------------------------------------------------------------------------- dry run / emit


def test_dry_run_prints_every_cell_without_running(tmp_path, capsys):
    path = write_sweep(
        tmp_path, [GRID_2X2, {"name": "seeds", "model.preset": ["micro-w32"], "train.seed": [0, 1]}]
    )
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for cell in expand(load_sweep(path)):
        assert cell.name in out
    assert "est. time" in out and "total" in out and "6 cells" in out
    assert not (tmp_path / "sweep" / "cells").exists()


def test_dry_run_reports_gpu_hours_for_gpu_targets(tmp_path, capsys):
    path = write_sweep(
        tmp_path, [GRID_2X2], target={"device": "gpu", "gpu": "H100", "gpus_per_cell": 8, "mfu": 0.4}
    )
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "GPU h" in out and "8xH100" in out


def test_packaged_experiment_configs_validate(capsys):
    root = Path(__file__).resolve().parents[1]
    for path in [
        *sorted((root / "configs" / "experiments").glob("*.yaml")),
        root / "smalllm" / "configs" / "demo_sweep.yaml",
    ]:
        spec = load_sweep(path, sweep_dir="/nonexistent/sweep")
        assert validate_cells(spec, expand(spec))
    huang = load_sweep(root / "configs" / "experiments" / "huang_fig5.yaml")
    assert len(expand(huang)) == 32
    assert main(["sweep", str(root / "configs" / "experiments" / "huang_fig5.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "t_cmp_1b_frequency-2.4e-08" in out and "t_add_4b_frequency-0.0078" in out and "GPU h" in out


def test_emit_slurm_writes_an_accelerate_array_script(tmp_path, capsys):
    path = write_sweep(tmp_path, [GRID_2X2], slurm={"options": {"partition": "gpu"}, "max_parallel": 2})
    assert main(["sweep", str(path), "--emit", "slurm"]) == 0
    script = Path(capsys.readouterr().out.strip().splitlines()[-1])
    text = script.read_text()
    assert "#SBATCH --array=0-3%2" in text and "#SBATCH --partition=gpu" in text
    assert "accelerate launch" in text and "-m smalllm.cli train" in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert (tmp_path / "sweep" / "sweep.json").is_file()


def test_emitted_shell_script_runs_a_cell(tmp_path, capsys):
    path = write_sweep(tmp_path, [{"model.preset": ["micro-w32", "micro-w48"]}])
    assert main(["sweep", str(path), "--emit", "shell"]) == 0
    script = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert "accelerate launch --cpu" in script.read_text()
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        PYTHON=sys.executable,
    )
    done = subprocess.run(["bash", str(script), "0"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    sweep_dir = tmp_path / "sweep"
    assert cell_state(sweep_dir, "micro-w32") == "done"
    assert read_status(sweep_dir, "micro-w32")["state"] == "done"
    # A second run of the same cell is a no-op.
    again = subprocess.run(["bash", str(script), "0"], env=env, capture_output=True, text=True, timeout=60)
    assert "already done" in again.stdout and log_attempts(sweep_dir, "micro-w32") == 1


# ---------------------------------------------------------------------------------------------- running


def test_tiny_grid_end_to_end(tmp_path, capsys):
    path = write_sweep(tmp_path, [GRID_2X2])
    sweep_dir = tmp_path / "sweep"
    results = run_sweep(path, workers=2)
    assert results is not None and {r["state"] for r in results.values()} == {"done"}
    out = capsys.readouterr().out
    assert "lowest frequency learned at each size" in out
    # Two workers on this machine: each cell got its share of the cores.
    cfg = yaml.safe_load((run_dir_of(sweep_dir, "micro-w32_frequency-0.01") / "config.yaml").read_text())
    assert cfg["train"]["num_threads"] == max(1, len(os.sched_getaffinity(0)) // 2)

    with open(sweep_dir / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    tasks = {r["task"] for r in rows}
    assert {"t_cmp", "copy"} <= tasks
    cmp_rows = [r for r in rows if r["task"] == "t_cmp"]
    assert len(cmp_rows) == 4
    for r in cmp_rows:
        assert r["state"] == "done" and r["preset"] in ("micro-w32", "micro-w48")
        assert float(r["frequency"]) == float(r["data.tasks.0.frequency"])
        assert r["final_acc"] != "" and r["final_loss_ratio"] != "" and int(r["params"]) > 0
    report = sweep_dir / "report"
    for kind in ("heatmap_acc", "heatmap_loss", "frontier", "curves"):
        png = report / f"{kind}_t_cmp.png"
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    assert "lowest frequency learned" in (report / "summary.md").read_text()

    # Rerunning a finished sweep runs nothing; `smalllm report` redraws from the files.
    before = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("cells/*/run/summary.json")}
    run_sweep(path, workers=2)
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("cells/*/run/summary.json")} == before
    assert all(log_attempts(sweep_dir, c) == 1 for c in (p.name for p in (sweep_dir / "cells").iterdir()))
    assert main(["report", str(sweep_dir)]) == 0
    assert "heatmap_acc_t_cmp.png" in capsys.readouterr().out


def test_failing_cell_is_recorded_and_the_others_finish(tmp_path, capsys):
    # A task name is looked up only when the run builds its tasks, after the sweep has loaded every
    # cell's config: a failure at run time. (model.attn_implementation, used here before, is now a
    # Literal that the config loader refuses up front.)
    path = write_sweep(tmp_path, [{"data.tasks.0.name": ["t_cmp", "bogus"]}])
    sweep_dir = tmp_path / "sweep"
    with pytest.raises(SweepFailed, match="1 of 2 cells failed"):
        run_sweep(path)
    assert cell_state(sweep_dir, "name-t_cmp") == "done"
    status = read_status(sweep_dir, "name-bogus")
    assert status["state"] == "failed" and status["returncode"] != 0
    assert "bogus" in status["error"] and "\n" not in status["error"]
    with open(sweep_dir / "results.csv") as fh:
        failed = [r for r in csv.DictReader(fh) if r["cell"] == "name-bogus"]
    assert failed and failed[0]["state"] == "failed" and "bogus" in failed[0]["error"]

    # A rerun skips it; --retry-failed tries it again (and it fails again).
    with pytest.raises(SweepFailed):
        run_sweep(path)
    assert read_status(sweep_dir, "name-bogus")["attempts"] == 1
    with pytest.raises(SweepFailed):
        run_sweep(path, retry_failed=True)
    assert read_status(sweep_dir, "name-bogus")["attempts"] == 2
    assert log_attempts(sweep_dir, "name-t_cmp") == 1


def _wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"sweep exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_killed_sweep_resumes_without_rerunning_finished_cells(tmp_path):
    # Cell 1 is short; cell 2 is long enough (256 steps, a checkpoint every 8) to be killed mid-run.
    path = write_sweep(
        tmp_path,
        [{"train.max_tokens": [8192, 65536]}],
        overrides=[*TINY, "train.checkpoint_every=8", "eval.every_steps=64"],
    )
    sweep_dir = tmp_path / "sweep"
    first, second = "max_tokens-8192", "max_tokens-65536"
    cmd = [sys.executable, "-m", "smalllm.cli", "sweep", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: read_status(sweep_dir, first).get("state") == "done", 120, "the first cell", proc)
        ckpts = run_dir_of(sweep_dir, second) / "checkpoints"
        _wait_for(
            lambda: any(ckpts.glob("step_*/manifest.json")), 120, "a checkpoint of the second cell", proc
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    summary = run_dir_of(sweep_dir, first) / "summary.json"
    stamp = summary.stat().st_mtime_ns
    assert cell_state(sweep_dir, second) != "done"

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "1 done" in rerun.stdout and "resuming max_tokens-65536" in rerun.stdout
    assert summary.stat().st_mtime_ns == stamp and log_attempts(sweep_dir, first) == 1
    assert cell_state(sweep_dir, second) == "done"
    log = (sweep_dir / "cells" / second / "train.log").read_text()
    assert "(resume)" in log and "resumed from" in log
    final = json.loads((run_dir_of(sweep_dir, second) / "summary.json").read_text())
    assert final["steps"] == 256


def test_a_second_live_sweep_on_the_same_dir_is_refused(tmp_path):
    from smalllm.sweep.runner import sweep_lock

    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from smalllm.sweep.runner import sweep_lock\n"
            "with sweep_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(30)",
            str(sweep_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(Exception, match="used by a running sweep"), sweep_lock(sweep_dir):
            pass
    finally:
        holder.kill()
        holder.wait()
    with sweep_lock(sweep_dir):  # free again once the holder is gone
        pass
    shutil.rmtree(sweep_dir)
