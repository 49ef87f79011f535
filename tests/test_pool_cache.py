"""The finite-pool disk cache: same pools as a fresh draw, stale and broken files redrawn, and a
cache that cannot be written costs only the draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smalllm.data import pool_cache
from smalllm.data.config import TaskConfig
from smalllm.data.pools import InstancePool
from smalllm.data.tokenizer import byte_tokenizer
from smalllm.tasks import TaskVocab, build_task

# All 1,560 ordered pairs of a 40-value T_CMP table: the coupon-collector case the cache is for, at
# a size that draws in milliseconds (the cache's own threshold is lowered to match).
CFG = TaskConfig(name="t_cmp", frequency=0.01, params={"num_values": 40}, eval_size=100)


@pytest.fixture(autouse=True)
def small_threshold(monkeypatch) -> None:
    monkeypatch.setattr(pool_cache, "MIN_CACHED", 1000)


def _pool(cache: Path | None, params: dict | None = None, keep: bool = True) -> InstancePool:
    task = build_task(CFG.name, params or CFG.params, TaskVocab(byte_tokenizer()))
    pool = InstancePool(task, 0, CFG, 0, cache)
    if keep:  # as the trainer does once a run's checks pass
        pool.keep_in_cache()
    return pool


@pytest.fixture
def drawn() -> InstancePool:
    return _pool(None)


def test_default_addition_pool_round_trips(tmp_path: Path, monkeypatch) -> None:
    # The default config's case: every one of 2-digit addition's 10,000 ones-digit sums.
    monkeypatch.setattr(pool_cache, "MIN_CACHED", 2048)
    cfg = TaskConfig(name="addition", frequency=0.01, params={"num_digits": 2}, eval_size=100)
    task = build_task("addition", cfg.params, TaskVocab(byte_tokenizer()))
    first = InstancePool(task, 0, cfg, 0, tmp_path)
    first.keep_in_cache()
    second = InstancePool(task, 0, cfg, 0, tmp_path)
    assert len(_files(tmp_path)) == 1 and len(first.train) + len(first.test) == 10_000
    assert second.train == first.train and second.test == first.test


def _files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.npz"))


def test_cached_pool_is_the_drawn_pool(tmp_path: Path, drawn: InstancePool) -> None:
    first = _pool(tmp_path)
    assert len(_files(tmp_path)) == 1
    second = _pool(tmp_path)  # read back from the file
    assert first.train == drawn.train and first.test == drawn.test
    assert second.train == drawn.train and second.test == drawn.test


def test_stale_or_broken_file_is_redrawn_and_replaced(tmp_path: Path, drawn: InstancePool) -> None:
    _pool(tmp_path)
    (path,) = _files(tmp_path)
    # Stale: the same key, other contents (as after an edit of the generator): the check draws differ.
    with np.load(path) as f:
        arrays = {k: f[k].copy() for k in f.files}
    arrays["answer"] = arrays["answer"][::-1].copy()
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    assert _pool(tmp_path).train == drawn.train
    with np.load(path) as f:
        assert np.array_equal(
            f["answer"], np.fromiter((t for i in drawn.test + drawn.train for t in i.answer), int)
        )
    # Broken: truncated, then lengths that do not add up.
    path.write_bytes(path.read_bytes()[:100])
    assert _pool(tmp_path).train == drawn.train
    arrays["prompt_len"] = arrays["prompt_len"] + 1
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    assert _pool(tmp_path).train == drawn.train


def test_other_parameters_get_their_own_file(tmp_path: Path) -> None:
    _pool(tmp_path)
    _pool(tmp_path, {"num_values": 41})
    assert len(_files(tmp_path)) == 2


def test_cache_path_that_is_a_file_only_costs_the_draw(tmp_path: Path, drawn: InstancePool) -> None:
    blocker = tmp_path / "pools"
    blocker.write_text("not a directory")
    assert _pool(blocker).train == drawn.train
    assert blocker.read_text() == "not a directory"


def test_full_disk_only_costs_the_draw(tmp_path: Path, drawn: InstancePool, monkeypatch) -> None:
    def full(path: Path, write) -> None:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(pool_cache, "atomic_write", full)
    assert _pool(tmp_path).train == drawn.train
    assert _files(tmp_path) == []


def test_small_pools_are_not_cached(tmp_path: Path) -> None:
    # 20 values have 380 ordered pairs: the pool is capped at them, under the threshold.
    _pool(tmp_path, {"num_values": 20})
    assert _files(tmp_path) == []


def test_a_pool_is_kept_only_when_asked(tmp_path: Path, drawn: InstancePool) -> None:
    # A dry run or a refused config draws its pools but leaves the cache as it was.
    pool = _pool(tmp_path, keep=False)
    assert pool.train == drawn.train and _files(tmp_path) == []
    pool.keep_in_cache()
    assert len(_files(tmp_path)) == 1
