"""Archer: dual-token constraints for RLVR (Wang et al., arXiv 2507.15778).

Tokens of each response are split by that response's own entropy quantile (paper Sec. 4.1.1):
``tau_i = Quantile_rho({H_it : t valid})`` with rho = 0.8. A token is *high-entropy*
("reasoning") when ``H_it > tau_i`` (ties go to the low class, as in the official code), else
*low-entropy* ("knowledge"); padding belongs to neither class. A response with a single valid
token has ``tau_i = H_i0``, so that token is low-entropy.

Per-token constants (paper Eq. 5): clip width ``eps_t = eps_r`` (0.5) on high tokens and ``eps_k``
(0.2) on low tokens, i.e. ratio bounds ``[1 - eps_t, 1 + eps_t]``; KL weight ``beta_r`` (0) on
high tokens and ``beta_k`` (0.001) on low tokens. As in the official code the KL is a k3 estimate
to the frozen initial model (verl ``low_var_kl``: log-ratio clamped to [-20, 20], value to
[-10, 10]), averaged **per class** over the class's tokens. Eq. 5 averages per response
(``1/G sum_i 1/|o_i| sum_t``) and the official code runs micro-batches of one response, so by
default (``kl_aggregation="response"``) the KL term is, per response ``i``,
``beta_k * mean_{low_i}(KL) + beta_r * mean_{high_i}(KL)``, averaged over the responses; long
answers do not dominate. ``kl_aggregation="token"`` takes the class means over all tokens of the
micro-batch instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..checks import check_choice, check_dual_clip, check_non_negative, check_open_unit
from .kl import KL_ESTIMATORS, KLEstimator, kl_value_and_grad, work_dtype
from .surrogate import _as_2d, signed_cap_surrogate

_LOG_RATIO_CLAMP = 20.0  # verl low_var_kl: log-ratio clamped to [-20, 20] ...
_KL_VALUE_CLAMP = 10.0  # ... and the k3 value to [-10, 10] (the official Archer run's kl_loss_type)


@dataclass(frozen=True)
class ArcherConfig:
    """Archer settings; defaults are the paper's and the official script's.

    Args:
        quantile: per-response entropy quantile rho in (0, 1) splitting the classes (0.8).
        high_clip: eps_r, clip width of high-entropy tokens (0.5), in (0, 1).
        low_clip: eps_k, clip width of low-entropy tokens (0.2), in (0, 1).
        high_kl: beta_r, KL weight of high-entropy tokens (0.0), >= 0.
        low_kl: beta_k, KL weight of low-entropy tokens (0.001), >= 0.
        kl_estimator: "k1", "k2" or "k3" (code: k3 = verl low_var_kl).
        dual_clip: dual-clip constant for A<0 (official script: 10.0); None disables it.
        kl_aggregation: "response" (per-response class means, averaged over responses: Eq. 5
            and the official one-response micro-batches) or "token" (class means over all
            tokens of the micro-batch).
        entropy_source: "current" (entropies of the policy being updated: official code) or
            "old" (of the policy that generated the batch: paper Algorithm 1). The trainer reads it.
    """

    quantile: float = field(
        default=0.8, metadata={"help": "Archer per-response entropy quantile rho in (0, 1) (paper 0.8)."}
    )
    high_clip: float = field(
        default=0.5, metadata={"help": "Archer clip width eps_r of high-entropy tokens, in (0, 1) (paper 0.5)."}
    )
    low_clip: float = field(
        default=0.2, metadata={"help": "Archer clip width eps_k of low-entropy tokens, in (0, 1) (paper 0.2)."}
    )
    high_kl: float = field(
        default=0.0, metadata={"help": "Archer KL weight beta_r of high-entropy tokens, >= 0 (paper 0.0)."}
    )
    low_kl: float = field(
        default=0.001, metadata={"help": "Archer KL weight beta_k of low-entropy tokens, >= 0 (paper 0.001)."}
    )
    kl_estimator: KLEstimator = field(
        default="k3", metadata={"help": "Archer KL estimator: 'k1', 'k2' or 'k3' (official code: k3)."}
    )
    dual_clip: float | None = field(
        default=10.0, metadata={"help": "Dual-clip constant for A<0 under Archer (official script 10.0)."}
    )
    kl_aggregation: str = field(
        default="response",
        metadata={"help": "Archer KL averaging: 'response' (per-response class means, then the mean over responses: "
                  "paper Eq. 5 and the official one-response micro-batches) or 'token' (class means over all tokens "
                  "of the micro-batch; long answers weigh more)."},
    )
    entropy_source: str = field(
        default="current",
        metadata={"help": "Entropies that classify tokens: 'current' (policy being updated, official code) or "
                  "'old' (policy at generation time, paper Algorithm 1; costs one extra forward per batch)."},
    )

    def __post_init__(self) -> None:
        check_open_unit("quantile", self.quantile)
        check_open_unit("high_clip", self.high_clip)
        check_open_unit("low_clip", self.low_clip)
        check_non_negative("high_kl", self.high_kl)
        check_non_negative("low_kl", self.low_kl)
        check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        check_dual_clip("dual_clip", self.dual_clip)
        check_choice("kl_aggregation", self.kl_aggregation, ("response", "token"))
        check_choice("entropy_source", self.entropy_source, ("current", "old"))

    @property
    def uses_kl(self) -> bool:
        return self.low_kl > 0 or self.high_kl > 0


_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _order_keys(x: Tensor) -> Tensor:
    """int32 keys of float32 values with the same order (IEEE-754 sign-magnitude to two's
    complement: negative values get their 31 magnitude bits flipped). An involution on the bits."""
    bits = x.view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _order_values(keys: Tensor) -> Tensor:
    """The float32 values of :func:`_order_keys` keys."""
    return (keys ^ ((keys >> 31) & 0x7FFFFFFF)).view(torch.float32)


def entropy_thresholds(entropy: Tensor, mask: Tensor, quantile: float = 0.8) -> Tensor:
    """Per-response entropy quantile ``tau_i`` over valid tokens, ``(B,)``; NaN for empty rows.

    Equals ``torch.nanquantile`` with padding set to NaN (linear interpolation between the order
    statistics at rank ``q (n_i - 1)`` and the next), without sorting rows and without host sync:

    1. one unsorted ``topk`` of width ``k ~ (1 - q) T`` keeps every order statistic needed;
    2. the wanted one sits at a different rank in each row; appending ``c_i`` minimal values
       (and ``k - c_i`` maximal values) to row ``i`` moves it to the same rank ``k - 1`` in
       every row, so one ``kthvalue`` finds all of them;
    3. the next order statistic is that value again if it is tied, else the smallest kept value
       above it.

    The selection runs on order-preserving int32 keys of the float32 entropies (integer ``topk``
    and ``kthvalue`` are about 1.5x faster on CPU than the float ones; the result is the same
    element), padding being the smallest key.
    """
    check_open_unit("quantile", quantile)
    return _entropy_thresholds(entropy.detach().float().contiguous(), mask, _valid(mask), quantile)


def _valid(mask: Tensor) -> Tensor:
    """Boolean view of a 0/1 mask of any dtype (no copy when already boolean)."""
    return mask if mask.dtype == torch.bool else mask != 0


def _entropy_thresholds(h: Tensor, mask: Tensor, valid: Tensor, quantile: float) -> Tensor:
    """:func:`entropy_thresholds` on float32 entropies ``h`` with ``valid = mask != 0`` given."""
    t = h.size(-1)
    if t == 0:
        return h.new_full(h.shape[:-1], float("nan"))
    # valid-token counts; a float 0/1 mask sums without the int64 copy a boolean sum makes
    n = mask.sum(-1, dtype=h.dtype) if mask.is_floating_point() else valid.sum(-1).to(h.dtype)
    rank = quantile * (n - 1)  # ascending rank of tau among the n valid values
    lo = rank.floor()
    frac = rank - lo
    k = min(t, math.ceil((1.0 - quantile) * (t - 1)) + 2)  # enough of the largest values
    keys = _order_keys(h).masked_fill_(~valid, _INT32_MIN)
    top = torch.topk(keys, k, dim=-1, sorted=False).values
    # ascending rank of the lo-th valid value among `top` (padding there is minimal): k - n + lo
    d_lo = (n - 1 - lo).long().clamp(0, k - 1)  # its descending rank = how many minimal keys to add
    shift = torch.arange(k, device=h.device) < d_lo.unsqueeze(-1)
    filler = torch.full_like(top, _INT32_MAX).masked_fill_(shift, _INT32_MIN)
    v_lo = torch.kthvalue(torch.cat([top, filler], -1), k, dim=-1).values
    at_or_below = top <= v_lo.unsqueeze(-1)
    tied = at_or_below.sum(-1) > (k - d_lo)  # the next order statistic equals v_lo
    above = top.masked_fill(at_or_below, _INT32_MAX).amin(-1)
    v_hi = torch.where(tied | (frac == 0), v_lo, above)
    tau = torch.lerp(_order_values(v_lo), _order_values(v_hi), frac)
    return torch.where(n > 0, tau, torch.full_like(tau, float("nan")))


def archer_token_classes(
    entropy: Tensor, mask: Tensor, quantile: float = 0.8
) -> tuple[Tensor, Tensor, Tensor]:
    """Split valid tokens into high/low entropy classes per response.

    Args:
        entropy: per-token entropy ``(B, T)`` (any float dtype; detached here).
        mask: ``(B, T)`` valid-token mask.
        quantile: rho in (0, 1).

    Returns:
        ``(high, low, tau)``: boolean ``(B, T)`` masks (disjoint, union = mask) and ``(B,)``
        thresholds. The high class holds about ``(1 - rho)`` of each response's valid tokens.
    """
    check_open_unit("quantile", quantile)
    h, valid = entropy.detach().float().contiguous(), _valid(mask)
    tau = _entropy_thresholds(h, mask, valid, quantile)
    above = h > tau.unsqueeze(-1)  # NaN threshold -> False
    high = above & valid
    low = valid & ~above
    return high, low, tau


@dataclass
class ArcherResult:
    """Archer side outputs (tensors on the input's device). ``kl_term`` is the scalar to add to
    the aggregated policy loss; ``high``/``low`` are the class masks."""

    kl_term: Tensor
    kl_low: Tensor
    kl_high: Tensor
    high: Tensor
    low: Tensor
    high_frac: Tensor
    clipfrac_high: Tensor
    clipfrac_low: Tensor
    clipfrac_pos: Tensor
    clipfrac_neg: Tensor
    tau_mean: Tensor


class _ScalarWithGrad(torch.autograd.Function):
    """A scalar whose value and gradient w.r.t. ``x`` were computed without autograd."""

    @staticmethod
    def forward(ctx, x: Tensor, value: Tensor, grad_x: Tensor) -> Tensor:
        ctx.save_for_backward(grad_x)
        ctx.x_dtype = x.dtype
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        (grad_x,) = ctx.saved_tensors
        return (grad * grad_x).to(ctx.x_dtype), None, None


def _dot(x: Tensor, y: Tensor) -> Tensor:
    """``(x * y).sum()`` without the full-size product."""
    return torch.dot(x.reshape(-1), y.reshape(-1).to(x.dtype))


def _signed_caps(a: Tensor, high_f: Tensor, config: ArcherConfig) -> Tensor:
    """Per-token signed caps of :func:`~adaclip_rl.losses.surrogate.signed_cap_surrogate`: ``1 + eps_t``
    where ``A >= 0``, ``-(1 - eps_t)`` where ``A < 0``, with ``eps_t`` the token's class width (paper
    Eq. 5). The four constants are Python floats (no host-to-device copy); the class is chosen by an
    exact ``lerp`` between per-row constants (weights 0 and 1 only)."""
    neg = a < 0
    low = torch.full(a.shape, 1.0 + config.low_clip, dtype=high_f.dtype, device=a.device)
    high = torch.full(a.shape, 1.0 + config.high_clip, dtype=high_f.dtype, device=a.device)
    low.masked_fill_(neg, -(1.0 - config.low_clip))
    high.masked_fill_(neg, -(1.0 - config.high_clip))
    return torch.lerp(low, high, high_f)


def _mean_of_finite(tau: Tensor) -> Tensor:
    """Mean of the per-response thresholds of non-empty responses; 0 when there are none (an
    empty micro-batch must not log NaN: it would poison the cross-rank metric sum)."""
    finite = ~torch.isnan(tau)
    return torch.where(finite, tau, 0.0).sum() / finite.sum().clamp(min=1)


def archer_loss(
    ratio: Tensor,
    advantages: Tensor,
    mask: Tensor,
    entropy: Tensor,
    config: ArcherConfig | None = None,
    *,
    logp: Tensor | None = None,
    ref_logp: Tensor | None = None,
) -> tuple[Tensor, ArcherResult]:
    """Per-token Archer policy loss and the per-class KL term (paper Eq. 5).

    Args:
        ratio: importance ratio ``(B, T)`` (carries the gradient).
        advantages: ``(B,)``, ``(B, 1)`` or ``(B, T)``.
        mask: ``(B, T)`` 0/1 loss mask (bool, integer or float).
        entropy: ``(B, T)`` token entropies used for the classes (current policy by default in
            the trainer, or the old policy's: paper Algorithm 1). Detached here.
        logp, ref_logp: current and reference log-probs ``(B, T)``; required when the config
            has a non-zero KL weight.

    Returns:
        ``((B, T) policy loss, ArcherResult)``. Aggregate the policy loss with
        :func:`~adaclip_rl.losses.surrogate.aggregate_loss`, then add ``result.kl_term``.
    """
    config = config or ArcherConfig()
    high, low, tau = archer_token_classes(entropy, mask, config.quantile)
    # class counts, bounds and the KL in at least float32 (a bf16 sum rounds counts above 256)
    dtype = work_dtype(ratio, *(t for t in (logp, ref_logp) if t is not None))
    high_f = high.to(dtype)
    a = _as_2d(advantages.detach())
    loss, clipped = signed_cap_surrogate(ratio, a, _signed_caps(a, high_f, config), config.dual_clip)
    with torch.no_grad():
        mask_f = mask.to(dtype)  # 0/1 loss mask (no copy when already in this dtype)
        rows_high = high_f.sum(-1)  # (B,) class sizes, as float sums (a boolean sum copies to int64)
        rows_low = mask_f.sum(-1) - rows_high
        n_high, n_low = rows_high.sum(), rows_low.sum()
        inv_high, inv_low = 1.0 / n_high.clamp(min=1.0), 1.0 / n_low.clamp(min=1.0)
        zero = high_f.new_zeros(())
        clipfrac_high = (clipped & high).count_nonzero() * inv_high
        clipfrac_low = (clipped & low).count_nonzero() * inv_low
        # by advantage sign over all loss tokens (a clipped token has A != 0): A>0 above 1+eps_t, A<0 below 1-eps_t
        clipped_valid = clipped & (high | low)
        n_clipped = clipped_valid.count_nonzero()
        n_clipped_pos = (clipped_valid & (a > 0)).count_nonzero()
        inv_all = 1.0 / (n_high + n_low).clamp(min=1.0)
        if config.uses_kl:
            if logp is None or ref_logp is None:
                raise ValueError("logp and ref_logp are required when low_kl or high_kl > 0")
            # value and gradient computed together; verl low_var_kl clamps for k3
            kl, dkl = kl_value_and_grad(logp.detach(), ref_logp.detach(), config.kl_estimator,
                                        log_ratio_clamp=_LOG_RATIO_CLAMP,
                                        value_clamp=_KL_VALUE_CLAMP if config.kl_estimator == "k3" else None)
            # per-token class weights: response mode 1/(B n_class_i) (per-response class mean, then
            # the mean over responses), token mode 1/n_class (class mean over the micro-batch)
            if config.kl_aggregation == "response":
                b = max(ratio.size(0), 1)
                s_low, s_high = 1.0 / (rows_low.clamp(min=1.0) * b), 1.0 / (rows_high.clamp(min=1.0) * b)
            else:
                s_low, s_high = inv_low.expand(rows_low.shape), inv_high.expand(rows_high.shape)
            # per-response class sums of the KL as row dots (vecdot: ~10x faster than bmm on CPU here)
            kl_rows_high = torch.linalg.vecdot(kl, high_f)
            kl_rows_low = torch.linalg.vecdot(kl, mask_f) - kl_rows_high
            kl_low, kl_high = _dot(kl_rows_low, s_low), _dot(kl_rows_high, s_high)
            kl_value = config.low_kl * kl_low + config.high_kl * kl_high
            # d kl_value / d logp = dkl * w: w = beta_k s_low_i on low tokens, beta_r s_high_i on high ones
            w_low, w_high = (s_low * config.low_kl).unsqueeze(-1), (s_high * config.high_kl).unsqueeze(-1)
            dkl.mul_(mask_f).mul_(torch.lerp(w_low.expand_as(dkl), w_high.expand_as(dkl), high_f))
        else:
            kl_low = kl_high = zero
        result = ArcherResult(
            kl_term=zero,
            kl_low=kl_low,
            kl_high=kl_high,
            high=high,
            low=low,
            high_frac=n_high / (n_high + n_low).clamp(min=1),
            clipfrac_high=clipfrac_high,
            clipfrac_low=clipfrac_low,
            tau_mean=_mean_of_finite(tau),
            clipfrac_pos=n_clipped_pos * inv_all,
            clipfrac_neg=(n_clipped - n_clipped_pos) * inv_all,
        )
    if config.uses_kl:
        if torch.is_grad_enabled() and logp.requires_grad:
            result.kl_term = _ScalarWithGrad.apply(logp, kl_value, dkl)
        else:
            result.kl_term = kl_value
    return loss, result
