"""The gradient-clipper interface and the one code path that measures, reduces and applies a clip.

A clipper is three separate parts (the split of PyTorch's ``clip_grad_norm_`` into
``get_total_norm`` and ``clip_grads_with_norm_``, with the statistics kept apart):

1. **Norm computation** (:func:`grad_sq_norms`): one fp32 squared L2 norm per parameter tensor,
   computed on the *local* gradient (the local shard for FSDP / DTensor gradients).
2. **Reduction** (``norm_reduce_fn``, optional, supplied by the caller): the vector of squared norms
   ``(K,)`` is summed over the ranks that hold *different shards* of the same parameters. This is
   the only collective of a step (one all-reduce of ``K`` floats). Data-parallel (DDP) gradients are
   already identical after DDP's own all-reduce, so DDP passes no reduction.
3. **Statistics** (:class:`GradClipper` subclasses): pure Python / float64 CPU arithmetic on the
   reduced norms. Every rank holds the same reduced vector, so every rank computes bit-identical
   coefficients and keeps bit-identical state.
4. **Application**: ``grad.mul_(coef)`` on the local gradient tensors (foreach, in place).

Notation: ``n_t`` is the global L2 norm of all gradients at optimizer step ``t`` (after gradient
accumulation, before clipping); "clip to c" means multiplying every gradient by
``c / (n_t + eps)`` when ``n_t > c`` (``eps = 1e-6`` as in ``torch.nn.utils.clip_grad_norm_``).

Pitfalls of the public implementations that this module fixes (see the reference notes):

- **Non-finite norms poison the statistics** (ZClip has no guard: one inf makes mu=inf, var=NaN,
  and adaptive clipping is silently off for the rest of the run). Here non-finiteness is decided
  on the *reduced* norm (so every rank agrees), statistics are never updated with it, it is counted
  in :meth:`GradClipper.metrics`, and the step is handled by ``nonfinite``:

  * ``"skip"`` (default): set every ``p.grad`` to ``None``. ``torch.optim`` optimizers skip
    parameters without a gradient, so the optimizer step is a true no-op, also for Adam/AdamW
    (zeroed gradients would still move Adam's moments and apply weight decay).
  * ``"zero"``: ``grad.zero_()`` in place (keeps the tensors, e.g. for bucket views); a no-op step
    only for plain SGD. Note ``grad.mul_(0)`` would *not* clear NaN/inf (NaN * 0 = NaN).
  * ``"none"``: leave the gradients untouched; the caller must skip the step itself (e.g. an fp16
    ``GradScaler`` already does).

- **No checkpointable state** (ZClip, AdaGC official patch): every clipper has an exact
  ``state_dict`` / ``load_state_dict`` of plain Python values (JSON-serialisable), including step
  counters and warm-up progress, so a resume does not re-run the warm-up.
- **Norm reduced over the wrong group** (ZClip all-reduces over WORLD, inflating the norm by
  sqrt(replicas) under HSDP): the reduction is the caller's, over the *shard* group only; see
  :mod:`adaclip_rl.gradclip.distributed`.
- **Clip that does not clip** (pytorch_optimizer's ``grad[mask].mul_(...)`` acts on a copy made by
  boolean indexing): coefficients are applied with ``torch._foreach_mul_`` / ``Tensor.mul_`` on the
  gradient tensors themselves (or their DTensor local shards); tests check ``p.grad`` changes.
- **One host sync per parameter** (AutoClip's ``.item()`` per tensor): exactly one device-to-host
  copy per step (the reduced ``(K,)`` vector).
- **Statistics updated more than once per step** (ZClip issue #16): call :meth:`GradClipper.clip_`
  once per optimizer step with *all* parameters.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ._validate import NONFINITE_ACTIONS, check_choice, check_positive

NormReduceFn = Callable[[Tensor], Tensor | None]
"""Sums a ``(K,)`` fp32 tensor of squared norms across ranks; returns the result or reduces in place."""

ParamsLike = Tensor | Iterable[Tensor] | Iterable[tuple[str, Tensor]]

_WRAPPER_COMPONENTS = frozenset({"_fsdp_wrapped_module", "_orig_mod", "_checkpoint_wrapped_module"})


def normalize_param_name(name: str) -> str:
    """Fully-qualified parameter name without wrapper components.

    Strips ``_fsdp_wrapped_module``, ``_orig_mod`` (``torch.compile``) and
    ``_checkpoint_wrapped_module`` anywhere, and a leading ``module.`` (DDP), so per-tensor state
    saved under one wrapping loads under another.
    """
    parts = [p for p in name.split(".") if p not in _WRAPPER_COMPONENTS]
    if parts and parts[0] == "module":
        parts = parts[1:]
    return ".".join(parts)


def _local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (a view sharing storage), or ``t`` itself."""
    to_local = getattr(t, "to_local", None)
    if to_local is not None and type(t).__name__ == "DTensor":
        return t._local_tensor  # the storage itself: in-place ops on it change the DTensor
    return t


def as_param_list(parameters: ParamsLike) -> tuple[list[Tensor], list[str] | None]:
    """Accept a tensor, an iterable of tensors, or ``named_parameters()`` pairs.

    Returns ``(params, names)``; ``names`` (normalised with :func:`normalize_param_name`) is
    ``None`` unless names were given.
    """
    if isinstance(parameters, Tensor):
        return [parameters], None
    items = list(parameters)
    if items and isinstance(items[0], tuple):
        names = [normalize_param_name(n) for n, _ in items]
        return [p for _, p in items], names
    return items, None


@torch.no_grad()
def grad_sq_norms(params: Sequence[Tensor]) -> Tensor:
    """Squared L2 norm of each parameter's local gradient.

    Args:
        params: ``K`` parameters; a parameter without ``.grad`` contributes 0.
    Returns:
        ``(K,)`` float32 tensor on the device of the first parameter. Norms are accumulated in
        fp32 whatever the gradient dtype (``torch._foreach_norm(..., dtype=float32)``); DTensor
        gradients contribute their local shard only (sum over shards with ``norm_reduce_fn``).
    """
    if not params:
        return torch.zeros(0, dtype=torch.float32)
    device = _local(params[0]).device
    sq_norms = torch.zeros(len(params), dtype=torch.float32, device=device)
    groups: dict[torch.device, tuple[list[int], list[Tensor]]] = {}
    for i, p in enumerate(params):
        if p.grad is None:
            continue
        g = _local(p.grad)
        idx, grads = groups.setdefault(g.device, ([], []))
        idx.append(i)
        grads.append(g)
    for dev, (idx, grads) in groups.items():
        norms = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32))
        index = torch.tensor(idx, dtype=torch.long, device=dev)
        sq_norms.index_copy_(0, index.to(device), norms.square().to(device))
    return sq_norms


@torch.no_grad()
def apply_coefficients_(params: Sequence[Tensor], coef: Tensor) -> None:
    """Multiply gradients in place: ``p.grad *= coef`` (scalar) or ``p_i.grad *= coef[i]`` (per tensor).

    Entries equal to 1 are skipped. Uses ``foreach`` multiplies grouped by device and dtype on the
    gradient tensors themselves (DTensor: the local shard), never a boolean-indexed copy.
    """
    if coef.ndim == 0:
        c = float(coef)
        if c == 1.0:
            return
        groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for p in params:
            if p.grad is not None:
                g = _local(p.grad)
                groups.setdefault((g.device, g.dtype), []).append(g)
        for grads in groups.values():
            torch._foreach_mul_(grads, c)
        return
    if coef.numel() != len(params):
        raise ValueError(f"coef has {coef.numel()} entries for {len(params)} parameters")
    for p, c in zip(params, coef.tolist(), strict=True):
        if p.grad is not None and c != 1.0:
            _local(p.grad).mul_(c)


def _as_float(x: Tensor | float) -> float:
    return float(x.detach().to("cpu", torch.float64)) if isinstance(x, Tensor) else float(x)


def _as_vec(x: Tensor | Sequence[float] | None) -> Tensor | None:
    if x is None:
        return None
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).reshape(-1)
    return torch.tensor(list(x), dtype=torch.float64)


def check_finite_norm(clipper: object, total_norm: Tensor | float, per: Tensor | None = None) -> float:
    """Return ``total_norm`` as float; raise ``ValueError`` if it (or ``per``) is NaN/inf.

    ``update`` must only ever see finite norms; :meth:`GradClipper.step` guarantees it.
    """
    total = _as_float(total_norm)
    if not math.isfinite(total) or (per is not None and not bool(torch.isfinite(per).all())):
        raise ValueError(f"{type(clipper).__name__}.update: norms must be finite; got {total!r}")
    return total


def coefficient(threshold: float, norm: float, eps: float) -> float:
    """``threshold / (norm + eps)`` if ``norm > threshold`` else 1 (same formula as torch's clip)."""
    return threshold / (norm + eps) if norm > threshold else 1.0


class GradClipper(ABC):
    """Base class: decides clip coefficients from reduced gradient norms and keeps the statistics.

    Subclasses implement :meth:`compute_coefficients` (pure: no state change) and :meth:`update`
    (the state transition, finite norms only), plus their part of ``state_dict``/``metrics``.
    Everything else (non-finite handling, counters, the measure/reduce/apply path) lives here.

    Args:
        eps: added to the norm in the coefficient ``c / (n + eps)``; default 1e-6 as in torch.
        nonfinite: ``"skip"`` | ``"zero"`` | ``"none"``: what :meth:`clip_` does to the gradients
            when the reduced norm is NaN/inf (see the module docstring). Statistics are never
            updated with a non-finite norm.
    """

    name: ClassVar[str] = "base"
    per_tensor: ClassVar[bool] = False
    state_version: ClassVar[int] = 1

    def __init__(self, *, eps: float = 1e-6, nonfinite: str = "skip") -> None:
        owner = type(self).__name__
        check_positive(owner, "eps", eps)
        check_choice(owner, "nonfinite", nonfinite, NONFINITE_ACTIONS)
        self.eps = float(eps)
        self.nonfinite = nonfinite
        self.num_updates = 0  # finite steps seen (drives warm-up)
        self.num_nonfinite = 0
        self.num_clipped = 0  # steps where at least one coefficient < 1
        self._last: dict[str, float] = {}
        self.last_coefficients: Tensor | None = None
        self.last_nonfinite = False

    # ----------------------------------------------------------------- subclass API
    @abstractmethod
    def compute_coefficients(
        self, total_norm: Tensor | float, per_tensor_norms: Tensor | None = None
    ) -> Tensor:
        """Clip coefficient(s) in (0, 1] for this step's finite reduced norms; does not change state.

        Returns a float64 CPU tensor: shape ``()`` for global clippers, ``(K,)`` for per-tensor ones.
        """

    @abstractmethod
    def update(self, total_norm: Tensor | float, per_tensor_norms: Tensor | None = None) -> None:
        """Advance the statistics with this step's (finite) reduced norms. Call once per step."""

    def threshold(self, total_norm: Tensor | float | None = None) -> float:
        """The global threshold that applies to a norm ``total_norm`` this step (>= the norm: no clip).

        Global clippers only; ZClip's threshold depends on the current norm.
        """
        raise NotImplementedError(f"{type(self).__name__} has no global threshold")

    def lagged_threshold(self) -> float:
        """A threshold decided before the next norm is seen, for engines that clip internally.

        DeepSpeed clips inside ``engine.step()`` with ``optimizer.clip_grad``; set it to this value
        and call :meth:`step` with ``engine.get_global_grad_norm()`` afterwards. Exact for
        thresholds that depend only on past statistics (fixed, quantile); an approximation for
        AutoClip (current norm excluded) and ZClip (see there). inf = no clip.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot provide a lagged global threshold")

    def bind(self, names: Sequence[str]) -> None:  # noqa: B027 - optional hook
        """Tell a per-tensor clipper the (normalised) names of the ``K`` tensors; no-op for global ones."""

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        pass

    def _extra_metrics(self, total: float, per: Tensor | None, coef: Tensor) -> dict[str, float]:
        return {}

    # ------------------------------------------------------------------ main path
    def step(
        self, total_norm: Tensor | float, per_tensor_norms: Tensor | Sequence[float] | None = None
    ) -> Tensor:
        """Decide the coefficient(s) for this step and update the statistics (finite norms only).

        Args:
            total_norm: the reduced global L2 norm ``n_t`` (scalar tensor or float).
            per_tensor_norms: ``(K,)`` reduced per-tensor L2 norms; required by per-tensor clippers.
        Returns:
            float64 CPU tensor of coefficients: ``()`` or ``(K,)``. For a non-finite norm: 0 for
            ``nonfinite="skip"|"zero"``, 1 for ``"none"``; the statistics are unchanged and the
            step is counted in ``metrics()["nonfinite_steps"]``.
        """
        total = _as_float(total_norm)
        per = _as_vec(per_tensor_norms)
        if self.per_tensor and per is None:
            raise ValueError(f"{type(self).__name__} clips per tensor: per_tensor_norms is required")
        shape = (per.numel(),) if (self.per_tensor and per is not None) else ()
        finite = math.isfinite(total) and (per is None or bool(torch.isfinite(per).all()))
        if not finite:
            self.num_nonfinite += 1
            self.last_nonfinite = True
            fill = 1.0 if self.nonfinite == "none" else 0.0
            coef = torch.full(shape, fill, dtype=torch.float64)
            self.last_coefficients = coef
            self._last.update(
                warmup=float(self.in_warmup),
                nonfinite=1.0,
                clipped=0.0,
                coef=fill,
                post_clip_norm=math.nan if self.nonfinite == "none" else 0.0,
            )
            return coef
        coef = self.compute_coefficients(total, per)
        clipped = bool((coef < 1.0).any())
        if per is not None:
            post = math.sqrt(float(((per * coef) ** 2).sum())) if coef.ndim else total * float(coef)
        else:
            post = total * float(coef)
        metrics = {
            "warmup": float(self.in_warmup),  # this step, decided before the update
            "nonfinite": 0.0,
            "clipped": float(clipped),
            "coef": float(coef.min()) if coef.numel() else 1.0,
            "post_clip_norm": post,
        }
        metrics.update(self._extra_metrics(total, per, coef))
        self.update(total, per)
        self.num_clipped += int(clipped)
        self.last_nonfinite = False
        self.last_coefficients = coef
        self._last.update(metrics)
        return coef

    @torch.no_grad()
    def clip_(self, parameters: ParamsLike, *, norm_reduce_fn: NormReduceFn | None = None) -> Tensor:
        """Measure, reduce, decide, clip in place and update the state; once per optimizer step.

        Args:
            parameters: ``model.parameters()`` or (better for per-tensor clippers, whose state is
                keyed by name) ``model.named_parameters()``. Same order on every rank.
            norm_reduce_fn: sums the ``(K,)`` fp32 vector of local squared norms across the ranks
                that hold different shards of the same parameters (in place or returned), e.g.
                ``adaclip_rl.gradclip.all_reduce_sum(group)``. ``None`` for single-process and DDP
                (gradients already identical).
        Returns:
            The **pre-clip** global L2 norm (fp32 scalar tensor on the parameters' device),
            identical on all ranks; NaN/inf when the step was non-finite.
        """
        params, names = as_param_list(parameters)
        if names is not None:
            self.bind(names)
        sq = grad_sq_norms(params)
        if norm_reduce_fn is not None:
            reduced = norm_reduce_fn(sq)
            if reduced is not None:
                sq = reduced
        sq64 = sq.detach().to("cpu", torch.float64)  # the single host sync of the step
        total = math.sqrt(float(sq64.sum()))
        per = sq64.sqrt() if self.per_tensor else None
        coef = self.step(total, per)
        if self.last_nonfinite:
            if self.nonfinite == "skip":
                for p in params:
                    p.grad = None
            elif self.nonfinite == "zero":
                for p in params:
                    if p.grad is not None:
                        _local(p.grad).zero_()
        else:
            apply_coefficients_(params, coef)
        return torch.tensor(total, dtype=torch.float32, device=sq.device)

    # --------------------------------------------------------------- state / metrics
    def state_dict(self) -> dict[str, Any]:
        """Plain-Python (JSON-serialisable) state; ``load_state_dict`` restores it exactly."""
        return {
            "clipper": self.name,
            "version": self.state_version,
            "num_updates": self.num_updates,
            "num_nonfinite": self.num_nonfinite,
            "num_clipped": self.num_clipped,
            **self._state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("clipper") != self.name:
            raise ValueError(f"state_dict is for clipper {state.get('clipper')!r}, not {self.name!r}")
        if state.get("version") != self.state_version:
            raise ValueError(f"unsupported {self.name} state version {state.get('version')!r}")
        self.num_updates = int(state["num_updates"])
        self.num_nonfinite = int(state["num_nonfinite"])
        self.num_clipped = int(state["num_clipped"])
        self._load_state(state)

    @property
    def in_warmup(self) -> bool:
        """True while the clipper is still collecting warm-up statistics."""
        return False

    def metrics(self) -> dict[str, float]:
        """Values of the last step plus cumulative counters; keys without prefix (add ``gradclip/``).

        Common keys: ``coef`` (smallest coefficient), ``clipped`` (0/1), ``post_clip_norm``,
        ``nonfinite`` (0/1), ``warmup`` (0/1: the last step was a warm-up step), ``updates``,
        ``clipped_steps``, ``nonfinite_steps`` (cumulative counts). Per clipper: ``threshold``
        (global clippers), ``z``/``mu``/``sigma`` (ZClip), ``frac_tensors_clipped``/``max_ratio``
        (AdaGC). The trainer adds the ``gradclip/`` prefix.
        """
        metrics = {"warmup": float(self.in_warmup), **self._last}
        metrics.update(
            updates=float(self.num_updates),
            clipped_steps=float(self.num_clipped),
            nonfinite_steps=float(self.num_nonfinite),
        )
        return metrics

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config_repr()})"

    def config_repr(self) -> str:
        return f"eps={self.eps}, nonfinite={self.nonfinite!r}"


class GlobalNormClipper(GradClipper):
    """A clipper with one global threshold ``c_t``: coefficient ``c_t / (n_t + eps)`` if ``n_t > c_t``."""

    def compute_coefficients(
        self, total_norm: Tensor | float, per_tensor_norms: Tensor | None = None
    ) -> Tensor:
        n = _as_float(total_norm)
        return torch.tensor(coefficient(self.threshold(n), n, self.eps), dtype=torch.float64)

    def _extra_metrics(self, total: float, per: Tensor | None, coef: Tensor) -> dict[str, float]:
        return {"threshold": self.threshold(total)}
