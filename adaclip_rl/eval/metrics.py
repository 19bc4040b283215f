"""Evaluation metrics over ``n`` sampled completions per problem: avg@k, unbiased pass@k, maj@k.

Conventions (all functions are pure Python, no torch):

* A problem's samples carry scores in ``[0, 1]``; a sample is **correct** when its score is
  ``>= 1.0`` (full credit). Math and HumanEval verifiers return exactly 0.0 or 1.0.
* **avg@k** is the mean score over the first ``k`` samples of a problem, averaged over problems.
  With ``k = n`` it is the "average of n samples" that DeepSeek-R1 / open-r1 / DAPO / Archer
  report as pass@1 (e.g. avg@64 on AIME).
* **pass@k** is the unbiased estimator of Chen et al. (2021), "Evaluating Large Language Models
  Trained on Code", eq. (1): ``pass@k = E[1 - C(n - c, k) / C(n, k)]`` for ``n`` samples of which
  ``c`` are correct, computed in the numerically stable product form
  ``1 - prod_{i = n-c+1}^{n} (1 - k / i)`` (the form used by the Codex paper's code, lighteval,
  slime and AReaL). ``pass@1 == avg@n`` for 0/1 scores.
* **maj@k** (majority voting, "self-consistency") here is the **first-k** variant: the vote is
  taken over the first ``k`` samples (in generation order) among those with an extracted answer
  (for math: :func:`adaclip_rl.eval.benchmarks.vote_answer`, the boxed answer(s) normalised by
  :func:`adaclip_rl.eval.answers.answer_key`, so ``\\$18``, ``18.00`` and ``18`` are one vote);
  the problem counts as solved when the winning group's earliest sample is correct. Ties
  between groups of equal size go to the group whose first sample came earliest. This is deterministic and reproducible; it is *not* the bootstrap or
  unbiased-subset variant (verl reports a bootstrap maj@N), so compare it only with first-k
  numbers or with ``k = n`` (where all variants coincide).
* **Standard errors** (``<metric>_se``): every metric is a mean over problems of a per-problem
  value ``v_i`` (the mean score of its samples, its unbiased pass@k, its 0/1 majority verdict);
  the reported standard error is the analytic (central-limit) one, ``sd(v_i) / sqrt(P)`` with the
  sample standard deviation (``ddof = 1``) over the ``P`` problems. It covers both the sampling
  noise of the ``n`` completions and the choice of problems, i.e. it answers "how far could this
  number move on a rerun / another draw of problems of this kind"; n=1 on AIME's 30 problems at
  30% gives about +-8.5 points. ``None``/NaN with a single problem.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

CORRECT_THRESHOLD = 1.0


def is_correct(score: float | None) -> bool:
    """Whether a sample with ``score`` counts as correct (full credit; ``None`` is incorrect)."""
    return score is not None and score >= CORRECT_THRESHOLD


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate for one problem (Chen et al. 2021, eq. 1).

    Args:
        n: number of samples drawn (``n >= 1``).
        c: number of correct samples (``0 <= c <= n``).
        k: budget (``1 <= k <= n``).

    Returns:
        ``1 - C(n - c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` so that
        no large binomial is ever formed.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n={n}]; got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}]; got {k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def avg_at_k(scores: Sequence[Sequence[float | None]], k: int | None = None) -> float:
    """avg@k: mean over problems of the mean score of each problem's first ``k`` samples.

    Args:
        scores: ``scores[problem][sample]``; ``None`` scores count as 0.
        k: samples per problem to use; default all (every problem must have at least ``k``).
    """
    if not scores:
        return float("nan")
    per_problem = []
    for row in scores:
        kk = len(row) if k is None else k
        if kk < 1 or len(row) < kk:
            raise ValueError(f"avg@k needs k in [1, n]; got k={kk} with n={len(row)} samples")
        per_problem.append(sum(0.0 if s is None else float(s) for s in row[:kk]) / kk)
    return sum(per_problem) / len(per_problem)


def mean_pass_at_k(scores: Sequence[Sequence[float | None]], k: int) -> float:
    """Unbiased pass@k averaged over problems (each problem uses all of its ``n`` samples)."""
    if not scores:
        return float("nan")
    vals = [pass_at_k(len(row), sum(is_correct(s) for s in row), k) for row in scores]
    return sum(vals) / len(vals)


def majority_correct(answers: Sequence[str | None], scores: Sequence[float | None], k: int) -> bool:
    """First-k majority vote for one problem: is the most frequent extracted answer correct?

    Samples without an extracted answer (``None``) do not vote; with no votes the problem is not
    solved. Answers are compared after stripping surrounding whitespace; ties go to the answer
    seen first. The winner is correct when its first sample is correct (samples with the same
    extracted answer receive the same verdict from a deterministic verifier).
    """
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj@k needs k in [1, n={len(answers)}]; got {k}")
    if len(answers) != len(scores):
        raise ValueError(f"answers ({len(answers)}) and scores ({len(scores)}) differ in length")
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i in range(k):
        a = answers[i]
        if a is None:
            continue
        key = a.strip()
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, i)
    if not counts:
        return False
    winner = max(counts, key=lambda a: (counts[a], -first[a]))
    return is_correct(scores[first[winner]])


def mean_maj_at_k(
    answers: Sequence[Sequence[str | None]], scores: Sequence[Sequence[float | None]], k: int
) -> float:
    """First-k maj@k averaged over problems (see :func:`majority_correct`)."""
    if not scores:
        return float("nan")
    vals = [majority_correct(a, s, k) for a, s in zip(answers, scores, strict=True)]
    return sum(vals) / len(vals)


def standard_error(values: Sequence[float]) -> float:
    """Analytic standard error of the mean of ``values``: ``sd(values, ddof=1) / sqrt(len)``
    (NaN for fewer than two values)."""
    m = len(values)
    if m < 2:
        return float("nan")
    mean = sum(values) / m
    var = sum((v - mean) ** 2 for v in values) / (m - 1)
    return math.sqrt(var / m)


def per_problem_values(
    scores: Sequence[Sequence[float | None]],
    answers: Sequence[Sequence[str | None]] | None,
    metric: str,
    k: int,
) -> list[float]:
    """The per-problem values whose mean is ``metric@k`` (``avg``, ``pass`` or ``maj``)."""
    if metric == "avg":
        return [sum(0.0 if s is None else float(s) for s in row[:k]) / k for row in scores]
    if metric == "pass":
        return [pass_at_k(len(row), sum(is_correct(s) for s in row), k) for row in scores]
    if metric == "maj":
        if answers is None:
            raise ValueError("maj@k needs answers")
        return [float(majority_correct(a, s, k)) for a, s in zip(answers, scores, strict=True)]
    raise ValueError(f"unknown metric {metric!r}; expected avg, pass or maj")


def default_ks(n: int) -> list[int]:
    """Budgets shown in tables: powers of two below ``n``, and ``n`` itself (1, 2, 4, ..., n)."""
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) < n]
    return [*ks, n]


def compute_metrics(
    scores: Sequence[Sequence[float | None]],
    answers: Sequence[Sequence[str | None]] | None = None,
    ks: Iterable[int] | None = None,
) -> dict[str, float]:
    """All metrics for one benchmark.

    Args:
        scores: ``scores[problem][sample]``, the same number ``n`` of samples for every problem.
        answers: extracted answers, same shape; maj@k is computed only when given.
        ks: budgets for maj@k (default :func:`default_ks`); pass@k is always reported for every
            ``k <= n``.

    Returns:
        ``{"avg@n": ..., "pass@1": ..., ..., "pass@n": ..., "maj@k": ...}`` and, for each, its
        standard error under ``"<name>_se"`` (see :func:`standard_error`).
    """
    if not scores:
        return {}
    n = len(scores[0])
    if any(len(row) != n for row in scores):
        raise ValueError("every problem must have the same number of samples")
    ks_list = sorted(set(default_ks(n) if ks is None else ks))
    bad = [k for k in ks_list if not 1 <= k <= n]
    if bad:
        raise ValueError(f"k must be in [1, n={n}]; got {bad}")
    out: dict[str, float] = {}

    def put(metric: str, k: int, name: str) -> None:
        vals = per_problem_values(scores, answers, metric, k)
        out[name] = sum(vals) / len(vals)
        out[f"{name}_se"] = standard_error(vals)

    put("avg", n, f"avg@{n}")
    for k in range(1, n + 1):
        put("pass", k, f"pass@{k}")
    if answers is not None:
        for k in ks_list:
            put("maj", k, f"maj@{k}")
    return out
