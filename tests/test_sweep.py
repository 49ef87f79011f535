"""Sweeps: config parsing and errors, dry runs and estimates, the cell-state rule, launch scripts (and
their quoting), deletion safety, and real tiny grids run as subprocesses (end to end, cells failing
before and inside training, and a sweep killed with SIGKILL then rerun)."""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_OVERRIDES, TINY_TASKS, tiny_config

from smalllm.cli import main
from smalllm.errors import ConfigError, SmalllmError
from smalllm.run_record import CHECKPOINT_MANIFEST, RunDir, marker_kind
from smalllm.sweep import cellcmd
from smalllm.sweep.emit import corpus_groups, shell_script, slurm_script
from smalllm.sweep.estimates import CPU_OVERHEAD_S, estimate_cell
from smalllm.sweep.execution import sweep_lock
from smalllm.sweep.grid import cell_name, expand, format_value, load_sweep, parse_sweep, validate_cells
from smalllm.sweep.records import (
    cell_state,
    finish_attempt,
    launch_mode,
    mark_running,
    read_status,
    run_dir_of,
)
from smalllm.sweep.runner import SweepFailed, run_sweep

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


def test_seed_axis_sets_data_and_init_seeds(tmp_path):
    grid = {"model.preset": ["micro-w32", "micro-w48"], "data.tasks.0.frequency": [0.01]}
    spec = load_sweep(write_sweep(tmp_path, [grid], seeds={"data": [0, 1], "init": [5, 6]}))
    cells = expand(spec)
    # Independent axes: 2 sizes x 2 data seeds x 2 init seeds, each named by both seeds.
    assert len(cells) == 8
    cell = next(c for c in cells if c.name == "micro-w48_frequency-0.01_dseed-1_iseed-6")
    assert cell.seeds == {"data": 1, "init": 6}
    assert cell.params == {"model.preset": "micro-w48", "data.tasks.0.frequency": 0.01}
    cfg = validate_cells(spec, [cell])[cell.name]
    # TINY_TASKS has two tasks: the data seed reaches both tables and the placement seed.
    assert (cfg.data.seed, [t.seed for t in cfg.data.tasks], cfg.train.seed) == (1, [1, 1], 6)

    together = expand(load_sweep(write_sweep(tmp_path, [grid], seeds={"data": [3, 4], "init": "data"})))
    assert [c.name for c in together] == [
        "micro-w32_frequency-0.01_dseed-3_iseed-3",
        "micro-w32_frequency-0.01_dseed-4_iseed-4",
        "micro-w48_frequency-0.01_dseed-3_iseed-3",
        "micro-w48_frequency-0.01_dseed-4_iseed-4",
    ]
    assert together[1].overrides[-4:] == [
        "data.seed=4",
        "data.tasks.0.seed=4",
        "data.tasks.1.seed=4",
        "train.seed=4",
    ]
    # Grids that sweep seeds themselves keep working (names as before).
    legacy = expand(
        load_sweep(write_sweep(tmp_path, [{"model.preset": ["micro-w32"], "train.seed": [0, 1]}]))
    )
    assert [c.name for c in legacy] == ["micro-w32_seed-0", "micro-w32_seed-1"] and legacy[0].seeds == {}


@pytest.mark.parametrize(
    "seeds, grid, expected",
    [
        (
            {"data": [0, 1]},
            {"data.tasks.0.seed": [0, 1]},
            "seeds.data: grids.0 also sets 'data.tasks.0.seed'",
        ),
        ({"init": [0]}, {"train.seed": [0]}, "seeds.init: grids.0 also sets 'train.seed'"),
        ({"data": [0], "init": "data"}, {"overrides": ["train.seed=3"]}, "seeds.init: grids.0.overrides"),
        ({"data": [0, 0]}, {}, "seeds.data: repeated seed"),
        ({"data": [0, -1]}, {}, "seeds.data.1: a seed must be an integer in [0, 4294967295], got -1"),
        ({"init": []}, {}, "seeds.init: expected a non-empty list of seeds"),
        ({"init": "data"}, {}, "seeds.init: 'data' needs a seeds.data list"),
        ({"table": [0]}, {}, "seeds.table: unknown key"),
    ],
)
def test_seed_axis_errors_are_one_line(tmp_path, seeds, grid, expected):
    raw = {"grids": [{"model.preset": ["micro-w32"], **grid}], "seeds": seeds}
    with pytest.raises(ConfigError) as err:
        parse_sweep(raw, source=tmp_path / "s.yaml")
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_dry_run_lists_the_seeds(tmp_path, capsys):
    path = write_sweep(tmp_path, [{"model.preset": ["micro-w32"]}], seeds={"data": [0, 2], "init": "data"})
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "seeds: data [0, 2]" in out and "init [= data seed]" in out
    header = next(line for line in out.splitlines() if line.startswith("cell"))
    assert header.split()[2:6] == ["data", "seed", "init", "seed"]
    row = next(line for line in out.splitlines() if line.startswith("micro-w32_dseed-2_iseed-2"))
    assert row.split()[1:4] == ["pending", "2", "2"]


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


def test_emitted_shell_script_leaves_the_same_records_as_smalllm_sweep(tmp_path, capsys):
    # The script builds the corpus once, then runs both cells through accelerate with the cell's
    # accelerate config (a CPU one here); `smalllm sweep` on the same grid must agree cell by cell.
    accel = tmp_path / "cpu accel.yaml"
    accel.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nuse_cpu: true\nnum_processes: 1\n"
    )
    grid = [{"model.preset": ["micro-w32", "micro-w48"]}]
    path = write_sweep(tmp_path, grid, target={"accelerate": {"default": str(accel)}})
    assert main(["sweep", str(path), "--emit", "shell"]) == 0
    script = Path(capsys.readouterr().out.strip().splitlines()[-1])
    text = script.read_text()
    assert f"ACCEL=(--config_file '{accel.resolve()}')" in text and "accelerate launch" in text
    assert text.count("-m smalllm.cli data build --if-missing") == 1  # one corpus for both cells
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        PYTHON=sys.executable,
    )
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 of 2 cell(s) failed" in done.stdout

    local = write_sweep(tmp_path, grid, name="local", sweep_dir=str(tmp_path / "local"))
    results = run_sweep(local)
    assert results is not None and {r["state"] for r in results.values()} == {"done"}
    for cell in ("micro-w32", "micro-w48"):
        emitted, ran = tmp_path / "sweep", tmp_path / "local"
        assert cell_state(emitted, cell) == cell_state(ran, cell) == "done"
        assert read_status(emitted, cell)["state"] == read_status(ran, cell)["state"] == "done"
        files = {p.relative_to(emitted / "cells" / cell) for p in (emitted / "cells" / cell).rglob("*")}
        assert files == {p.relative_to(ran / "cells" / cell) for p in (ran / "cells" / cell).rglob("*")}
        a = json.loads((run_dir_of(emitted, cell) / "summary.json").read_text())
        b = json.loads((run_dir_of(ran, cell) / "summary.json").read_text())
        assert (
            (a["status"], a["steps"], a["tokens"])
            == (b["status"], b["steps"], b["tokens"])
            == ("completed", 32, 8192)
        )
        # Same data, same seeds, one thread: the same losses.
        assert a["background_passes"] == pytest.approx(b["background_passes"])
        metrics = [run_dir_of(d, cell) / "metrics.jsonl" for d in (emitted, ran)]
        records = [[json.loads(line) for line in m.read_text().splitlines()] for m in metrics]
        losses = [[r["loss"] for r in rs if "loss" in r] for rs in records]
        assert len(losses[0]) == 16 and losses[0] == pytest.approx(losses[1], rel=1e-5)
    # A second run of a finished cell is a no-op.
    again = subprocess.run(["bash", str(script), "0"], env=env, capture_output=True, text=True, timeout=120)
    assert "already done" in again.stdout and log_attempts(tmp_path / "sweep", "micro-w32") == 1


def test_emitted_scripts_pick_fsdp_for_large_cells_and_build_first(tmp_path, capsys):
    root = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
    ddp, fsdp = root / "ddp_8gpu.yaml", root / "fsdp_8gpu.yaml"
    target = {
        "device": "gpu",
        "gpus_per_cell": 8,
        "accelerate": {"default": str(ddp), "fsdp": str(fsdp), "fsdp_from": "1b"},
    }
    path = write_sweep(tmp_path, [{"model.preset": ["150m", "1b", "4b"]}], target=target)
    spec = load_sweep(path)
    cells = expand(spec)
    configs = validate_cells(spec, cells)
    text = slurm_script(spec, cells, configs)
    lines = {c.name: next(line for line in text.splitlines() if f"CELL={c.name};" in line) for c in cells}
    assert f"ACCEL=(--config_file {ddp})" in lines["150m"]
    assert f"ACCEL=(--config_file {fsdp})" in lines["1b"] and f"ACCEL=(--config_file {fsdp})" in lines["4b"]
    assert "--multi_gpu" not in text  # the config files decide DDP or FSDP
    assert "--num_processes 8" in text
    assert 'if [ "${1:-}" = build ]; then build_corpora; exit $?; fi' in text
    assert main(["sweep", str(path), "--emit", "slurm"]) == 0
    submit = tmp_path / "sweep" / "launch" / "submit.sh"
    slurm = shlex.quote(str((tmp_path / "sweep" / "launch" / "slurm.sh").resolve()))
    assert f"--array=0 --job-name=tiny-data {slurm} build)" in submit.read_text()
    assert f'sbatch --dependency="afterok:$build" {slurm}' in submit.read_text()
    for script in (submit, tmp_path / "sweep" / "launch" / "slurm.sh"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # Without target.accelerate a multi-GPU cell is DDP by flag, as before.
    spec.target.accelerate = None
    assert "ACCEL=(--multi_gpu)" in slurm_script(spec, cells, configs)

    bad = [
        ({"fsdp": str(fsdp), "fsdp_from": "2b"}, r"target.accelerate.fsdp_from: unknown preset '2b'"),
        ({"fsdp": str(fsdp)}, r"target.accelerate.fsdp_from: give both fsdp and fsdp_from"),
        (
            {"default": "missing.yaml"},
            r"target.accelerate.default: accelerate config '.*missing.yaml' not found",
        ),
        ({"defualt": str(ddp)}, r"target.accelerate.defualt: unknown key"),
    ]
    for accelerate, message in bad:
        with pytest.raises(ConfigError, match=message):
            write_sweep(tmp_path, [{"model.preset": ["150m"]}], target={"accelerate": accelerate})
            load_sweep(tmp_path / "tiny.yaml")


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
    assert cell_state(sweep_dir, "name-bogus") == "failed"
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
    assert cell_state(sweep_dir, "name-bogus") == "failed"
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
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from smalllm.sweep.execution import sweep_lock\n"
            "with sweep_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(30)",
            str(sweep_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SmalllmError, match="used by a running sweep"), sweep_lock(sweep_dir):
            pass
    finally:
        holder.kill()
        holder.wait()
    with sweep_lock(sweep_dir):  # free again once the holder is gone
        pass
    shutil.rmtree(sweep_dir)


# ---------------------------------------------------------------------------------------------- estimates


def test_estimate_cell_values(tmp_path):
    spec = parse_sweep(
        {"overrides": TINY, "grids": [{"model.preset": ["micro-w32"]}]}, sweep_dir=tmp_path / "s"
    )
    cfg = validate_cells(spec, expand(spec))["micro-w32"]
    # 8192 tokens = 32 steps of 8 rows x 32 tokens.
    # micro-w32 (4 bias-free layers, width 32, SwiGLU MLP of 3 matrices 32x128, V=300, T=32):
    # 6 x (L (4 d^2 + 3 d 4d) + V d) + 12 L d T = 6 x (4 x 16,384 + 9,600) + 49,152 = 499,968 per token.
    est = estimate_cell(spec, cfg, threads=3)
    assert est.tokens == 8192
    assert est.flops == 499_968 * 8192
    assert est.device == "cpu x3" and est.gpu_hours is None and est.seconds > CPU_OVERHEAD_S

    # With peak, MFU and start-up given, the time is exactly FLOPs / (peak x GPUs x MFU) + start-up.
    gpu = parse_sweep(
        {
            "grids": [{"model.preset": ["micro-w32"]}],
            "target": {"device": "gpu", "gpus_per_cell": 4, "peak_flops": 1e15, "mfu": 0.5, "overhead_s": 30},
        },
        sweep_dir=tmp_path / "sweep",
    )
    g = estimate_cell(gpu, cfg)
    assert g.flops == est.flops and g.device == "4xH100"
    assert g.seconds == pytest.approx(est.flops / 2e15 + 30, rel=1e-12)
    assert g.gpu_hours == pytest.approx(g.seconds * 4 / 3600, rel=1e-12)
    # The GPU's peak comes from the device table when not given: H100 dense bf16, 989 TFLOP/s.
    h100 = parse_sweep(
        {
            "grids": [{"model.preset": ["micro-w32"]}],
            "target": {"device": "gpu", "mfu": 0.4, "overhead_s": 0},
        },
        sweep_dir=tmp_path / "sweep",
    )
    assert estimate_cell(h100, cfg).seconds == pytest.approx(est.flops / (989e12 * 0.4), rel=1e-12)
    from smalllm.sweep import estimate_cell as public

    assert public is estimate_cell


# ---------------------------------------------------------------------------------------------- the cell-state rule


def test_cell_state_follows_the_run_record(tmp_path):
    sweep_dir = tmp_path / "sweep"
    assert cell_state(sweep_dir, "a") == "pending" and launch_mode(sweep_dir, "a") is None
    run = RunDir(run_dir_of(sweep_dir, "a"))
    run.create()  # a crash right after the run directory was made: debris, nothing to continue
    assert cell_state(sweep_dir, "a") == "pending" and launch_mode(sweep_dir, "a") == "overwrite"
    run.config_file.write_text("{}\n")
    assert cell_state(sweep_dir, "a") == "partial" and launch_mode(sweep_dir, "a") == "overwrite"
    ckpt = run.checkpoint_dir(4)
    ckpt.mkdir(parents=True)
    (ckpt / CHECKPOINT_MANIFEST).write_text("{}")
    assert launch_mode(sweep_dir, "a") == "resume"
    for status in ("running", "interrupted"):
        run.write_summary({"status": status, "steps": 4})
        assert cell_state(sweep_dir, "a") == "partial"
    run.write_summary({"status": "diverged", "steps": 4})
    assert cell_state(sweep_dir, "a") == "failed"

    # A run that raised is failed, never done, and its own error line is what the sweep records.
    mark_running(sweep_dir, "a", 1, "resume")
    run.mark_failed("RuntimeError: disk full", step=6)
    record = finish_attempt(sweep_dir, "a", 1)
    assert record["state"] == "failed" and record["error"] == "RuntimeError: disk full"
    assert cell_state(sweep_dir, "a") == "failed" and launch_mode(sweep_dir, "a") == "resume"
    # Completed is done whatever the sweep's own record says (the sweep may have died first).
    run.write_summary({"status": "completed", "steps": 32})
    assert cell_state(sweep_dir, "a") == "done"
    assert finish_attempt(sweep_dir, "a", 0)["state"] == "done"

    # Failed before its run recorded anything: only the sweep's cell record knows.
    mark_running(sweep_dir, "b", 1, None)
    record = finish_attempt(sweep_dir, "b", 2)
    assert record["state"] == "failed" and record["error"] == "exit status 2"
    assert cell_state(sweep_dir, "b") == "failed"
    b = RunDir(run_dir_of(sweep_dir, "b"))
    b.create()
    b.config_file.write_text("{}\n")
    assert cell_state(sweep_dir, "b") == "failed"
    b.mark_running(0)  # once the run speaks for itself, it decides
    assert cell_state(sweep_dir, "b") == "partial"

    # A process that died under a run that can continue is interrupted, with the reason kept...
    record = finish_attempt(sweep_dir, "b", -signal.SIGKILL)
    assert record["state"] == "interrupted" and record["error"] == "killed by SIGKILL"
    assert cell_state(sweep_dir, "b") == "partial"
    # ... and one the sweep stopped itself is interrupted without an error, even before its run began.
    mark_running(sweep_dir, "c", 1, None)
    record = finish_attempt(sweep_dir, "c", -signal.SIGTERM, stopped=True)
    assert record["state"] == "interrupted" and "error" not in record
    assert cell_state(sweep_dir, "c") == "pending"


def test_cellcmd_is_the_rule_for_emitted_scripts(tmp_path, capsys):
    sweep_dir = tmp_path / "sweep"
    assert cellcmd.main(["state", str(sweep_dir), "a"]) == 0
    assert capsys.readouterr().out == "pending\n"
    assert cellcmd.main(["start", str(sweep_dir), "a"]) == 0
    assert capsys.readouterr().out == "\n"  # a fresh start: no flag for smalllm train
    assert marker_kind(sweep_dir) == "sweep" and read_status(sweep_dir, "a")["state"] == "running"
    assert log_attempts(sweep_dir, "a") == 1
    assert cellcmd.main(["finish", str(sweep_dir), "a", "3"]) == 0
    assert capsys.readouterr().out == "a: failed: exit status 3\n"
    assert cellcmd.main(["state", str(sweep_dir), "a"]) == 0 and capsys.readouterr().out == "failed\n"

    run = RunDir(run_dir_of(sweep_dir, "a"))
    run.create()
    ckpt = run.checkpoint_dir(8)
    ckpt.mkdir(parents=True)
    (ckpt / CHECKPOINT_MANIFEST).write_text("{}")
    run.write_summary({"status": "interrupted", "steps": 8})
    assert cellcmd.main(["start", str(sweep_dir), "a"]) == 0 and capsys.readouterr().out == "--resume\n"
    assert read_status(sweep_dir, "a")["attempts"] == 2

    for argv in (["state", str(sweep_dir), "../escape"], ["finish", str(sweep_dir), "a", "x"], ["mark"]):
        assert cellcmd.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
    assert not (tmp_path / "escape").exists()


# ---------------------------------------------------------------------------------------------- shell safety


HOSTILE_NAMES = [
    "x; rm -rf ~",
    "$(touch pwned)",
    "`touch pwned`",
    "it's",
    'say "hi"',
    "two words",
    "a/b",
    "..",
    "-rf",
    "x\ntouch pwned",
]


@pytest.mark.parametrize("hostile", HOSTILE_NAMES)
def test_unsafe_names_are_refused_at_parse_time(tmp_path, monkeypatch, capsys, hostile):
    monkeypatch.chdir(tmp_path)
    sweeps = {
        "name": {"name": hostile, "grids": [{"model.preset": ["micro-w32"]}]},
        "grids.0.name": {"grids": [{"name": hostile, "model.preset": ["micro-w32"]}]},
    }
    for field, raw in sweeps.items():
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump({**raw, "sweep_dir": str(tmp_path / "sweep")}))
        for flags in (["--dry-run"], ["--emit", "shell"], []):
            assert main(["sweep", str(path), *flags]) == 2
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0
            assert f"{field}: use letters, digits and _.+- only, starting with a letter or digit, got " in err
    assert sorted(os.listdir(tmp_path)) == ["s.yaml"]  # nothing written, nothing run


def _fake_accelerate(bin_dir: Path) -> None:
    """An ``accelerate`` that records its arguments (NUL-separated) instead of training, and a
    ``python`` that records those of each ``smalllm.cli data build`` (appended to ``$BUILD_OUT``) instead of
    building; every other python call runs the real one."""
    bin_dir.mkdir()
    fake = bin_dir / "accelerate"
    fake.write_text('#!/bin/bash\nprintf \'%s\\0\' "$@" > "$ARGS_OUT"\n')
    fake.chmod(0o755)
    python = bin_dir / "python"
    python.write_text(
        '#!/bin/bash\nif [ "$3 $4" = "data build" ]; then printf \'%s\\0\' "$@" >> "$BUILD_OUT"; exit 0; fi\n'
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    python.chmod(0o755)


def test_an_array_task_builds_only_its_own_cells_corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_sweep(write_sweep(tmp_path, [{"data.tokenizer.kind": ["byte", "char"]}]))
    cells = expand(spec)
    configs = validate_cells(spec, cells)
    assert corpus_groups(cells, configs) == cells  # two tokenizers: two corpora
    spec.slurm = {"setup": ":"}  # no venv activation, so that the fake python below is found
    slurm = tmp_path / "slurm.sh"
    slurm.write_text(slurm_script(spec, cells, configs))
    _fake_accelerate(tmp_path / "bin")
    build_out = tmp_path / "build_args"
    env = dict(
        os.environ,
        PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        PYTHON=str(tmp_path / "bin" / "python"),
        ARGS_OUT=str(tmp_path / "args"),
        BUILD_OUT=str(build_out),
        SLURM_ARRAY_TASK_ID="1",
    )
    done = subprocess.run(["bash", str(slurm)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    base = [str(spec.base)] if spec.base is not None else []
    # One build, of cell 1's corpus: the other cell's is not this task's business.
    assert build_out.read_bytes().decode().split("\0")[:-1] == [
        *("-m", "smalllm.cli", "data", "build", "--if-missing"),
        *base,
        *cells[1].overrides,
    ]
    # `slurm.sh build` (submit.sh's first job) still builds both.
    build_out.unlink()
    done = subprocess.run(["bash", str(slurm), "build"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert build_out.read_bytes().decode().count("data\0build\0") == 2


def test_cells_share_a_corpus_unless_seq_len_cuts_its_token_windows(tmp_path):
    from types import SimpleNamespace

    cells = [SimpleNamespace(name=f"len{n}") for n in (32, 64)]

    def groups(*extra: str) -> int:
        configs = {f"len{n}": tiny_config(tmp_path / "run", f"data.seq_len={n}", *extra) for n in (32, 64)}
        return len(corpus_groups(cells, configs))

    tokens = [
        "data.background.source=tokens",
        f"data.background.paths=[{tmp_path / 'tokens.npy'}]",
        "data.tokenizer.kind=byte",
    ]
    assert groups() == 1  # a text corpus does not depend on the context length
    assert groups(*tokens) == 1  # nor do token files read by document
    assert groups(*tokens, "data.background.order_unit=window") == 2  # windows are cut at seq_len


def test_emitted_scripts_quote_every_value(tmp_path, monkeypatch):
    # Names are refused at parse time; paths and override values are not, so the scripts must quote.
    monkeypatch.chdir(tmp_path)
    spec = parse_sweep(
        {"grids": [{"model.preset": ["micro-w32"]}]}, sweep_dir="s $(touch pwned) `touch pwned`"
    )
    cells = expand(spec)
    configs = validate_cells(spec, cells)
    hostile = [
        "a=$(touch pwned)",
        "b=`touch pwned`",
        "c=it's; touch pwned",
        'd="x" | touch pwned',
        "e=1\ntouch pwned",
    ]
    cells[0].overrides = hostile
    spec.name = "x; touch pwned"  # past the parser, as a second line of defence
    spec.slurm = {"setup": ":"}  # no venv activation, so that the fake accelerate below is found
    shell = tmp_path / "run_all.sh"
    shell.write_text(shell_script(spec, cells, configs))
    slurm = tmp_path / "slurm.sh"
    slurm.write_text(slurm_script(spec, cells, configs))
    assert "#SBATCH --job-name='x; touch pwned'" in slurm.read_text()
    for script in (shell, slurm):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0

    _fake_accelerate(tmp_path / "bin")
    out, build_out = tmp_path / "args", tmp_path / "build_args"
    env = dict(
        os.environ,
        PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        PYTHON=str(tmp_path / "bin" / "python"),
        ARGS_OUT=str(out),
        BUILD_OUT=str(build_out),
        SLURM_ARRAY_TASK_ID="0",
    )
    for script in (shell, slurm):
        done = subprocess.run(["bash", str(script), "0"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        args = out.read_bytes().decode().split("\0")[:-1]
        train = args.index("smalllm.cli") + 2
        sweep_dir = (tmp_path / spec.sweep_dir).resolve()
        assert args[train:] == [*hostile, f"run_dir={run_dir_of(sweep_dir, 'micro-w32')}"]
        # The corpus build before the cell gets the same words, unharmed.
        assert build_out.read_bytes().decode().split("\0")[:-1] == [
            "-m",
            "smalllm.cli",
            "data",
            "build",
            "--if-missing",
            *hostile,
        ]
        out.unlink()
        build_out.unlink()
    assert not list(tmp_path.rglob("pwned"))

    # A cell name that got past the parser still never reaches a script, and a line-based #SBATCH
    # value cannot smuggle in a second line.
    cells[0].name = "$(touch pwned)"
    with pytest.raises(SmalllmError, match=r"cell: use letters, digits"):
        shell_script(spec, cells, configs)
    cells[0].name = "micro-w32"
    spec.slurm = {"options": {"comment": "ok\ntouch pwned"}}
    with pytest.raises(ConfigError, match=r"^slurm.options.comment: control characters"):
        slurm_script(spec, cells, configs)


# ---------------------------------------------------------------------------------------------- deletion safety


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every path below ``root`` with its mode and (for files) its bytes."""
    return {
        str(p.relative_to(root)): (p.lstat().st_mode, p.read_bytes() if p.is_file() else b"")
        for p in sorted(root.rglob("*"))
    }


def test_a_foreign_sweep_dir_is_refused_and_left_untouched(tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    subprocess.run(["git", "init", "-q", str(notes)], check=True)
    (notes / "thesis.txt").write_text("Chapter 1\n")
    subprocess.run(["git", "-C", str(notes), "add", "thesis.txt"], check=True)
    before = _tree(notes)
    path = write_sweep(tmp_path, [{"model.preset": ["micro-w32"]}])
    for flags in ([], ["--dry-run"], ["--emit", "shell"], ["--emit", "slurm"], ["--retry-failed"]):
        assert main(["sweep", str(path), "--sweep-dir", str(notes), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            f"smalllm: error: sweep_dir: '{notes}' is not empty and was not created by smalllm "
            "(no .smalllm marker); refusing to touch it, choose another directory"
        )
        assert _tree(notes) == before

    # Neither a file nor another kind of smalllm directory is taken for a sweep.
    (tmp_path / "file").write_text("x")
    assert main(["sweep", str(path), "--sweep-dir", str(tmp_path / "file"), "--dry-run"]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    run = RunDir(tmp_path / "a-run")
    run.create()
    assert main(["sweep", str(path), "--sweep-dir", str(run.path), "--emit", "shell"]) == 2
    assert "is a smalllm run directory, not a sweep" in capsys.readouterr().err

    # A directory the sweep creates carries the marker; one from before markers (sweep.json) is adopted.
    assert main(["sweep", str(path), "--emit", "shell"]) == 0
    assert marker_kind(tmp_path / "sweep") == "sweep"
    # A link to a directory (scratch storage) is followed, and judged by where it points.
    (tmp_path / "scratch").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "scratch")
    assert main(["sweep", str(path), "--sweep-dir", str(tmp_path / "linked"), "--emit", "shell"]) == 0
    assert marker_kind(tmp_path / "scratch") == "sweep"
    (tmp_path / "to-notes").symlink_to(notes)
    assert main(["sweep", str(path), "--sweep-dir", str(tmp_path / "to-notes"), "--emit", "shell"]) == 2
    assert "was not created by smalllm" in capsys.readouterr().err and _tree(notes) == before
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "sweep.json").write_text(json.dumps({"name": "old", "cells": []}))
    assert main(["sweep", str(path), "--sweep-dir", str(legacy), "--emit", "shell"]) == 0
    assert marker_kind(legacy) == "sweep"


# ---------------------------------------------------------------------------------------------- failure inside training

# Loaded by every Python process of the cells (PYTHONPATH): the first run of the chosen cell raises in
# its 6th optimizer step, after checkpoints at steps 2 and 4.
INJECT_FAILURE = """
import os, sys
_run, _once = os.environ.get("SMALLLM_TEST_FAIL_RUN"), os.environ.get("SMALLLM_TEST_FAIL_ONCE", "")
if _run and "run_dir=" + _run in sys.argv and not os.path.exists(_once):
    import torch

    _step, _calls = torch.optim.AdamW.step, [0]

    def _failing_step(self, *args, **kwargs):
        _calls[0] += 1
        if _calls[0] == 6:
            open(_once, "w").close()
            raise RuntimeError("injected failure inside training")
        return _step(self, *args, **kwargs)

    torch.optim.AdamW.step = _failing_step
"""


def test_a_cell_failing_inside_training_is_failed_until_retried(tmp_path, monkeypatch):
    path = write_sweep(tmp_path, [{"train.seed": [0, 1]}], overrides=[*TINY, "train.checkpoint_every=2"])
    sweep_dir, bad = tmp_path / "sweep", "seed-1"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(INJECT_FAILURE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("SMALLLM_TEST_FAIL_RUN", str(run_dir_of(sweep_dir, bad).resolve()))
    monkeypatch.setenv("SMALLLM_TEST_FAIL_ONCE", str(tmp_path / "failed-once"))
    raised = ""
    try:
        run_sweep(path, report=False)
    except SweepFailed as exc:
        raised = str(exc)
    assert (tmp_path / "failed-once").is_file()  # the failure happened, inside training
    run = RunDir(run_dir_of(sweep_dir, bad))
    assert run.recorded_status() == "failed"
    assert "1 of 2 cells failed" in raised and "injected failure inside training" in raised
    assert cell_state(sweep_dir, bad) == "failed" and cell_state(sweep_dir, "seed-0") == "done"
    status = read_status(sweep_dir, bad)
    assert status["state"] == "failed" and "injected failure inside training" in status["error"]

    with pytest.raises(SweepFailed):  # skipped without --retry-failed
        run_sweep(path, report=False)
    assert read_status(sweep_dir, bad)["attempts"] == 1
    results = run_sweep(path, retry_failed=True, report=False)  # continues from its step-4 checkpoint
    assert results is not None and results[bad]["state"] == "done"
    assert cell_state(sweep_dir, bad) == "done" and read_status(sweep_dir, bad)["attempts"] == 2
    assert "(resume)" in (sweep_dir / "cells" / bad / "train.log").read_text()
    assert run.read_summary()["steps"] == 32 and log_attempts(sweep_dir, "seed-0") == 1


def test_parallel_wall_is_the_longest_first_schedule():
    from smalllm.sweep.estimates import parallel_wall

    # Two workers, longest first: A takes 7, B takes 4 then 3 (free at 4), A takes 2 (free at 7).
    assert parallel_wall([3, 7, 4, 2], 2) == 9  # worker A: 7 then 2; worker B: 4 then 3
    assert parallel_wall([10, 1, 1], 2) == 10  # one long cell sets the wall time, not the mean (6)
    assert parallel_wall([5, 5], 1) == 10
