"""The staleness study's markdown tables: mean ± sd over seeds per method and level."""

from __future__ import annotations

from typing import Any

from .config import METHODS


def _fmt(cell: dict[str, Any] | None, digits: int = 3, n_seeds: int | None = None) -> str:
    if cell is None:
        return "-"
    short = f" (n={cell['n']})" if n_seeds is not None and cell["n"] < n_seeds else ""
    return f"{cell['mean']:.{digits}f} ± {cell['sd']:.{digits}f}{short}"


def _table(summary: dict[str, Any], methods: list[str], levels: list[str], metric: str, title: str, digits: int,
           n_seeds: int | None) -> list[str]:
    present = [lv for lv in levels if any(metric in summary.get(m, {}).get(lv, {}) for m in methods)]
    lines = [f"**{title}**\n", "| method | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for m in methods:
        if m not in summary or not any(metric in summary[m].get(lv, {}) for lv in present):
            continue
        cells = [_fmt(summary[m].get(lv, {}).get(metric), digits, n_seeds) for lv in present]
        lines.append(f"| {METHODS[m].label} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def table_markdown(summary: dict[str, Any], methods: list[str], levels: list[str], k: int,
                   n_seeds: int | None = None) -> str:
    """Markdown tables (held-out avg@k; training entropy) with mean ± sd over seeds per method and level;
    a cell with fewer than ``n_seeds`` runs says so (``(n=2)``)."""
    lines = []
    for metric, title, digits in (("avg@k", f"held-out avg@{k}", 3), ("entropy_last", "entropy (nats/token, last "
                                  "quarter of training)", 3), ("clipfrac_pos", "clip fraction A>0 above c_high "
                                  "(last quarter)", 4), ("clipfrac_neg", "clip fraction A<0 below c_low (last quarter)",
                                                       4)):
        present = [lv for lv in levels if any(lv in summary.get(m, {}) for m in methods)]
        lines.append(f"**{title}**\n")
        lines.append("| method | " + " | ".join(present) + " |")
        lines.append("|---|" + "---|" * len(present))
        for m in methods:
            if m not in summary:
                continue
            cells = [_fmt(summary[m].get(lv, {}).get(metric), digits, n_seeds) for lv in present]
            lines.append(f"| {METHODS[m].label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


PREMISE_TABLES = (
    ("premise_pos_share_unclipped", "BAPO premise 1: positive share of the gradient, no clip (mean over steps)", 3),
    ("premise_neg_dominated_frac", "share of steps with a negative-dominated gradient (unclipped share < 0.5)", 2),
    ("premise_pos_share_bapo_start", "positive share at BAPO's start bounds [0.6, 1.2] (mean over steps)", 3),
    ("premise_target_met_frac", "share of steps where BAPO's target (0.4) is already met at its start bounds", 2),
    ("premise_clipfrac_pos", "clip fraction A>0 (own bounds, mean over steps)", 4),
    ("premise_clipfrac_neg", "clip fraction A<0 (own bounds incl. dual clip, mean over steps)", 4),
    ("premise_cov_blocked_pos", "Entropy-Clip Rule: Cov(log p, A) over blocked A>0 tokens (x 1e3; < 0: the clip "
     "removed an entropy increase)", 3),
    ("premise_cov_blocked_neg", "Entropy-Clip Rule: Cov(log p, A) over blocked A<0 tokens (x 1e3; > 0: the clip "
     "removed an entropy decrease)", 3),
    ("premise_cov_kept", "Entropy-Clip Rule: Cov(log p, A) over the kept tokens (x 1e3; predicts dH ~ -eta Cov)", 3),
    ("premise_dh_corr", "correlation over steps of -Cov_kept with the measured entropy change H(t+1) - H(t)", 2),
    ("partial_multi_version", "share of trained completions that span two or more policy versions", 3),
)
_SCALED = {"premise_cov_blocked_pos", "premise_cov_blocked_neg", "premise_cov_kept"}


def premise_markdown(summary: dict[str, Any], methods: list[str], levels: list[str], n_seeds: int | None = None
                     ) -> str:
    """Tables of BAPO's premise measures (:func:`adaclip_rl.study.stats.premise_summary`); covariances x 1e3.
    Only the metrics some cell has; empty string when no run logged them."""
    lines: list[str] = []
    for metric, title, digits in PREMISE_TABLES:
        scaled = {m: {lv: ({**c, metric: {**c[metric], "mean": 1e3 * c[metric]["mean"],
                                          "sd": 1e3 * c[metric]["sd"]}} if metric in _SCALED and metric in c else c)
                      for lv, c in by.items()} for m, by in summary.items()}
        if any(metric in scaled.get(m, {}).get(lv, {}) for m in methods for lv in levels):
            lines += _table(scaled, methods, levels, metric, title, digits, n_seeds)
    return "\n".join(lines)
