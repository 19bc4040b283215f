"""Reductions of the per-tensor squared norms across ranks (the ``norm_reduce_fn`` of ``clip_``).

Semantics: :func:`~adaclip_rl.gradclip.base.grad_sq_norms` measures each rank's *local* gradient
tensors. The clipping statistic must be the norm of the *full* gradient, so the vector of squared
norms is summed over the ranks that hold **different pieces** (shards) of the same parameters, and
never over ranks that hold **copies**:

- single process, DDP (gradients identical after DDP's all-reduce), DeepSpeed ZeRO-0: no reduction.
- FSDP1 ``FULL_SHARD``/``SHARD_GRAD_OP``: ``all_reduce_sum(root.process_group)``; with
  ``use_orig_params=True`` each original parameter's local gradient is its slice of the flat shard
  (possibly empty), so the reduced vector holds exact full-tensor norms (AdaGC works); with flat
  parameters only global clippers make sense.
- FSDP1 ``HYBRID_SHARD`` (HSDP): reduce over the *intra-node shard* group (``root.process_group``),
  **not** WORLD: ZClip's WORLD all-reduce inflates the norm by sqrt(number of replicas).
- FSDP2 / DTensor (incl. HSDP meshes and TP): :func:`dtensor_norm_reduce_fn` reads the placements.
- DeepSpeed ZeRO-2/3: ``p.grad`` does not hold the gradient; use the engine's norm and
  :meth:`GradClipper.lagged_threshold` instead (see the package docstring).

Every rank receives the same reduced vector (all-reduce), so every rank decides the same
coefficients; non-finite norms are detected *after* the reduction, so all ranks skip together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import Tensor

from .base import NormReduceFn, ParamsLike, as_param_list


def all_reduce_sum(group: object | None = None) -> NormReduceFn:
    """``norm_reduce_fn`` that sums the squared-norm vector over ``group`` (default: WORLD), in place.

    Pass the group across which parameters are *sharded* (see the module docstring).
    """

    def reduce(sq: Tensor) -> Tensor:
        dist.all_reduce(sq, op=dist.ReduceOp.SUM, group=group)
        return sq

    return reduce


def _dtensor_cls() -> type | None:
    if not dist.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - very old torch
        return None
    return DTensor


def dtensor_norm_reduce_fn(parameters: ParamsLike | Iterable[Tensor]) -> NormReduceFn | None:
    """Build the reduction for DTensor (FSDP2 / TP) parameters, or ``None`` if none is a DTensor.

    For a device mesh with dims ``d``: the vector is all-reduced over every mesh dim on which at
    least one gradient is ``Shard``-placed (one collective per such dim; FSDP2 and HSDP: one).
    A tensor that is *replicated* on a reduced dim (e.g. a norm weight under TP, or a plain
    tensor) has its squared norm divided by that dim's size first, so the sum over the group counts
    it exactly once. ``Partial`` gradients (unreduced) raise ``ValueError``; gradients on several
    meshes raise ``NotImplementedError``.

    Build it from the same ``parameters`` (same order) that are passed to ``clip_``.
    """
    dtensor = _dtensor_cls()
    params, _ = as_param_list(parameters)
    if dtensor is None:
        return None
    specs = []
    mesh = None
    for p in params:
        t = p.grad if p.grad is not None else p
        if isinstance(t, dtensor):
            if mesh is None:
                mesh = t.device_mesh
            elif t.device_mesh != mesh:
                raise NotImplementedError("gradients on several device meshes are not supported")
            if any(pl.is_partial() for pl in t.placements):
                raise ValueError("a gradient has a Partial placement (not yet reduced); cannot take its norm")
            specs.append(tuple(pl.is_shard() for pl in t.placements))
        else:
            specs.append(None)  # plain tensor: a full copy on every rank
    if mesh is None:
        return None
    ndim = mesh.ndim
    reduce_dims = [d for d in range(ndim) if any(s is not None and s[d] for s in specs)]
    if not reduce_dims:
        return None
    divisors = []
    for s in specs:
        div = 1
        for d in reduce_dims:
            if s is None or not s[d]:
                div *= mesh.size(d)
        divisors.append(float(div))
    groups = [mesh.get_group(d) for d in reduce_dims]
    need_div = any(d != 1.0 for d in divisors)
    return _make_reduce(groups, divisors if need_div else None)


def norm_reduce_fn_for(model: object | None, parameters: ParamsLike) -> NormReduceFn | None:
    """Pick the reduction for ``model`` (the wrapped training model) and the ``parameters`` to clip.

    - any DTensor parameter/gradient (FSDP2, TP, HSDP meshes): :func:`dtensor_norm_reduce_fn`;
    - ``model`` is an FSDP1 ``FullyShardedDataParallel`` root: :func:`all_reduce_sum` over
      ``model.process_group`` (the shard group; under ``HYBRID_SHARD`` the intra-node group, so
      replicas are not summed). Per-tensor clippers need ``use_orig_params=True``.
    - otherwise (single process, DDP, DeepSpeed ZeRO-0): ``None``.

    ``parameters`` must be materialised (a list) when it is also passed to ``clip_``.
    """
    fn = dtensor_norm_reduce_fn(parameters)
    if fn is not None:
        return fn
    if model is not None and dist.is_available():
        try:
            from torch.distributed.fsdp import FullyShardedDataParallel
        except ImportError:  # pragma: no cover
            return None
        if isinstance(model, FullyShardedDataParallel):
            return all_reduce_sum(model.process_group)
    return None


def _make_reduce(groups: list, divisors: list[float] | None) -> Callable[[Tensor], Tensor]:
    cache: dict[torch.device, Tensor] = {}

    def reduce(sq: Tensor) -> Tensor:
        if divisors is not None:
            if len(divisors) != sq.numel():
                raise ValueError(f"reduce fn built for {len(divisors)} tensors, got {sq.numel()}")
            div = cache.get(sq.device)
            if div is None:
                div = cache[sq.device] = torch.tensor(divisors, dtype=sq.dtype, device=sq.device)
            sq = sq / div
        for g in groups:
            dist.all_reduce(sq, op=dist.ReduceOp.SUM, group=g)
        return sq

    return reduce


__all__ = ["all_reduce_sum", "dtensor_norm_reduce_fn", "norm_reduce_fn_for"]
