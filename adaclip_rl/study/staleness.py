"""``adaclip-rl study staleness``: what adaptive clipping does when the training data is stale.

One tiny model, one supervised warm start on 3-digit addition with a scratchpad
(:mod:`adaclip_rl.tasks.scratchpad`, ~31 completion tokens), then four policy losses trained from
it with the same budget (optimizer steps, samples per step, learning rate, seeds):

* ``grpo``: PPO/GRPO clip [0.8, 1.2] (TRL ``epsilon=0.2``);
* ``dapo``: DAPO clip-higher [0.8, 1.28] (``epsilon_high=0.28``, DAPO arXiv 2503.14476 Sec. 3.1);
* ``bapo``: BAPO with the paper's defaults (rho0 = 0.4, c_high 1.2..3.0, c_low 0.6..0.9; arXiv 2510.18927);
* ``archer``: Archer with the paper's defaults (80th entropy percentile per response, clip 1 +/- 0.5
  for high-entropy tokens, 1 +/- 0.2 and k3 KL 0.001 for the others; arXiv 2507.15778 Eq. 5);
* ``grpo_bh`` (not in the default set; an ablation for the replay level): GRPO [0.8, 1.2] with its
  ratio to the behaviour policy, as BAPO and Archer clip there by default (``ratio_anchor``);

at several staleness levels: ``s<n>`` = ``n`` optimizer steps per generation batch (TRL's
``steps_per_generation``: one batch of ``64 n`` samples feeds ``n`` steps of 64, so step ``i`` of
a batch trains on data ``i`` policy versions old), and ``replay`` = half of every batch's groups
from a replay buffer of groups up to 8 versions old (:class:`~adaclip_rl.trainers.offpolicy.OffPolicyGRPOTrainer`,
vLLM on CPU). The total number of samples and optimizer steps is the same at every level.

Each (method, level, seed) run writes ``<out>/runs/<method>-<level>-seed<seed>.json`` and is
skipped when that file exists, so the study can be run in chunks and resumed after an
interruption. ``<out>/staleness.json`` (all runs, per-cell mean and sd, the degradation check),
``<out>/staleness.png`` and ``<out>/staleness.md`` (the table) are rebuilt from the run files at
the end of every invocation.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data import DEMO_RECIPE

logger = logging.getLogger(__name__)

STUDY_RECIPE = DEMO_RECIPE  # the study's base recipe is the demo's
SPIKE_FACTOR = 3.0  # a grad-norm spike: a step whose pre-clip norm exceeds 3x the median of the previous 20
SPIKE_WINDOW = 20


@dataclass(frozen=True)
class Method:
    """A policy loss and its recipe flags (the papers' defaults; nothing tuned per method)."""

    name: str
    label: str
    flags: tuple[str, ...]


@dataclass(frozen=True)
class Level:
    """A staleness level: optimizer steps per generation batch, optionally with replayed groups."""

    name: str
    steps_per_generation: int
    replay_ratio: float = 0.0
    replay_max_age: int = 8

    @property
    def uses_vllm(self) -> bool:
        return self.replay_ratio > 0

    def flags(self, max_completion_length: int) -> list[str]:
        out = ["--steps_per_generation", str(self.steps_per_generation)]
        if self.replay_ratio > 0:
            out += ["--replay_ratio", str(self.replay_ratio), "--replay_max_age", str(self.replay_max_age),
                    "--use_vllm", "true", "--vllm_mode", "colocate", "--vllm_importance_sampling_correction", "true",
                    "--vllm_max_model_length", str(max_completion_length + 32)]
        return out


METHODS: dict[str, Method] = {
    "grpo": Method("grpo", "GRPO clip [0.8, 1.2]", ("--policy_loss", "grpo", "--epsilon", "0.2")),
    "dapo": Method("dapo", "DAPO clip-higher [0.8, 1.28]",
                   ("--policy_loss", "grpo", "--epsilon", "0.2", "--epsilon_high", "0.28")),
    "bapo": Method("bapo", "BAPO (paper defaults)", ("--policy_loss", "bapo")),
    "archer": Method("archer", "Archer (paper defaults)", ("--policy_loss", "archer")),
    # ablation for the replay level: GRPO's clip on the ratio to the behaviour policy (what BAPO and
    # Archer clip there by default) instead of the decoupled proximal ratio + truncated IS weight
    "grpo_bh": Method("grpo_bh", "GRPO clip [0.8, 1.2], ratio to behaviour (ablation)",
                      ("--policy_loss", "grpo", "--epsilon", "0.2", "--ratio_anchor", "behaviour")),
}
DEFAULT_METHODS = ("grpo", "dapo", "bapo", "archer")
LEVELS: dict[str, Level] = {
    "s1": Level("s1", 1),
    "s2": Level("s2", 2),
    "s4": Level("s4", 4),
    "s8": Level("s8", 8),
    "s16": Level("s16", 16),
    "replay": Level("replay", 1, replay_ratio=0.5),
}


@dataclass
class StudyConfig:
    """What one invocation trains. ``quick`` is a smoke run of every stage (its numbers mean nothing)."""

    out: str = "runs/study"
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    levels: list[str] = field(default_factory=lambda: list(LEVELS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    max_steps: int = 128
    warm_steps: int = 400
    digits: int = 3
    n_test: int = 200
    k: int = 4
    learning_rate: float | None = None
    threads: int = 1
    recipe: str = str(STUDY_RECIPE)
    plot: bool = True
    extra_flags: list[str] = field(default_factory=list)
    cells: list[tuple[str, str]] | None = None  # (method, level) pairs to train; None: methods x levels

    def grid(self) -> list[tuple[str, str]]:
        """The (method, level) cells of this study, levels in the outer order."""
        if self.cells is not None:
            return list(self.cells)
        return [(m, lv) for lv in self.levels for m in self.methods]

    def __post_init__(self) -> None:
        if self.cells is not None:
            self.cells = [tuple(c) for c in self.cells]  # type: ignore[misc]
            self.methods = list(dict.fromkeys(m for m, _ in self.cells))
            self.levels = list(dict.fromkeys(lv for _, lv in self.cells))
        bad = [m for m in self.methods if m not in METHODS] + [lv for lv in self.levels if lv not in LEVELS]
        if bad:
            raise ValueError(f"unknown methods/levels {bad}; methods: {list(METHODS)}, levels: {list(LEVELS)}")
        for name in ("max_steps", "n_test", "k", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.warm_steps < 0:
            raise ValueError(f"warm_steps must be >= 0; got {self.warm_steps}")
        if not self.seeds:
            raise ValueError("seeds must not be empty")


# ---------------------------------------------------------------- stages
def prepare(cfg: StudyConfig, progress: bool = True) -> dict[str, Any]:
    """The shared warm start (built once, reused when ``<out>/warm`` exists), training data and held-out set."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..tasks import build_tiny_model
    from ..tasks.scratchpad import ScratchpadAdditionTask, evaluate_scratchpad, warm_start_scratchpad
    from ..tasks.warmstart import WarmStartConfig

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    task = ScratchpadAdditionTask(digits=cfg.digits)
    train_file = out / "train.jsonl"
    if not train_file.exists():
        rows = task.sample(4000, "train", seed=0)
        train_file.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in rows))
    warm, info_file = out / "warm", out / "warm.json"
    problems = task.sample(cfg.n_test, "test", seed=1234)
    if not info_file.exists():
        t0 = time.perf_counter()
        base = build_tiny_model(out / "base", task.corpus())
        warm_start_scratchpad(base, warm, task, WarmStartConfig(steps=cfg.warm_steps), progress=progress)
        seconds = time.perf_counter() - t0
        tok = AutoTokenizer.from_pretrained(warm)
        before = evaluate_scratchpad(AutoModelForCausalLM.from_pretrained(warm), tok, problems, k=cfg.k,
                                     max_new_tokens=task.max_completion_tokens() + 4, seed=999)
        info_file.write_text(json.dumps({"warm_steps": cfg.warm_steps, "seconds": seconds, "before": before,
                                         "digits": cfg.digits, "n_test": cfg.n_test, "k": cfg.k}, indent=2))
    info = json.loads(info_file.read_text())
    if (info["warm_steps"], info["digits"], info["n_test"], info["k"]) != (cfg.warm_steps, cfg.digits, cfg.n_test,
                                                                           cfg.k):
        raise ValueError(f"{out} holds a study with another warm start or evaluation ({info_file}); use a new --out")
    return {"task": task, "warm": warm, "train_file": train_file, "problems": problems, **info}


def run_name(method: str, level: str, seed: int) -> str:
    return f"{method}-{level}-seed{seed}"


def _series(history: list[dict[str, Any]], key: str) -> list[float]:
    return [float(h[key]) for h in history if isinstance(h.get(key), int | float)]


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def grad_spikes(norms: list[float], factor: float = SPIKE_FACTOR, window: int = SPIKE_WINDOW) -> int:
    """Steps whose gradient norm exceeds ``factor`` x the median of the previous ``window`` steps."""
    return sum(1 for i in range(window, len(norms)) if norms[i] > factor * statistics.median(norms[i - window : i]))


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
    }


CURVE_KEYS = ("reward", "entropy", "grad_norm", "clipfrac/high", "clipfrac/low", "bapo/clip_low", "bapo/clip_high",
              "bapo/clipfrac_high", "bapo/clipfrac_low", "archer/clipfrac_high", "archer/clipfrac_low",
              "archer/clipfrac_pos", "archer/clipfrac_neg")


def train_run(cfg: StudyConfig, method: str, level: str, seed: int, prep: dict[str, Any],
              progress_desc: str | None = None) -> dict[str, Any]:
    """Train one (method, level, seed) from the warm start, evaluate it held-out, return its record."""
    import gc

    from transformers import AutoTokenizer

    from ..tasks.scratchpad import evaluate_scratchpad
    from ..trainers.build import build_trainer, make_parser

    lv, task = LEVELS[level], prep["task"]
    name = run_name(method, level, seed)
    max_len = task.max_completion_tokens() + 4
    argv = ["--config", cfg.recipe, *METHODS[method].flags, *lv.flags(max_len), "--seed", str(seed),
            "--output_dir", str(Path(cfg.out) / "train" / name), "--model_name_or_path", str(prep["warm"]),
            "--dataset_name", str(prep["train_file"]), "--max_steps", str(cfg.max_steps),
            "--max_completion_length", str(max_len)]
    if cfg.learning_rate is not None:
        argv += ["--learning_rate", str(cfg.learning_rate)]
    argv += cfg.extra_flags
    script_args, grpo_args, model_args = make_parser().parse_args_and_config(argv)
    trainer = build_trainer(script_args, grpo_args, model_args, progress_desc=progress_desc or name)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    tok = AutoTokenizer.from_pretrained(prep["warm"])
    after = evaluate_scratchpad(trainer.model, tok, prep["problems"], k=cfg.k, max_new_tokens=max_len,
                                seed=1000 + seed)
    history = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    if lv.uses_vllm:  # free the colocated engine before the next run
        from ..rollout.vllm_engine import release_trainer_engines

        release_trainer_engines(trainer)
    del trainer
    gc.collect()
    curves = {key: [[h["step"], h[key]] for h in history if isinstance(h.get(key), int | float)]
              for key in CURVE_KEYS}
    return {"method": method, "level": level, "seed": seed, "steps_per_generation": lv.steps_per_generation,
            "replay_ratio": lv.replay_ratio, "steps": len(history), "train_seconds": train_s, "after": after,
            **summarize_history(history), "curves": {k: v for k, v in curves.items() if v}}


# ---------------------------------------------------------------- aggregation
SUMMARY_METRICS = ("avg@k", "pass@k", "greedy", "entropy_last", "reward_last", "clipfrac_pos", "clipfrac_neg",
                   "archer_clipfrac_high_entropy", "archer_clipfrac_low_entropy", "bapo_clip_low", "bapo_clip_high",
                   "grad_spikes", "grad_norm_max", "train_seconds", "mean_completion_tokens")


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
            for metric in SUMMARY_METRICS:
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
        steps = [lv for lv in by_level if lv in LEVELS and LEVELS[lv].replay_ratio == 0]
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


def _fmt(cell: dict[str, Any] | None, digits: int = 3, n_seeds: int | None = None) -> str:
    if cell is None:
        return "-"
    short = f" (n={cell['n']})" if n_seeds is not None and cell["n"] < n_seeds else ""
    return f"{cell['mean']:.{digits}f} ± {cell['sd']:.{digits}f}{short}"


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


# ---------------------------------------------------------------- plot
COLORS = {"grpo": "tab:blue", "dapo": "tab:orange", "bapo": "tab:red", "archer": "tab:green", "grpo_bh": "tab:purple"}


def _smooth(points: list[list[float]], window: int) -> tuple[list[float], list[float]]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return xs, [statistics.fmean(ys[max(0, i - window + 1) : i + 1]) for i in range(len(ys))]


def plot(runs: list[dict[str, Any]], summary: dict[str, Any], path: Path, k: int) -> None:
    """Accuracy and entropy vs staleness (mean, seed range shaded); reward and entropy curves at the highest level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    spg_levels = sorted({r["level"] for r in runs if LEVELS[r["level"]].replay_ratio == 0},
                        key=lambda lv: LEVELS[lv].steps_per_generation)
    for ax, metric, title in ((axes[0, 0], "avg@k", f"held-out avg@{k} after RL"),
                              (axes[0, 1], "entropy_last", "entropy, nats/token (last quarter of training)")):
        x_replay = 2 * max((LEVELS[lv].steps_per_generation for lv in spg_levels), default=1)
        for i, (m, by_level) in enumerate(summary.items()):
            lvs = [lv for lv in spg_levels if metric in by_level.get(lv, {})]
            if lvs:
                xs = [LEVELS[lv].steps_per_generation for lv in lvs]
                mu = [by_level[lv][metric]["mean"] for lv in lvs]
                sd = [by_level[lv][metric]["sd"] for lv in lvs]
                ax.plot(xs, mu, "o-", color=COLORS[m], label=METHODS[m].label)
                ax.fill_between(xs, [a - b for a, b in zip(mu, sd, strict=True)],
                                [a + b for a, b in zip(mu, sd, strict=True)], color=COLORS[m], alpha=0.15)
            if "replay" in by_level and metric in by_level["replay"]:
                c = by_level["replay"][metric]  # side by side, so equal cells stay visible
                ax.errorbar([x_replay * 1.08**i], [c["mean"]], yerr=[c["sd"]], fmt="s", color=COLORS[m], capsize=3,
                            label=None if lvs else METHODS[m].label)
        ax.set_xscale("log", base=2)
        ticks = [LEVELS[lv].steps_per_generation for lv in spg_levels]
        has_replay = any("replay" in by_level for by_level in summary.values())
        ax.set_xticks(ticks + ([x_replay] if has_replay else []),
                      [str(t) for t in ticks] + (["replay"] if has_replay else []))
        ax.set_xlabel("optimizer steps per generation batch (squares: 50% replay, 1 step per generation)")
        ax.set_title(title + " — mean ± sd over seeds")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    top = spg_levels[-1] if spg_levels else None
    for ax, key, title, window in ((axes[1, 0], "reward", "train reward", 10),
                                   (axes[1, 1], "entropy", "entropy, nats/token", 10)):
        for r in runs:
            if r["level"] != top or key not in r["curves"]:
                continue
            ax.plot(*_smooth(r["curves"][key], window), color=COLORS[r["method"]], alpha=0.6,
                    label=f"{r['method']} seed {r['seed']}")
        ax.set_title(f"{title} at {top} ({window}-step mean), every seed")
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[1, 0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- driver
def collect(out: Path, cfg: StudyConfig) -> list[dict[str, Any]]:
    """Every finished run record of this invocation's methods, levels and seeds."""
    runs = []
    for m, lv in cfg.grid():
        for s in cfg.seeds:
            f = out / "runs" / f"{run_name(m, lv, s)}.json"
            if f.exists():
                runs.append(json.loads(f.read_text()))
    return runs


def report(cfg: StudyConfig, prep: dict[str, Any], wall_seconds: float, stem: str = "staleness") -> dict[str, Any]:
    """Rebuild ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` from the run files."""
    out = Path(cfg.out)
    runs = collect(out, cfg)
    summary = summarize(runs, cfg.k)
    result = {
        "task": f"{cfg.digits}-digit addition with a scratchpad (exact final answer)",
        "held_out_problems": cfg.n_test, "k": cfg.k, "eval_temperature": 1.0,
        "warm_start": {"steps": prep["warm_steps"], "seconds": prep["seconds"], "before": prep["before"]},
        "config": {key: v for key, v in asdict(cfg).items() if key != "plot"},
        "methods": {m: asdict(METHODS[m]) for m in cfg.methods},
        "levels": {lv: asdict(LEVELS[lv]) for lv in cfg.levels},
        "spike_rule": f"grad_norm > {SPIKE_FACTOR} x median of the previous {SPIKE_WINDOW} steps",
        "summary": summary, "degradation": degradation(summary),
        "runs": [{key: v for key, v in r.items() if key != "curves"} for r in runs],
        "curves": {run_name(r["method"], r["level"], r["seed"]): r["curves"] for r in runs},
        "wall_seconds_this_invocation": wall_seconds,
        "train_seconds_total": sum(r["train_seconds"] for r in runs),
        "load_average": os.getloadavg(), "threads": cfg.threads,
    }
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(table_markdown(summary, cfg.methods, cfg.levels, cfg.k, len(cfg.seeds)))
    if cfg.plot and runs:
        plot(runs, summary, out / f"{stem}.png", cfg.k)
    return result


def run_study(cfg: StudyConfig, progress: bool = True, deadline_s: float | None = None,
              stem: str = "staleness") -> dict[str, Any]:
    """Train every missing run (in seed-major order, so a partial study has whole seeds), then report.

    ``deadline_s``: stop starting new runs after this many seconds (the study resumes next time).
    ``stem``: name of the JSON / markdown / PNG outputs in ``cfg.out``."""
    import torch

    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    out = Path(cfg.out)
    prep = prepare(cfg, progress=progress)
    (out / "runs").mkdir(exist_ok=True)
    todo = [(m, lv, s) for s in cfg.seeds for m, lv in cfg.grid()
            if not (out / "runs" / f"{run_name(m, lv, s)}.json").exists()]
    total = len(cfg.seeds) * len(cfg.grid())
    print(f"warm start: held-out avg@{cfg.k} {prep['before'][f'avg@{cfg.k}']:.3f}, greedy "
          f"{prep['before']['greedy']:.3f}, {prep['before']['mean_completion_tokens']:.1f} tokens per completion; "
          f"{total - len(todo)}/{total} runs already done")
    for i, (m, lv, s) in enumerate(todo):
        if deadline_s is not None and time.perf_counter() - t_start > deadline_s:
            print(f"time limit reached: {len(todo) - i} runs left for the next invocation")
            break
        name = run_name(m, lv, s)
        rec = train_run(cfg, m, lv, s, prep, progress_desc=f"({i + 1}/{len(todo)}) {name}")
        (out / "runs" / f"{name}.json").write_text(json.dumps(rec))
        key = f"avg@{cfg.k}"
        ent = rec["entropy_last"]
        print(f"  {name:<22} {rec['train_seconds']:5.0f} s  held-out {key} {prep['before'][key]:.3f} -> "
              f"{rec['after'][key]:.3f}  entropy {ent if ent is None else round(ent, 3)}  "
              f"grad spikes {rec['grad_spikes']}", flush=True)
    return report(cfg, prep, time.perf_counter() - t_start, stem=stem)


QUICK = {"methods": list(DEFAULT_METHODS), "levels": ["s1", "s4"], "seeds": [0], "max_steps": 4, "warm_steps": 40,
         "n_test": 16, "k": 2}


def parse_args(argv: list[str] | None) -> StudyConfig:
    ap = argparse.ArgumentParser(prog="adaclip-rl study staleness", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/study", help="output directory (runs already there are skipped)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help=f"comma-separated, from {list(METHODS)} (grpo_bh: an ablation for the replay level)")
    ap.add_argument("--levels", default=",".join(LEVELS), help=f"comma-separated, from {list(LEVELS)}")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated RL seeds")
    ap.add_argument("--max-steps", type=int, default=128, help="optimizer steps per run (same for all)")
    ap.add_argument("--warm-steps", type=int, default=400, help="supervised warm-start steps")
    ap.add_argument("--learning-rate", type=float, default=None, help="override the recipe's learning rate")
    ap.add_argument("--n-test", type=int, default=200, help="held-out problems")
    ap.add_argument("--k", type=int, default=4, help="samples per held-out problem (avg@k, pass@k)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--time-limit", type=float, default=None, help="start no new run after this many seconds")
    ap.add_argument("--no-plot", action="store_true", help="skip staleness.png")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (4 methods x levels s1,s4 x seed 0, 4 steps, 40 warm-start steps, replay "
                         "left out: it starts vLLM); its numbers mean nothing")
    a = ap.parse_args(argv)
    kw: dict[str, Any] = dict(
        out=a.out, methods=[m for m in a.methods.split(",") if m], levels=[lv for lv in a.levels.split(",") if lv],
        seeds=[int(s) for s in a.seeds.split(",") if s], max_steps=a.max_steps, warm_steps=a.warm_steps,
        n_test=a.n_test, k=a.k, learning_rate=a.learning_rate, threads=a.threads, plot=not a.no_plot)
    if a.quick:
        kw.update(QUICK)
    try:
        cfg = StudyConfig(**kw)
    except ValueError as e:
        ap.error(str(e))
    cfg.time_limit = a.time_limit  # type: ignore[attr-defined]
    return cfg


def main(argv: list[str] | None = None) -> int:
    """``adaclip-rl study staleness [--quick] [--out DIR] ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from ..console import filter_pinned_vllm_warning

    filter_pinned_vllm_warning()
    for key, value in (("TRL_EXPERIMENTAL_SILENCE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"),
                       ("TOKENIZERS_PARALLELISM", "false"), ("VLLM_CPU_KVCACHE_SPACE", "1")):
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging


    hf_logging.set_verbosity_error()
    cfg = parse_args(argv)
    t0 = time.perf_counter()
    result = run_study(cfg, deadline_s=getattr(cfg, "time_limit", None))
    print(Path(cfg.out, "staleness.md").read_text())
    for method, res in result["degradation"].items():
        acc = res.get("avg@k", {})
        if acc:
            print(f"{method}: avg@{cfg.k} {res['from']} -> {res['to']} drops {acc['drop']:+.3f} "
                  f"(pooled sd {acc['pooled_sd']:.3f}); degrades by > 2 sd: {acc['degrades']}")
    print(f"results: {Path(cfg.out) / 'staleness.json'}, table {Path(cfg.out) / 'staleness.md'}, plot "
          f"{Path(cfg.out) / 'staleness.png'}; wall time {time.perf_counter() - t0:.0f} s")
    return 0
