"""The importance ratio's log-ratio clamp, and which tokens it leaves a gradient.

verl (and the official BAPO and Archer code) forms ``r = exp(clamp(log pi_theta - log pi_old, -20, 20))``.
Where the clamp is active the ratio is a constant in theta: the token's loss has **no gradient**,
whatever its value. A statistic of the gradient (BAPO's positive share, arXiv 2510.18927 Eq. 8)
must not count such a token, so the clamp and the statistic share one mask: :func:`clamp_log_ratio`
returns both.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOG_RATIO_CLAMP = 20.0  # verl: r = exp(clamp(logp - old_logp, -20, 20))


def clamp_log_ratio(log_ratio: Tensor, clamp: float = LOG_RATIO_CLAMP) -> tuple[Tensor, Tensor]:
    """``(clamp(log_ratio, -clamp, clamp), live)``.

    ``live`` (boolean, same shape) is ``-clamp <= log_ratio <= clamp``: exactly where ``torch.clamp``
    passes the gradient (bounds inclusive), so ``False`` where the clamp is active and for NaN. A
    ``-inf`` old log-prob gives ``log_ratio = +inf``: clamped, not live.
    """
    live = (log_ratio >= -clamp) & (log_ratio <= clamp)
    return log_ratio.clamp(-clamp, clamp), live


def sequence_live_fraction(live: Tensor, mask: Tensor) -> Tensor:
    """``(B, 1)`` share of each response's loss tokens whose log-ratio is live: with a sequence-level
    ratio (GSPO, ``exp(mean_t log r_t)``) the gradient reaching response ``i``'s log-probs has
    magnitude ``|d l_i / d log r_i| * (live tokens) / |o_i|``, so this is the factor by which the
    clamp scales the response's gradient."""
    m = mask.to(torch.float64 if mask.dtype == torch.float64 else torch.float32)
    return ((live * m).sum(-1) / m.sum(-1).clamp(min=1.0)).unsqueeze(-1)
