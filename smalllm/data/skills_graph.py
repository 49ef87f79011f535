"""Reading a skills graph: the file ``smalllm skills-graph`` writes (``docs/mixtures.md``).

A skills graph (Skill-It, Chen et al. 2023) says how training on one sub-skill of a task family
changes the held-out loss of another: ``matrix[i][j]`` is the effect of training on skill ``i``
(row: trained) on skill ``j`` (column: evaluated). It is estimated at the sweep layer, which trains
runs, but read here in the data layer so that a mixture policy can weight the sub-skills by it
without importing anything above the data layer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from smalllm.errors import SmalllmError


def load_skills_graph(
    path: str | Path, expected: Sequence[str] | None = None
) -> tuple[list[str], list[list[float]]]:
    """``(skills, matrix)`` of the skills graph in the JSON file ``path``.

    The file must hold an object with ``skills`` (distinct non-empty names) and ``matrix`` (a square
    list of lists of finite numbers, one row and one column per skill). With ``expected`` (the skill
    names of the family a policy weights), the names must be the same set; the matrix is then
    returned in ``expected``'s order, so a graph saved in another order still lines up. Every
    problem is one :class:`~smalllm.errors.SmalllmError` line naming the file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SmalllmError(f"skills graph '{path}': cannot read it ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError):
        raise SmalllmError(f"skills graph '{path}': not a JSON file") from None
    if not isinstance(data, dict):
        raise SmalllmError(f"skills graph '{path}': expected a JSON object with 'skills' and 'matrix'")
    skills, matrix = _skills(data.get("skills"), path), data.get("matrix")
    k = len(skills)
    if not isinstance(matrix, list) or len(matrix) != k:
        raise SmalllmError(f"skills graph '{path}': 'matrix' must be a list of {k} rows, one per skill")
    rows: list[list[float]] = []
    for i, row in enumerate(matrix):
        if not isinstance(row, list) or len(row) != k:
            raise SmalllmError(
                f"skills graph '{path}': 'matrix' row {i} must hold {k} numbers (the matrix is square)"
            )
        for j, value in enumerate(row):
            # bool is an int to Python, but true/false in a weight matrix is a mistake worth naming.
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise SmalllmError(
                    f"skills graph '{path}': matrix[{i}][{j}] must be a finite number, got {value!r}"
                )
        rows.append([float(v) for v in row])
    if expected is None:
        return skills, rows
    want = list(expected)
    if sorted(want) != sorted(skills):
        missing = [s for s in want if s not in skills]
        extra = [s for s in skills if s not in want]
        raise SmalllmError(
            f"skills graph '{path}': its skills {skills} do not match the family's {want}"
            f" (missing {missing}, unknown {extra})"
        )
    order = [skills.index(s) for s in want]
    return want, [[rows[i][j] for j in order] for i in order]


def _skills(value: object, path: Path) -> list[str]:
    if not isinstance(value, list) or not value:
        raise SmalllmError(f"skills graph '{path}': 'skills' must be a non-empty list of skill names")
    if not all(isinstance(s, str) and s for s in value):
        raise SmalllmError(f"skills graph '{path}': every entry of 'skills' must be a non-empty string")
    twice = sorted({s for s in value if value.count(s) > 1})
    if twice:
        raise SmalllmError(f"skills graph '{path}': skill name(s) {twice} appear more than once")
    return list(value)
