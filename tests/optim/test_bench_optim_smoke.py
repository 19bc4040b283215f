"""Smoke test of scripts/bench_optim.py: every method steps at a tiny size and is reported."""

from __future__ import annotations

from pathlib import Path

from script_modules import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_optim.py"


def test_bench_optim_reports_every_method():
    bench = load_script(SCRIPT, "bench_optim")
    result = bench.bench_size(0.001, rounds=4, warmup=1)
    assert set(result["methods"]) == set(bench.METHODS)
    assert result["params"] == sum(a * b if b else a for a, b in
                                   [(s[0], s[1] if len(s) > 1 else 0) for s in bench.shapes_for(0.001)])
    for r in result["methods"].values():
        assert 0 < r["min_s"] <= r["median_s"]
    assert result["methods"]["adamw_foreach"]["vs_adamw_foreach"] == 1.0
