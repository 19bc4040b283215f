"""BAPO's premise, measured per loss call from tensors the loss already has (no extra forward).

BAPO (Xi et al., arXiv 2510.18927) rests on two claims about off-policy RL with clipping:

1. **Negative-advantage tokens dominate the gradient** (Sec. 3.2): the positive share
   ``rho = P / (P + N)`` (paper Eq. 8 read as a magnitude share of the gradient, as
   :mod:`adaclip_rl.losses.bapo` reads it) is small, so BAPO moves its bounds until ``rho >= rho0``.
   :func:`positive_share` gives ``rho`` at any fixed bounds, e.g. BAPO's start bounds [0.6, 1.2]
   (``rho >= 0.4`` there means BAPO keeps its start bounds: its target is already met) or GRPO's
   [0.8, 1.2]::

       P(c_high) = sum_{A>0, r <= c_high} w |A| r
       N(c_low)  = sum_{A<0, c_low <= r <= dual_clip} w |A| r

2. **Fixed clipping blocks entropy-increasing updates** (the Entropy-Clip Rule, Sec. 3.3): to first
   order in the step size eta, a policy-gradient step changes the entropy by
   ``dH ~ -eta Cov_y(log pi(y), A(y) X(y))`` with ``X`` the indicator of the tokens whose gradient
   the clip keeps (the rule of Cui et al., arXiv 2505.22617, Eq. 3, restricted to the unclipped
   tokens). :func:`entropy_clip_covariances` splits ``Cov(log pi, A)`` exactly (covariance is linear
   in its second argument) into the part over the kept tokens and the parts over the tokens the clip
   blocks, by advantage sign::

       Cov(log pi, A) = Cov(log pi, A X) + Cov(log pi, A (1-X) [A>0]) + Cov(log pi, A (1-X) [A<0])

   Blocking a part removes its term ``-eta Cov(...)`` from ``dH``: a negative ``cov_blocked_pos``
   (low-probability positive tokens blocked above ``c_high``) means the clip removed an entropy
   *increase*, BAPO's claim; a positive ``cov_blocked_neg`` (low-probability negative tokens blocked
   below ``c_low``) means it removed an entropy *decrease*.

Covariances are over the loss tokens (``mask``), each token weighted equally (the paper's
expectation over sampled tokens). Pure torch, no host sync; everything is detached.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .surrogate import _as_2d

BAPO_START = (0.6, 1.2)  # BAPO's start bounds [a-, a+] (paper Sec. 5.1)
GRPO_BOUNDS = (0.8, 1.2)  # PPO/GRPO epsilon 0.2
BAPO_DUAL_CLIP = 3.0


def positive_share(ratio: Tensor, advantages: Tensor, weights: Tensor, c_low: float | None, c_high: float | None,
                   dual_clip: float | None = None) -> Tensor:
    """``P / (P + N)`` at fixed bounds (1 when ``P + N == 0``, as BAPO's statistic counts a vacuous
    batch as balanced). ``c_low``/``c_high`` None: that side unclipped; ``dual_clip``: negative tokens
    with ``r > dual_clip`` carry no gradient. Bounds inclusive, as in the loss.

    Args: ``ratio`` ``(B, T)`` or ``(B, 1)``; ``advantages`` ``(B,)``, ``(B, 1)`` or ``(B, T)``;
    ``weights`` ``(B, T)`` >= 0 (the weight the aggregated loss applies to each token; a 0/1 mask is
    the token-sum case)."""
    r = ratio.detach().double()
    a = _as_2d(advantages.detach()).double()
    w = weights.detach().double()
    mag = w * a.abs() * r
    pos_keep = a > 0
    if c_high is not None:
        pos_keep = pos_keep & (r <= c_high)
    neg_keep = a < 0
    if c_low is not None:
        neg_keep = neg_keep & (r >= c_low)
    if dual_clip is not None:
        neg_keep = neg_keep & (r <= dual_clip)
    p = torch.where(pos_keep, mag, 0.0).sum()
    n = torch.where(neg_keep, mag, 0.0).sum()
    total = p + n
    return torch.where(total > 0, p / torch.where(total > 0, total, 1.0), torch.ones_like(total))


def _masked_cov(x: Tensor, y: Tensor, m: Tensor) -> Tensor:
    """Covariance of ``x`` and ``y`` over the tokens with ``m = 1`` (population form, 0 if none)."""
    n = m.sum().clamp(min=1.0)
    mx, my = (x * m).sum() / n, (y * m).sum() / n
    return ((x - mx) * (y - my) * m).sum() / n


def entropy_clip_covariances(logp: Tensor, advantages: Tensor, mask: Tensor, blocked_pos: Tensor,
                             blocked_neg: Tensor) -> dict[str, Tensor]:
    """The Entropy-Clip Rule's covariances (see the module docstring), as 0-d float64 tensors.

    Args:
        logp: ``(B, T)`` log-probabilities of the sampled tokens under the current policy.
        advantages: ``(B,)``, ``(B, 1)`` or ``(B, T)``.
        mask: ``(B, T)`` loss mask.
        blocked_pos, blocked_neg: ``(B, T)`` (or broadcastable) booleans: tokens whose gradient the clip
            removed with ``A > 0`` (above ``c_high``) and with ``A < 0`` (below ``c_low``, or beyond the dual clip).

    Returns ``cov_all`` = ``cov_kept + cov_blocked_pos + cov_blocked_neg`` (exactly, up to rounding).
    """
    x = logp.detach().double()
    m = mask.detach().double().expand_as(x)
    a = _as_2d(advantages.detach()).double().expand_as(x)
    bp = blocked_pos.expand_as(x) & (a > 0)
    bn = blocked_neg.expand_as(x) & (a < 0)
    kept = ~(bp | bn)
    zero = torch.zeros_like(a)
    return {
        "cov_all": _masked_cov(x, a, m),
        "cov_kept": _masked_cov(x, torch.where(kept, a, zero), m),
        "cov_blocked_pos": _masked_cov(x, torch.where(bp, a, zero), m),
        "cov_blocked_neg": _masked_cov(x, torch.where(bn, a, zero), m),
    }


def blocked_masks(loss_out: Any, ratio: Tensor, advantages: Tensor, config: Any) -> tuple[Tensor, Tensor] | None:
    """``(blocked_pos, blocked_neg)`` of a policy loss's output: from its ``clip_masks`` (GRPO, BAPO:
    ``high``; ``low`` or ``dual``), or for Archer (whose output carries its token classes in
    ``details``) from its per-token bounds ``1 +/- eps_t`` (paper Eq. 5) and its dual clip. None when
    neither is there."""
    masks = getattr(loss_out, "clip_masks", None)
    if masks is not None:
        neg = masks.low if masks.dual is None else masks.low | masks.dual
        return masks.high, neg
    details = getattr(loss_out, "details", None)
    high_class = getattr(details, "high", None)
    if high_class is None or not hasattr(config, "high_clip"):
        return None
    r = ratio.detach()
    a = _as_2d(advantages.detach())
    eps = torch.where(high_class, config.high_clip, config.low_clip).to(r.dtype)
    pos = (a > 0) & (r > 1.0 + eps)
    neg = (a < 0) & (r < 1.0 - eps)
    if getattr(config, "dual_clip", None) is not None:
        neg = neg | ((a < 0) & (r > config.dual_clip))
    return pos, neg


@torch.no_grad()
def premise_metrics(ratio: Tensor, advantages: Tensor, logp: Tensor, mask: Tensor, weights: Tensor,
                    loss_out: Any, config: Any, prefix: str = "premise/") -> dict[str, Tensor]:
    """Per-call premise measures for a trainer's metrics (0-d tensors, local means over the micro-batch):

    * ``pos_share_bapo_start``: ``rho`` at BAPO's start bounds [0.6, 1.2] with its dual clip 3
      (``>= 0.4``: BAPO's target is already met and it keeps those bounds);
    * ``pos_share_grpo``: ``rho`` at [0.8, 1.2]; ``pos_share_unclipped``: with no bound at all;
    * ``clipfrac_pos`` / ``clipfrac_neg``: share of loss tokens the method's own clip blocks, by sign;
    * the four covariances of :func:`entropy_clip_covariances` under the method's own clip.
    """
    m = mask.detach().to(torch.float64)
    out = {
        "pos_share_bapo_start": positive_share(ratio, advantages, weights, *BAPO_START, dual_clip=BAPO_DUAL_CLIP),
        "pos_share_grpo": positive_share(ratio, advantages, weights, *GRPO_BOUNDS),
        "pos_share_unclipped": positive_share(ratio, advantages, weights, None, None),
    }
    blocked = blocked_masks(loss_out, ratio, advantages, config)
    if blocked is not None:
        bp, bn = (b.expand_as(m) for b in blocked)
        n = m.sum().clamp(min=1.0)
        out["clipfrac_pos"] = (bp.double() * m).sum() / n
        out["clipfrac_neg"] = (bn.double() * m).sum() / n
        out.update(entropy_clip_covariances(logp, advantages, mask, bp, bn))
    return {prefix + k: v.float() for k, v in out.items()}
