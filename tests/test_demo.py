"""The demo's verdict on its own cells: does a size effect show beyond instance noise, or not."""

from __future__ import annotations

from smalllm.demo import size_verdicts


def row(size: str, params: int, freq: float, acc: float, lo: float, hi: float) -> dict:
    return {
        "size": size,
        "params": params,
        "frequency": freq,
        "final_choice_acc": acc,
        "choice_acc_lo": lo,
        "choice_acc_hi": hi,
        "rule_acc": 0.745,
    }


def test_size_verdicts_say_whether_the_intervals_separate() -> None:
    rows = [
        row("micro-w128", 1_180_000, 4.9e-3, 0.775, 0.763, 0.786),
        row("micro-w48", 197_000, 4.9e-3, 0.648, 0.635, 0.661),
        row("micro-w48", 197_000, 1.2e-2, 0.848, 0.838, 0.858),
        row("micro-w128", 1_180_000, 1.2e-2, 0.852, 0.845, 0.860),
        {"size": "micro-w48", "params": 197_000, "frequency": 2e-3, "final_choice_acc": None},  # unfinished
    ]
    header, *lines = size_verdicts(rows)[1:]
    assert header.startswith("size effect in these cells")
    assert lines == [
        "  0.0049: micro-w48 0.648 [0.635, 0.661] vs micro-w128 0.775 [0.763, 0.786] "
        "(best one-position rule 0.745): the larger model is ahead beyond instance noise",
        "  0.012: micro-w48 0.848 [0.838, 0.858] vs micro-w128 0.852 [0.845, 0.860] "
        "(best one-position rule 0.745): no size effect beyond instance noise at this budget",
    ]
    assert size_verdicts([]) == []
