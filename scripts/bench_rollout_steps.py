"""Whole optimizer steps with and without partial rollouts: the real ``OffPolicyGRPOTrainer`` on CPU.

What it measures: wall time of **whole optimizer steps** - weight push, generation (vLLM colocate),
rewards, TRL's old-log-prob pass and the training step - for the same trainer in two modes:

* ``sync``: ``partial_max_segments=1``, no pre-filled groups: every generation batch runs its
  completions to the end (the step waits for its longest completion);
* ``partial``: ``partial_max_segments=4`` (default), one generation batch of pre-filled groups:
  generation is interrupted when the batch has its groups, unfinished sequences continue after the
  next weight push.

Workloads (``--workload``):

* ``long_tailed``: completion lengths forced to a log-normal draw (median 24, sigma 1, clipped to
  [4, 384]; ``ignore_eos`` + per-sample caps, the distribution of ``bench_rollout.py``) on the tiny
  random model; reward = share of digit characters (cheap, non-constant);
* ``natural_eos``: the CPU demo's task (2-digit addition, exact-answer reward) on a warm-started
  tiny model, lengths as the model ends them; also reports the time until the mean train reward of
  the last 5 steps reaches ``--target-reward``.

Runs alternate ``sync, partial, sync, partial, ...`` (``--repeats`` each, seeds 0, 1, ...), so load
from other processes hits both alike; the first ``--warmup`` steps of each run (engine warm-up) are
not timed and engine start-up is excluded. Same batch (samples per step) in both modes; trained
tokens per step are reported so that the token counts can be compared. Writes JSON to ``--out``.

    .venv/bin/python scripts/bench_rollout_steps.py --workload long_tailed
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=("long_tailed", "natural_eos"), default="long_tailed")
    p.add_argument("--groups", type=int, default=8, help="groups per generation batch")
    p.add_argument("--group-size", type=int, default=4, help="completions per group (G)")
    p.add_argument("--steps", type=int, default=16, help="timed optimizer steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per mode (alternating)")
    p.add_argument("--max-len", type=int, default=384, help="max completion length")
    p.add_argument("--median", type=float, default=24.0, help="long_tailed: log-normal median length")
    p.add_argument("--sigma", type=float, default=1.0, help="long_tailed: log-normal sigma")
    p.add_argument("--target-reward", type=float, default=0.5, help="natural_eos: reward to reach (5-step mean)")
    p.add_argument("--warm-steps", type=int, default=650, help="natural_eos: supervised warm-start steps")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    p.add_argument("--out", default=None, help="JSON path (default results/bench_rollout_steps_<workload>.json)")
    return p.parse_args()


def digit_share(completions: list[Any], **kwargs: Any) -> list[float]:
    """Share of digit characters of each completion (cheap, varies across random completions)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def _forced_trainer_class(args: argparse.Namespace):
    """The off-policy trainer whose rollouts get forced, log-normal completion lengths (benchmark only)."""
    from adaclip_rl.trainers.offpolicy import OffPolicyGRPOTrainer

    class ForcedLengthTrainer(OffPolicyGRPOTrainer):
        def __init__(self, *a: Any, length_seed: int = 0, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self._length_rng = random.Random(length_seed)
            mgr = self.rollout_manager
            mgr.sampling = dataclasses.replace(mgr.sampling, ignore_eos=True)

        def _draw_length(self) -> int:
            x = math.exp(self._length_rng.gauss(math.log(args.median), args.sigma))
            return int(min(max(round(x), 4), args.max_len))

        def _submit_rows(self, rows: list[dict]) -> None:
            if not rows:
                return
            prompt_ids, _, _ = self._tokenize_prompts([r["prompt"] for r in rows])
            caps = [[self._draw_length() for _ in range(self.num_generations)] for _ in rows]
            self.rollout_manager.submit(prompt_ids, n=self.num_generations, metas=[{"row": r} for r in rows],
                                        max_new_tokens=caps)

    return ForcedLengthTrainer


class StepClock(TrainerCallback):
    """Trainer callback: wall time at the start of training and at the end of every optimizer step."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.start = time.perf_counter()

    def on_train_begin(self, args, state, control, **kw):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.ends.append(time.perf_counter())


def one_run(mode: str, seed: int, model_dir: str, dataset: Any, args: argparse.Namespace, out_dir: Path) -> dict:
    import gc

    from adaclip_rl.rollout.vllm_engine import release_trainer_engines
    from adaclip_rl.trainers.config import OffPolicyGRPOConfig
    from adaclip_rl.trainers.offpolicy import OffPolicyGRPOTrainer

    natural = args.workload == "natural_eos"
    g = args.group_size
    cfg = OffPolicyGRPOConfig(
        output_dir=str(out_dir / f"{mode}-{seed}"), use_cpu=True, bf16=False, report_to="none",
        logging_steps=1, save_strategy="no", disable_tqdm=True, gradient_checkpointing=False,
        max_steps=args.warmup + args.steps, seed=seed, learning_rate=2e-4 if natural else 1e-5,
        policy_loss="grpo", loss_type="dapo", beta=0.0, temperature=1.0, top_p=1.0,
        max_completion_length=args.max_len, per_device_train_batch_size=args.groups * g, num_generations=g,
        steps_per_generation=1, use_vllm=True, vllm_mode="colocate", vllm_importance_sampling_correction=True,
        vllm_max_model_length=args.max_len + 64, partial_rollouts=True,
        partial_max_segments=1 if mode == "sync" else 4, partial_prefill_groups=0 if mode == "sync" else args.groups,
    )
    clock = StepClock()
    if natural:
        from adaclip_rl.tasks.arithmetic import arithmetic_reward

        trainer = OffPolicyGRPOTrainer(model_dir, [arithmetic_reward], args=cfg, train_dataset=dataset,
                                       callbacks=[clock])
    else:
        trainer = _forced_trainer_class(args)(model_dir, [digit_share], args=cfg, train_dataset=dataset,
                                              callbacks=[clock], length_seed=seed)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # no metrics dict per step on stdout
    trainer.remove_callback(ProgressCallback)
    trainer.train()
    history = [h for h in trainer.state.log_history if "loss" in h]
    ends = clock.ends
    timed = [b - a for a, b in zip(ends[args.warmup - 1 : -1], ends[args.warmup :], strict=True)]
    tokens = [h["completions/mean_length"] * args.groups * g for h in history][args.warmup :]
    gen = [h.get("partial/generate_seconds", float("nan")) for h in history][args.warmup :]
    rewards = [h["reward"] for h in history]
    reached = None
    if natural:
        for i in range(4, len(rewards)):
            if statistics.fmean(rewards[i - 4 : i + 1]) >= args.target_reward:
                reached = {"step": i + 1, "seconds": ends[i] - clock.start}
                break
    result = {
        "mode": mode, "seed": seed, "step_seconds": timed, "step_seconds_mean": statistics.fmean(timed),
        "generation_seconds_mean": statistics.fmean(gen), "trained_tokens_per_step_mean": statistics.fmean(tokens),
        "trained_tokens_per_s": sum(tokens) / sum(timed), "reward_first5": statistics.fmean(rewards[:5]),
        "reward_last5": statistics.fmean(rewards[-5:]), "target_reached": reached,
        "version_span_max": max(h.get("partial/version_span_max", 0.0) for h in history),
    }
    release_trainer_engines(trainer)
    del trainer
    gc.collect()
    return result


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch
    from datasets import Dataset

    from adaclip_rl.console import filter_pinned_vllm_warning
    from adaclip_rl.tasks import ArithmeticTask, build_tiny_model

    filter_pinned_vllm_warning()
    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    task = ArithmeticTask(digits=2)
    model_dir = str(build_tiny_model(root / "base", task.corpus()))
    if args.workload == "natural_eos":
        from adaclip_rl.tasks.warmstart import WarmStartConfig, warm_start

        model_dir = str(warm_start(model_dir, root / "warm", task, WarmStartConfig(steps=args.warm_steps),
                                   progress=False))
        args.max_len = min(args.max_len, 8)
    dataset = Dataset.from_list(task.sample(4000, "train", seed=0))
    load_before = os.getloadavg()
    runs = []
    for rep in range(args.repeats):
        for mode in ("sync", "partial"):
            t0 = time.perf_counter()
            runs.append(one_run(mode, rep, model_dir, dataset, args, root / "runs"))
            print(f"{mode:<8} seed {rep}: {runs[-1]['step_seconds_mean']:.3f} s/step "
                  f"({time.perf_counter() - t0:.0f} s incl. engine start)", flush=True)

    def agg(mode: str, key: str) -> list[float]:
        return [r[key] for r in runs if r["mode"] == mode]

    summary = {}
    for mode in ("sync", "partial"):
        per_run = agg(mode, "step_seconds_mean")
        summary[mode] = {
            "step_seconds_mean": statistics.fmean(per_run),
            "step_seconds_sd": statistics.stdev(per_run) if len(per_run) > 1 else 0.0,
            "generation_seconds_mean": statistics.fmean(agg(mode, "generation_seconds_mean")),
            "trained_tokens_per_step": statistics.fmean(agg(mode, "trained_tokens_per_step_mean")),
            "trained_tokens_per_s": statistics.fmean(agg(mode, "trained_tokens_per_s")),
            "time_to_target_s": [r["target_reached"]["seconds"] if r["target_reached"] else None
                                 for r in runs if r["mode"] == mode],
        }
    s, p = summary["sync"], summary["partial"]
    report = {
        "benchmark": "bench_rollout_steps",
        "measures": "whole optimizer steps (weight push, generation, rewards, old log-probs, training); "
                    "engine start-up and the first warm-up steps excluded",
        "workload": args.workload,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "loadavg_1_5_15_before": list(load_before), "loadavg_1_5_15_after": list(os.getloadavg())},
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "runs": runs,
        "summary": summary,
        "speedup_whole_step": s["step_seconds_mean"] / p["step_seconds_mean"],
        "speedup_trained_tokens_per_s": p["trained_tokens_per_s"] / s["trained_tokens_per_s"],
        "speedup_generation_only": s["generation_seconds_mean"] / p["generation_seconds_mean"],
    }
    out = Path(args.out or REPO / "results" / f"bench_rollout_steps_{args.workload}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwhole optimizer steps, workload {args.workload}, {args.repeats} runs per mode x {args.steps} timed steps; "
          f"{os.cpu_count()} CPU cores, load {load_before[0]:.1f}")
    print(f"{'mode':<8} {'s/step':>14} {'gen s/step':>11} {'tokens/step':>12} {'tok/s':>8}")
    for mode in ("sync", "partial"):
        r = summary[mode]
        print(f"{mode:<8} {r['step_seconds_mean']:>7.3f} ± {r['step_seconds_sd']:<5.3f} {r['generation_seconds_mean']:>11.3f} "
              f"{r['trained_tokens_per_step']:>12.0f} {r['trained_tokens_per_s']:>8.0f}")
    print(f"partial vs sync: {report['speedup_whole_step']:.2f}x whole step, "
          f"{report['speedup_trained_tokens_per_s']:.2f}x trained tokens/s, "
          f"{report['speedup_generation_only']:.2f}x generation only  -> {out}")
    if args.workload == "natural_eos":
        print(f"time to 5-step mean train reward >= {args.target_reward}: sync {s['time_to_target_s']}, "
              f"partial {p['time_to_target_s']}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
