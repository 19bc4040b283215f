"""Asynchronous vs synchronous off-policy training on CPU: time to a fixed train reward.

What it measures: on the CPU demo's task (2-digit addition, exact-answer reward, a warm-started
tiny Qwen2), the wall time from ``on_train_begin`` until the mean train reward of the last 5
optimizer steps reaches ``--target-reward``, and the mean seconds per optimizer step, for

* ``sync``: our ``OffPolicyGRPOTrainer`` (vLLM colocated in the trainer process; generation and
  training take turns; ``partial_max_segments=1``, the synchronous mode of ``bench_rollout_steps.py``);
* ``async``: ``AdaClipAsyncGRPOTrainer`` (TRL's asynchronous GRPO: a rollout worker process
  generating on a separate ``vllm serve`` process while the trainer trains; weights pushed every
  step through the shared-file transfer; samples at most ``--max-staleness`` versions old).

Same policy loss, learning rate, samples per optimizer step (``--groups`` x ``--group-size``),
completion length and prompt tokens (the async tokenizer renders the prompt text as is). The
clock starts when training begins, after start-up: the sync engine starts in the trainer's
constructor; the async server runs before, and the clock callback is added after TRL's, so the
cold weight sync and the rollout worker's spawn are excluded too. Runs alternate ``sync, async, ...`` so that load
from other processes hits both. On 2 cores the server, the rollout worker and the trainer compete for
the same CPUs: this is a functional comparison, not the GPU setting asynchronous training is for.

    .venv/bin/python scripts/bench_async.py            # writes results/bench_async.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
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
    p.add_argument("--groups", type=int, default=8, help="prompts per optimizer step")
    p.add_argument("--group-size", type=int, default=4, help="completions per prompt (G)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    p.add_argument("--repeats", type=int, default=2, help="runs per mode (alternating)")
    p.add_argument("--policy-loss", default="bapo")
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--target-reward", type=float, default=0.6, help="5-step mean train reward to reach")
    p.add_argument("--warm-steps", type=int, default=650, help="supervised warm-start steps")
    p.add_argument("--max-staleness", type=int, default=1)
    p.add_argument("--weight-sync-steps", type=int, default=1, help="async: optimizer steps per weight push")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the trainer process")
    p.add_argument("--out", default=None)
    return p.parse_args()


class StepClock(TrainerCallback):
    """Wall time at the start of training and at the end of every optimizer step."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.ends: list[float] = []

    def on_train_begin(self, args, state, control, **kw):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.ends.append(time.perf_counter())


def _summarise(mode: str, seed: int, clock: StepClock, history: list[dict], args: argparse.Namespace) -> dict:
    rewards = [h["reward"] for h in history if "reward" in h]
    steps = [b - a for a, b in zip([clock.start, *clock.ends[:-1]], clock.ends, strict=True)]
    reached = None
    for i in range(4, len(rewards)):
        if statistics.fmean(rewards[i - 4 : i + 1]) >= args.target_reward:
            reached = {"step": i + 1, "seconds": clock.ends[i] - clock.start}
            break
    return {"mode": mode, "seed": seed, "steps": len(clock.ends), "step_seconds_mean": statistics.fmean(steps[1:]),
            "seconds_total": clock.ends[-1] - clock.start, "reward_first5": statistics.fmean(rewards[:5]),
            "reward_last5": statistics.fmean(rewards[-5:]), "target_reached": reached}


def run_sync(seed: int, model_dir: str, dataset: Any, args: argparse.Namespace, out: Path) -> dict:
    from adaclip_rl.rollout.vllm_engine import release_trainer_engines
    from adaclip_rl.tasks.arithmetic import arithmetic_reward
    from adaclip_rl.trainers.config import OffPolicyGRPOConfig
    from adaclip_rl.trainers.offpolicy import OffPolicyGRPOTrainer

    g = args.group_size
    cfg = OffPolicyGRPOConfig(
        output_dir=str(out / f"sync-{seed}"), use_cpu=True, bf16=False, report_to="none", logging_steps=1,
        save_strategy="no", disable_tqdm=True, max_steps=args.steps, seed=seed, learning_rate=args.learning_rate,
        lr_scheduler_type="linear", policy_loss=args.policy_loss, loss_type="dapo", beta=0.0, temperature=1.0, top_p=1.0,
        max_completion_length=8, per_device_train_batch_size=args.groups * g, num_generations=g,
        steps_per_generation=1, use_vllm=True, vllm_mode="colocate", vllm_importance_sampling_correction=True,
        vllm_max_model_length=64, partial_rollouts=True, partial_max_segments=1, partial_prefill_groups=0,
    )
    clock = StepClock()
    trainer = OffPolicyGRPOTrainer(model_dir, [arithmetic_reward], args=cfg, train_dataset=dataset)
    trainer.add_callback(clock)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.train()
    result = _summarise("sync", seed, clock, trainer.state.log_history, args)
    release_trainer_engines(trainer)
    del trainer
    gc.collect()
    return result


def run_async(seed: int, model_dir: str, dataset: Any, args: argparse.Namespace, out: Path, server) -> dict:
    from transformers import AutoTokenizer

    from adaclip_rl.tasks.arithmetic import arithmetic_reward
    from adaclip_rl.trainers.async_config import AdaClipAsyncGRPOConfig
    from adaclip_rl.trainers.async_grpo import AdaClipAsyncGRPOTrainer
    from adaclip_rl.trainers.chat_template import conversational_prompts, set_plain_response_template

    g = args.group_size
    cfg = AdaClipAsyncGRPOConfig(
        output_dir=str(out / f"async-{seed}"), use_cpu=True, bf16=False, dtype="float32", report_to="none",
        logging_steps=1, save_strategy="no", disable_tqdm=True, max_steps=args.steps, seed=seed,
        learning_rate=args.learning_rate, lr_scheduler_type="linear", policy_loss=args.policy_loss, temperature=1.0,
        max_completion_length=8, per_device_train_batch_size=args.groups * g, num_generations=g, token_budget=0,
        vllm_server_base_url=server.base_url, weight_transfer="shared_file", weight_sync_steps=args.weight_sync_steps,
        max_staleness=args.max_staleness, weight_sync_timeout=120,
    )
    clock = StepClock()
    tokenizer = set_plain_response_template(AutoTokenizer.from_pretrained(model_dir))
    trainer = AdaClipAsyncGRPOTrainer(model_dir, arithmetic_reward, cfg, conversational_prompts(dataset), tokenizer)
    trainer.add_callback(clock)  # after TRL's train-begin callback: worker spawn and cold sync not timed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.train()
    result = _summarise("async", seed, clock, trainer.state.log_history, args)
    hist = trainer.state.log_history
    result["staleness_token_mean"] = statistics.fmean(h["staleness/token_mean"] for h in hist
                                                      if "staleness/token_mean" in h)
    result["weight_sync_seconds_mean"] = statistics.fmean(h["perf/weight_sync_s"] for h in hist
                                                          if "perf/weight_sync_s" in h)
    for key in ("perf/rollout_wait_s", "perf/fwd_bwd_s", "perf/optimizer_s", "rollout/generated_tok_s"):
        values = [h[key] for h in hist if h.get(key) is not None]
        result[key.replace("/", "_") + "_mean"] = statistics.fmean(values) if values else None
    del trainer
    gc.collect()
    return result


def main() -> None:
    args = parse_args()
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                       ("TRL_EXPERIMENTAL_SILENCE", "1"), ("VLLM_CPU_KVCACHE_SPACE", "1")):
        os.environ.setdefault(key, value)
    import torch
    from datasets import Dataset

    from adaclip_rl.console import filter_pinned_vllm_warning
    from adaclip_rl.rollout.async_weights import VLLMServer
    from adaclip_rl.tasks import ArithmeticTask, build_tiny_model
    from adaclip_rl.tasks.warmstart import WarmStartConfig, warm_start

    filter_pinned_vllm_warning()
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    task = ArithmeticTask(digits=2)
    model_dir = str(warm_start(build_tiny_model(root / "base", task.corpus()), root / "warm", task,
                               WarmStartConfig(steps=args.warm_steps), progress=False))
    dataset = Dataset.from_list(task.sample(4000, "train", seed=0))
    t0 = time.perf_counter()
    server = VLLMServer(model_dir, max_model_len=64, max_num_seqs=64, log_path=root / "server.log",
                        env={"OMP_NUM_THREADS": "1"}).start(timeout=300)
    server_start_s = time.perf_counter() - t0
    load_before = os.getloadavg()
    runs = []
    try:
        for rep in range(args.repeats):
            for mode in ("sync", "async"):
                t0 = time.perf_counter()
                if mode == "sync":
                    runs.append(run_sync(rep, model_dir, dataset, args, root / "runs"))
                else:
                    runs.append(run_async(rep, model_dir, dataset, args, root / "runs", server))
                r = runs[-1]
                print(f"{mode:<6} seed {rep}: {r['step_seconds_mean']:.3f} s/step, reward {r['reward_first5']:.3f} -> "
                      f"{r['reward_last5']:.3f}, target {r['target_reached']} "
                      f"({time.perf_counter() - t0:.0f} s incl. start-up)", flush=True)
    finally:
        server.stop()

    summary = {}
    for mode in ("sync", "async"):
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = {
            "step_seconds_mean": statistics.fmean(r["step_seconds_mean"] for r in mine),
            "time_to_target_s": [r["target_reached"]["seconds"] if r["target_reached"] else None for r in mine],
            "steps_to_target": [r["target_reached"]["step"] if r["target_reached"] else None for r in mine],
            "reward_last5": [r["reward_last5"] for r in mine],
        }
    report = {
        "benchmark": "bench_async",
        "measures": "seconds from on_train_begin until the 5-step mean train reward reaches the target, and "
                    "seconds per optimizer step; sync = OffPolicyGRPOTrainer (colocated vLLM), async = "
                    "AdaClipAsyncGRPOTrainer (separate vLLM server process, shared-file weight push every step); "
                    "server start-up and engine start-up excluded",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "loadavg_1_5_15_before": list(load_before), "loadavg_1_5_15_after": list(os.getloadavg()),
                    "note": "2-core x86_64 CPU shared with other agents; server, rollout worker and trainer compete "
                            "for the same cores"},
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "server_start_seconds": server_start_s,
        "runs": runs,
        "summary": summary,
    }
    out = Path(args.out or REPO / "results" / "bench_async.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\n{args.policy_loss}, {args.groups}x{args.group_size} samples/step, {args.steps} steps, "
          f"{args.repeats} runs per mode; {os.cpu_count()} CPU cores, load {load_before[0]:.1f}")
    print(f"{'mode':<6} {'s/step':>8} {'time to reward >= ' + str(args.target_reward):>28} {'steps':>12}")
    for mode in ("sync", "async"):
        s = summary[mode]
        fmt = [f"{t:.1f}" if t is not None else "-" for t in s["time_to_target_s"]]
        print(f"{mode:<6} {s['step_seconds_mean']:>8.3f} {', '.join(fmt):>28} {str(s['steps_to_target']):>12}")
    print(f"-> {out}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
