"""``adaclip-rl plot``: every drawn series is a key of metrics.jsonl, read back as logged."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is part of the dev install")

from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from adaclip_rl.plot import figure, plot_runs  # noqa: E402
from adaclip_rl.study.staleness import grad_spikes  # noqa: E402


def _run(tmp_path, name: str, n: int, seed: int, method: str) -> list[dict]:
    """A metrics.jsonl as the trainers write it: some keys every step, some not, a NaN as a string."""
    rng = random.Random(seed)
    records = []
    for step in range(1, n + 1):
        r = {"step": step, "epoch": step / n, "loss": rng.random(), "grad_norm": rng.uniform(0.5, 1.5),
             "entropy": 2 - step / n, "learning_rate": 1e-4}
        if step % 7 == 0:
            r["grad_norm"] *= 10  # spikes
        if step % 2:
            r["reward"] = step / n
            r["rewards/exact/mean"] = step / n
        if method == "bapo":
            r.update({"bapo/clip_low": 0.6 + step / 1000, "bapo/clip_high": 1.2 + step / 100,
                      "bapo/pos_share_before": 0.3, "bapo/pos_share_after": 0.4, "bapo/clipfrac_high": 0.01})
        if method == "archer":
            r.update({"archer/high_frac": 0.2, "archer/clipfrac_pos": 0.02, "archer/kl_low": 1e-3})
        if step == 3:
            r["entropy"] = "nan"
        records.append(r)
    run = tmp_path / name
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def _from_file(path, key):
    """The (step, value) pairs of ``key``, read independently of adaclip_rl.plot."""
    pairs = []
    for line in open(path):
        r = json.loads(line)
        if isinstance(r.get(key), int | float) and math.isfinite(r[key]):
            pairs.append((r["step"], r[key]))
    return pairs


@pytest.mark.parametrize("runs", [["bapo"], ["archer"], ["bapo", "archer", "grpo"]])
def test_every_plotted_series_comes_from_the_metrics_file(tmp_path, runs):
    for i, method in enumerate(runs):
        _run(tmp_path, f"{method}-run", n=45, seed=i, method=method)
    dirs = [tmp_path / f"{m}-run" for m in runs]
    png = plot_runs(dirs)
    assert png.is_file() and png.stat().st_size > 10_000
    assert png == (dirs[0] / "metrics.png" if len(runs) == 1 else tmp_path / "metrics_overlay.png")
    from adaclip_rl.console import read_metrics

    fig = figure({d.name: read_metrics(d / "metrics.jsonl") for d in dirs})
    lines = [ln for ax in fig.axes for ln in ax.get_lines() if isinstance(ln, Line2D)]
    assert lines
    keys_drawn = set()
    for ln in lines:
        label = ln.get_label()
        run, key = label.split(": ", 1) if len(runs) > 1 else (dirs[0].name, label)
        pairs = _from_file(tmp_path / run / "metrics.jsonl", key)
        assert list(zip(ln.get_xdata(), ln.get_ydata(), strict=True)) == pairs, label
        keys_drawn.add(key)
    expected = {"reward", "rewards/exact/mean", "entropy", "grad_norm"}
    expected |= {"bapo/clip_low", "bapo/clip_high", "bapo/pos_share_before", "bapo/pos_share_after",
                 "bapo/clipfrac_high"} if "bapo" in runs else set()
    expected |= {"archer/high_frac", "archer/clipfrac_pos", "archer/kl_low"} if "archer" in runs else set()
    assert keys_drawn == expected  # loss and learning_rate are not headline panels
    # spikes: a subset of the grad_norm points, as many as the staleness study's rule counts
    spikes = [c for ax in fig.axes for c in ax.collections if isinstance(c, PathCollection)]
    assert len(spikes) == len(runs)
    for coll in spikes:
        run = coll.get_label().split(": ")[0] if len(runs) > 1 else dirs[0].name
        pairs = _from_file(tmp_path / run / "metrics.jsonl", "grad_norm")
        offsets = [tuple(p) for p in coll.get_offsets()]
        assert offsets and set(offsets) <= set(pairs)
        assert len(offsets) == grad_spikes([v for _, v in pairs])


def test_plot_cli(tmp_path):
    _run(tmp_path, "r", n=10, seed=0, method="bapo")
    out = subprocess.run([sys.executable, "-m", "adaclip_rl.cli", "plot", str(tmp_path / "r")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "r" / "metrics.png")
    bad = subprocess.run([sys.executable, "-m", "adaclip_rl.cli", "plot", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == f"adaclip-rl plot: error: {tmp_path / 'none'}: no metrics.jsonl"
