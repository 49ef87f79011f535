"""The mechanisms page of a sweep: a tiny gap sweep with interference measured at its injections,
evaluations around them, and probes of its last checkpoints, read back into one page."""

from __future__ import annotations

import math

import pytest
import yaml
from conftest import TINY_OVERRIDES

from smalllm.cli import main
from smalllm.sweep.aggregate import load_sweep_dir
from smalllm.sweep.mechanisms import collect_mechanisms
from smalllm.sweep.runner import run_sweep

GAP_TASK = (
    "data.tasks=[{name: t_cmp, frequency: 0.01, params: {num_values: 20}, eval_size: 32,"
    " schedule: {kind: gap, gap_batches: 1}}]"
)


def test_gap_sweep_with_interference_and_probes_gets_a_mechanisms_page(tmp_path, capsys) -> None:
    spec = {
        "name": "mech",
        "sweep_dir": str(tmp_path / "sweep"),
        "overrides": [
            *TINY_OVERRIDES,
            GAP_TASK,
            "train.max_tokens=4096",
            "train.checkpoint_every=16",
            "eval.around_injections=t_cmp",
            "eval.injection_cycles=2",
            "eval.samples=0",
            "interference.enabled=true",
            "interference.every_steps=0",
            "interference.reference_size=16",
            "interference.module_sets=[all, mlp]",
        ],
        "grids": [{"data.tasks.0.schedule.gap_batches": [1, 4]}],
        "seeds": {"data": [0, 1], "init": "data"},
    }
    path = tmp_path / "mech.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    results = run_sweep(path, workers=1, report=False)
    assert results is not None and {r["state"] for r in results.values()} == {"done"}
    assert main(["probe", str(tmp_path / "sweep"), "--checkpoints", "last"]) == 0

    cells = collect_mechanisms(load_sweep_dir(tmp_path / "sweep"))
    assert sorted((c.gap, c.data_seed) for c in cells) == [(1, 0), (1, 1), (4, 0), (4, 1)]
    for c in cells:
        # At injections after step 0 (the initialisation): every batch at gap 1, every 4th at gap 4.
        assert len(c.interference["all"]["cos_nt"]) == (15 if c.gap == 1 else 3)
        assert all(-1 <= v <= 1 for v in c.interference["all"]["cos_nt"])
        assert c.retention["gain_cycles"] == 2 and math.isfinite(c.final_loss)
        assert len(c.probe_r2) == 5 and c.probe_step == 16  # embeddings + 4 blocks

    assert main(["report", str(tmp_path / "sweep")]) == 0
    page = (tmp_path / "sweep" / "report" / "mechanisms.md").read_text()
    for heading in ("## Interference", "## Retention against the gap", "## Probes"):
        assert heading in page
    assert "| micro-w32 | 4 | 2 |" in page  # the retention row of gap 4 over its 2 seeds
    for stem in ("retention_gap", "interference_gap", "probe_r2"):
        assert (tmp_path / "sweep" / "report" / f"mechanisms_{stem}.png").is_file()
    assert "mechanisms.md" in (tmp_path / "sweep" / "report" / "summary.md").read_text()


def test_dry_run_estimate_counts_measurements(tmp_path) -> None:
    from smalllm.config import load_config
    from smalllm.sweep.estimates import INSTANCE_TOKENS_GUESS, measurement_flops
    from smalllm.train.plan import make_plan

    base = [
        *TINY_OVERRIDES,
        GAP_TASK.replace("gap_batches: 1", "gap_batches: 4"),
        "train.max_tokens=8192",  # 32 steps of 8 x 32 tokens
        f"run_dir={tmp_path / 'run'}",
    ]
    plain = load_config(None, base)
    plan = make_plan(plain)
    assert measurement_flops(plain, plan) == 0
    measured = load_config(
        None,
        [*base, "interference.enabled=true", "interference.every_steps=0", "interference.reference_size=10"],
    )
    step = plan.flops_per_token * plan.tokens_per_step
    reference = 10 * INSTANCE_TOKENS_GUESS * plan.flops_per_token
    # At injections of a 4-batch gap: steps 0, 4, ..., 28.
    assert measurement_flops(measured, plan) == pytest.approx(8 * (step * 10 / 6 + reference))
    bracketed = load_config(None, [*base, "eval.around_injections=t_cmp", "eval.injection_cycles=3"])
    tokens = 32 * INSTANCE_TOKENS_GUESS + bracketed.eval.background_sequences * 32
    assert measurement_flops(bracketed, plan) == pytest.approx(9 * tokens * plan.flops_per_token / 3)
