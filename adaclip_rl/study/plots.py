"""The staleness study's figures: accuracy and entropy vs staleness with the replay / partial cells
beside them, training curves at the highest level, and BAPO's premise measures per level."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .config import LEVELS, METHODS

COLORS = {"grpo": "tab:blue", "dapo": "tab:orange", "bapo": "tab:red", "archer": "tab:green", "grpo_bh": "tab:purple",
          "dapo_bh": "tab:brown", "bapo_narrow": "tab:pink"}
# off-axis levels, drawn as squares right of the steps-per-generation axis (x = factor x the largest s<n>)
_SIDE = {"replay": 2, "partial": 4}


def _smooth(points: list[list[float]], window: int) -> tuple[list[float], list[float]]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return xs, [statistics.fmean(ys[max(0, i - window + 1) : i + 1]) for i in range(len(ys))]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(runs: list[dict[str, Any]], summary: dict[str, Any], path: Path, k: int) -> None:
    """Accuracy and entropy vs staleness (mean, seed range shaded); reward and entropy curves at the highest level."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    spg_levels = sorted({r["level"] for r in runs if LEVELS[r["level"]].kind == "spg"},
                        key=lambda lv: LEVELS[lv].steps_per_generation)
    side = [lv for lv in _SIDE if any(lv in by_level for by_level in summary.values())]
    if not spg_levels and not side:  # only regime levels (e.g. the regime search): one point per level and method
        _plot_categorical(axes[0], summary, runs, k)
        _plot_curves(axes[1], runs, next((r["level"] for r in runs), None))
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    for ax, metric, title in ((axes[0, 0], "avg@k", f"held-out avg@{k} after RL"),
                              (axes[0, 1], "entropy_last", "entropy, nats/token (last quarter of training)")):
        top_spg = max((LEVELS[lv].steps_per_generation for lv in spg_levels), default=1)
        for i, (m, by_level) in enumerate(summary.items()):
            lvs = [lv for lv in spg_levels if metric in by_level.get(lv, {})]
            if lvs:
                xs = [LEVELS[lv].steps_per_generation for lv in lvs]
                mu = [by_level[lv][metric]["mean"] for lv in lvs]
                sd = [by_level[lv][metric]["sd"] for lv in lvs]
                ax.plot(xs, mu, "o-", color=COLORS[m], label=METHODS[m].label)
                ax.fill_between(xs, [a - b for a, b in zip(mu, sd, strict=True)],
                                [a + b for a, b in zip(mu, sd, strict=True)], color=COLORS[m], alpha=0.15)
            labelled = bool(lvs)
            for lv in side:
                if lv in by_level and metric in by_level[lv]:
                    c = by_level[lv][metric]  # side by side, so equal cells stay visible
                    ax.errorbar([_SIDE[lv] * top_spg * 1.08**i], [c["mean"]], yerr=[c["sd"]], fmt="s",
                                color=COLORS[m], capsize=3, label=None if labelled else METHODS[m].label)
                    labelled = True
        ax.set_xscale("log", base=2)
        ticks = [LEVELS[lv].steps_per_generation for lv in spg_levels]
        ax.set_xticks(ticks + [_SIDE[lv] * top_spg for lv in side], [str(t) for t in ticks] + side)
        ax.set_xlabel("optimizer steps per generation batch (squares: 50% replay, 1 step per generation)"
                      if side == ["replay"] or not side else
                      "optimizer steps per generation batch (squares: 1 step per generation)")
        ax.set_title(title + " — mean ± sd over seeds")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    _plot_curves(axes[1], runs, spg_levels[-1] if spg_levels else None)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_curves(axes: Any, runs: list[dict[str, Any]], level: str | None) -> None:
    """Reward and entropy curves (10-step mean) of every run at ``level``."""
    for ax, key, title, window in ((axes[0], "reward", "train reward", 10),
                                   (axes[1], "entropy", "entropy, nats/token", 10)):
        for r in runs:
            if r["level"] != level or key not in r["curves"]:
                continue
            ax.plot(*_smooth(r["curves"][key], window), color=COLORS[r["method"]], alpha=0.6,
                    label=f"{r['method']} seed {r['seed']}")
        ax.set_title(f"{title} at {level} ({window}-step mean), every seed")
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)


def _plot_categorical(axes: Any, summary: dict[str, Any], runs: list[dict[str, Any]], k: int) -> None:
    """Held-out avg@k and entropy per level (categorical x, one offset point per method, mean ± sd)."""
    levels = list(dict.fromkeys(r["level"] for r in runs))
    for ax, metric, title in ((axes[0], "avg@k", f"held-out avg@{k} after RL"),
                              (axes[1], "entropy_last", "entropy, nats/token (last quarter of training)")):
        for i, (m, by_level) in enumerate(summary.items()):
            cells = [(j, by_level[lv][metric]) for j, lv in enumerate(levels) if metric in by_level.get(lv, {})]
            if cells:
                ax.errorbar([j + 0.1 * (i - (len(summary) - 1) / 2) for j, _ in cells], [c["mean"] for _, c in cells],
                            yerr=[c["sd"] for _, c in cells], fmt="o", color=COLORS[m], capsize=3,
                            label=METHODS[m].label)
        ax.set_xticks(range(len(levels)), levels)
        ax.set_xlim(-0.5, len(levels) - 0.5)
        ax.set_xlabel("level")
        ax.set_title(title + " — mean ± sd over seeds")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)


def premise_plot(summary: dict[str, Any], methods: list[str], levels: list[str], path: Path) -> None:
    """Four panels, one group of bars per level, one bar per method (mean ± sd over seeds): the positive
    gradient share (no clip; dashed: BAPO's target 0.4), clip fractions by sign (own bounds; dotted: 5%),
    and the Entropy-Clip Rule's covariances over the blocked tokens by sign."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    panels = ((axes[0, 0], "premise_pos_share_unclipped", "positive share of the gradient (no clip)", 1.0),
              (axes[0, 1], None, "clip fraction by sign, own bounds (bars: A<0 below; hatched: A>0 above)", 1.0),
              (axes[1, 0], "premise_cov_blocked_pos", "Cov(log p, A) over blocked A>0 tokens (x 1e3)", 1e3),
              (axes[1, 1], "premise_cov_blocked_neg", "Cov(log p, A) over blocked A<0 tokens (x 1e3)", 1e3))
    present = [lv for lv in levels if any("premise_pos_share_unclipped" in summary.get(m, {}).get(lv, {})
                                          for m in methods)]
    ms = [m for m in methods if any(lv in summary.get(m, {}) for lv in present)]
    width = 0.8 / max(len(ms), 1)
    for ax, metric, title, scale in panels:
        for j, m in enumerate(ms):
            xs = [i + j * width for i in range(len(present))]
            cells = [summary[m].get(lv, {}) for lv in present]
            if metric is None:
                for key, hatch, lab in (("premise_clipfrac_neg", None, METHODS[m].label),
                                        ("premise_clipfrac_pos", "//", None)):
                    ys = [c.get(key, {}).get("mean", float("nan")) for c in cells]
                    bottom = [c.get("premise_clipfrac_neg", {}).get("mean", 0.0) for c in cells] if hatch else None
                    ax.bar(xs, ys, width, bottom=bottom, color=COLORS[m], hatch=hatch, alpha=0.5 if hatch else 0.9,
                           label=lab)
                continue
            ys = [scale * c.get(metric, {}).get("mean", float("nan")) for c in cells]
            err = [scale * c.get(metric, {}).get("sd", 0.0) for c in cells]
            ax.bar(xs, ys, width, yerr=err, color=COLORS[m], label=METHODS[m].label, capsize=2)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(present))], present)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
        ax.axhline(0.0, color="black", lw=0.5)
    axes[0, 0].axhline(0.4, color="black", ls="--", lw=1)
    axes[0, 1].axhline(0.05, color="black", ls=":", lw=1)
    axes[0, 1].legend(fontsize=7, loc="upper left")  # the clip-fraction panel has room at the top left
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
