"""avg@k, unbiased pass@k (against brute-force enumeration) and first-k maj@k."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaclip_rl.eval.metrics import (
    avg_at_k,
    compute_metrics,
    default_ks,
    majority_correct,
    mean_maj_at_k,
    mean_pass_at_k,
    pass_at_k,
)


def brute_force_pass_at_k(correct: list[bool], k: int) -> float:
    """Fraction of the C(n, k) k-subsets of the samples that contain a correct one."""
    subsets = list(itertools.combinations(range(len(correct)), k))
    return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=8), st.data())
def test_pass_at_k_equals_brute_force(correct: list[bool], data: st.DataObject) -> None:
    n = len(correct)
    k = data.draw(st.integers(1, n))
    assert pass_at_k(n, sum(correct), k) == pytest.approx(brute_force_pass_at_k(correct, k), abs=1e-12)


def test_pass_at_k_all_small_cases_exhaustively() -> None:
    rng = random.Random(0)
    for n in range(1, 9):
        for c in range(n + 1):
            correct = [True] * c + [False] * (n - c)
            rng.shuffle(correct)
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(correct, k), abs=1e-12)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_large_n_is_stable() -> None:
    # C(1024, 512) overflows floats; the product form must not.
    v = pass_at_k(1024, 3, 512)
    assert 0.0 < v < 1.0 and math.isfinite(v)
    assert pass_at_k(1024, 0, 512) == 0.0
    assert pass_at_k(1024, 1024, 1) == 1.0


@pytest.mark.parametrize("args", [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_bad_arguments(args: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        pass_at_k(*args)


def test_pass_at_1_equals_avg_at_n() -> None:
    rng = random.Random(1)
    scores = [[float(rng.random() < 0.3) for _ in range(6)] for _ in range(50)]
    assert mean_pass_at_k(scores, 1) == pytest.approx(avg_at_k(scores))
    assert mean_pass_at_k(scores, 6) == pytest.approx(sum(any(r) for r in scores) / 50)


def test_avg_at_k_first_k_and_none() -> None:
    scores = [[1.0, 0.0, None, 1.0], [0.0, 0.0, 1.0, 1.0]]
    assert avg_at_k(scores) == pytest.approx((2 / 4 + 2 / 4) / 2)
    assert avg_at_k(scores, k=2) == pytest.approx((0.5 + 0.0) / 2)
    with pytest.raises(ValueError):
        avg_at_k(scores, k=5)


def test_majority_vote_first_k() -> None:
    answers = ["3", " 4", "4", None, "3", "3"]
    scores = [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert majority_correct(answers, scores, 3)  # "4" wins 2-1 (whitespace stripped)
    assert not majority_correct(answers, scores, 6)  # "3" wins 3-2
    assert not majority_correct(answers, scores, 1)
    # tie -> earliest answer wins
    assert not majority_correct(["3", "4"], [0.0, 1.0], 2)
    assert majority_correct(["4", "3"], [1.0, 0.0], 2)
    # no extracted answer -> not solved
    assert not majority_correct([None, None], [1.0, 1.0], 2)
    assert mean_maj_at_k([answers, ["1"] * 6], [scores, [1.0] * 6], 6) == pytest.approx(0.5)


def test_compute_metrics_keys_and_validation() -> None:
    scores = [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
    answers = [["a", "b", "b", "c"], ["x"] * 4]
    m = compute_metrics(scores, answers)
    names = {"avg@4", "pass@1", "pass@2", "pass@3", "pass@4", "maj@1", "maj@2", "maj@4"}
    assert set(m) == names | {f"{x}_se" for x in names}  # every metric with its standard error
    assert m["avg@4"] == pytest.approx(0.625)
    assert m["pass@4"] == 1.0
    assert m["maj@1"] == 1.0 and m["maj@4"] == 0.5
    assert "maj@1" not in compute_metrics(scores)
    with pytest.raises(ValueError, match="k must be"):
        compute_metrics(scores, answers, ks=[8])
    with pytest.raises(ValueError, match="same number"):
        compute_metrics([[1.0], [1.0, 0.0]])
    assert default_ks(1) == [1] and default_ks(16) == [1, 2, 4, 8, 16] and default_ks(6) == [1, 2, 4, 6]
