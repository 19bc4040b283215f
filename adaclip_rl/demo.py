"""``adaclip-rl demo``: GRPO vs BAPO vs Archer on a tiny model, on this CPU.

1. builds a byte-level BPE tokenizer and a tiny Qwen2 for 2-digit addition (exact answers);
2. gives it a short supervised warm start (it stays weak on purpose, so RL has room);
3. trains GRPO (clip [0.8, 1.2]), BAPO and Archer from the same warm start with identical budgets
   and seeds, off-policy (every generation batch feeds 4 optimizer steps; the recipe ships in the
   package: ``adaclip_rl/data/recipes/cpu_demo.yaml``);
4. evaluates every model before and after on held-out problems (avg@k, pass@k, greedy);
5. writes ``results.json``, a terminal table and ``demo.png`` (reward, entropy, clip bounds per step).

The terminal shows a progress bar per stage and one summary line per run; every run's logged
metrics are in ``<out>/<method>-seed<seed>/metrics.jsonl``. ``--quick`` is a one-minute smoke
run of the same stages (fewer steps, problems and seeds); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

from .console import filter_pinned_vllm_warning
from .data import DEMO_RECIPE

logger = logging.getLogger(__name__)
METHODS = ("grpo", "bapo", "archer")
# --quick: every stage of the demo, in about a minute
QUICK = {"warm_steps": 50, "rl_steps": 4, "n_test": 16, "seeds": "0"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="adaclip-rl demo", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/demo", help="output directory")
    ap.add_argument("--recipe", default=str(DEMO_RECIPE), help="training recipe shared by all methods (default: the packaged CPU recipe)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated policy losses")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated RL seeds, e.g. 0,1,2")
    ap.add_argument("--warm-steps", type=int, default=650, help="supervised warm-start steps")
    ap.add_argument("--rl-steps", type=int, default=None, help="RL optimizer steps (default: the recipe's)")
    ap.add_argument("--n-test", type=int, default=200, help="held-out problems")
    ap.add_argument("--k", type=int, default=4, help="samples per problem for avg@k / pass@k")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: one per CPU core)")
    ap.add_argument("--no-plot", action="store_true", help="skip demo.png")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: {QUICK['warm_steps']} warm-start steps, {QUICK['rl_steps']} RL steps, "
                         f"{QUICK['n_test']} held-out problems, seed {QUICK['seeds']} (numbers mean nothing)")
    args = ap.parse_args(argv)
    if args.quick:
        args.warm_steps, args.rl_steps, args.n_test, args.seeds = (
            QUICK["warm_steps"], QUICK["rl_steps"], QUICK["n_test"], QUICK["seeds"])
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"--methods: unknown {bad}; choose from {list(METHODS)}")
    if args.warm_steps < 0 or args.n_test < 1 or args.k < 1:
        ap.error("--warm-steps must be >= 0, --n-test and --k >= 1")
    args.methods = methods
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    return args


def _evaluate(model_dir_or_model, tokenizer, problems, k: int, seed: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    from .tasks.warmstart import evaluate_accuracy

    model = model_dir_or_model
    if isinstance(model, str | Path):
        model = AutoModelForCausalLM.from_pretrained(model)
    return evaluate_accuracy(model, tokenizer, problems, k=k, temperature=1.0, seed=seed)


def _train_one(args, method: str, seed: int, warm_dir: Path, problems, tokenizer) -> dict[str, Any]:
    from .trainers.cli import build_trainer, make_parser

    out_dir = Path(args.out) / f"{method}-seed{seed}"
    overrides = ["--config", args.recipe, "--policy_loss", method, "--seed", str(seed),
                 "--output_dir", str(out_dir), "--model_name_or_path", str(warm_dir)]
    if args.rl_steps is not None:
        overrides += ["--max_steps", str(args.rl_steps)]
    script_args, grpo_args, model_args = make_parser().parse_args_and_config(overrides)
    trainer = build_trainer(script_args, grpo_args, model_args, progress_desc=f"{method} seed {seed}")
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    after = _evaluate(trainer.model, tokenizer, problems, args.k, seed=1000 + seed)
    history = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    step_times = [h["step_time"] for h in history if "step_time" in h]
    return {
        "method": method, "seed": seed, "after": after, "train_seconds": train_s,
        "steps": trainer.state.global_step, "median_step_seconds": statistics.median(step_times) if step_times else None,
        "history": history,
    }


def _table(before: dict[str, float], runs: list[dict[str, Any]], k: int) -> str:
    key = f"avg@{k}"
    lines = [f"{'method':<8}{'seeds':>6}{key + ' before':>14}{key + ' after':>13}{'pass@' + str(k):>9}"
             f"{'greedy':>8}{'train s':>9}"]
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    for method, rs in by_method.items():
        def mean(metric: str, rs=rs) -> float:
            return statistics.mean(r["after"][metric] for r in rs)

        lines.append(f"{method:<8}{len(rs):>6}{before[key]:>14.3f}{mean(key):>13.3f}{mean('pass@' + str(k)):>9.3f}"
                     f"{mean('greedy'):>8.3f}{statistics.mean(r['train_seconds'] for r in rs):>9.1f}")
    return "\n".join(lines)


def _smoothed(history: list[dict[str, Any]], key: str, window: int) -> tuple[list[int], list[float]]:
    """Steps and trailing moving average of the steps where ``key`` was logged."""
    pts = [(x["step"], x[key]) for x in history if x.get(key) is not None]
    steps, vals = [p[0] for p in pts], [p[1] for p in pts]
    avg = [statistics.fmean(vals[max(0, i - window + 1) : i + 1]) for i in range(len(vals))]
    return steps, avg


def _plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colors = {"grpo": "tab:blue", "bapo": "tab:red", "archer": "tab:green"}
    for r in runs:
        h = r["history"]
        c = colors[r["method"]]
        lab = f"{r['method']} (seed {r['seed']})"
        axes[0].plot(*_smoothed(h, "reward", 5), color=c, alpha=0.7, label=lab)  # logged once per generation
        axes[1].plot(*_smoothed(h, "entropy", 10), color=c, alpha=0.7, label=lab)
        if r["method"] == "bapo":
            axes[2].plot(*_smoothed(h, "bapo/clip_high", 10), color=c, alpha=0.7,
                         label=f"BAPO c_high (seed {r['seed']})")
            axes[2].plot(*_smoothed(h, "bapo/clip_low", 10), color=c, alpha=0.7, ls="--",
                         label=f"BAPO c_low (seed {r['seed']})")
    methods = {r["method"] for r in runs}
    if "grpo" in methods:
        for y in (0.8, 1.2):
            axes[2].axhline(y, color=colors["grpo"], ls=":", label="GRPO bounds" if y == 0.8 else None)
    if "archer" in methods:
        for y, lab in ((0.5, "Archer high-entropy bounds"), (1.5, None), (0.8, "Archer low-entropy bounds"),
                       (1.2, None)):
            axes[2].axhline(y, color=colors["archer"], ls="-." if y in (0.5, 1.5) else ":", alpha=0.6, label=lab)
    titles = ("train reward (mean of 5 generation batches)", "entropy, nats/token (10-step mean)",
              "ratio clip bounds (BAPO: 10-step mean)")
    for ax, title in zip(axes, titles,
                         strict=True):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _scores(metrics: dict[str, float], k: int) -> str:
    """``avg@k 0.323, pass@k 0.745, greedy 0.780`` for one evaluation."""
    return ", ".join(f"{name} {metrics[name]:.3f}" for name in (f"avg@{k}", f"pass@{k}", "greedy") if name in metrics)


def main(argv: list[str] | None = None) -> int:
    filter_pinned_vllm_warning()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .tasks import ArithmeticTask, build_tiny_model
    from .tasks.warmstart import WarmStartConfig, warm_start

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = ArithmeticTask(digits=2)
    print(f"[1/4] tiny model and tokenizer -> {out / 'base'}")
    base = build_tiny_model(out / "base", task.corpus())
    print(f"[2/4] supervised warm start ({args.warm_steps} steps)")
    t0 = time.perf_counter()
    warm = warm_start(base, out / "warm", task, WarmStartConfig(steps=args.warm_steps))
    warm_s = time.perf_counter() - t0
    tokenizer = AutoTokenizer.from_pretrained(warm)
    problems = task.sample(args.n_test, "test", seed=1234)
    before = _evaluate(warm, tokenizer, problems, args.k, seed=999)
    print(f"      warm start done in {warm_s:.0f} s; held-out ({args.n_test} problems): {_scores(before, args.k)}")
    runs = []
    total = len(args.methods) * len(args.seeds)
    print(f"[3/4] RL from the warm start: {', '.join(args.methods)} x seeds {args.seeds}")
    for i, seed in enumerate(args.seeds):
        for j, method in enumerate(args.methods):
            run = _train_one(args, method, seed, warm, problems, tokenizer)
            runs.append(run)
            key = f"avg@{args.k}"
            print(f"      ({i * len(args.methods) + j + 1}/{total}) {method:<6} seed {seed}: {run['steps']} steps in "
                  f"{run['train_seconds']:.0f} s; held-out {key} {before[key]:.3f} -> {run['after'][key]:.3f} "
                  f"({_scores(run['after'], args.k)})")
    print("[4/4] results")
    table = _table(before, runs, args.k)
    wall = time.perf_counter() - t_start
    result = {
        "task": "2-digit addition, exact answer", "held_out_problems": args.n_test, "k": args.k,
        "eval_temperature": 1.0, "warm_start_steps": args.warm_steps, "warm_start_seconds": warm_s,
        "recipe": args.recipe, "before": before,
        "runs": [{k: v for k, v in r.items() if k != "history"} for r in runs],
        "history": {f"{r['method']}-seed{r['seed']}": r["history"] for r in runs},
        "wall_seconds": wall, "threads": torch.get_num_threads(),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(table)
    if not args.no_plot:
        _plot(runs, out / "demo.png")
        print(f"plot: {out / 'demo.png'}")
    print(f"results: {out / 'results.json'}; per-step metrics: {out}/<method>-seed<seed>/metrics.jsonl; "
          f"wall time {wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
