"""``adaclip-rl study staleness``: the aggregation rules on hand-made numbers, the config checks,
and the ``--quick`` smoke run through the real command (outputs exist, are well formed, and a
second invocation resumes instead of retraining)."""

from __future__ import annotations

import json
import math
import time

import pytest

from adaclip_rl.study.staleness import (
    DEFAULT_METHODS,
    LEVELS,
    METHODS,
    StudyConfig,
    degradation,
    grad_spikes,
    summarize,
)


def test_grad_spikes_counts_steps_above_three_times_the_trailing_median():
    norms = [1.0] * 20 + [3.5, 1.0, 2.9] + [1.0] * 5
    assert grad_spikes(norms) == 1  # 3.5 > 3 x 1.0; 2.9 is not
    assert grad_spikes([1.0] * 10 + [100.0]) == 0  # fewer than 20 steps of history: nothing judged


def _run(method, level, seed, acc, ent):
    return {"method": method, "level": level, "seed": seed, "after": {"avg@4": acc, "pass@4": acc, "greedy": acc,
            "mean_completion_tokens": 30.0}, "entropy_last": ent, "train_seconds": 1.0}


def test_summary_is_mean_and_sample_sd_and_degradation_uses_two_pooled_sd():
    runs = [_run("grpo", "s1", s, a, 1.0) for s, a in enumerate((0.50, 0.52, 0.54))]
    runs += [_run("grpo", "s16", s, a, 1.0) for s, a in enumerate((0.40, 0.42, 0.44))]
    runs += [_run("bapo", "s1", s, a, 1.0) for s, a in enumerate((0.50, 0.52, 0.54))]
    runs += [_run("bapo", "s16", s, a, 1.0) for s, a in enumerate((0.46, 0.50, 0.54))]
    summary = summarize(runs, k=4)
    cell = summary["grpo"]["s1"]["avg@k"]
    assert cell["n"] == 3 and math.isclose(cell["mean"], 0.52) and math.isclose(cell["sd"], 0.02)
    deg = degradation(summary)
    assert deg["grpo"]["to"] == "s16" and deg["grpo"]["avg@k"]["degrades"]  # drop 0.10 > 2 x 0.02
    # bapo: drop 0.02, pooled sd sqrt((0.02^2 + 0.04^2) / 2) = 0.0316: not a degradation
    assert math.isclose(deg["bapo"]["avg@k"]["pooled_sd"], math.sqrt((0.02**2 + 0.04**2) / 2))
    assert not deg["bapo"]["avg@k"]["degrades"]
    assert not deg["grpo"]["entropy_last"]["degrades"]  # equal entropies
    assert deg["grpo"]["by_level"]["s16"] == {k: deg["grpo"][k] for k in ("avg@k", "entropy_last")}


def test_one_seed_never_counts_as_a_degradation():
    summary = summarize([_run("grpo", "s1", 0, 0.9, 1.0), _run("grpo", "s16", 0, 0.1, 0.1)], k=4)
    assert not degradation(summary)["grpo"]["avg@k"]["degrades"]


@pytest.mark.parametrize(("kw", "match"), [
    ({"methods": ["ppo"]}, "unknown methods/levels"),
    ({"levels": ["s3"]}, "unknown methods/levels"),
    ({"max_steps": 0}, "max_steps must be >= 1"),
    ({"seeds": []}, "seeds must not be empty"),
])
def test_invalid_study_configs_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        StudyConfig(**kw)


def test_levels_are_the_issue_grid_and_methods_have_the_named_bounds():
    spg = sorted(lv.steps_per_generation for lv in LEVELS.values() if lv.replay_ratio == 0)
    assert spg == [1, 2, 4, 8, 16] and LEVELS["replay"].replay_ratio > 0
    assert METHODS["grpo"].flags == ("--policy_loss", "grpo", "--epsilon", "0.2")
    assert "--epsilon_high" in METHODS["dapo"].flags and "0.28" in METHODS["dapo"].flags


def test_quick_study_writes_well_formed_outputs_and_resumes(tmp_path, capsys):
    from adaclip_rl.cli import main

    out = tmp_path / "study"
    assert main(["study", "staleness", "--quick", "--out", str(out)]) == 0
    result = json.loads((out / "staleness.json").read_text())
    cells = {(r["method"], r["level"]) for r in result["runs"]}
    assert cells == {(m, lv) for m in DEFAULT_METHODS for lv in ("s1", "s4")}
    for r in result["runs"]:
        assert r["steps"] == 4 and 0.0 <= r["after"]["avg@2"] <= 1.0 and math.isfinite(r["entropy_last"])
    for m in DEFAULT_METHODS:
        for lv in ("s1", "s4"):
            acc = result["summary"][m][lv]["avg@k"]
            assert acc["n"] == 1 and acc["sd"] == 0.0
    assert set(result["degradation"]) == set(DEFAULT_METHODS)
    assert (out / "staleness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "staleness.md").read_text()
    assert "| GRPO clip [0.8, 1.2] |" in table and "| s1 | s4 |" in table
    assert (out / "train" / "bapo-s4-seed0" / "metrics.jsonl").is_file()
    # a second invocation trains nothing: every run file is kept as it was
    stamps = {f.name: f.stat().st_mtime_ns for f in (out / "runs").iterdir()}
    capsys.readouterr()
    t0 = time.perf_counter()
    assert main(["study", "staleness", "--quick", "--out", str(out)]) == 0
    assert "8/8 runs already done" in capsys.readouterr().out
    assert {f.name: f.stat().st_mtime_ns for f in (out / "runs").iterdir()} == stamps
    assert time.perf_counter() - t0 < 60
