"""``adaclip-rl plot RUN_DIR [RUN_DIR ...]``: a picture of training runs from their ``metrics.jsonl``.

One PNG per call: one run -> ``RUN_DIR/metrics.png``; several runs -> their curves overlaid in one
figure (``--out``, default ``metrics_overlay.png`` in the runs' common parent folder). Every
curve is one logged key of ``metrics.jsonl`` against its ``step``, drawn as it was logged (no
smoothing); a panel appears only when the runs logged one of its keys:

* **reward**: ``reward`` and each ``rewards/<name>/mean``;
* **entropy**: ``entropy`` (and Archer's ``archer/entropy_threshold``);
* **BAPO bounds**: ``bapo/clip_low`` and ``bapo/clip_high`` (Xi et al., arXiv 2510.18927, Alg. 1);
* **BAPO positive share**: ``bapo/pos_share_before`` / ``bapo/pos_share_after`` (the share of the
  policy-gradient contribution from positive-advantage tokens before and after the bounds moved);
* **clip fractions by advantage sign**: ``clipfrac/high`` (A > 0 above 1 + eps_high),
  ``clipfrac/low`` (A < 0 below 1 - eps), ``clipfrac/dual``, BAPO's ``bapo/clipfrac_*``, Archer's
  ``archer/clipfrac_pos`` / ``archer/clipfrac_neg`` and TRL's ``clip_ratio/*``;
* **Archer token classes**: ``archer/high_frac`` (share of high-entropy tokens) and the clip
  fractions per class ``archer/clipfrac_high`` / ``archer/clipfrac_low`` (Wang et al., arXiv 2507.15778);
* **KL**: ``kl``, ``archer/kl_high``, ``archer/kl_low``;
* **gradient norm**: ``grad_norm`` (and ``gradclip/*`` thresholds) with spikes marked: a step whose
  norm exceeds 3x the median of the previous 20 (the staleness study's rule,
  :func:`adaclip_rl.study.staleness.grad_spikes`);
* **staleness**: ``staleness/*`` (asynchronous trainer) and ``replay/age_mean``.

Needs matplotlib (``pip install 'adaclip-rl[plot]'``).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .console import METRICS_FILE, read_metrics  # noqa: E402
from .study.staleness import SPIKE_FACTOR, SPIKE_WINDOW  # noqa: E402

PROG = "adaclip-rl plot"


@dataclass(frozen=True)
class Panel:
    """A subplot: its title and the patterns of the logged keys it draws (full matches, in order)."""

    title: str
    patterns: tuple[str, ...]
    ylabel: str = ""


PANELS: tuple[Panel, ...] = (
    Panel("reward", (r"reward", r"rewards/.+/mean")),
    Panel("entropy", (r"entropy", r"archer/entropy_threshold"), "nats/token"),
    Panel("BAPO clip bounds", (r"bapo/clip_low", r"bapo/clip_high"), "ratio bound"),
    Panel("BAPO positive share", (r"bapo/pos_share_before", r"bapo/pos_share_after"), "share"),
    Panel("clip fractions by advantage sign (high/pos: A>0 above the upper bound; low/neg: A<0 below the lower)",
          (r"clipfrac/high", r"clipfrac/low", r"clipfrac/dual", r"bapo/clipfrac_high", r"bapo/clipfrac_low",
           r"bapo/clipfrac_dual", r"archer/clipfrac_pos", r"archer/clipfrac_neg", r"clip_ratio/.+"), "fraction"),
    Panel("Archer token classes (high_frac: share of high-entropy tokens; clip fraction per class)",
          (r"archer/high_frac", r"archer/clipfrac_high", r"archer/clipfrac_low"),
          "fraction"),
    Panel("KL", (r"kl", r"archer/kl_high", r"archer/kl_low")),
    Panel("gradient norm", (r"grad_norm", r"gradclip/.+")),
    Panel("staleness", (r"staleness/.+", r"replay/age_mean"), "policy versions"),
)


def series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of ``key``: every record that logged it as a finite number, in file order."""
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) != float("inf"):
            steps.append(int(r["step"]))
            values.append(float(v))
    return steps, values


def spike_indices(values: Sequence[float], factor: float = SPIKE_FACTOR, window: int = SPIKE_WINDOW) -> list[int]:
    """Indices whose value exceeds ``factor`` x the median of the previous ``window`` values."""
    return [i for i in range(window, len(values)) if values[i] > factor * statistics.median(values[i - window:i])]


def _keys(records: Sequence[dict[str, Any]], panel: Panel) -> list[str]:
    present: list[str] = []
    seen = {k for r in records for k in r}
    for pattern in panel.patterns:
        for key in sorted(seen):
            if re.fullmatch(pattern, key) and key not in present and series(records, key)[0]:
                present.append(key)
    return present


def figure(runs: dict[str, list[dict[str, Any]]]):
    """The matplotlib figure of ``runs`` (label -> records). Each line's label is ``key`` (one run)
    or ``run: key`` (several); spikes are a scatter labelled ``spikes`` / ``run: spikes``."""
    all_records = [r for records in runs.values() for r in records]
    panels = [(p, _keys(all_records, p)) for p in PANELS]
    panels = [(p, keys) for p, keys in panels if keys]
    if not panels:
        raise ValueError("no plottable metrics (reward, entropy, clip, KL, grad_norm, ...) in " + ", ".join(runs))
    ncols = 2 if len(panels) > 1 else 1
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 3.2 * nrows), squeeze=False)
    several = len(runs) > 1
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    for ax, (panel, keys) in zip(axes.flat, panels, strict=False):
        for ri, (name, records) in enumerate(runs.items()):
            for ki, key in enumerate(keys):
                steps, values = series(records, key)
                if not steps:
                    continue
                color = colors[(ri if several else ki) % len(colors)]
                style = styles[ki % len(styles)] if several else "-"
                label = f"{name}: {key}" if several else key
                ax.plot(steps, values, style, color=color, label=label, linewidth=1.2,
                        marker="." if len(steps) < 30 else None)
                if key == "grad_norm":
                    idx = spike_indices(values)
                    if idx:
                        ax.scatter([steps[i] for i in idx], [values[i] for i in idx], marker="x", s=40,
                                   color="red", zorder=3, label=f"{name}: spikes" if several else "spikes")
        ax.set_title(panel.title + (" (x: > 3x median of previous 20)" if panel.title == "gradient norm" else ""),
                     fontsize=9)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if panel.ylabel:
            ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(", ".join(runs) if len(runs) <= 4 else f"{len(runs)} runs", fontsize=11)
    fig.tight_layout()
    return fig


def _metrics_file(run_dir: str | os.PathLike[str]) -> Path:
    path = Path(run_dir)
    file = path if path.is_file() else path / METRICS_FILE
    if not file.is_file():
        raise ValueError(f"{run_dir!s}: no {METRICS_FILE}")
    return file


def plot_runs(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str] | None = None) -> Path:
    """Write the PNG of ``run_dirs`` (run folders or their ``metrics.jsonl``) and return its path."""
    files = [_metrics_file(d) for d in run_dirs]
    if not files:
        raise ValueError("no run directories given")
    names = [f.parent.name or str(f.parent) for f in files]
    if len(set(names)) < len(names):
        names = [str(f.parent) for f in files]
    runs = {name: read_metrics(f) for name, f in zip(names, files, strict=True)}
    if out is None:
        if len(files) == 1:
            out = files[0].parent / "metrics.png"
        else:
            out = Path(os.path.commonpath([str(f.parent.resolve()) for f in files])) / "metrics_overlay.png"
    fig = figure(runs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description="Plot training runs from their metrics.jsonl (PNG).")
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folder(s) holding metrics.jsonl")
    ap.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/metrics.png for one run, "
                    "metrics_overlay.png in the runs' common folder for several)")
    ap.add_argument("--each", action="store_true", help="with several runs, also write RUN_DIR/metrics.png per run")
    args = ap.parse_args(argv)
    try:
        written = [plot_runs(args.runs, args.out)]
        if args.each and len(args.runs) > 1:
            written += [plot_runs([run]) for run in args.runs]
    except (ValueError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
