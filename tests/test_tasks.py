"""Property tests of the built-in tasks: determinism, valid ids, and answers recomputed from the prompt.

Every checker below parses the decoded prompt (or, for random-token tasks, looks tokens up in the
task's published table) and recomputes the answer on its own, so a generator bug cannot hide
behind shared code.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from functools import cache
from math import comb

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smalllm.data.tokenizer import byte_level_bpe, byte_tokenizer, char_tokenizer
from smalllm.errors import ConfigError
from smalllm.task_display import show_task, tasks_table
from smalllm.tasks import (
    Instance,
    Task,
    TaskVocab,
    build_task,
    describe_params,
    get_task,
    parse_params,
    registered_tasks,
)

BUILTIN = [
    "t_cmp",
    "t_add",
    "lego",
    "addition",
    "multi_digit_add",
    "modular",
    "copy",
    "reverse",
    "sort",
    "kv_recall",
    "dyck",
    "fact_lookup",
    "sparse_parity",
]
TOKENIZERS = ["byte", "bpe"]
PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_TEXT = (
    "the a of and to in is was for on with as by at from that this it he she they we you not but or "
    "which one two three time year people way day man woman child world life hand part place case week "
    "number group problem fact story house water money night point home state game system program "
    "question work government company research result study quick brown fox jumps over lazy dog"
)


@cache
def vocab(kind: str) -> TaskVocab:
    """Task vocabularies shared by all tests (tokenizer training is the slow part)."""
    if kind == "byte":
        return TaskVocab(byte_tokenizer())
    if kind == "char":
        return TaskVocab(char_tokenizer())
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(_TEXT.split(), size=30).tolist()) for _ in range(300)]
    tok = byte_level_bpe(texts, vocab_size=400)
    assert len(tok) == 400
    return TaskVocab(tok)


def text(v: TaskVocab, ids: tuple[int, ...]) -> str:
    return v.tokenizer.decode(list(ids))


# ----------------------------------------------------------------------------------------------
# Parameter strategies (valid values, kept small so each example is fast)
# ----------------------------------------------------------------------------------------------


@st.composite
def _kv_params(draw: st.DrawFn) -> dict:
    keys = draw(st.integers(1, 26))
    return {"num_keys": keys, "num_pairs": draw(st.integers(1, keys)), "num_values": draw(st.integers(2, 10))}


@st.composite
def _parity_params(draw: st.DrawFn) -> dict:
    n = draw(st.integers(1, 40))
    k = draw(st.integers(1, n))
    return {
        "num_bits": n,
        "k": k,
        "num_subtasks": draw(st.integers(1, min(comb(n, k), 40))),
        "alpha": draw(st.floats(0.0, 3.0)),
    }


_string = st.fixed_dictionaries({"length": st.integers(1, 20), "alphabet_size": st.integers(2, 26)})
PARAMS: dict[str, st.SearchStrategy[dict]] = {
    "t_cmp": st.fixed_dictionaries({"num_values": st.integers(2, 100)}),
    "t_add": st.fixed_dictionaries({"num_values": st.integers(2, 100)}),
    "lego": st.fixed_dictionaries({"num_vars": st.integers(1, 10), "shuffle_clauses": st.booleans()}),
    "addition": st.fixed_dictionaries({"num_digits": st.integers(1, 9), "include_carry": st.booleans()}),
    "multi_digit_add": st.fixed_dictionaries(
        {"num_digits": st.integers(1, 25), "reverse_answer": st.booleans()}
    ),
    "modular": st.fixed_dictionaries(
        {"modulus": st.integers(2, 10**6), "op": st.sampled_from(["add", "sub", "mul"])}
    ),
    "copy": _string,
    "reverse": _string,
    "sort": _string,
    "kv_recall": _kv_params(),
    "dyck": st.fixed_dictionaries(
        {
            "length": st.integers(1, 12).map(lambda h: 2 * h),
            "num_types": st.integers(1, 4),
            "max_depth": st.integers(1, 6),
        }
    ),
    "fact_lookup": st.fixed_dictionaries(
        {
            "num_facts": st.integers(1, 100),
            "num_relations": st.integers(1, 5),
            "num_values": st.integers(2, 30),
        }
    ),
    "sparse_parity": _parity_params(),
}


# ----------------------------------------------------------------------------------------------
# Independent answer checkers: (task, instance, vocab) -> raises AssertionError on a wrong answer
# ----------------------------------------------------------------------------------------------


def _check_value_table(task: Task) -> dict[int, int]:
    n = task.params.num_values
    assert len(task.table) == n and len(set(task.table)) == n
    return {tok: i for i, tok in enumerate(task.table)}


def check_t_cmp(task: Task, inst: Instance, v: TaskVocab) -> None:
    val = _check_value_table(task)
    labels = {task.label_less, task.label_not_less}
    assert len(labels) == 2 and not labels & set(task.table)
    a, b = inst.prompt
    assert a != b
    assert inst.answer == ((task.label_less if val[a] < val[b] else task.label_not_less),)


def check_t_add(task: Task, inst: Instance, v: TaskVocab) -> None:
    val = _check_value_table(task)
    a, b = inst.prompt
    assert inst.answer == (task.table[(val[a] + val[b]) % task.params.num_values],)


def check_lego(task: Task, inst: Instance, v: TaskVocab) -> None:
    k = task.params.num_vars
    m = re.fullmatch(r"(.*)\?([a-z])=", text(v, inst.prompt))
    assert m, text(v, inst.prompt)
    clauses = m.group(1).split(";")
    assert len(clauses) == k
    defs: dict[str, tuple[str, str]] = {}
    for clause in clauses:
        c = re.fullmatch(r"([a-z])=(?:([01])|([+-])([a-z]))", clause)
        assert c, clause
        name, bit, op, parent = c.groups()
        assert name not in defs
        defs[name] = (bit, "") if bit else (op, parent)

    def resolve(x: str) -> tuple[int, int]:  # (bit, depth)
        a, b = defs[x]
        if not b:
            return int(a), 1
        bit, depth = resolve(b)
        return bit ^ (a == "-"), depth + 1

    roots = [x for x, (_, parent) in defs.items() if not parent]
    assert len(roots) == 1
    # A chain: every variable but the last is the parent of exactly one other.
    assert sorted(Counter(p for _, p in defs.values() if p).values()) == [1] * (k - 1)
    bit, depth = resolve(m.group(2))
    assert depth == inst.skill + 1
    assert text(v, inst.answer) == str(bit)
    if not task.params.shuffle_clauses:
        assert [resolve(c[0])[1] for c in clauses] == list(range(1, k + 1))


def check_addition(task: Task, inst: Instance, v: TaskVocab) -> None:
    n = task.params.num_digits
    m = re.fullmatch(rf"(\d{{{n}}})\+(\d{{{n}}}),(\d)=", text(v, inst.prompt))
    assert m, text(v, inst.prompt)
    a, b, i = (int(g) for g in m.groups())
    assert i == inst.skill
    assert text(v, inst.answer) == str((a + b) // 10**i % 10)


def check_multi_digit_add(task: Task, inst: Instance, v: TaskVocab) -> None:
    n = task.params.num_digits
    m = re.fullmatch(rf"(\d{{{n}}})\+(\d{{{n}}})=", text(v, inst.prompt))
    assert m, text(v, inst.prompt)
    total = str(int(m.group(1)) + int(m.group(2))).zfill(n + 1)
    assert text(v, inst.answer) == (total[::-1] if task.params.reverse_answer else total)


def check_modular(task: Task, inst: Instance, v: TaskVocab) -> None:
    p = task.params.modulus
    m = re.fullmatch(r"(\d+)([-+*])(\d+)=", text(v, inst.prompt))
    assert m, text(v, inst.prompt)
    a, op, b = m.groups()
    assert str(int(a)) == a and str(int(b)) == b  # no zero padding
    a, b = int(a), int(b)
    assert 0 <= a < p and 0 <= b < p
    assert op == {"add": "+", "sub": "-", "mul": "*"}[task.params.op]
    expected = {"+": a + b, "-": a - b, "*": a * b}[op] % p
    assert text(v, inst.answer) == str(expected)


def _string_check(transform):
    def check(task: Task, inst: Instance, v: TaskVocab) -> None:
        letters = "abcdefghijklmnopqrstuvwxyz"[: task.params.alphabet_size]
        m = re.fullmatch(rf"([{letters}]{{{task.params.length}}})\|", text(v, inst.prompt))
        assert m, text(v, inst.prompt)
        assert text(v, inst.answer) == transform(m.group(1))

    return check


def check_kv_recall(task: Task, inst: Instance, v: TaskVocab) -> None:
    p = task.params
    keys = "abcdefghijklmnopqrstuvwxyz"[: p.num_keys]
    values = "0123456789"[: p.num_values]
    m = re.fullmatch(rf"((?:[{keys}][{values}]){{{p.num_pairs}}})\?([{keys}])=", text(v, inst.prompt))
    assert m, text(v, inst.prompt)
    pairs = m.group(1)
    table = {pairs[i]: pairs[i + 1] for i in range(0, len(pairs), 2)}
    assert len(table) == p.num_pairs  # keys distinct
    assert text(v, inst.answer) == table[m.group(2)]


def check_dyck(task: Task, inst: Instance, v: TaskVocab) -> None:
    p = task.params
    brackets = "()[]{}<>"[: 2 * p.num_types]
    m = re.fullmatch(rf"([{re.escape(brackets)}]{{{p.length}}})=", text(v, inst.prompt))
    assert m, text(v, inst.prompt)
    seq = m.group(1)
    stack: list[str] = []
    balanced = True
    depth = 0
    for c in seq:
        depth += 1 if brackets.index(c) % 2 == 0 else -1
        assert depth <= p.max_depth
        if brackets.index(c) % 2 == 0:
            stack.append(c)
        elif not stack or brackets.index(stack.pop()) != brackets.index(c) - 1:
            balanced = False
    balanced = balanced and not stack
    assert text(v, inst.answer) == ("1" if balanced else "0")


def check_fact_lookup(task: Task, inst: Instance, v: TaskVocab) -> None:
    p = task.params
    table = {(e, r): val for e, r, val in task.facts}
    assert len(task.facts) == len(table) == p.num_facts
    assert {val for _, _, val in task.facts} <= set(task.values)
    assert len(task.values) == p.num_values
    roles = [set(task.entities), set(task.relations), set(task.values)]
    assert sum(map(len, roles)) == len(set().union(*roles))  # disjoint token roles
    e, r = inst.prompt
    assert inst.answer == (table[(e, r)],)


def check_sparse_parity(task: Task, inst: Instance, v: TaskVocab) -> None:
    p = task.params
    assert len(task.subsets) == len(set(task.subsets)) == p.num_subtasks
    assert all(len(s) == len(set(s)) == p.k and max(s) < p.num_bits for s in task.subsets)
    assert len(set(task.control)) == p.num_subtasks
    assert inst.prompt[0] == task.control[inst.skill]
    bits = text(v, inst.prompt[1:])
    assert re.fullmatch(rf"[01]{{{p.num_bits}}}=", bits), bits
    parity = sum(int(bits[i]) for i in task.subsets[inst.skill]) % 2
    assert text(v, inst.answer) == str(parity)


CHECKERS = {
    "t_cmp": check_t_cmp,
    "t_add": check_t_add,
    "lego": check_lego,
    "addition": check_addition,
    "multi_digit_add": check_multi_digit_add,
    "modular": check_modular,
    "copy": _string_check(lambda s: s),
    "reverse": _string_check(lambda s: s[::-1]),
    "sort": _string_check(lambda s: "".join(sorted(s))),
    "kv_recall": check_kv_recall,
    "dyck": check_dyck,
    "fact_lookup": check_fact_lookup,
    "sparse_parity": check_sparse_parity,
}


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------


def _samples(task: Task, rng_seed: int, per_skill: int = 3) -> list[Instance]:
    rng = np.random.default_rng(rng_seed)
    return [task.generate(rng, s) for s in range(len(task.skills)) for _ in range(per_skill)]


def test_all_builtins_registered() -> None:
    tasks = registered_tasks()
    assert set(BUILTIN) <= set(tasks)
    assert set(BUILTIN) == set(CHECKERS) == set(PARAMS)


@pytest.mark.parametrize("name", BUILTIN)
def test_params_documented(name: str) -> None:
    cls = get_task(name)
    assert cls.description
    for pname, _, default, doc in describe_params(cls):
        assert doc, f"{name}.{pname} has no docstring"
        assert default is not None
    parse_params(cls, {}, "task.params")  # defaults are valid


@pytest.mark.parametrize("kind", TOKENIZERS)
@pytest.mark.parametrize("name", BUILTIN)
def test_task_properties(name: str, kind: str) -> None:
    v = vocab(kind)
    special = set(v.tokenizer.all_special_ids)

    @PROPERTY
    @given(params=PARAMS[name], seed=st.integers(0, 2**16), rng_seed=st.integers(0, 2**32 - 1))
    def prop(params: dict, seed: int, rng_seed: int) -> None:
        task = build_task(name, params, v, seed=seed)
        samples = _samples(task, rng_seed)
        # Determinism: a fresh task object and a fresh RNG in the same state give the same instances.
        assert _samples(build_task(name, params, v, seed=seed), rng_seed) == samples
        limit = task.max_length()
        for inst in samples:
            assert inst.answer and inst.length <= limit
            for i in inst.prompt + inst.answer:
                assert type(i) is int and 0 <= i < v.vocab_size and i != v.eod_id and i not in special
            assert 0 <= inst.skill < len(task.skills)
            assert task.answer_space(inst.skill) >= 2
            CHECKERS[name](task, inst, v)

    prop()


@pytest.mark.parametrize("name", BUILTIN)
def test_answers_within_answer_space(name: str) -> None:
    task = build_task(name, {}, vocab("byte"), seed=3)
    rng = np.random.default_rng(0)
    for s in range(len(task.skills)):
        answers = {tok for _ in range(400) for tok in task.generate(rng, s).answer}
        assert len(answers) <= task.answer_space(s)
        if name not in ("t_add", "fact_lookup"):  # too many values to see all in 400 draws
            assert len(answers) == task.answer_space(s)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("t_cmp", {"num_values": 5}),
        ("t_add", {"num_values": 4}),
        ("addition", {"num_digits": 1, "include_carry": True}),
        ("multi_digit_add", {"num_digits": 1}),
        ("modular", {"modulus": 7, "op": "mul"}),
        ("copy", {"length": 3, "alphabet_size": 2}),
        ("sort", {"length": 2, "alphabet_size": 3}),
        ("kv_recall", {"num_pairs": 2, "num_keys": 2, "num_values": 2}),
        ("lego", {"num_vars": 1}),
        ("fact_lookup", {"num_facts": 10}),
        ("sparse_parity", {"num_subtasks": 2, "num_bits": 3, "k": 1}),
    ],
)
def test_instance_space_is_exact(name: str, params: dict) -> None:
    task = build_task(name, params, vocab("byte"))
    rng = np.random.default_rng(0)
    keys = {task.generate(rng, i % len(task.skills)).key for i in range(4000)}
    assert len(keys) == task.instance_space()


def test_value_table_shared_and_seeded() -> None:
    v = vocab("bpe")
    cmp0, add0 = build_task("t_cmp", {}, v, seed=0), build_task("t_add", {}, v, seed=0)
    assert cmp0.table == add0.table == build_task("t_cmp", {}, v, seed=0).table
    assert build_task("t_cmp", {}, v, seed=1).table != cmp0.table
    assert not {cmp0.label_less, cmp0.label_not_less} & set(cmp0.table)


def test_t_cmp_labels_balanced() -> None:
    task = build_task("t_cmp", {}, vocab("byte"))
    rng = np.random.default_rng(0)
    counts = Counter(task.generate(rng).answer for _ in range(4000))
    assert len(counts) == 2 and min(counts.values()) > 1800


def test_dyck_half_balanced() -> None:
    task = build_task("dyck", {}, vocab("byte"))
    one = vocab("byte").symbol("1")
    rng = np.random.default_rng(0)
    balanced = sum(task.generate(rng).answer == (one,) for _ in range(4000))
    assert 1800 < balanced < 2200


def test_dyck_single_type_and_shallow() -> None:
    # One bracket type and depth 1 leave only '()()…' balanced; corruption must still work.
    task = build_task("dyck", {"num_types": 1, "max_depth": 1, "length": 4}, vocab("byte"))
    rng = np.random.default_rng(0)
    for _ in range(200):
        check_dyck(task, task.generate(rng), vocab("byte"))


def test_sparse_parity_zipf_weights() -> None:
    task = build_task("sparse_parity", {"num_subtasks": 4, "alpha": 2.0}, vocab("byte"))
    assert task.default_skill_weights() == pytest.approx([1.0, 1 / 4, 1 / 9, 1 / 16])
    assert len(task.skills) == 4


def test_sparse_parity_all_subsets() -> None:
    # Every k-subset is used: the setup must not stall in rejection sampling.
    task = build_task("sparse_parity", {"num_subtasks": comb(10, 5), "num_bits": 10, "k": 5}, vocab("bpe"))
    assert len(set(task.subsets)) == comb(10, 5)


def test_fact_lookup_is_memorization() -> None:
    task = build_task("fact_lookup", {"num_facts": 20}, vocab("byte"))
    assert task.memorization is True
    rng = np.random.default_rng(0)
    seen = {task.generate(rng).prompt for _ in range(1000)}
    assert seen == {(e, r) for e, r, _ in task.facts}
    assert build_task("fact_lookup", {"num_facts": 20}, vocab("byte")).facts == task.facts


def test_char_tokenizer() -> None:
    v = vocab("char")
    for name in BUILTIN:
        try:
            task = build_task(name, {}, v)
        except ConfigError as exc:  # t_cmp needs 102 distinct tokens; printable ASCII has 100
            assert name == "t_cmp" and "needs 102 distinct table tokens but only 100" in str(exc)
            continue
        CHECKERS[name](task, task.generate(np.random.default_rng(0)), v)


# ----------------------------------------------------------------------------------------------
# Parameter errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN)
def test_unknown_param(name: str) -> None:
    first = dataclasses.fields(get_task(name).Params)[0].name
    with pytest.raises(ConfigError, match=rf"task\.params\.{first}x: unknown parameter"):
        build_task(name, {first + "x": 1}, vocab("byte"))


_WRONG = {int: "3", bool: 1, float: "0.5", str: 3}


@pytest.mark.parametrize("name", BUILTIN)
def test_wrong_type(name: str) -> None:
    cls = get_task(name)
    for pname, tname, _, _ in describe_params(cls):
        wrong = _WRONG[{"int": int, "bool": bool, "float": float, "str": str}[tname]]
        with pytest.raises(ConfigError, match=rf"task\.params\.{pname}: expected"):
            build_task(name, {pname: wrong}, vocab("byte"))


OUT_OF_RANGE = [
    ("t_cmp", {"num_values": 1}, "num_values"),
    ("t_add", {"num_values": 0}, "num_values"),
    ("lego", {"num_vars": 27}, "num_vars"),
    ("lego", {"num_vars": 0}, "num_vars"),
    ("addition", {"num_digits": 10}, "num_digits"),
    ("multi_digit_add", {"num_digits": 0}, "num_digits"),
    ("modular", {"modulus": 1}, "modulus"),
    ("modular", {"op": "div"}, "op"),
    ("copy", {"length": 0}, "length"),
    ("reverse", {"alphabet_size": 27}, "alphabet_size"),
    ("sort", {"alphabet_size": 1}, "alphabet_size"),
    ("kv_recall", {"num_pairs": 5, "num_keys": 4}, "num_pairs"),
    ("kv_recall", {"num_values": 11}, "num_values"),
    ("dyck", {"length": 7}, "length"),
    ("dyck", {"num_types": 5}, "num_types"),
    ("dyck", {"max_depth": 0}, "max_depth"),
    ("fact_lookup", {"num_facts": 0}, "num_facts"),
    ("fact_lookup", {"num_values": 1}, "num_values"),
    ("sparse_parity", {"k": 33}, "k"),
    ("sparse_parity", {"num_bits": 4, "k": 2, "num_subtasks": 7}, "num_subtasks"),
    ("sparse_parity", {"alpha": -1.0}, "alpha"),
]


@pytest.mark.parametrize(("name", "params", "field"), OUT_OF_RANGE)
def test_out_of_range(name: str, params: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^task\.params: {field}: "):
        build_task(name, params, vocab("byte"))


def test_unknown_task() -> None:
    with pytest.raises(ConfigError, match="did you mean 't_cmp'"):
        build_task("t_cmpp", {}, vocab("byte"))


def test_too_few_tokens() -> None:
    with pytest.raises(ConfigError, match="needs 300 distinct table tokens but only 256 are eligible"):
        build_task("t_cmp", {"num_values": 300}, vocab("byte"))


# ----------------------------------------------------------------------------------------------
# Display
# ----------------------------------------------------------------------------------------------


def test_tasks_table() -> None:
    table = tasks_table()
    for name in BUILTIN:
        assert re.search(rf"^{name}\s", table, re.M)
    assert "num_values=100" in table and "params:" in table


@pytest.mark.parametrize("name", BUILTIN)
def test_show_task(name: str) -> None:
    out = show_task(name, 4, {}, tokenizer=vocab("bpe").tokenizer, seed=1)
    samples = out.split("samples (seed 1):\n")[1].splitlines()
    assert len(samples) == 4 and all("⟨" in s and s.endswith("⟩") for s in samples)
    for pname, *_ in describe_params(get_task(name)):
        assert f"  {pname}: " in out


def test_show_task_plain_text_and_overrides() -> None:
    out = show_task("addition", 3, {"num_digits": 2})
    assert re.search(r"\[addition/digit0\] \d\d\+\d\d,0= ⟨\d⟩", out)
    assert "num_digits: int = 2 (default 3)" in out


def test_show_task_lists_the_table_with_background_counts() -> None:
    # Five eligible ids with made-up counts (count of id i = 10·i): the table is all of them, the two
    # labels included, each shown with its id, text and count.
    tok = byte_tokenizer()
    letter = {tok.convert_tokens_to_ids(c): c for c in "abcde"}
    eligible = sorted(letter)
    counts = np.arange(258) * 10
    restricted = TaskVocab(tok, eligible, "five letters")
    out = show_task("t_cmp", 1, {"num_values": 3}, vocab=restricted, counts=counts)
    header, *rows = out.split("\ntoken table ")[1].split("\nsamples")[0].splitlines()
    assert header.startswith("(5 tokens, from five letters): id 'text' ×count")
    cells = re.findall(r"(\d+) '(\w)'\s+×(\d+)", " ".join(rows))
    assert sorted(cells) == sorted((str(i), letter[i], str(10 * i)) for i in eligible)
    # Without counts the table is still shown, each count as "?".
    assert "×?" in show_task("t_cmp", 1, {"num_values": 3}, vocab=restricted)
