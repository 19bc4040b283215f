"""Step time of AdaClipGRPOTrainer (grpo, bapo, archer) against stock TRL GRPOTrainer, side by side.

Two measurements on the tiny offline model, all trainers built from the same weights:

* **loss step**: ``_compute_loss`` + backward on identical pre-built batches (the part our
  subclass changes), interleaved round-robin over the trainers so machine-load drift hits all alike;
* **train step**: full optimizer steps through TRL's ``training_step`` (generation every
  ``steps_per_generation`` steps included), gradient clipping and the optimizer step, also
  interleaved round-robin; reported per step, averaged over each generation cycle (median over cycles);
* **BAPO search scope**: one accumulation window of 2 micro-batches (``_compute_loss`` + backward
  each, as ``training_step`` runs them) with ``bapo_scope="micro_batch"`` (a search per micro-batch,
  the verl recipe) and ``"update"`` (one search per update over both micro-batches: one extra
  forward without grad of the other micro-batch), against ``policy_loss="grpo"``.

    python scripts/bench_trainer.py [--rounds 30 --batch 64 --completion 64 --out results/bench_trainer.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from adaclip_rl import AdaClipGRPOConfig, AdaClipGRPOTrainer
from adaclip_rl.tasks import ArithmeticTask, arithmetic_reward, build_tiny_model


def _batch(model, b: int, c: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    p = 6
    prompt_ids = torch.randint(3, 250, (b, p), generator=gen)
    completion_ids = torch.randint(3, 250, (b, c), generator=gen)
    lengths = torch.randint(c // 4, c + 1, (b,), generator=gen)
    completion_mask = (torch.arange(c).unsqueeze(0) < lengths.unsqueeze(1)).long()
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt_ids, completion_ids], 1)).logits[:, p - 1 : -1]
        logps = torch.log_softmax(logits.float(), -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    return {
        "prompt_ids": prompt_ids, "prompt_mask": torch.ones(b, p, dtype=torch.long), "completion_ids": completion_ids,
        "completion_mask": completion_mask, "advantages": torch.randn(b, generator=gen),
        "old_per_token_logps": logps + 0.3 * torch.randn(b, c, generator=gen),
        # Archer's KL term reads the reference log-probs (stock GRPO with beta=0 ignores them)
        "ref_per_token_logps": logps + 0.1 * torch.randn(b, c, generator=gen),
        "num_items_in_batch": completion_mask.sum().float(),
    }


def _common(args, out: str) -> dict:
    return dict(output_dir=out, use_cpu=True, bf16=False, per_device_train_batch_size=args.batch // 4,
                num_generations=8, max_completion_length=args.completion, report_to="none", save_strategy="no",
                gradient_checkpointing=False, logging_steps=1, steps_per_generation=4, learning_rate=1e-4,
                max_steps=args.train_steps, disable_tqdm=True, seed=0)


def _interleaved_train_steps(trainers: dict, steps: int) -> dict[str, float]:
    """Full optimizer steps (TRL's ``training_step`` incl. generation every ``steps_per_generation``
    steps, ``_clip_grad_norm``, optimizer step), round-robin over the trainers.

    Returns the median over generation cycles of the cycle's time divided by its steps (ms), so
    each figure is a per-step mean that includes one generation per cycle.
    """
    spg = next(iter(trainers.values())).args.steps_per_generation
    state = {}
    for name, t in trainers.items():
        t.create_optimizer()
        state[name] = iter(t.get_train_dataloader())
    step_times: dict[str, list[float]] = {k: [] for k in trainers}
    for _ in range(spg + steps):  # the first cycle is warm-up
        for name, t in trainers.items():
            batch = next(state[name])
            t0 = time.perf_counter()
            t.training_step(t.model, batch, None)
            t._clip_grad_norm(t.model)
            t.optimizer.step()
            t.optimizer.zero_grad(set_to_none=True)
            step_times[name].append(time.perf_counter() - t0)
            t._metrics["train"].clear()
    out = {}
    for name, ts in step_times.items():
        ts = ts[spg:]
        cycles = [sum(ts[i : i + spg]) / spg for i in range(0, len(ts) - spg + 1, spg)]
        out[name] = statistics.median(cycles) * 1e3
    return out


def _scope_window_times(args, model_dir: str, ds, batches: list[dict], tmp: str) -> dict[str, float]:
    """Median ms of one accumulation window (2 micro-batches) per trainer, interleaved."""
    variants = {"AdaClip grpo, ga 2": ("grpo", "update"), "AdaClip bapo, ga 2, micro_batch": ("bapo", "micro_batch"),
                "AdaClip bapo, ga 2, update": ("bapo", "update")}
    trainers = {}
    for name, (loss, scope) in variants.items():
        kw = dict(_common(args, f"{tmp}/scope_{loss}_{scope}"), gradient_accumulation_steps=2)
        trainers[name] = AdaClipGRPOTrainer(model=model_dir, reward_funcs=[arithmetic_reward], train_dataset=ds,
                                            args=AdaClipGRPOConfig(policy_loss=loss, bapo_scope=scope, **kw))
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for r in range(args.rounds + 2):
        for name, t in trainers.items():
            t.model.train()
            t.model.zero_grad(set_to_none=True)
            t._buffered_inputs = batches  # steps_per_generation = 4 slices; the window is slices 0, 1
            t.update_search.reset()
            t.current_gradient_accumulation_steps = 2
            t0 = time.perf_counter()
            for k in range(2):
                t._step = k
                t._compute_loss(t.model, batches[k]).backward()
            if r >= 2:
                times[name].append(time.perf_counter() - t0)
            t._metrics["train"].clear()
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--completion", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=24, help="measured steps per trainer (multiple of 4)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="results/bench_trainer.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp()
    task = ArithmeticTask()
    model_dir = str(build_tiny_model(Path(tmp) / "tiny", task.corpus()))
    ds = Dataset.from_list(task.sample(512, "train"))
    trainers = {
        "TRL GRPOTrainer": GRPOTrainer(model=model_dir, reward_funcs=[arithmetic_reward], train_dataset=ds,
                                       args=GRPOConfig(**_common(args, f"{tmp}/stock"))),
    }
    variants = {"grpo": {}, "bapo": {}, "archer": {}, "archer, no KL": {"archer_low_kl": 0.0}}
    for name, extra in variants.items():
        loss = name.split(",")[0]
        trainers[f"AdaClip {name}"] = AdaClipGRPOTrainer(
            model=model_dir, reward_funcs=[arithmetic_reward], train_dataset=ds,
            args=AdaClipGRPOConfig(policy_loss=loss, **extra, **_common(args, f"{tmp}/{name.replace(', ', '_')}")))
    batches = [_batch(trainers["TRL GRPOTrainer"].model, args.batch, args.completion, s) for s in range(4)]
    for t in trainers.values():
        t.model.train()
        t.current_gradient_accumulation_steps = 1

    times: dict[str, list[float]] = {k: [] for k in trainers}
    for r in range(args.rounds + 2):
        for name, t in trainers.items():
            inputs = batches[r % len(batches)]
            t.model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            t._compute_loss(t.model, inputs).backward()
            dt = time.perf_counter() - t0
            if r >= 2:  # warm-up rounds
                times[name].append(dt)
            t._metrics["train"].clear()
    loss_ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}

    scope = _scope_window_times(args, model_dir, ds, batches, tmp)
    train_step = _interleaved_train_steps(trainers, args.train_steps)
    base, grpo = loss_ms["TRL GRPOTrainer"], loss_ms["AdaClip grpo"]
    tbase, tgrpo = train_step["TRL GRPOTrainer"], train_step["AdaClip grpo"]
    print(f"\nTrainer step time, tiny Qwen2 (0.33 M), batch {args.batch} x {args.completion} completion tokens, "
          f"threads={torch.get_num_threads()}, {platform.machine()}, {os.cpu_count()} cores")
    print(f"{'trainer':<22}{'loss+bwd ms':>12}{'vs TRL':>8}{'vs grpo':>9}{'train step ms':>15}{'vs TRL':>8}{'vs grpo':>9}")
    rows = []
    for name in trainers:
        row = {"trainer": name, "loss_backward_ms": loss_ms[name], "loss_vs_trl": loss_ms[name] / base,
               "loss_vs_grpo": loss_ms[name] / grpo, "train_step_ms": train_step[name],
               "train_vs_trl": train_step[name] / tbase, "train_vs_grpo": train_step[name] / tgrpo}
        rows.append(row)
        print(f"{name:<22}{row['loss_backward_ms']:>12.2f}{row['loss_vs_trl']:>7.3f}x{row['loss_vs_grpo']:>8.3f}x"
              f"{row['train_step_ms']:>15.1f}{row['train_vs_trl']:>7.3f}x{row['train_vs_grpo']:>8.3f}x")
    print("\nOne update of 2 micro-batches (gradient_accumulation_steps=2), loss+backward ms per update")
    sbase = scope["AdaClip grpo, ga 2"]
    scope_rows = []
    for name, ms in scope.items():
        scope_rows.append({"trainer": name, "update_ms": ms, "vs_grpo": ms / sbase})
        print(f"{name:<34}{ms:>10.2f}{ms / sbase:>8.3f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "batch": args.batch, "completion_tokens": args.completion, "rounds": args.rounds,
        "threads": torch.get_num_threads(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(), "torch": torch.__version__, "rows": rows, "bapo_scope_rows": scope_rows,
        "targets": {"AdaClip grpo loss_vs_trl": 1.02},
        "met": {"AdaClip grpo loss_vs_trl": loss_ms["AdaClip grpo"] / base <= 1.02}}, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
