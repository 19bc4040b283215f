"""Two-process gloo worker for ``test_optim_distributed.py`` (``torchrun --nproc_per_node 2``).

Each rank writes ``OUT_DIR/rank{r}.json`` with the final parameters (full tensors) of:

- ``reference``: one process, full parameters and gradients;
- ``dtensor``: DTensor parameters on a 1-D CPU mesh, some ``Shard(0)`` (one shard empty on rank 1)
  and some ``Replicate()`` (FSDP2 / TP);
- ``fsdp1``: plain tensors holding each rank's dim-0 slice, with ``process_group`` = WORLD
  (FSDP1 ``use_orig_params=True``); ``fsdp1_local``: the same without it (per-shard statistics).

Stable-SPAM's ``max|g|`` and ``||g||`` must be those of the full matrix, so all three agree.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from adaclip_rl.optim import SPAM, StableSPAM

SHAPES = [(7, 3), (4,), (1, 5), (3, 2, 2), (2,)]
REPLICATED = {1, 4}
STEPS = 40
STABLE_KW = dict(lr=1e-2, update_proj_gap=15, weight_decay=0.1, total_T=30)
SPAM_KW = dict(lr=1e-2, DeltaT=15, warmup_steps=4, threshold=20, grad_accu_steps=3)


def full_grads(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    grads = [torch.randn(s, generator=g) * 0.5 for s in SHAPES]
    if step % 7 == 3:
        grads[step % len(SHAPES)].view(-1)[-1] *= 500.0  # spike in the last row: rank 1's shard
    return grads


def initial() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    return [torch.randn(s, generator=g) for s in SHAPES]


def shard(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    return torch.tensor_split(t, world, dim=0)[rank].clone()


def run(cls, kw, params, set_grads, read) -> list[list[float]]:
    opt = cls(params, **kw)
    for step in range(STEPS):
        set_grads(step)
        opt.step()
    return read()


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    placements = [[Replicate()] if i in REPLICATED else [Shard(0)] for i in range(len(SHAPES))]
    results: dict[str, dict] = {}
    for name, cls, kw in (("stable_spam", StableSPAM, STABLE_KW), ("spam", SPAM, SPAM_KW)):
        full = [nn.Parameter(t) for t in initial()]

        def set_full(step, params=full):
            for p, g in zip(params, full_grads(step), strict=True):
                p.grad = g

        ref = run(cls, kw, full, set_full, lambda params=full: [p.detach().flatten().tolist() for p in params])

        dt = [nn.Parameter(distribute_tensor(t, mesh, pl)) for t, pl in zip(initial(), placements, strict=True)]

        def set_dt(step, params=dt):
            for p, g, pl in zip(params, full_grads(step), placements, strict=True):
                p.grad = distribute_tensor(g, mesh, pl)

        dtensor = run(cls, kw, dt, set_dt,
                      lambda params=dt: [p.detach().full_tensor().flatten().tolist() for p in params])

        sh = [nn.Parameter(shard(t, rank, world)) for t in initial()]

        def set_sh(step, params=sh):
            for p, g in zip(params, full_grads(step), strict=True):
                p.grad = shard(g, rank, world)

        def read_sh(params=sh):
            out = []
            for p in params:
                parts = [None] * world
                dist.all_gather_object(parts, p.detach().tolist())
                out.append(torch.cat([torch.tensor(x).reshape(-1, *p.shape[1:]) for x in parts]).flatten().tolist())
            return out

        extra = {"process_group": dist.group.WORLD} if cls is StableSPAM else {}
        fsdp1 = run(cls, {**kw, **extra}, sh, set_sh, read_sh)
        results[name] = {"reference": ref, "dtensor": dtensor, "fsdp1": fsdp1}
        if cls is StableSPAM:  # without the reduction: per-shard statistics (what must not happen)
            sh[:] = [nn.Parameter(shard(t, rank, world)) for t in initial()]
            results[name]["fsdp1_local"] = run(cls, kw, sh, set_sh, read_sh)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
