"""Generation wall time per training step, with and without partial rollouts (vLLM colocate on CPU).

What it measures: **generation only** - the weight push and the generation of each step's groups.
Rewards, the old-log-prob pass and the optimizer step are not timed, so the speed-up here is an
upper bound of the whole-step speed-up, not the whole-step speed-up itself. Whole optimizer steps of
the real trainer (and time to a train reward): ``bench_rollout.py --whole-steps [options]``, which
runs ``scripts/bench_rollout_steps.py`` with those options.

Workload: GRPO-style steps that each need ``--groups`` finished groups of ``--group-size``
completions. Response lengths are long-tailed and *forced*: every completion gets a target length
drawn from a log-normal distribution, ``round(exp(N(ln(median), sigma^2)))`` clipped to
``[--min-len, --max-len]``, and is generated with ``ignore_eos`` and ``max_tokens`` = its target,
so both modes do exactly the same kind of work with a tiny random model.

* ``sync``: each step generates its groups to completion (``max_segments=1``, nothing in flight
  beyond the step's groups): the step waits for its longest completion while the batch drains.
* ``partial``: all in-flight sequences generate in one continuous batch that is interrupted as soon
  as the step's groups are finished; unfinished sequences carry over (continued first) and
  ``--prefill-groups`` extra groups are in flight. The same prompt / length stream feeds both modes.

Every step starts with a weight sync (the same weights, new version) as a trainer would.
Both modes run side by side in one process on one engine, their steps interleaved so that load
from other processes hits both alike; the first ``--warmup`` steps of each are not timed.
Reported: wall seconds per step, trained tokens/s (completion tokens of the groups returned for
training), generated tokens/s (all tokens decoded, including carried-over partials), and the
speed-ups. Writes JSON to ``--out``.

    .venv/bin/python scripts/bench_rollout.py --out results/bench_rollout.json
"""

from __future__ import annotations

import argparse
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


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model dir (default: build the tiny Qwen2 in a temp dir)")
    p.add_argument("--groups", type=int, default=8, help="groups (prompts) per training step")
    p.add_argument("--group-size", type=int, default=4, help="completions per group (G)")
    p.add_argument("--steps", type=int, default=12, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=4, help="untimed steps per mode before timing")
    p.add_argument("--max-segments", type=int, default=4, help="partial: policy versions a completion may span")
    p.add_argument(
        "--prefill-groups", type=int, default=None, help="partial: extra groups in flight (default: --groups)"
    )
    p.add_argument("--median", type=float, default=24.0, help="log-normal median response length")
    p.add_argument("--sigma", type=float, default=1.0, help="log-normal sigma of response length")
    p.add_argument("--min-len", type=int, default=4)
    p.add_argument("--max-len", type=int, default=384, help="max completion length (clip)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/bench_rollout.json")
    return p.parse_args()


class Stream:
    """Deterministic stream of (prompt ids, per-completion target lengths)."""

    def __init__(self, tokenizer: Any, args: argparse.Namespace) -> None:
        from adaclip_rl.tasks.arithmetic import ArithmeticTask

        self.rows = ArithmeticTask().sample(4096, "train", seed=args.seed)
        self.tok = tokenizer
        self.rng = random.Random(args.seed)
        self.args = args
        self.i = 0
        self.lengths: list[int] = []

    def draw_length(self) -> int:
        a = self.args
        x = math.exp(self.rng.gauss(math.log(a.median), a.sigma))
        return int(min(max(round(x), a.min_len), a.max_len))

    def take(self, k: int) -> tuple[list[list[int]], list[list[int]]]:
        prompts, caps = [], []
        for _ in range(k):
            row = self.rows[self.i % len(self.rows)]
            self.i += 1
            prompts.append(self.tok(row["prompt"])["input_ids"])
            lens = [self.draw_length() for _ in range(self.args.group_size)]
            self.lengths.extend(lens)
            caps.append(lens)
        return prompts, caps


class ModeRunner:
    """One rollout mode (``sync`` or ``partial``) with its own manager and prompt/length stream."""

    def __init__(self, mode: str, engine: Any, tokenizer: Any, args: argparse.Namespace) -> None:
        from adaclip_rl.rollout import PartialRolloutManager, SamplingSettings

        self.mode, self.args = mode, args
        partial = mode == "partial"
        self.max_segments = args.max_segments if partial else 1  # 1: never interrupted (synchronous)
        self.mgr = PartialRolloutManager(
            engine,
            max_completion_length=args.max_len,
            max_segments=self.max_segments,
            sampling=SamplingSettings(temperature=args.temperature, ignore_eos=True),
            seed=args.seed,
        )
        self.stream = Stream(tokenizer, args)
        self.prefill = (
            (args.prefill_groups if args.prefill_groups is not None else args.groups) if partial else 0
        )
        if self.prefill:
            prompts, caps = self.stream.take(self.prefill)
            self.mgr.submit(prompts, n=args.group_size, max_new_tokens=caps)
        self.walls: list[float] = []
        self.trained: list[int] = []
        self.generated: list[float] = []
        self.rounds: list[float] = []
        self.spans: list[float] = []
        self.lens: list[int] = []

    def step(self, engine: Any, model: Any, version: int, timed: bool) -> None:
        """One training step's rollout: weight sync, admit this step's prompts, collect finished groups."""
        args = self.args
        t0 = time.perf_counter()
        engine.sync_weights(model, version=version)
        prompts, caps = self.stream.take(args.groups)
        self.mgr.submit(prompts, n=args.group_size, max_new_tokens=caps)
        groups = self.mgr.collect(args.groups)
        wall = time.perf_counter() - t0
        assert len(groups) == args.groups
        if not timed:
            return
        m = self.mgr.metrics()
        samples = [s for g in groups for s in g.samples]
        self.walls.append(wall)
        self.trained.append(sum(s.num_tokens for s in samples))
        self.generated.append(m["partial/tokens_generated"])
        self.rounds.append(m["partial/engine_calls"])
        self.spans.append(m["partial/version_span_max"])
        self.lens.extend(s.num_tokens for s in samples)

    def summary(self) -> dict[str, Any]:
        total = sum(self.walls)
        return {
            "mode": self.mode,
            "max_segments": self.max_segments,
            "prefill_groups": self.prefill,
            "wall_per_step_s_mean": total / len(self.walls),
            "wall_per_step_s_median": statistics.median(self.walls),
            "wall_per_step_s": self.walls,
            "trained_tokens_per_s": sum(self.trained) / total,
            "generated_tokens_per_s": sum(self.generated) / total,
            "trained_len_mean": statistics.fmean(self.lens),
            "engine_calls_per_step_mean": statistics.fmean(self.rounds),
            "version_span_max": max(self.spans),
        }


def quantiles(xs: list[int]) -> dict[str, float]:
    s = sorted(xs)

    def q(p: float) -> float:
        return float(s[min(len(s) - 1, int(p * len(s)))])

    return {"mean": statistics.fmean(s), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": float(s[-1])}


def main() -> None:
    if "--whole-steps" in sys.argv:
        sys.argv.remove("--whole-steps")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_rollout_steps

        bench_rollout_steps.main()
        return
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaclip_rl.rollout.vllm_engine import VLLMColocateEngine

    tmp = None
    model_dir = args.model
    if model_dir is None:
        from adaclip_rl.tasks.arithmetic import ArithmeticTask
        from adaclip_rl.tasks.tiny_model import build_tiny_model

        tmp = tempfile.TemporaryDirectory()
        model_dir = str(build_tiny_model(Path(tmp.name) / "tiny", ArithmeticTask().corpus()))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    t0 = time.perf_counter()
    engine = VLLMColocateEngine(model_dir, max_model_len=args.max_len + 32, max_num_seqs=256, seed=args.seed)
    startup = time.perf_counter() - t0
    engine.generate([tokenizer("1+1=")["input_ids"]], max_tokens=16, n=4, ignore_eos=True)  # warm kernels

    # Steps of the two modes are interleaved (sync, partial, sync, ...) on the same engine so that
    # load from other processes on a shared machine hits both alike.
    runners = {mode: ModeRunner(mode, engine, tokenizer, args) for mode in ("sync", "partial")}
    load_before = os.getloadavg()
    for step in range(args.warmup + args.steps):
        for runner in runners.values():  # each mode counts its own policy versions (one per step)
            runner.step(engine, model, version=step + 1, timed=step >= args.warmup)
    results = {mode: r.summary() for mode, r in runners.items()}
    lengths = Stream(tokenizer, args)
    lengths.take((args.warmup + args.steps) * args.groups)
    sync, part = results["sync"], results["partial"]
    speedup_wall = sync["wall_per_step_s_mean"] / part["wall_per_step_s_mean"]
    speedup_tok = part["trained_tokens_per_s"] / sync["trained_tokens_per_s"]
    import vllm

    report = {
        "benchmark": "bench_rollout",
        "measures": "generation only: weight push + generation per step (no rewards, old log-probs or training)",
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "vllm": vllm.__version__,
            "loadavg_1_5_15_before": list(load_before),
            "loadavg_1_5_15_after": list(os.getloadavg()),
        },
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "length_distribution": {
            "name": "lognormal, rounded, clipped",
            "median": args.median,
            "sigma": args.sigma,
            "clip": [args.min_len, args.max_len],
            "forced_with": "ignore_eos + per-request max_tokens",
            "empirical_per_completion": quantiles(lengths.lengths),
        },
        "engine_startup_s": startup,
        "results": results,
        "speedup_wall_per_step": speedup_wall,
        "speedup_trained_tokens_per_s": speedup_tok,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))

    d = report["length_distribution"]["empirical_per_completion"]
    print(
        f"\nlengths: lognormal(median={args.median}, sigma={args.sigma}) clipped to [{args.min_len}, {args.max_len}]; "
        f"empirical mean {d['mean']:.1f}, p50 {d['p50']:.0f}, p90 {d['p90']:.0f}, p99 {d['p99']:.0f}, max {d['max']:.0f}"
    )
    print(
        f"step = {args.groups} groups x {args.group_size}; {args.steps} timed steps (+{args.warmup} warm-up); "
        f"{os.cpu_count()} CPU cores"
    )
    print("generation only (weight push + generation per step; rewards, old log-probs and training not timed)")
    header = f"{'mode':<8} {'segs':>5} {'s/step':>8} {'trained tok/s':>14} {'gen tok/s':>10} {'len':>6} {'calls':>6} {'span':>5}"
    print(header)
    print("-" * len(header))
    for r in (sync, part):
        print(
            f"{r['mode']:<8} {r['max_segments']:>5} {r['wall_per_step_s_mean']:>8.3f} {r['trained_tokens_per_s']:>14.0f} "
            f"{r['generated_tokens_per_s']:>10.0f} {r['trained_len_mean']:>6.1f} {r['engine_calls_per_step_mean']:>6.2f} "
            f"{r['version_span_max']:>5.0f}"
        )
    print(f"generation-only speed-up: {speedup_wall:.2f}x wall per step, {speedup_tok:.2f}x trained tokens/s  -> {out}")
    engine.close()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
