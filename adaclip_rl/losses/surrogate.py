"""PPO/GRPO clipped surrogate with per-token bounds, dual-clip, and TRL's aggregation modes.

Notation (per response token, shapes ``(B, T)`` unless noted): ``ratio`` r = pi_theta / pi_old,
``advantages`` A (``(B, T)`` or ``(B, 1)``/``(B,)``, broadcast), ``mask`` 1 on loss tokens.

PPO (Schulman et al. 2017, Eq. 7) with explicit, possibly per-token ratio bounds
``c_low <= 1 <= c_high`` (clip-higher: DAPO, Yu et al. 2025, Eq. 10)::

    l_t = -min(r_t A_t, clip(r_t, c_low_t, c_high_t) A_t)

Dual-clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games", Eq. 5) caps the loss of
negative-advantage tokens at ``c * |A|``::

    l_t = min(l_t, -c A_t)      for A_t < 0

Clipped tokens get zero gradient: in the clipped branch the loss is a constant in theta.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from ..checks import check_bounds, check_dual_clip

AggregationMode = Literal["grpo", "bnpo", "dr_grpo", "dapo", "luspo"]
AGGREGATION_MODES: tuple[str, ...] = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")


def _as_2d(advantages: Tensor) -> Tensor:
    return advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages


class ClipMasks(NamedTuple):
    """Tokens whose gradient the clip removed, by advantage sign: boolean, at the broadcast shape of
    ratio and advantages (``(B, T)``, or ``(B, 1)`` when both are per sequence).

    ``high``: A > 0 and r > c_high; ``low``: A < 0 and r < c_low; ``dual``: A < 0 and r > c (the
    dual-clip cap; None without it)."""

    low: Tensor
    high: Tensor
    dual: Tensor | None


def clipped_surrogate(
    ratio: Tensor,
    advantages: Tensor,
    clip_low: Tensor | float,
    clip_high: Tensor | float,
    *,
    dual_clip: float | None = None,
    ratio_cap: float | None = None,
) -> Tensor:
    """Per-token PPO clipped surrogate loss (to be minimised).

    Args:
        ratio: importance ratio r, ``(B, T)`` (or ``(B, 1)`` for sequence-level ratios); carries
            the gradient.
        advantages: A, ``(B,)``, ``(B, 1)`` or ``(B, T)``.
        clip_low, clip_high: explicit ratio bounds ``c_low <= 1 <= c_high`` (not epsilons). Python
            floats, 0-d tensors, or tensors broadcastable to ``(B, T)`` (per-token bounds).
        dual_clip: dual-clip constant ``c > 1`` for ``A < 0``; None disables it.
        ratio_cap: INTELLECT-2 two-sided clip ``delta``: caps the *unclipped* ratio from above
            (TRL's ``GRPOConfig.delta``). None disables it.

    Returns:
        ``(B, T)`` per-token loss ``-min(r A, clip(r, c_low, c_high) A)`` (dual-clipped for A<0).
        Unmasked; aggregate with :func:`aggregate_loss`.

    Float bounds take TRL's autograd form exactly (parity); tensor bounds (BAPO, Archer) take
    :func:`signed_cap_surrogate`, same values and gradients with fewer passes and a cheaper backward.
    """
    return _surrogate(ratio, advantages, clip_low, clip_high, dual_clip, ratio_cap, with_masks=False)[0]


def clipped_surrogate_with_masks(
    ratio: Tensor,
    advantages: Tensor,
    clip_low: Tensor | float,
    clip_high: Tensor | float,
    *,
    dual_clip: float | None = None,
    ratio_cap: float | None = None,
) -> tuple[Tensor, ClipMasks]:
    """:func:`clipped_surrogate` (same values, same gradients) and its :class:`ClipMasks`, computed
    with the loss (torchtune's ``PPOLoss`` returns its clip mask the same way): the policy losses
    take their clip fractions from it (:func:`clip_fractions`). With ``ratio_cap`` the high mask is
    measured on the capped ratio, as TRL measures its ``clip_ratio/high_mean``."""
    loss, masks = _surrogate(ratio, advantages, clip_low, clip_high, dual_clip, ratio_cap, with_masks=True)
    return loss, masks


def _surrogate(ratio: Tensor, advantages: Tensor, clip_low: Tensor | float, clip_high: Tensor | float,
               dual_clip: float | None, ratio_cap: float | None, *, with_masks: bool
               ) -> tuple[Tensor, ClipMasks | None]:
    advantages = _as_2d(advantages)
    check_dual_clip("dual_clip", dual_clip)
    if isinstance(clip_low, int | float) and isinstance(clip_high, int | float):
        check_bounds("clip_low", clip_low, "clip_high", clip_high)
        clipped = torch.clamp(ratio, clip_low, clip_high)
    else:
        # tensor bounds keep their dtype when it is wider than the ratio's (BAPO's float32 bounds for a
        # bf16 ratio): the comparisons then happen in it, and the bounds are not rounded to bf16
        low, high = _as_bound(clip_low, ratio), _as_bound(clip_high, ratio)
        if ratio_cap is None and not advantages.requires_grad:
            cap = torch.where(advantages < 0, -low, high)  # the bound on each token's advantage side, signed
            loss, clipped_mask = signed_cap_surrogate(ratio, advantages, cap, dual_clip)
            if not with_masks:
                return loss, None
            is_pos, is_neg = advantages > 0, advantages < 0
            return loss, ClipMasks(clipped_mask & is_neg, clipped_mask & is_pos,
                                   _dual_mask(ratio.detach(), advantages, dual_clip))
        ratio = ratio.to(torch.promote_types(low.dtype, high.dtype))
        clipped = torch.minimum(torch.maximum(ratio, low), high)
    unclipped = ratio if ratio_cap is None else torch.clamp(ratio, max=ratio_cap)
    loss = -torch.min(unclipped * advantages, clipped * advantages)
    if dual_clip is not None:
        loss = torch.minimum(loss, _dual_cap(advantages, dual_clip))
    if not with_masks:
        return loss, None
    r = unclipped.detach()
    return loss, ClipMasks((r < clip_low) & (advantages < 0), (r > clip_high) & (advantages > 0),
                           _dual_mask(ratio.detach(), advantages, dual_clip))


def _as_bound(bound: Tensor | float, ratio: Tensor) -> Tensor:
    """A bound as a tensor on the ratio's device: a tensor keeps a dtype wider than the ratio's; a
    Python float is filled in on the device (no host-to-device copy, unlike ``torch.as_tensor``)."""
    if isinstance(bound, Tensor):
        return bound.to(device=ratio.device, dtype=torch.promote_types(ratio.dtype, bound.dtype))
    return torch.full((), bound, dtype=ratio.dtype, device=ratio.device)


def _dual_mask(ratio: Tensor, advantages: Tensor, dual_clip: float | None) -> Tensor | None:
    """A < 0 and r > c: the tokens the dual-clip cap holds (no gradient)."""
    return None if dual_clip is None else (ratio > dual_clip) & (advantages < 0)


def _dual_cap(advantages: Tensor, dual_clip: float) -> Tensor:
    """``-c A`` for ``A < 0``, ``+inf`` otherwise, at the advantages' shape (``(B, 1)`` for
    per-sequence advantages, so no full-size select)."""
    return torch.where(advantages < 0, -dual_clip * advantages, torch.full_like(advantages, torch.inf))


def signed_cap_surrogate(ratio: Tensor, advantages: Tensor, cap: Tensor, dual_clip: float | None = None
                         ) -> tuple[Tensor, Tensor]:
    """:func:`clipped_surrogate` with per-token bounds given as one *signed cap* per token, plus the
    boolean mask of ratio-clipped tokens ``(A > 0 and r > c_high) or (A < 0 and r < c_low)`` (the
    dual clip excluded), which callers use for clip-fraction metrics without recomputing it.

    With ``s = sign(A)`` the clipped surrogate is ``-|A| min(s r, cap)`` where ``cap = c_high`` for
    ``A > 0`` and ``cap = -c_low`` for ``A < 0`` (``-min(rA, clip(r) A)`` is ``-A min(r, c_high)``
    for ``A > 0`` and ``-A max(r, c_low)`` for ``A < 0``); a token is clipped where ``s r > cap``.
    Only the bound on the advantage's side is needed, so a loss whose bounds vary per token (Archer's
    entropy classes) builds one ``(B, T)`` tensor instead of two, and the surrogate takes about half
    the passes of the two-bound form. Tokens with ``A == 0`` have zero loss and gradient and are
    never clipped when ``cap > 0`` there.

    Args:
        ratio: ``(B, T)`` importance ratio (carries the gradient).
        advantages: ``(B,)``, ``(B, 1)`` or ``(B, T)``; must not require grad.
        cap: signed caps broadcastable to ``(B, T)``, in the dtype to compute in (at least the
            ratio's; a half-precision ratio is compared in the cap's float32).
        dual_clip: dual-clip constant ``c > 1`` for ``A < 0`` (Ye et al. 2020, Eq. 5); None disables it.

    Returns ``(loss, clipped)`` in the cap's dtype; the gradient reaches ``ratio`` in its dtype.
    """
    advantages = _as_2d(advantages)
    check_dual_clip("dual_clip", dual_clip)
    if torch.is_grad_enabled() and ratio.requires_grad:
        return _SignedCapSurrogate.apply(ratio, advantages, cap, dual_clip)
    value, _, clipped = _SignedCapSurrogate.value_coef_mask(ratio, advantages, cap, dual_clip)
    return value, clipped


class _SignedCapSurrogate(torch.autograd.Function):
    """:func:`signed_cap_surrogate`, its gradient taken as a gate.

    ``d l_t / d r_t = -A_t`` where the unclipped branch is active and ``0`` where the clip (or the
    dual-clip cap) is: the derivative autograd finds through ``min``/``max`` (bounds inclusive, as
    ``clamp``), except at exact ties with the dual-clip cap (measure zero; autograd would halve the
    gradient there). Computing the value without autograd and saving one coefficient replaces the
    backward of the ``minimum``/``maximum`` nodes (a select and a masked fill each) by one multiply."""

    @staticmethod
    def value_coef_mask(r: Tensor, a: Tensor, cap: Tensor, dual_clip: float | None) -> tuple[Tensor, Tensor, Tensor]:
        # m = min(s r, cap), and with the dual clip max(m, -c): for A < 0 the loss |A| max(r, c_low)
        # is capped at c |A| exactly where m < -c (r > c); for A >= 0, m >= 0 > -c. The loss is
        # -|A| m, and the token carries gradient iff m is s r itself (bounds inclusive, as clamp).
        dtype = torch.promote_types(r.dtype, cap.dtype)
        a = a.to(dtype)
        sr = r.to(dtype) * torch.sign(a)
        m = torch.minimum(sr, cap)
        if dual_clip is not None:
            m.clamp_(min=-dual_clip)
        gate = m == sr
        clipped = sr > cap
        return m.mul_(-a.abs()), gate * (-a), clipped

    @staticmethod
    def forward(ctx, ratio: Tensor, advantages: Tensor, cap: Tensor, dual_clip: float | None) -> tuple[Tensor, Tensor]:
        value, coef, clipped = _SignedCapSurrogate.value_coef_mask(ratio, advantages, cap, dual_clip)
        ctx.save_for_backward(coef)
        ctx.ratio_shape, ctx.ratio_dtype = ratio.shape, ratio.dtype
        ctx.mark_non_differentiable(clipped)
        return value, clipped

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_clipped: Tensor | None) -> tuple[Tensor | None, ...]:
        (coef,) = ctx.saved_tensors
        grad_ratio = grad * coef
        if grad_ratio.shape != ctx.ratio_shape:
            grad_ratio = grad_ratio.sum_to_size(ctx.ratio_shape)
        return grad_ratio.to(ctx.ratio_dtype), None, None, None


def clip_fractions(masks: ClipMasks, mask: Tensor, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Fractions of loss tokens whose gradient the clip removed, by advantage sign (0-d tensors),
    from the :class:`ClipMasks` the surrogate returned with the loss.

    ``high``: A>0 and r>c_high. ``low``: A<0 and r<c_low. ``dual``: A<0 and r>dual_clip.
    Fractions are over all loss tokens (``mask``), so they add up to the total clip fraction;
    computed in ``dtype`` (the ratio's).
    """
    m = mask.to(dtype)
    n = m.sum().clamp(min=1.0)
    fractions = {"high": (masks.high * m).sum() / n, "low": (masks.low * m).sum() / n}
    if masks.dual is not None:
        fractions["dual"] = (masks.dual * m).sum() / n
    return fractions


def aggregate_loss(
    per_token_loss: Tensor,
    mask: Tensor,
    mode: AggregationMode,
    *,
    max_completion_length: int | None = None,
    num_tokens: Tensor | float | None = None,
) -> Tensor:
    """Reduce a ``(B, T)`` per-token loss to a scalar exactly as TRL's ``loss_type`` does.

    * ``grpo``: mean over sequences of the per-sequence masked token mean (Shao et al. 2024, Eq. 21).
    * ``bnpo``: masked token mean over the (local) batch.
    * ``dr_grpo``: masked sum / (B * max_completion_length) (Liu et al. 2025, Dr. GRPO Eq. 3).
    * ``dapo``: masked sum / ``num_tokens`` (a global token count, DAPO Eq. 8); defaults to the
      local masked token count, in which case it equals ``bnpo``.
    * ``luspo``: mean over sequences of the masked per-sequence sum.

    Gradient-accumulation scaling is the caller's job (TRL divides grpo/bnpo/dr_grpo by the
    accumulation steps and folds it into the dapo normaliser).
    """
    m = mask.to(per_token_loss.dtype)
    masked = per_token_loss * m
    if mode == "grpo":
        return (masked.sum(-1) / m.sum(-1).clamp(min=1.0)).mean()
    if mode == "bnpo":
        return masked.sum() / m.sum().clamp(min=1.0)
    if mode == "dr_grpo":
        if max_completion_length is None or max_completion_length <= 0:
            raise ValueError(f"max_completion_length must be > 0 for dr_grpo; got {max_completion_length!r}")
        return masked.sum() / (per_token_loss.size(0) * max_completion_length)
    if mode == "dapo":
        return masked.sum() / _token_count(m, num_tokens)
    if mode == "luspo":
        return masked.sum(-1).mean()
    raise ValueError(f"mode must be one of {AGGREGATION_MODES}; got {mode!r}")


def _token_count(m: Tensor, num_tokens: Tensor | float | None) -> Tensor | float:
    """dapo's normaliser, at least 1: the local masked token count, or ``num_tokens`` (a tensor stays
    on its device; a Python number stays a Python number: no host-to-device copy)."""
    if num_tokens is None:
        return m.sum().clamp(min=1.0)
    if isinstance(num_tokens, Tensor):
        return num_tokens.to(device=m.device, dtype=m.dtype).clamp(min=1.0)
    return max(num_tokens, 1.0)


def aggregation_weights(
    mask: Tensor,
    mode: AggregationMode,
    *,
    max_completion_length: int | None = None,
    num_tokens: Tensor | float | None = None,
) -> Tensor:
    """The weight :func:`aggregate_loss` gives each token: ``(B, T)`` ``w`` with
    ``aggregate_loss(l, mask, mode) == (l * w).sum()`` for any ``(B, T)`` (or ``(B, 1)``) loss.

    * ``grpo``: ``mask / (B |o_i|)`` (Shao et al. 2024, Eq. 21)
    * ``bnpo``: ``mask / sum(mask)``
    * ``dr_grpo``: ``mask / (B * max_completion_length)`` (Liu et al. 2025, Eq. 3)
    * ``dapo``: ``mask / num_tokens`` (Yu et al. 2025, Eq. 8)
    * ``luspo``: ``mask / B``

    BAPO weighs each token of its statistic by this (times importance weights and masks), so
    the positive share it targets is the share of the gradient the aggregated loss really has.
    """
    m = mask.to(torch.float64 if mask.dtype == torch.float64 else torch.float32)
    b = max(m.size(0), 1)
    if mode == "grpo":
        return m / (m.sum(-1, keepdim=True).clamp(min=1.0) * b)
    if mode == "bnpo":
        return m / m.sum().clamp(min=1.0)
    if mode == "dr_grpo":
        if max_completion_length is None or max_completion_length <= 0:
            raise ValueError(f"max_completion_length must be > 0 for dr_grpo; got {max_completion_length!r}")
        return m / (b * max_completion_length)
    if mode == "dapo":
        return m / _token_count(m, num_tokens)
    if mode == "luspo":
        return m / b
    raise ValueError(f"mode must be one of {AGGREGATION_MODES}; got {mode!r}")
