"""Two-process gloo worker for ``test_gradclip_distributed.py`` (run with ``torchrun --nproc_per_node 2``).

Each rank writes ``OUT_DIR/rank{r}.json``. Three set-ups, each run for every clipper over a sequence
of steps with spikes and one non-finite step whose inf lives in **one rank's shard only**:

- ``sharded``: every rank holds a different (uneven, possibly empty) dim-0 shard of each gradient,
  as FSDP does; ``clip_(..., norm_reduce_fn=all_reduce_sum())`` sums the per-tensor squared norms
  over both ranks. Reference: one process clipping the full gradients, no reduction.
- ``dtensor``: the same as DTensor parameters/gradients on a 1-D CPU mesh, some ``Shard(0)`` and
  some ``Replicate()``, with ``dtensor_norm_reduce_fn`` (FSDP2 / TP semantics).
- ``data_parallel``: every rank computes different local gradients, then they are averaged with an
  all-reduce as DDP does; gradients are then identical, so ``clip_`` runs with no reduction.
  Reference: one process clipping the average of both ranks' gradients.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from adaclip_rl.gradclip import all_reduce_sum, build_grad_clipper, dtensor_norm_reduce_fn, norm_reduce_fn_for

SHAPES = [(7, 3), (4,), (1, 5), (3, 2, 2), (2,)]
NAMES = ["blocks.0.w", "blocks.0.b", "head.w", "conv.k", "scale"]
REPLICATED = {1, 4}  # DTensor set-up: these tensors are Replicate(), the others Shard(0)
STEPS = 24
NONFINITE_STEP = 13
CONFIGS = {
    "fixed": {"max_norm": 2.0},
    "zclip": {"warmup_steps": 5},
    "adagc": {"warmup_steps": 5, "warmup_max_norm": 3.0},
    "autoclip": {"percentile": 50.0, "window": 8},
    "quantile": {"target_quantile": 0.7, "learning_rate": 0.2},
}


def full_grads(step: int, source: int = 0) -> list[torch.Tensor]:
    """Deterministic full gradients (every rank can rebuild them)."""
    g = torch.Generator().manual_seed(1000 * source + step)
    grads = [torch.randn(s, generator=g) * 0.5 for s in SHAPES]
    if step % 5 == 4:
        grads[step % len(SHAPES)] *= 40.0  # spike in one tensor
    if step == NONFINITE_STEP and source == 0:
        grads[0][-1, -1] = float("inf")  # last row of tensor 0: only in rank 1's shard
    return grads


def shard(t: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    return torch.tensor_split(t, world, dim=0)[rank].clone()


def run_clipper(name, params_and_grads, reduce_fn_factory, read_grads):
    """Run ``STEPS`` steps; ``params_and_grads(step)`` sets the grads and returns named params."""
    clipper = build_grad_clipper(name, **CONFIGS[name])
    coefs, norms, grads_after = [], [], []
    for step in range(STEPS):
        named = params_and_grads(step)
        reduce_fn = reduce_fn_factory(named)
        norm = clipper.clip_(named, norm_reduce_fn=reduce_fn)
        coefs.append(clipper.last_coefficients.tolist())
        norms.append(float(norm))
        grads_after.append(read_grads(named))
    return {
        "coefs": coefs,
        "norms": norms,
        "grads": grads_after,
        "state": clipper.state_dict(),
        "metrics": clipper.metrics(),
    }


def grads_list(named):
    return [None if p.grad is None else p.grad.flatten().tolist() for _, p in named]


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    results: dict[str, dict] = {"sharded": {}, "dtensor": {}, "data_parallel": {}, "reference": {}}

    # ---- single-process references (computed identically on every rank)
    full_params = [nn.Parameter(torch.zeros(s)) for s in SHAPES]

    def full_setter(source_fn):
        def set_grads(step):
            for p, g in zip(full_params, source_fn(step), strict=True):
                p.grad = g.clone()
            return list(zip(NAMES, full_params, strict=True))

        return set_grads

    def dp_average(step):
        return [
            sum(parts) / world for parts in zip(*(full_grads(step, 1 + r) for r in range(world)), strict=True)
        ]

    for name in CONFIGS:
        results["reference"][name] = {
            "full": run_clipper(name, full_setter(full_grads), lambda named: None, grads_list),
            "dp": run_clipper(name, full_setter(dp_average), lambda named: None, grads_list),
        }

    # ---- sharded (FSDP-like): local shards, squared norms summed over ranks
    shard_params = [nn.Parameter(shard(torch.zeros(s), rank, world)) for s in SHAPES]

    def set_shards(step):
        for p, g in zip(shard_params, full_grads(step), strict=True):
            p.grad = shard(g, rank, world)
        return list(zip(NAMES, shard_params, strict=True))

    for name in CONFIGS:
        results["sharded"][name] = run_clipper(name, set_shards, lambda named: all_reduce_sum(), grads_list)

    # ---- DTensor (FSDP2 / TP semantics)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    placements = [[Replicate()] if i in REPLICATED else [Shard(0)] for i in range(len(SHAPES))]
    dt_params = [
        nn.Parameter(distribute_tensor(torch.zeros(s), mesh, pl))
        for s, pl in zip(SHAPES, placements, strict=True)
    ]

    def set_dtensor(step):
        for p, g, pl in zip(dt_params, full_grads(step), placements, strict=True):
            p.grad = distribute_tensor(g, mesh, pl)
        return list(zip(NAMES, dt_params, strict=True))

    def full_tensor_grads(named):
        return [None if p.grad is None else p.grad.full_tensor().flatten().tolist() for _, p in named]

    def dtensor_reduce(named):  # both entry points: the explicit one and the dispatcher
        fn = norm_reduce_fn_for(None, named) if len(results["dtensor"]) % 2 else dtensor_norm_reduce_fn(named)
        assert fn is not None
        return fn

    for name in CONFIGS:
        results["dtensor"][name] = run_clipper(name, set_dtensor, dtensor_reduce, full_tensor_grads)

    # plain (non-DTensor, non-FSDP) parameters need no reduction
    assert norm_reduce_fn_for(nn.Linear(2, 2), list(nn.Linear(2, 2).named_parameters())) is None

    # ---- data parallel: different local grads, averaged like DDP, no norm reduction
    dp_params = [nn.Parameter(torch.zeros(s)) for s in SHAPES]

    def set_dp(step):
        for p, g in zip(dp_params, full_grads(step, 1 + rank), strict=True):
            dist.all_reduce(g)
            p.grad = g / world
        return list(zip(NAMES, dp_params, strict=True))

    for name in CONFIGS:
        results["data_parallel"][name] = run_clipper(name, set_dp, lambda named: None, grads_list)

    results["rank"] = rank
    results["world"] = world
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
