"""Run by ``torchrun --nproc_per_node 2`` from test_distributed.py: one optimizer update of BAPO on
2 CPU ranks x 2 micro-batches (gradient accumulation), under each ``bapo_scope``.

The batch (8 sequences with known stale log-probs) is built by the test and saved; rank ``r``
takes sequences ``4r .. 4r+3`` as two micro-batches of 2, placed where TRL's training loop keeps
them (``_buffered_inputs``), and runs ``_compute_loss`` + backward on each, as ``training_step``
does. Gradients are averaged across ranks (what DDP does). Rank 0 writes the bounds of every
micro-batch and the averaged gradients.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from adaclip_rl import AdaClipGRPOConfig, AdaClipGRPOTrainer

LOSS_TYPE = "grpo"


def reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


def dataset():
    from datasets import Dataset

    from adaclip_rl.tasks import ArithmeticTask

    return Dataset.from_list(ArithmeticTask().sample(32, "train"))


def make_batch(model, seed: int = 0, lengths: tuple[int, ...] = (6, 2, 6, 3, 6, 4, 6, 2)) -> dict[str, torch.Tensor]:
    """8 sequences of completion ``lengths``, stale old log-probs (ratios spread well beyond the
    start bounds), more wrong answers on rank 1's half so that per-rank searches disagree."""
    gen = torch.Generator().manual_seed(seed)
    b, p, c = 8, 3, 6
    full = {
        "prompt_ids": torch.randint(3, 200, (b, p), generator=gen),
        "prompt_mask": torch.ones(b, p, dtype=torch.long),
        "completion_ids": torch.randint(3, 200, (b, c), generator=gen),
        "completion_mask": (torch.arange(c) < torch.tensor(lengths).unsqueeze(1)).long(),
        "advantages": torch.tensor([1.2, 0.8, 1.5, -0.2, -1.1, -0.9, -1.4, 0.3]),
    }
    with torch.no_grad():
        logits = model(input_ids=torch.cat([full["prompt_ids"], full["completion_ids"]], 1)).logits
        logps = torch.log_softmax(logits[:, p - 1 : -1], -1).gather(-1, full["completion_ids"][..., None])[..., 0]
    full["old_per_token_logps"] = logps + 0.6 * torch.randn(b, c, generator=gen)
    return full


def make_args(output_dir: str, *, per_device: int, ga: int, scope: str = "update") -> AdaClipGRPOConfig:
    return AdaClipGRPOConfig(
        output_dir=output_dir, policy_loss="bapo", use_cpu=True, bf16=False, per_device_train_batch_size=per_device,
        num_generations=4, gradient_accumulation_steps=ga, steps_per_generation=ga, max_completion_length=6,
        report_to="none", save_strategy="no", gradient_checkpointing=False, loss_type=LOSS_TYPE, bapo_scope=scope,
    )


def one_update(trainer: AdaClipGRPOTrainer, micro_batches: list[dict]) -> tuple[list[list[float]], dict]:
    """Run the micro-batches of one accumulation window; return per-micro-batch (c_low, c_high,
    share) and the (local) accumulated gradients."""
    trainer.model.train()
    trainer.model.zero_grad()
    trainer._buffered_inputs = micro_batches
    trainer.update_search.reset()
    trainer.current_gradient_accumulation_steps = len(micro_batches)
    bounds = []
    for k, mb in enumerate(micro_batches):
        trainer._step = k
        trainer._compute_loss(trainer.model, mb).backward()
        m = trainer._metrics["train"]
        bounds.append([m["bapo/clip_low"][-1], m["bapo/clip_high"][-1], m["bapo/pos_share_after"][-1]])
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return bounds, grads


def main() -> None:
    model_dir, batch_path, out_path = sys.argv[1:4]
    torch.set_num_threads(1)
    full = torch.load(batch_path, weights_only=True)
    trainer = AdaClipGRPOTrainer(model=model_dir, reward_funcs=[reward],
                                 args=make_args(os.path.join(os.path.dirname(out_path), "dist"), per_device=2, ga=2),
                                 train_dataset=dataset())
    rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
    assert world == 2 and dist.get_backend() == "gloo"
    n_items = full["completion_mask"].sum().float()
    micro = []
    for k in range(2):
        sl = slice(4 * rank + 2 * k, 4 * rank + 2 * k + 2)
        mb = {key: v[sl] for key, v in full.items() if torch.is_tensor(v) and v.dim() > 0}
        mb["num_items_in_batch"] = n_items
        micro.append(mb)
    result = {}
    for scope in ("update", "micro_batch"):
        trainer.args.bapo_scope = scope
        trainer.loss_config = trainer.args.policy_loss_config()  # the trainer reads the scope from its loss config
        bounds, grads = one_update(trainer, micro)
        for g in grads.values():
            dist.all_reduce(g)
            g /= world
        all_bounds = [None] * world
        dist.all_gather_object(all_bounds, bounds)
        result[scope] = {"bounds": all_bounds}
        if rank == 0:
            torch.save(grads, out_path + f".{scope}.grads.pt")
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(result, f)
    dist.barrier()


if __name__ == "__main__":
    main()
