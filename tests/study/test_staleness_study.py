"""``adaclip-rl study staleness``: the aggregation rules on hand-made numbers, the config checks,
the premise summaries, and the ``--quick`` smoke run through the real command (outputs exist, are
well formed - incl. the partial-rollout level and the premise measures - and a second invocation
resumes instead of retraining)."""

from __future__ import annotations

import json
import math
import time

import pytest

from adaclip_rl.study.staleness import (
    DEFAULT_LEVELS,
    DEFAULT_METHODS,
    LEVELS,
    METHODS,
    StudyConfig,
    collect,
    degradation,
    grad_spikes,
    premise_markdown,
    premise_summary,
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
    ({"levels": ["s16-lr3e-4"], "learning_rate": 1e-4}, "learning_rate is set by levels"),
])
def test_invalid_study_configs_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        StudyConfig(**kw)


def test_levels_are_the_issue_grid_and_methods_have_the_named_bounds():
    spg = sorted(LEVELS[lv].steps_per_generation for lv in DEFAULT_LEVELS if LEVELS[lv].kind == "spg")
    assert spg == [1, 2, 4, 8, 16] and LEVELS["replay"].replay_ratio > 0
    assert list(DEFAULT_LEVELS) == ["s1", "s2", "s4", "s8", "s16", "replay"]  # what the demo and run 1/2 used
    assert METHODS["grpo"].flags == ("--policy_loss", "grpo", "--epsilon", "0.2")
    assert "--epsilon_high" in METHODS["dapo"].flags and "0.28" in METHODS["dapo"].flags
    assert [LEVELS[lv].kind for lv in ("s16", "replay", "partial", "s64", "s16-lr3e-4")] == [
        "spg", "replay", "partial", "spg", "regime"]


def _parsed(method, level):
    from adaclip_rl.study.config import STUDY_RECIPE
    from adaclip_rl.trainers.build import make_parser

    argv = ["--config", str(STUDY_RECIPE), *METHODS[method].flags, *LEVELS[level].flags(40), "--output_dir", "x"]
    return make_parser().parse_args_and_config(argv)[1]


def test_ablation_and_level_flags_reach_the_trainer_config():
    """bapo_narrow is BAPO from GRPO's bounds with the paper's steps and maxima; dapo_bh is DAPO's clip
    on the behaviour ratio; partial turns on partial rollouts with the pre-fill under a staleness bound."""
    narrow = _parsed("bapo_narrow", "s16").policy_loss_config()
    paper = _parsed("bapo", "s16").policy_loss_config()
    assert (narrow.low_start, narrow.high_start) == (0.8, 1.2) and (paper.low_start, paper.high_start) == (0.6, 1.2)
    assert {k: v for k, v in vars(narrow).items() if k != "low_start"} == \
        {k: v for k, v in vars(paper).items() if k != "low_start"}
    dapo_bh = _parsed("dapo_bh", "replay")
    assert dapo_bh.ratio_anchor == "behaviour" and dapo_bh.policy_loss_config().epsilon_high == 0.28
    partial = _parsed("grpo", "partial")
    assert partial.partial_rollouts and partial.max_staleness == 2 and partial.partial_prefill_groups == 16
    assert partial.replay_ratio == 0 and partial.steps_per_generation == 1 and partial.use_vllm
    regime = _parsed("grpo", "s16-lr3e-4")
    assert regime.learning_rate == 3e-4 and regime.steps_per_generation == 16 and not regime.partial_rollouts
    for level, spg, mu in (("s8-mu8", 8, 8), ("s16-mu8", 16, 8), ("s8-mu16", 8, 16), ("s32-mu4", 32, 4)):  # reuse
        reuse = _parsed("grpo", level)
        assert (reuse.steps_per_generation, reuse.num_iterations, LEVELS[level].kind) == (spg, mu, "regime")
        assert reuse.learning_rate == 1e-4 and not reuse.use_vllm


def _history(shares, covs, entropies):
    return [{"step": i + 1, "loss": 0.0, "entropy": h, "premise/pos_share_unclipped": s,
             "premise/pos_share_bapo_start": s, "premise/cov_kept": c, "premise/cov_blocked_pos": -c,
             "partial/continued_frac": 0.5}
            for i, (s, c, h) in enumerate(zip(shares, covs, entropies, strict=True))]


def test_premise_summary_counts_steps_and_correlates_the_entropy_rule():
    # dH(t) = H(t+1) - H(t) = -cov(t) exactly: correlation 1
    covs = [0.01, -0.02, 0.03, 0.0, -0.01]
    ent = [1.0]
    for c in covs[:-1]:
        ent.append(ent[-1] - c)
    out = premise_summary(_history([0.3, 0.45, 0.6, 0.35, 0.5], covs, ent))
    assert out["premise_neg_dominated_frac"] == 3 / 5  # 0.3, 0.45, 0.35 < 0.5
    assert out["premise_target_met_frac"] == 3 / 5  # 0.45, 0.6, 0.5 >= 0.4
    assert math.isclose(out["premise_dh_corr"], 1.0) and out["premise_dh_pairs"] == 4
    assert math.isclose(out["premise_cov_blocked_pos"], -sum(covs) / 5)
    assert out["partial_multi_version"] == 0.5
    assert premise_summary([{"step": 1, "loss": 0.0, "entropy": 1.0}]) == {}  # nothing logged: nothing claimed


def test_premise_tables_only_for_logged_measures():
    runs = [{**_run("bapo", "partial", s, 0.5, 1.0), "premise_pos_share_unclipped": 0.3 + 0.1 * s,
             "premise_cov_blocked_pos": -0.002} for s in range(2)]
    md = premise_markdown(summarize(runs, k=4), ["bapo"], ["partial"], n_seeds=2)
    assert "| BAPO (paper defaults) | 0.350 ± 0.071 |" in md
    assert "| BAPO (paper defaults) | -2.000 ± 0.000 |" in md  # covariances x 1e3
    assert "versions" not in md  # partial_multi_version not logged: no table
    assert premise_markdown(summarize([_run("grpo", "s1", 0, 0.5, 1.0)], k=4), ["grpo"], ["s1"]) == ""


def test_baseline_runs_stand_in_for_missing_runs_and_run_files_win(tmp_path):
    base = tmp_path / "base.json"
    old = [_run("grpo", "s16", s, 0.4, 1.0) for s in range(3)]
    base.write_text(json.dumps({"runs": old, "curves": {"grpo-s16-seed0": {"reward": [[1, 0.5]]}}}))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "grpo-s16-seed0.json").write_text(json.dumps({**_run("grpo", "s16", 0, 0.9, 1.0),
                                                                      "curves": {}}))
    cfg = StudyConfig(out=str(tmp_path), methods=["grpo"], levels=["s16", "s1"], baseline=str(base))
    runs = {(r["level"], r["seed"]): r for r in collect(tmp_path, cfg)}
    assert set(runs) == {("s16", 0), ("s16", 1), ("s16", 2)}
    assert runs[("s16", 0)]["after"]["avg@4"] == 0.9 and "baseline" not in runs[("s16", 0)]
    assert runs[("s16", 1)]["baseline"] == str(base)


def test_quick_study_writes_well_formed_outputs_and_resumes(tmp_path, capsys):
    from adaclip_rl.cli import main

    out = tmp_path / "study"
    assert main(["study", "staleness", "--quick", "--out", str(out)]) == 0
    result = json.loads((out / "staleness.json").read_text())
    cells = {(r["method"], r["level"]) for r in result["runs"]}
    assert cells == {(m, lv) for m in DEFAULT_METHODS for lv in ("s1", "s4")} | {("bapo", "partial"),
                                                                               ("bapo_narrow", "s4")}
    for r in result["runs"]:
        assert r["steps"] == 4 and 0.0 <= r["after"]["avg@2"] <= 1.0 and math.isfinite(r["entropy_last"])
        # the premise measures of every run: shares and clip fractions in [0, 1], covariances finite
        for key in ("premise_pos_share_unclipped", "premise_pos_share_bapo_start", "premise_neg_dominated_frac",
                    "premise_target_met_frac", "premise_clipfrac_pos", "premise_clipfrac_neg"):
            assert 0.0 <= r[key] <= 1.0, key
        for key in ("premise_cov_all", "premise_cov_kept", "premise_cov_blocked_pos", "premise_cov_blocked_neg"):
            assert math.isfinite(r[key]), key
        assert math.isclose(r["premise_cov_all"], r["premise_cov_kept"] + r["premise_cov_blocked_pos"]
                            + r["premise_cov_blocked_neg"], abs_tol=1e-6)
        curves = result["curves"][f"{r['method']}-{r['level']}-seed0"]
        assert [p[0] for p in curves["premise/cov_kept"]] == [1, 2, 3, 4]
    partial = next(r for r in result["runs"] if r["level"] == "partial")
    assert 0.0 <= partial["partial_multi_version"] <= 1.0 and partial["replay_ratio"] == 0
    for m in DEFAULT_METHODS:
        for lv in ("s1", "s4"):
            acc = result["summary"][m][lv]["avg@k"]
            assert acc["n"] == 1 and acc["sd"] == 0.0
    assert set(result["degradation"]) == set(DEFAULT_METHODS)  # bapo_narrow has no s1 cell to compare with
    assert "config" in result and "premise" not in result["config"] and "baseline" not in result
    for png in ("staleness.png", "staleness_premise.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "staleness.md").read_text()
    assert "| GRPO clip [0.8, 1.2] |" in table and "| s1 | s4 | partial |" in table
    assert "BAPO premise 1: positive share of the gradient" in table and "span two or more policy versions" in table
    assert (out / "train" / "bapo-s4-seed0" / "metrics.jsonl").is_file()
    assert (out / "train" / "bapo-partial-seed0" / "metrics.jsonl").is_file()
    # a second invocation trains nothing: every run file is kept as it was
    stamps = {f.name: f.stat().st_mtime_ns for f in (out / "runs").iterdir()}
    assert len(stamps) == 10 and not any(name.endswith(".tmp") for name in stamps)
    capsys.readouterr()
    t0 = time.perf_counter()
    assert main(["study", "staleness", "--quick", "--out", str(out)]) == 0
    assert "10/10 runs already done" in capsys.readouterr().out
    assert {f.name: f.stat().st_mtime_ns for f in (out / "runs").iterdir()} == stamps
    assert time.perf_counter() - t0 < 60


def test_plot_of_regime_levels_only_draws_every_cell(tmp_path, monkeypatch):
    """A study of regime levels only (no steps-per-generation axis, e.g. why_regime) plots each
    (method, level) cell's mean and the curves of its runs instead of empty panels."""
    import matplotlib.figure

    from adaclip_rl.study.plots import plot

    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **kw: saved.append(self))
    means = {"grpo": 0.18, "bapo": 0.13}
    summary = {m: {"s8-mu8": {"avg@k": {"mean": v, "sd": 0.01, "n": 3},
                              "entropy_last": {"mean": v + 0.05, "sd": 0.01, "n": 3}}} for m, v in means.items()}
    runs = [{"method": m, "level": "s8-mu8", "seed": 0,
             "curves": {"reward": [[1, 0.1], [65, 0.2]], "entropy": [[i, 0.2] for i in range(1, 129)]}} for m in means]
    plot(runs, summary, tmp_path / "x.png", 4)
    acc, ent, reward, entropy = saved[0].axes
    drawn = lambda ax: sorted(round(float(y), 6) for line in ax.lines for y in line.get_ydata())  # noqa: E731
    assert set(means.values()) <= set(drawn(acc)) and {0.23, 0.18} <= set(drawn(ent))
    assert len(reward.lines) == 2 and len(entropy.lines) == 2 and "s8-mu8" in reward.get_title()
