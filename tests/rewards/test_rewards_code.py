"""Code rewards: all HumanEval canonical solutions pass, emptied bodies fail, stdio, TRL signature."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rewards_helpers import assert_no_leftovers, humaneval

from adaclip_rl.rewards.code import (
    build_humaneval_program,
    check_humaneval,
    check_stdio,
    code_accuracy,
    extract_code,
    outputs_match,
)
from adaclip_rl.sandbox import launcher, run_python_function_tests

# ------------------------------------------------------------------ HumanEval, all 164 problems


def test_all_humaneval_canonical_solutions_pass() -> None:
    rows = humaneval()
    assert len(rows) == 164
    scores = code_accuracy(
        [r["canonical_solution"] for r in rows],
        test=[r["test"] for r in rows],
        entry_point=[r["entry_point"] for r in rows],
        prompt=[r["prompt"] for r in rows],
    )
    failed = [r["task_id"] for r, s in zip(rows, scores, strict=True) if s != 1.0]
    assert not failed, f"canonical solutions failing in the sandbox: {failed}"
    assert_no_leftovers()


def test_all_humaneval_emptied_bodies_fail() -> None:
    rows = humaneval()
    scores = code_accuracy(
        ["    pass\n"] * len(rows),
        test=[r["test"] for r in rows],
        entry_point=[r["entry_point"] for r in rows],
        prompt=[r["prompt"] for r in rows],
    )
    passed = [r["task_id"] for r, s in zip(rows, scores, strict=True) if s != 0.0]
    assert not passed, f"empty bodies passing: {passed}"


HUMANEVAL_SAMPLE = slice(0, 164, 11)  # 15 problems spread over the benchmark


def test_humaneval_sample_canonical_pass_and_emptied_fail() -> None:
    """A sample of the two checks above in one batch: run as a fresh unprivileged uid by
    ``test_rewards_unprivileged.py::test_sandbox_tests_pass_as_a_fresh_unprivileged_uid``,
    where the whole benchmark would cost too much of the suite's time."""
    rows = humaneval()[HUMANEVAL_SAMPLE]
    assert len(rows) == 15
    scores = code_accuracy(
        [r["canonical_solution"] for r in rows] + ["    pass\n"] * len(rows),
        test=[r["test"] for r in rows] * 2,
        entry_point=[r["entry_point"] for r in rows] * 2,
        prompt=[r["prompt"] for r in rows] * 2,
    )
    ids = [r["task_id"] for r in rows] * 2
    assert scores == [1.0] * len(rows) + [0.0] * len(rows), list(zip(ids, scores, strict=True))
    assert_no_leftovers()


# ------------------------------------------------------------------ completion forms


ROW = 2  # HumanEval/2: truncate_number(number: float) -> float


def test_completion_forms() -> None:
    row = humaneval()[ROW]
    prompt, test, ep = row["prompt"], row["test"], row["entry_point"]
    body = row["canonical_solution"]
    full = "def truncate_number(number: float) -> float:\n    return number % 1.0\n"
    fenced = f"Here is my solution:\n```python\n{full}```\nIt works because..."
    fenced_no_tag = f"```\n{full}```"
    truncated_fence = f"```python\n{full}"
    for completion in (body, full, fenced, fenced_no_tag, truncated_fence):
        assert check_humaneval(completion, prompt, test, ep) == 1.0, completion
    assert check_humaneval("```python\ndef truncate_number(x):\n    return 0.0\n```", prompt, test, ep) == 0.0
    assert check_humaneval("this is not code", prompt, test, ep) == 0.0
    assert check_humaneval("", prompt, test, ep) == 0.0


def test_extract_code_and_build_program() -> None:
    text = "```text\nnot code\n```\n```python\ndef helper():\n    pass\n```\n```python\ndef f(x):\n    return x\n```"
    assert extract_code(text, "f") == "def f(x):\n    return x\n"
    assert extract_code(text) == "def f(x):\n    return x\n"
    assert extract_code("    return 1\n") == "    return 1\n"
    prompt = "def f(x):\n    '''doc'''\n"
    assert build_humaneval_program("    return x\n", prompt, "f").startswith(prompt + "    return x\n")
    program = build_humaneval_program("def f(x):\n    return 2 * x\n", prompt, "f")
    assert program.startswith(prompt) and program.rstrip().endswith("return 2 * x")
    compile(program, "p", "exec")
    # a prompt ending in a bare def still yields a valid program for a full-program completion
    bare = build_humaneval_program("def f(x):\n    return x\n", "def f(x):\n", "f")
    compile(bare, "p", "exec")


# ------------------------------------------------------------------ the judge's plain-data channel


def test_plain_data_round_trip_and_exceptions() -> None:
    program = textwrap.dedent(
        """
        def f(kind, x=None):
            if kind == "echo":
                return x
            if kind == "raise":
                raise ValueError("bad input")
            if kind == "gen":
                return (i for i in range(3))
        """
    )
    test = textwrap.dedent(
        """
        import math
        def check(candidate):
            samples = [None, True, False, 0, -7, 2**200, 1.5, -0.0, float("inf"), 1e-300, 3 + 4j, "",
                       "héllo\\n\\x00", b"\\x00\\xff", [1, [2, (3, {4})]], (1,), {"a": 1, 2: [3], (1, 2): None},
                       {1, 2, 3}, frozenset({"x"}), []]
            for s in samples:
                out = candidate("echo", s)
                assert out == s and type(out) is type(s), (s, out)
            nan = candidate("echo", float("nan"))
            assert isinstance(nan, float) and math.isnan(nan)
            assert candidate(kind="echo", x=5) == 5
            try:
                candidate("raise")
            except ValueError as e:
                assert "bad input" in str(e)
            else:
                raise AssertionError("expected ValueError")
        """
    )
    res = run_python_function_tests(program, entry_point="f", test=test)
    assert res.passed, res.judge_error
    # non-plain return values do not cross the boundary
    gen_test = "def check(candidate):\n    assert list(candidate('gen')) == [0, 1, 2]\n"
    res = run_python_function_tests(program, entry_point="f", test=gen_test)
    assert res.passed is False and "unsupported value" in (res.judge_error or "")


def test_missing_entry_point_and_syntax_error() -> None:
    row = humaneval()[ROW]
    assert check_humaneval("def other():\n    return 1\n", "", row["test"], row["entry_point"]) == 0.0
    res = run_python_function_tests("def f(:\n", entry_point="f", test="def check(c):\n    c()\n")
    assert res.passed is False and "SyntaxError" in res.stderr


# ------------------------------------------------------------------ stdin/stdout


SUM_PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"


def test_check_stdio_binary_and_fraction() -> None:
    cases = [("1 2\n", "3\n"), ("10 -4\n", "6"), ("2 2\n", "5\n")]
    assert check_stdio(SUM_PROGRAM, cases[:2]) == 1.0
    assert check_stdio(SUM_PROGRAM, cases) == 0.0
    assert check_stdio(SUM_PROGRAM, cases, score="fraction") == pytest.approx(2 / 3)
    assert check_stdio(f"```python\n{SUM_PROGRAM}```", [{"input": "3 4", "output": "7"}]) == 1.0
    crashing = "import sys\nprint(3)\nsys.exit(1)\n"
    assert check_stdio(crashing, [("1 2\n", "3\n")]) == 0.0  # right output, non-zero exit
    with pytest.raises(ValueError, match="score"):
        check_stdio(SUM_PROGRAM, cases, score="partial")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        check_stdio(SUM_PROGRAM, [])


def test_stdio_output_is_judged_by_the_parent() -> None:
    """A program that prints a 'success' banner instead of the answer fails."""
    liar = "print('All tests passed!')\nprint('{\"passed\": true}')\nimport os\nos._exit(0)\n"
    assert check_stdio(liar, [("1 2\n", "3\n")]) == 0.0


def test_outputs_match() -> None:
    assert outputs_match("3  \n\n", "3")
    assert outputs_match("a\r\nb\n", "a\nb")
    assert not outputs_match("3\n4", "3")
    assert not outputs_match(" 3", "3")


# ------------------------------------------------------------------ TRL signature


def test_code_accuracy_trl_signature() -> None:
    row = humaneval()[ROW]
    conv_right = [
        {"role": "assistant", "content": f"```python\n{row['prompt']}{row['canonical_solution']}```"}
    ]
    conv_wrong = [{"role": "assistant", "content": "```python\ndef truncate_number(n):\n    return n\n```"}]
    scores = code_accuracy(
        [conv_right, conv_wrong],
        test=[row["test"]] * 2,
        entry_point=[row["entry_point"]] * 2,
        prompt=[[{"role": "user", "content": "solve"}]] * 2,  # conversational prompt: not a code prefix
        completion_ids=[[1], [2]],
        trainer_state=None,
    )
    assert scores == [1.0, 0.0]
    # TRL passes the prompts as ``prompts``; a code prompt is the prefix of a body completion,
    # a prose prompt is ignored (a full-program completion still passes)
    scores = code_accuracy(
        [row["canonical_solution"], f"```python\n{row['prompt']}{row['canonical_solution']}```"],
        prompts=[row["prompt"], "Write truncate_number. Return the decimal part."],
        test=[row["test"]] * 2,
        entry_point=[row["entry_point"]] * 2,
    )
    assert scores == [1.0, 1.0]
    # code prefix from a dedicated column
    scores = code_accuracy(
        [row["canonical_solution"]],
        test=[row["test"]],
        entry_point=[row["entry_point"]],
        code_prompt=[row["prompt"]],
        prompt=[[{"role": "user", "content": "solve"}]],
    )
    assert scores == [1.0]
    # stdin/stdout rows, with fractional scoring
    stdio = code_accuracy(
        [SUM_PROGRAM, "print(3)"],
        test_cases=[[("1 2", "3"), ("2 2", "4")], [("1 2", "3"), ("2 2", "4")]],
        code_score="fraction",
    )
    assert stdio == [1.0, 0.5]
    with pytest.raises(ValueError, match="test_cases"):
        code_accuracy(["x"])


# ------------------------------------------------------------------ codec property test


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**300), max_value=2**300),
    st.floats(allow_nan=False),
    st.complex_numbers(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
_hashable = st.recursive(
    _leaf, lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3), max_leaves=6
)
_values = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(_hashable, inner, max_size=3)
        | st.sets(_hashable, max_size=3)
    ),
    max_leaves=12,
)


def _same(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)  # type: ignore[union-attr,index]
    if isinstance(a, float):
        return a == b and str(a) == str(b)  # keeps -0.0 apart from 0.0
    return a == b


@settings(max_examples=200, deadline=None)
@given(_values)
def test_judge_codec_round_trips_exact_types(value: object) -> None:
    import json

    wire = json.loads(json.dumps(launcher._enc(value)))
    assert _same(launcher._dec(wire), value)


def test_judge_codec_rejects_objects_and_malformed_data() -> None:
    class Sneaky(int):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = int.__hash__

    assert type(launcher._dec(launcher._enc(Sneaky(3)))) is int  # subclasses are flattened to the base type
    with pytest.raises(TypeError, match="unsupported value"):
        launcher._enc(object())
    for bad in ([], ["zz", 1], ["i", 5], ["l", "notalist"], {"ok": 1}, ["d", [[["s", "k"]]]]):
        with pytest.raises(ValueError):
            launcher._dec(bad)
