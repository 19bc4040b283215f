"""The staleness study's statistics: per-run summaries of the logged metrics (incl. BAPO's premise
measures and the partial level's version spans), per-cell mean and sd over seeds, and the degradation
check. Plain Python (no torch)."""

from __future__ import annotations

import math
import statistics
from typing import Any

from .config import LEVELS

SPIKE_FACTOR = 3.0  # a grad-norm spike: a step whose pre-clip norm exceeds 3x the median of the previous 20
SPIKE_WINDOW = 20
BAPO_TARGET = 0.4  # BAPO's rho0: at the start bounds, a share >= rho0 means BAPO keeps them

CURVE_KEYS = ("reward", "entropy", "grad_norm", "clipfrac/high", "clipfrac/low", "bapo/clip_low", "bapo/clip_high",
              "bapo/clipfrac_high", "bapo/clipfrac_low", "archer/clipfrac_high", "archer/clipfrac_low",
              "archer/clipfrac_pos", "archer/clipfrac_neg")
PREMISE_KEYS = ("premise/pos_share_bapo_start", "premise/pos_share_grpo", "premise/pos_share_unclipped",
                "premise/clipfrac_pos", "premise/clipfrac_neg", "premise/cov_all", "premise/cov_kept",
                "premise/cov_blocked_pos", "premise/cov_blocked_neg", "partial/continued_frac")


def _series(history: list[dict[str, Any]], key: str) -> list[float]:
    return [float(h[key]) for h in history if isinstance(h.get(key), int | float)]


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def grad_spikes(norms: list[float], factor: float = SPIKE_FACTOR, window: int = SPIKE_WINDOW) -> int:
    """Steps whose gradient norm exceeds ``factor`` x the median of the previous ``window`` steps."""
    return sum(1 for i in range(window, len(norms)) if norms[i] > factor * statistics.median(norms[i - window : i]))


def pearson(xs: list[float], ys: list[float]) -> float | None:
    """Pearson correlation of two equally long series; None for fewer than 3 points or a constant one."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def entropy_rule_check(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The Entropy-Clip Rule against the measured entropy, over consecutive logged steps ``t, t+1``:
    predicted ``dH_t ~ -eta Cov_kept,t`` (sign and ordering only: eta is Adam's, unknown) vs measured
    ``H_{t+1} - H_t`` (the trainer's entropy of each step's batch; different batches, so noisy).
    ``corr``: Pearson correlation of ``-cov_kept`` and the measured change; ``n``: step pairs."""
    by_step = {h["step"]: h for h in history if "step" in h}
    pred, meas = [], []
    for step, h in by_step.items():
        nxt = by_step.get(step + 1)
        if nxt is None or not all(isinstance(x.get(k), int | float) for x, k in ((h, "premise/cov_kept"),
                                                                              (h, "entropy"), (nxt, "entropy"))):
            continue
        pred.append(-float(h["premise/cov_kept"]))
        meas.append(float(nxt["entropy"]) - float(h["entropy"]))
    return {"corr": pearson(pred, meas), "n": len(pred)}


def premise_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """BAPO's premise per run (means over every step; empty when the run did not log it):
    positive shares, how often the gradient is negative-dominated (unclipped share < 0.5) and how
    often BAPO's target is already met at its start bounds, clip fractions by sign under the method's
    own clip, the Entropy-Clip Rule's covariances, and the partial level's share of completions that
    span two or more policy versions."""
    out: dict[str, Any] = {}
    for key in PREMISE_KEYS:
        xs = _series(history, key)
        if xs:
            name = "partial_multi_version" if key == "partial/continued_frac" else "premise_" + key.split("/", 1)[1]
            out[name] = statistics.fmean(xs)
    if not out:
        return out
    unclipped = _series(history, "premise/pos_share_unclipped")
    start = _series(history, "premise/pos_share_bapo_start")
    if unclipped:
        out["premise_neg_dominated_frac"] = sum(x < 0.5 for x in unclipped) / len(unclipped)
    if start:
        out["premise_target_met_frac"] = sum(x >= BAPO_TARGET for x in start) / len(start)
    rule = entropy_rule_check(history)
    out["premise_dh_corr"], out["premise_dh_pairs"] = rule["corr"], rule["n"]
    return out


def summarize_history(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-run training statistics from the trainer's logged metrics (last quarter of the steps for levels)."""
    n = len(history)
    tail = history[n - max(1, n // 4) :]

    def tail_mean(*keys: str) -> float | None:
        for key in keys:
            xs = _series(tail, key)
            if xs:
                return statistics.fmean(xs)
        return None

    norms = _series(history, "grad_norm")
    return {
        "entropy_last": tail_mean("entropy"),
        "entropy_first": _mean(_series(history[: max(1, n // 10)], "entropy")),
        "reward_last": tail_mean("reward"),
        # clip fractions by advantage sign: "pos" = A>0 tokens above the upper bound, "neg" = A<0 below the lower
        "clipfrac_pos": tail_mean("clipfrac/high", "bapo/clipfrac_high", "archer/clipfrac_pos"),
        "clipfrac_neg": tail_mean("clipfrac/low", "bapo/clipfrac_low", "archer/clipfrac_neg"),
        "clipfrac_dual": tail_mean("clipfrac/dual", "bapo/clipfrac_dual"),
        # Archer also logs its clip fractions by entropy class (high- / low-entropy tokens)
        "archer_clipfrac_high_entropy": tail_mean("archer/clipfrac_high"),
        "archer_clipfrac_low_entropy": tail_mean("archer/clipfrac_low"),
        "bapo_clip_low": _mean(_series(history, "bapo/clip_low")),
        "bapo_clip_high": _mean(_series(history, "bapo/clip_high")),
        "bapo_target_reached": _mean(_series(history, "bapo/target_reached")),
        "grad_norm_max": max(norms) if norms else None,
        "grad_norm_median": statistics.median(norms) if norms else None,
        "grad_spikes": grad_spikes(norms),
        "completion_tokens": tail_mean("completions/mean_length"),
        **premise_summary(history),
    }


SUMMARY_METRICS = ("avg@k", "pass@k", "greedy", "entropy_last", "reward_last", "clipfrac_pos", "clipfrac_neg",
                   "archer_clipfrac_high_entropy", "archer_clipfrac_low_entropy", "bapo_clip_low", "bapo_clip_high",
                   "grad_spikes", "grad_norm_max", "train_seconds", "mean_completion_tokens")
PREMISE_METRICS = ("premise_pos_share_unclipped", "premise_pos_share_bapo_start", "premise_pos_share_grpo",
                   "premise_neg_dominated_frac", "premise_target_met_frac", "premise_clipfrac_pos",
                   "premise_clipfrac_neg", "premise_cov_all", "premise_cov_kept", "premise_cov_blocked_pos",
                   "premise_cov_blocked_neg", "premise_dh_corr", "partial_multi_version")


def _value(run: dict[str, Any], metric: str, k: int) -> float | None:
    if metric in ("avg@k", "pass@k"):
        return run["after"][metric[:-1] + str(k)]
    if metric in ("greedy", "mean_completion_tokens"):
        return run["after"][metric]
    return run.get(metric)


def summarize(runs: list[dict[str, Any]], k: int) -> dict[str, dict[str, dict[str, Any]]]:
    """``{method: {level: {metric: {"mean", "sd", "n"}}}}`` over seeds (sd: sample sd, 0 for one seed)."""
    cells: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in runs:
        cells.setdefault(r["method"], {}).setdefault(r["level"], []).append(r)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, by_level in cells.items():
        for level, rs in by_level.items():
            stats = {}
            for metric in SUMMARY_METRICS + PREMISE_METRICS:
                xs = [v for v in (_value(r, metric, k) for r in rs) if v is not None]
                if xs:
                    stats[metric] = {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
                                     "n": len(xs)}
            out.setdefault(method, {})[level] = stats
    return out


def degradation(summary: dict[str, Any], low: str = "s1", high: str | None = None) -> dict[str, Any]:
    """Per method: does held-out avg@k / training entropy at the highest staleness fall below level ``low``
    by more than 2 seed sd (the pooled sd of the two cells)? ``by_level``: the same check for every level."""
    out: dict[str, Any] = {}
    for method, by_level in summary.items():
        steps = [lv for lv in by_level if lv in LEVELS and LEVELS[lv].kind == "spg"]
        top = high or max(steps, key=lambda lv: LEVELS[lv].steps_per_generation, default=None)
        if low not in by_level:
            continue
        def compare(level: str, by_level: dict[str, Any] = by_level) -> dict[str, Any]:
            res: dict[str, Any] = {}
            for metric in ("avg@k", "entropy_last"):
                a, b = by_level[low].get(metric), by_level[level].get(metric)
                if a is None or b is None:
                    continue
                pooled = math.sqrt((a["sd"] ** 2 + b["sd"] ** 2) / 2)
                drop = a["mean"] - b["mean"]
                res[metric] = {"drop": drop, "pooled_sd": pooled, "n": min(a["n"], b["n"]),
                               "degrades": bool(min(a["n"], b["n"]) > 1 and drop > 2 * pooled)}
            return res

        has_top = top is not None and top != low
        out[method] = {"from": low, "to": top if has_top else None, **(compare(top) if has_top else {}),
                       "by_level": {lv: compare(lv) for lv in by_level if lv != low}}
    return out
