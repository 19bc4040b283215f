"""Helpers shared by :mod:`.spam` and :mod:`.stable_spam`: the cosine schedules of the official code
in closed form, argument checks, local views of DTensor tensors and the reductions that turn
per-shard statistics into statistics of the full matrix."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch.distributed as dist
from torch import Tensor

from ..checks import FieldValueError, _got
from ..gradclip.distributed import _dtensor_cls, dtensor_norm_reduce_fn


def cosine_annealing(t: int, base: float, t_max: int, eta_min: float) -> float:
    """``torch.optim.lr_scheduler.CosineAnnealingLR`` stepped to epoch ``t`` (its closed form,
    which ``scheduler.step(t)`` uses), as the official ``CosineDecay.get_dr`` reads it: with
    ``T_max = t_max``, ``eta_min + (base - eta_min) * (1 + cos(pi * t / T_max)) / 2`` (same
    operation order, hence the same float)."""
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / t_max)) / 2


def check_betas(betas: Any) -> None:
    """``betas`` is a pair in ``[0, 1)`` (the official check)."""
    ok = isinstance(betas, Sequence) and len(betas) == 2
    if not ok or not all(isinstance(b, int | float) and 0.0 <= b < 1.0 for b in betas):
        raise FieldValueError(f"{{0}} must be a pair of numbers in [0, 1); got {_got(betas)}", "betas")


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (same storage: in-place ops on it update the DTensor), else ``t``."""
    return t.to_local() if hasattr(t, "to_local") else t


def group_by_step(indices: Sequence[int], steps: Sequence[int]) -> dict[int, list[int]]:
    """Indices bucketed by their step count, so that a bucket shares its bias corrections (one
    scalar per foreach call; in a training run every parameter has the same count: one bucket)."""
    buckets: dict[int, list[int]] = defaultdict(list)
    for i in indices:
        buckets[steps[i]].append(i)
    return buckets


def _shard_groups(grads: Sequence[Tensor]) -> list[Any]:
    """The process groups over which DTensor gradients are sharded (mesh dims with a ``Shard``)."""
    dtensor = _dtensor_cls()
    if dtensor is None:
        return []
    mesh, dims = None, set()
    for g in grads:
        if isinstance(g, dtensor):
            if mesh is None:
                mesh = g.device_mesh
            elif g.device_mesh != mesh:
                raise NotImplementedError("gradients on several device meshes are not supported")
            dims.update(d for d, pl in enumerate(g.placements) if pl.is_shard())
    return [mesh.get_group(d) for d in sorted(dims)] if mesh is not None else []


def reduce_maxes(maxes: Tensor, grads: Sequence[Tensor], process_group: Any = None) -> Tensor:
    """The vector of per-tensor local ``max |g|`` made the max over the full matrices: all-reduced
    (MAX) over ``process_group`` (FSDP1 ``use_orig_params=True``: each rank holds a slice) or over
    the mesh dims on which a DTensor gradient is ``Shard``-placed (a replicated tensor's max is the
    same on every rank, so MAX counts it right). In place; one collective per group."""
    for g in [process_group] if process_group is not None else _shard_groups(grads):
        dist.all_reduce(maxes, op=dist.ReduceOp.MAX, group=g)
    return maxes


def reduce_sq_norms(sq: Tensor, params: Sequence[Tensor], process_group: Any = None) -> Tensor:
    """The vector of per-tensor local squared norms made the squared norms of the full matrices,
    with the clippers' reduction (:func:`~adaclip_rl.gradclip.dtensor_norm_reduce_fn`: summed over
    shard groups, a replicated tensor counted once) or summed over ``process_group``."""
    if process_group is not None:
        dist.all_reduce(sq, op=dist.ReduceOp.SUM, group=process_group)
        return sq
    reduce = dtensor_norm_reduce_fn(list(params))
    return reduce(sq) if reduce is not None else sq


def is_sharded(params: Sequence[Tensor], process_group: Any) -> bool:
    """True when the statistics need a reduction across ranks."""
    return process_group is not None or bool(_shard_groups([p.grad for p in params]))


class KeepStateDtype:
    """``load_state_dict`` that keeps each state tensor's saved dtype. ``torch.optim.Optimizer`` casts
    every floating state tensor to its parameter's dtype, which would turn float32 moments of bf16
    parameters (``state_dtype=torch.float32``) into bf16 on resume."""

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict["state"]
        super().load_state_dict(state_dict)
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(ids, params, strict=True):
            for key, value in saved.get(pid, {}).items():
                loaded = self.state[p].get(key)
                if isinstance(value, Tensor) and isinstance(loaded, Tensor) and loaded.dtype != value.dtype:
                    self.state[p][key] = value.to(device=loaded.device, copy=True)


def params_with_grads(group: dict, optimizer_name: str) -> list:
    """The group's parameters that have a gradient this step; sparse gradients are refused."""
    params = [p for p in group["params"] if p.grad is not None]
    if any(p.grad.is_sparse for p in params):
        raise RuntimeError(f"{optimizer_name} does not support sparse gradients")
    return params
