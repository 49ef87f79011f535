"""``smalllm skills-graph``: a planted dependency is found, the file round-trips, bad files are named."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import StopAt, assert_one_line_error, quiet, tiny_config, tree_snapshot

from smalllm.cli import main
from smalllm.config import load_config, save_config
from smalllm.data.skills_graph import load_skills_graph
from smalllm.errors import SmalllmError
from smalllm.run_record import MARKER, RunDir, marker_kind, skills_graph_json_file, skills_graph_png_file
from smalllm.sweep.skills_graph import (
    estimate_skills_graph,
    find_family,
    graph_record,
    prepare_out_dir,
    subset_config,
)
from smalllm.tasks import _REGISTRY, Instance, Task, register, registered_tasks
from smalllm.train.trainer import Trainer

KEYS = 16
DISTRACTORS = 8
QUERY_KEYS = 8


@dataclass
class _PlantedParams:
    keys: int = KEYS
    """Keys of the table f."""


class Planted(Task):
    """Two sub-skills over one random table f: keys -> values.

    * ``table`` (skill 0): ``d x =`` -> f(x) for all 16 keys, with d one of 8 distractor tokens, so
      each key has 8 instances and the training half of the pool holds every key: training on it
      teaches all of f.
    * ``query`` (skill 1): ``x =`` -> f(x) for the first 8 keys, one instance per key, half of them
      held out. Its own training instances never show a held-out key's value: only ``table`` teaches
      it. So ``query`` needs ``table`` (edge table -> query), while ``query`` teaches ``table`` 4 of
      its 16 keys, which ``table``'s own data already covers (no edge back).
    """

    name = "planted_sg"
    description = "test only: skill 'query' reads the table that skill 'table' teaches"
    Params = _PlantedParams

    def setup(self, rng: np.random.Generator) -> None:
        n = self.params.keys
        tokens = self.vocab.random_tokens(2 * n + DISTRACTORS + 1, rng)
        self._keys, self._values = tokens[:n], tokens[n : 2 * n]
        self._distractors, self._eq = tokens[2 * n : -1], tokens[-1]
        self._f = rng.permutation(n).tolist()

    @property
    def skills(self) -> list[str]:
        return ["table", "query"]

    def generate(self, rng: np.random.Generator, skill: int = 0) -> Instance:
        i = int(rng.integers(self.params.keys if skill == 0 else QUERY_KEYS))
        answer = (self._values[self._f[i]],)
        if skill == 0:
            d = self._distractors[int(rng.integers(DISTRACTORS))]
            return Instance((d, self._keys[i], self._eq), answer, 0)
        return Instance((self._keys[i], self._eq), answer, 1)


@pytest.fixture
def planted():
    registered_tasks()  # the built-ins first, then the test task in-process
    register(Planted)
    yield Planted
    _REGISTRY.pop(Planted.name, None)


def planted_config(tmp_path: Path) -> Path:
    """A config file: the tiny test run with the planted task as its only task."""
    cfg = tiny_config(
        tmp_path / "unused-run-dir",
        "data.tasks=[{name: planted_sg, frequency: 0.1, pool_size: 256}]",
        # Only steps 0 and H are read: no evaluations or samples in between.
        "eval.every_steps=0",
        "eval.log_spaced=false",
        "eval.samples=0",
    )
    path = tmp_path / "planted.yaml"
    save_config(cfg, path)
    return path


def test_a_planted_dependency_is_found_by_both_methods(planted, tmp_path, capsys):
    config, out = planted_config(tmp_path), tmp_path / "graph"
    steps = "100"
    # One run was stopped (as SIGTERM stops it) at step 40 by an earlier invocation: it is continued.
    cfg = load_config(config)
    family = find_family(cfg, None, quiet)
    prepare_out_dir(out)
    stopped = subset_config(cfg, family, (0,), 100 * 8 * 32, out, 100)
    trainer = Trainer(stopped, log=quiet)
    trainer.callbacks.insert(0, StopAt(40))
    assert trainer.fit()["status"] == "interrupted"

    assert main(["skills-graph", str(config), "--method", "brute", "--steps", steps, "--out", str(out)]) == 0
    brute = json.loads(skills_graph_json_file(out).read_text())
    assert brute["skills"] == ["table", "query"] and brute["method"] == "brute" and brute["steps"] == 100
    assert brute["seed_key"] == "train.seed" and brute["seed"] == 0
    diff = brute["raw"]["difference"]
    # Adding 'table' lowers the held-out loss of 'query' (at half the 'query' data); not the reverse.
    assert brute["edges"][0][1] == 1 and brute["edges"][1][0] == 0, diff
    assert diff[0][1] > 0.3 > diff[1][0], diff
    assert brute["matrix"] == [[1.0, 1.0], [0.0, 1.0]]
    assert marker_kind(out) == "skills_graph" and skills_graph_png_file(out).stat().st_size > 1000
    assert sorted(brute["runs"]) == ["query", "table", "table+query"]
    resumed = RunDir(stopped.run_dir).read_summary()
    assert resumed["status"] == "completed" and resumed["attempt"] == 2 and resumed["steps"] == 100

    # The linear method's runs (each skill alone, same H) are the brute force's: all reused.
    said: list[str] = []
    linear = estimate_skills_graph(config, [], method="linear", steps=100, out=out, log=said.append)
    assert sum("reused" in line for line in said) == 2 and not any(" trained " in s for s in said), said
    drop = linear["raw"]["drop"]
    assert linear["edges"][0][1] == 1 and drop[0][1] > drop[1][0] + 0.5, drop
    assert linear["matrix"][0][1] > linear["matrix"][1][0]
    skills, matrix = load_skills_graph(skills_graph_json_file(out))
    assert (skills, matrix) == (linear["skills"], linear["matrix"])

    # A changed config never reuses (or replaces) these runs.
    before = tree_snapshot(out)
    capsys.readouterr()
    rc = main(["skills-graph", str(config), "train.lr=1e-3", "--steps", steps, "--out", str(out)])
    captured = capsys.readouterr()
    assert_one_line_error(rc, captured.out, captured.err, "holds a run of another config")
    assert tree_snapshot(out) == before


def test_graph_record_of_both_methods_from_losses():
    from smalllm.labels import Label
    from smalllm.sweep.skills_graph import Family

    family = Family(0, "t", ["a", "b", "c"], [Label("t", s) for s in "abc"])
    init = [3.0, 3.0, 3.0]
    alone = {0: [1.0, 2.9, 3.1], 1: [2.5, 1.0, 2.0], 2: [3.0, 3.0, 2.0]}
    linear = graph_record(family, "linear", 10, 7, {(i,): (init, alone[i]) for i in range(3)}, 0.05, True)
    assert linear["raw"]["drop"][0] == pytest.approx([2.0, 0.1, -0.1])
    # Clipped at 0, then each column over its diagonal (2.0, 2.0, 1.0).
    np.testing.assert_allclose(linear["matrix"], [[1.0, 0.05, 0.0], [0.25, 1.0, 1.0], [0.0, 0.0, 1.0]])
    assert linear["edges"] == [[1, 1, 0], [1, 1, 1], [0, 0, 1]]
    assert linear["seed"] == 7 and linear["normalize"] is True

    pairs = {(0, 1): [0.9, 1.5, 3.0], (0, 2): [1.2, 3.0, 1.5], (1, 2): [2.0, 0.9, 2.05]}
    losses = {(i,): (init, alone[i]) for i in range(3)} | {s: (init, v) for s, v in pairs.items()}
    brute = graph_record(family, "brute", 10, 7, losses, 0.0, False)
    raw = brute["raw"]
    assert raw["loss_alone"] == [1.0, 1.0, 2.0]
    # difference[i][j] = L_j(j alone) - L_j({i, j})
    np.testing.assert_allclose(
        raw["difference"], [[0.0, -0.5, 0.5], [0.1, 0.0, -0.05], [-0.2, 0.1, 0.0]], atol=1e-12
    )
    assert brute["edges"] == [[1, 0, 1], [1, 1, 0], [0, 1, 1]]
    assert brute["matrix"] == [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
    assert raw["self_drop"] == [2.0, 2.0, 1.0]


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "skills_graph.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_the_file_round_trips_and_reorders_to_the_expected_skills(tmp_path):
    path = _write(tmp_path, {"task": "t", "skills": ["a", "b"], "matrix": [[1, 0.5], [0, 1.0]], "raw": {}})
    assert load_skills_graph(path) == (["a", "b"], [[1.0, 0.5], [0.0, 1.0]])
    assert load_skills_graph(path, expected=["b", "a"]) == (["b", "a"], [[1.0, 0.0], [0.5, 1.0]])


@pytest.mark.parametrize(
    "content, expect",
    [
        ("{not json", "not a JSON file"),
        ([1, 2], "expected a JSON object"),
        ({"matrix": [[1]]}, "'skills' must be a non-empty list"),
        ({"skills": ["a", ""], "matrix": [[1, 0], [0, 1]]}, "non-empty string"),
        ({"skills": ["a", "a"], "matrix": [[1, 0], [0, 1]]}, "appear more than once"),
        ({"skills": ["a", "b"]}, "'matrix' must be a list of 2 rows"),
        ({"skills": ["a", "b"], "matrix": [[1, 0]]}, "'matrix' must be a list of 2 rows"),
        ({"skills": ["a", "b"], "matrix": [[1, 0], [0]]}, "row 1 must hold 2 numbers (the matrix is square)"),
        ({"skills": ["a", "b"], "matrix": [[1, 0], [0, "x"]]}, "matrix[1][1] must be a finite number"),
        ({"skills": ["a", "b"], "matrix": [[1, 0], [True, 1]]}, "matrix[1][0] must be a finite number"),
        ('{"skills": ["a", "b"], "matrix": [[1, NaN], [0, 1]]}', "matrix[0][1] must be a finite number"),
    ],
)
def test_malformed_files_give_one_line_naming_the_file(tmp_path, content, expect):
    path = _write(tmp_path, content)
    with pytest.raises(SmalllmError) as info:
        load_skills_graph(path)
    message = str(info.value)
    assert "\n" not in message and f"skills graph '{path}'" in message and expect in message


def test_missing_file_and_other_skill_names_are_named(tmp_path):
    with pytest.raises(SmalllmError, match=r"skills graph '.*absent.json': cannot read it"):
        load_skills_graph(tmp_path / "absent.json")
    path = _write(tmp_path, {"skills": ["a", "b"], "matrix": [[1, 0], [0, 1]]})
    with pytest.raises(
        SmalllmError, match=r"do not match the family's \['a', 'c'\] \(missing \['c'\], unknown \['b'\]\)"
    ):
        load_skills_graph(path, expected=["a", "c"])


def test_a_foreign_out_dir_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    before = tree_snapshot(tmp_path)
    rc = main(["skills-graph", str(tmp_path / "missing.yaml"), "--out", str(out)])
    captured = capsys.readouterr()
    assert_one_line_error(
        rc, captured.out, captured.err, f"--out: '{out}' is not empty and was not created by smalllm"
    )
    assert tree_snapshot(tmp_path) == before and not (out / MARKER).exists()


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--margin", "-1"], "--margin: must be >= 0"),
        (["--normalize", "--method", "brute"], "--normalize: only with --method linear"),
        (["--task", "nope"], "--task: no task 'nope' in data.tasks (configured: planted_sg)"),
        (
            ["--task", "planted_sg", "data.tasks.0.frequency=0"],
            "data.tasks.0.frequency: task 'planted_sg' is never trained on",
        ),
    ],
)
def test_bad_options_are_one_line_errors(planted, tmp_path, capsys, args, expect):
    config = planted_config(tmp_path)
    rc = main(["skills-graph", str(config), "--out", str(tmp_path / "g"), *args])
    captured = capsys.readouterr()
    assert_one_line_error(rc, captured.out, captured.err, expect)
    assert not (tmp_path / "g").exists()


def test_the_mixture_policy_reads_the_written_graph(tmp_path):
    """``data.mixture.graph`` accepts ``skills_graph.json`` as written, extra keys and all."""
    from smalllm.data.mixture_policy import load_graph
    from smalllm.data.tokenizer import byte_tokenizer
    from smalllm.labels import Label
    from smalllm.sweep.skills_graph import Family
    from smalllm.tasks import TaskVocab, build_task

    lego = build_task("lego", {"num_vars": 3}, TaskVocab(byte_tokenizer()))
    family = Family(
        0, "lego", ["depth1", "depth2", "depth3"], [Label("lego", f"depth{d}") for d in (1, 2, 3)]
    )
    init, after = [3.0, 3.0, 3.0], {0: [1.0, 2.0, 3.5], 1: [3.0, 1.0, 2.5], 2: [3.0, 3.0, 1.0]}
    record = graph_record(family, "linear", 10, 0, {(i,): (init, after[i]) for i in range(3)}, 0.0, False)
    path = _write(tmp_path, record)
    np.testing.assert_allclose(
        load_graph(str(path), lego), [[2.0, 1.0, 0.0], [0.0, 2.0, 0.5], [0.0, 0.0, 2.0]]
    )
    assert load_skills_graph(path, expected=["depth1", "depth2", "depth3"])[1] == record["matrix"]


def test_each_run_restricts_the_family_and_switches_a_mixture_policy_off(tmp_path):
    from smalllm.labels import Label
    from smalllm.sweep.skills_graph import Family

    cfg = tiny_config(
        tmp_path / "unused",
        "data.tasks=[{name: lego, frequency: 0.2, unit: example_fraction, params: {num_vars: 3}}]",
        "data.mixture.policy=online",
        "data.mixture.task=lego",
        "train.seed=5",
    )
    family = Family(
        0, "lego", ["depth1", "depth2", "depth3"], [Label("lego", f"depth{d}") for d in (1, 2, 3)]
    )
    run = subset_config(cfg, family, (0, 2), 4096, tmp_path / "g", 16)
    assert run.data.tasks[0].skill_weights == [1.0, 0.0, 1.0] and run.data.tasks[0].frequency == 0.2
    assert run.data.mixture.policy == "static" and run.train.max_tokens == 4096 and run.train.seed == 5
    assert run.run_dir == str(tmp_path / "g" / "runs" / "h16-skills-0-2")
    assert cfg.data.mixture.policy == "online" and cfg.data.tasks[0].skill_weights is None  # a copy
