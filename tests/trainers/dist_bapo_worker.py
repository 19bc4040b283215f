"""Run by ``torchrun --nproc_per_node 2`` from test_distributed.py: BAPO bounds across 2 CPU ranks.

Each rank computes the loss on its half of one batch inside AdaClipGRPOTrainer._compute_loss.
The ratios every rank actually used are gathered and searched in one process as the reference.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from datasets import Dataset
from dist_bapo_scope_worker import make_batch

from adaclip_rl import AdaClipGRPOConfig, AdaClipGRPOTrainer
from adaclip_rl.losses import bapo_search
from adaclip_rl.tasks import ArithmeticTask


def reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


def main() -> None:
    model_dir, out_path = sys.argv[1], sys.argv[2]
    args = AdaClipGRPOConfig(
        output_dir=os.path.join(os.path.dirname(out_path), "dist-out"), policy_loss="bapo", use_cpu=True, bf16=False,
        per_device_train_batch_size=4, num_generations=4, max_completion_length=6, report_to="none",
        save_strategy="no", gradient_checkpointing=False, loss_type="dapo",
    )
    ds = Dataset.from_list(ArithmeticTask().sample(32, "train"))
    trainer = AdaClipGRPOTrainer(model=model_dir, reward_funcs=[reward], args=args, train_dataset=ds)
    rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
    assert world == 2 and dist.get_backend() == "gloo"

    # the same full batch on every rank; rank 0's half mostly positive, rank 1's mostly negative
    full = make_batch(trainer.model, seed=0, lengths=(6, 5, 6, 3, 6, 4, 6, 2))
    half = {k: v[rank * 4 : (rank + 1) * 4] for k, v in full.items()}
    half["num_items_in_batch"] = full["completion_mask"].sum().float()

    captured = {}
    inner = trainer.policy_loss_fn

    def spy(ratio, advantages, mask, **kw):
        out = inner(ratio, advantages, mask, **kw)
        captured.update(ratio=ratio.detach(), adv=advantages, mask=mask, res=out.details, cfg=kw["config"])
        return out

    trainer.policy_loss_fn = spy
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer._compute_loss(trainer.model, half)
    loss.backward()
    res = captured["res"]
    mine = torch.stack([res.clip_low.double(), res.clip_high.double(), res.share_after.double(),
                        res.index.double(), res.reached.double()])
    all_bounds = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(all_bounds, mine)
    ratios = [torch.zeros_like(captured["ratio"]) for _ in range(world)]
    dist.all_gather(ratios, captured["ratio"])
    ref = bapo_search(torch.cat(ratios), full["advantages"], full["completion_mask"], captured["cfg"])
    local = bapo_search(captured["ratio"], captured["adv"], captured["mask"], captured["cfg"])
    local_all = [torch.zeros(2, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(local_all, torch.stack([local.clip_low.double(), local.clip_high.double()]))
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({
                "ranks": [t.tolist() for t in all_bounds],
                "reference": [ref.clip_low.item(), ref.clip_high.item(), ref.share_after.item(), ref.index.item(),
                              float(ref.reached)],
                "local_only": [t.tolist() for t in local_all],
                "logged_clip_high": trainer._metrics["train"]["bapo/clip_high"][-1],
            }, f)
    dist.barrier()


if __name__ == "__main__":
    main()
