"""Math reward: extraction, gold handling, self-verification of every benchmark gold, threads."""

from __future__ import annotations

import logging
import re
import threading

import pytest
from rewards_helpers import load_jsonl

from adaclip_rl.rewards import math_pool
from adaclip_rl.rewards.math import (
    clean_boxed,
    extract_boxed_answer,
    gsm8k_gold,
    math_accuracy,
    math_verify_stats,
    normalize_gold,
    reset_math_verify_stats,
    shutdown_math_workers,
    verify_math_answers,
)

WORKERS = 2  # CI has 2 cores


# ------------------------------------------------------------------ extraction helpers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{1} then \boxed{2}", "2"),
        (r"first \boxed{1} final \fbox{7}", "7"),
        (r"\boxed{\boxed{5}}", r"\boxed{5}"),
        (r"\boxed{ {a}^{b} }", "{a}^{b}"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\boxed 5$ done", "5"),
        (r"\boxed{3} and a truncated \boxed{4", "3"),
        ("no box here", None),
        ("", None),
        (r"\boxedfoo{3}", None),
    ],
)
def test_extract_boxed_answer(text: str, expected: str | None) -> None:
    assert extract_boxed_answer(text) == expected


def test_clean_boxed_and_gsm8k_gold() -> None:
    assert clean_boxed("104.") == "104"
    assert clean_boxed(r"\textbf{(073)}") == "(073)"
    assert clean_boxed(r"\textbf{a}+\textbf{b}") == r"\textbf{a}+\textbf{b}"
    assert gsm8k_gold("She makes 9 * 2 = $<<9*2=18>>18.\n#### 18") == "18"
    assert gsm8k_gold("#### 1,450,000") == "1450000"
    assert gsm8k_gold("#### -3") == "-3"
    assert gsm8k_gold("42") == "42"


def test_normalize_gold_forms() -> None:
    assert normalize_gold(27.0) == "27"
    assert normalize_gold(0.5) == "0.5"
    assert normalize_gold(7) == "7"
    assert normalize_gold("x #### 1,000") == "1000"
    assert normalize_gold(r"The answer is $\boxed{\frac{3}{4}}$.") == r"\frac{3}{4}"
    assert normalize_gold("  x=5 ") == "x=5"
    for bad in (None, "", "   ", float("nan"), True):
        assert normalize_gold(bad) is None


# ------------------------------------------------------------------ scoring


def test_equivalent_forms_score_one() -> None:
    preds = [
        r"The answer is $\boxed{\frac{1}{2}}$",
        r"$\boxed{0.5}$",
        r"$\boxed{1/2}$",
        r"$\boxed{\frac12}$",
        r"$\boxed{\dfrac{1}{2}}$",
        r"\fbox{0.50}",
        r"Final answer: $\frac{1}{2}$",  # no box: Math-Verify's default extraction
        r"$\boxed{0.6}$",
        r"$\boxed{2}$",
    ]
    golds = [
        r"\frac{1}{2}",
        r"\frac{1}{2}",
        "0.5",
        "1/2",
        "0.5",
        r"\frac{1}{2}",
        "0.5",
        "0.5",
        r"\frac{1}{2}",
    ]
    assert verify_math_answers(preds, golds, max_workers=WORKERS) == [1.0] * 7 + [0.0, 0.0]


def _integer_like(g: str) -> bool:
    return re.fullmatch(r"-?\d+", g.strip()) is not None


def _perturb(golds: list[str], i: int) -> str:
    """A wrong answer: an integer off by one; otherwise the next row's (different) answer."""
    g = golds[i].strip()
    if _integer_like(g):
        return str(int(g) + 1)
    for k in range(1, len(golds)):
        other = golds[(i + k) % len(golds)]
        if other.replace(" ", "") != g.replace(" ", ""):
            return other
    raise AssertionError("no different gold")


def _gold_rows(name: str) -> tuple[list, list[str]]:
    """(gold field as stored, the answer string a model would box) per row."""
    rows = load_jsonl(name)
    if name == "gsm8k_test":
        fields = [r["answer"] for r in rows]  # the raw "... #### N" field
        return fields, [gsm8k_gold(f) for f in fields]
    if name == "amc23":
        fields = [r["answer"] for r in rows]  # floats such as 27.0
        return fields, [normalize_gold(f) for f in fields]  # type: ignore[misc]
    fields = [r["answer"] for r in rows]
    return fields, [str(f) for f in fields]


@pytest.mark.parametrize("name", ["math500", "aime24", "amc23", "gsm8k_test"])
def test_every_gold_verifies_and_perturbed_fails(name: str) -> None:
    fields, answers = _gold_rows(name)
    right = [f"Let me think step by step... so the final answer is $\\boxed{{{a}}}$." for a in answers]
    wrong = [f"The final answer is $\\boxed{{{_perturb(answers, i)}}}$." for i in range(len(answers))]
    scores = verify_math_answers(right + wrong, fields + fields, max_workers=WORKERS)
    n = len(fields)
    failed_right = [answers[i] for i in range(n) if scores[i] != 1.0]
    passed_wrong = [(answers[i], _perturb(answers, i)) for i in range(n) if scores[n + i] != 0.0]
    assert not failed_right, f"{len(failed_right)} golds do not self-verify: {failed_right[:20]}"
    assert not passed_wrong, f"perturbed answers accepted: {passed_wrong[:20]}"


@pytest.mark.parametrize("name", ["math500", "aime24"])
def test_reference_solutions_verify(name: str) -> None:
    """The full reference solution (its last box, e.g. ``\\boxed{104.}``) matches the gold."""
    rows = load_jsonl(name)
    scores = verify_math_answers(
        [r["solution"] for r in rows], [r["answer"] for r in rows], max_workers=WORKERS
    )
    bad = [r["answer"] for r, s in zip(rows, scores, strict=True) if s != 1.0]
    assert not bad, bad


def test_unparsable_gold_is_none_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    reset_math_verify_stats()
    with caplog.at_level(logging.WARNING, logger="adaclip_rl.rewards.math"):
        scores = verify_math_answers(
            [r"\boxed{1}", r"\boxed{1}", r"\boxed{1}", r"\boxed{1}"],
            ["?", "", r"\frac{", "1"],
            max_workers=WORKERS,
        )
    assert scores == [None, None, None, 1.0]
    stats = math_verify_stats()
    assert stats["gold_unparsable"] == 3
    assert stats["items"] == 4 and stats["correct"] == 1
    assert "gold answer does not parse" in caplog.text


def test_no_answer_scores_zero_and_is_counted() -> None:
    reset_math_verify_stats()
    assert verify_math_answers(["I do not know."], ["5"], max_workers=WORKERS) == [0.0]
    assert math_verify_stats()["no_answer"] == 1


def test_called_from_worker_threads() -> None:
    """Math-Verify's signal.alarm would raise off the main thread; the process pool makes it safe."""
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            results[k] = verify_math_answers(
                [rf"\boxed{{{k}}}", rf"\boxed{{{k + 1}}}"], [str(k), str(k)], max_workers=WORKERS
            )
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert results == {k: [1.0, 0.0] for k in range(4)}


def test_math_accuracy_trl_signature() -> None:
    conv = [
        [{"role": "assistant", "content": r"so $\boxed{18}$"}],
        [{"role": "assistant", "content": r"$\boxed{17}$"}],
    ]
    assert math_accuracy(conv, answer=["18", "18"]) == [1.0, 0.0]
    # gold from a solution column (its last box) and from GSM8K fields
    assert math_accuracy([r"\boxed{3/4}"], solution=[r"... so $\boxed{\frac{3}{4}}$"]) == [1.0]
    assert math_accuracy(["The answer is \\boxed{1000}"], answer=["2 * 500 = 1,000\n#### 1,000"]) == [1.0]
    # extra TRL kwargs are ignored
    assert math_accuracy(
        ["\\boxed{2}"], answer=["2"], prompts=["p"], completion_ids=[[1]], trainer_state=None
    ) == [1.0]
    with pytest.raises(ValueError, match="answer"):
        math_accuracy(["x"])
    with pytest.raises(ValueError, match="completions"):
        math_accuracy(["x", "y"], answer=["1"])


def test_hard_timeout_and_crash_recovery(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker stuck where signal.alarm cannot reach it is killed; a crashing worker is replaced;
    both items score 0 and are counted; the rest of the batch is unaffected."""
    shutdown_math_workers()
    monkeypatch.setenv("ADACLIP_MATH_WORKER_FAULTS", "1")
    monkeypatch.setattr(math_pool, "_hard_deadline", lambda t: 2.0)
    reset_math_verify_stats()
    try:
        preds = ["<<adaclip-fault:hang>>", r"\boxed{2}", "<<adaclip-fault:crash>>", r"\boxed{4}"]
        scores = verify_math_answers(preds, ["1", "2", "3", "4"], timeout_s=1, max_workers=WORKERS)
        assert scores == [0.0, 1.0, 0.0, 1.0]
        stats = math_verify_stats()
        assert stats["timeout"] == 1 and stats["crash"] == 1
        # the pool still works afterwards
        assert verify_math_answers([r"\boxed{5}"], ["5"], max_workers=WORKERS) == [1.0]
    finally:
        shutdown_math_workers()  # drop the fault-injecting workers


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="length"):
        verify_math_answers(["a"], [])
    with pytest.raises(ValueError, match="timeout_s"):
        verify_math_answers(["a"], ["1"], timeout_s=0)
    assert verify_math_answers([], []) == []


@pytest.mark.parametrize(
    ("text", "gold", "expected"),
    [
        # every box counts (Math-Verify reads several boxes as the set of them)
        (r"so $x=\boxed{1}$ or $x=\boxed{-2}$", "1,-2", 1.0),
        (r"x=\boxed{1} or x=\boxed{-2}", r"-2, 1", 1.0),
        (r"first \boxed{3}. Wait, that is wrong: \boxed{5}", "5", 0.0),
        (r"\boxed{073} ... so $d = \boxed{\textbf{(073)}}$", "73", 1.0),  # one value spelled twice
        # complete <think> pairs are cut before extraction (lighteval remove_reasoning_tags)
        (r"<think>maybe \boxed{7}</think> The answer is \boxed{8}", "8", 1.0),
        (r"<think>maybe \boxed{7}</think> The answer is \boxed{8}", "7", 0.0),
        (r"<think>it is 12</think> I cannot tell.", "12", 0.0),
        (r"<think>unclosed reasoning \boxed{9}", "9", 1.0),  # no pair: kept, as lighteval keeps it
    ],
)
def test_all_boxes_after_reasoning(text: str, gold: str, expected: float) -> None:
    assert verify_math_answers([text], [gold], max_workers=WORKERS) == [expected]
