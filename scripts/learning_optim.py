"""Learning check of the spike-aware optimizers on the tiny arithmetic task (CPU, one thread).

The CPU demo's recipe (``adaclip_rl/data/recipes/arithmetic_grpo.yaml``: GRPO, 2-digit addition,
exact-answer reward, 4 optimizer steps per generation) from the learning test's supervised warm
start (650 steps), with ``--steps`` RL steps per run. Stage ``search``: AdamW (the recipe's
optimizer) over ``--lrs`` (seed 0) to find a learning rate where it collapses; stage ``compare``:
AdamW and Stable-SPAM (default settings, ``update_proj_gap`` scaled to the run) at ``--lr`` over
``--seeds``. Per run: the train reward of the first and last 10 % of steps, the lowest 10-step mean,
the largest logged ``grad_norm``, and held-out avg@4 / greedy accuracy (200 problems) at the end.

    python scripts/learning_optim.py search --lrs 2e-4 1e-3 3e-3 1e-2 --steps 120
    python scripts/learning_optim.py compare --lr 3e-3 --seeds 0 1 2 --steps 120
    python scripts/learning_optim.py plot --out results/learning_optim.json --figure docs/optimizers_learning.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

RECIPE_STEPS_PER_GENERATION = 4


def warm_model(root: Path) -> Path:
    from adaclip_rl.tasks import ArithmeticTask, build_tiny_model
    from adaclip_rl.tasks.warmstart import WarmStartConfig, warm_start

    warm = root / "warm"
    if not (warm / "config.json").exists():
        task = ArithmeticTask(digits=2)
        base = build_tiny_model(root / "base", task.corpus())
        warm_start(base, warm, task, WarmStartConfig(steps=650), progress=False)
    return warm


def run(warm: Path, out: Path, optimizer: str, lr: float, seed: int, steps: int) -> dict:
    from transformers import AutoTokenizer

    from adaclip_rl.data import ARITHMETIC_RECIPE
    from adaclip_rl.tasks import ArithmeticTask
    from adaclip_rl.tasks.warmstart import evaluate_accuracy
    from adaclip_rl.trainers.build import build_trainer, make_parser

    argv = ["--config", str(ARITHMETIC_RECIPE), "--seed", str(seed), "--max_steps", str(steps),
            "--learning_rate", str(lr), "--optimizer", optimizer, "--output_dir", str(out),
            "--model_name_or_path", str(warm), "--disable_tqdm", "true"]
    if optimizer == "stable_spam":  # a reset every quarter of the run (the official default is 1000 steps)
        argv += ["--stable_spam_update_proj_gap", str(max(1, steps // 4))]
    script_args, grpo_args, model_args = make_parser().parse_args_and_config(argv)
    trainer = build_trainer(script_args, grpo_args, model_args)
    t0 = time.time()
    trainer.train()
    seconds = time.time() - t0
    logs = [h for h in trainer.state.log_history if "reward" in h]
    rewards = [h["reward"] for h in logs]
    k = max(1, len(rewards) // 10)
    windows = [statistics.mean(rewards[i:i + 10]) for i in range(0, max(1, len(rewards) - 9))]
    tokenizer = AutoTokenizer.from_pretrained(warm)
    problems = ArithmeticTask(digits=2).sample(200, "test", seed=1234)
    acc = evaluate_accuracy(trainer.model, tokenizer, problems, k=4, temperature=1.0, seed=1000)
    return {"optimizer": optimizer, "lr": lr, "seed": seed, "steps": steps, "seconds": seconds,
            "reward_first": statistics.mean(rewards[:k]), "reward_last": statistics.mean(rewards[-k:]),
            "reward_min10": min(windows), "max_grad_norm": max(h.get("grad_norm", 0.0) for h in logs),
            "heldout": acc, "rewards": rewards}


def plot(results: dict, figure: Path) -> None:
    """Train reward per step: the AdamW learning-rate search and the comparison runs (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for r in results["runs"]:
        if r["stage"] == "search":
            left.plot(r["rewards"], label=f"AdamW lr={r['lr']:g}", lw=1)
    colors = {"adamw": "tab:red", "stable_spam": "tab:blue", "spam": "tab:green"}
    seen: set = set()
    lrs = sorted({r["lr"] for r in results["runs"] if r["stage"] == "compare"})
    for r in results["runs"]:
        if r["stage"] == "compare":
            key = (r["optimizer"], r["lr"])
            label = None if key in seen else f"{r['optimizer']} lr={r['lr']:g}"
            seen.add(key)
            right.plot(r["rewards"], color=colors.get(r["optimizer"]), label=label, lw=1, alpha=0.8,
                       ls=["-", "--", ":"][lrs.index(r["lr"]) % 3])
    left.set_title("AdamW, learning-rate search (seed 0)")
    right.set_title("comparison, 3 seeds per optimizer and lr")
    for ax in (left, right):
        ax.set_xlabel("logged reward (one per generation batch = 4 optimizer steps)")
        ax.legend(fontsize=8)
    left.set_ylabel("train reward (exact answer)")
    fig.suptitle("GRPO on 2-digit addition, tiny model, warm start; 2-core CPU", fontsize=10)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=110)
    print(f"figure: {figure}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["search", "compare", "plot"])
    ap.add_argument("--figure", default="docs/optimizers_learning.png")
    ap.add_argument("--lrs", type=float, nargs="+", default=[2e-4, 1e-3, 3e-3, 1e-2])
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--optimizers", nargs="+", default=["adamw", "stable_spam"])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--root", default="runs/learning_optim")
    ap.add_argument("--out", default="results/learning_optim.json")
    args = ap.parse_args()
    if args.stage == "plot":
        plot(json.loads(Path(args.out).read_text()), Path(args.figure))
        return
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = Path(args.root)
    warm = warm_model(root)
    if args.stage == "search":
        plan = [("adamw", lr, 0) for lr in args.lrs]
    else:
        plan = [(o, args.lr, s) for s in args.seeds for o in args.optimizers]
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {"machine": "2-core x86_64 CPU, 1 thread",
                                                                           "runs": []}
    for optimizer, lr, seed in plan:
        r = run(warm, root / f"{args.stage}-{optimizer}-{lr:g}-{seed}", optimizer, lr, seed, args.steps)
        r["stage"] = args.stage
        results["runs"].append(r)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{args.stage} {optimizer:12s} lr={lr:g} seed={seed}: reward {r['reward_first']:.3f} -> "
              f"{r['reward_last']:.3f} (min 10-step mean {r['reward_min10']:.3f}), max grad_norm "
              f"{r['max_grad_norm']:.2f}, held-out avg@4 {r['heldout']['avg@4']:.3f} greedy "
              f"{r['heldout']['greedy']:.3f} [{r['seconds']:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
