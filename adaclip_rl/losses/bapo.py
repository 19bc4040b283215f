"""BAPO: balanced policy optimisation with adaptive clipping (Xi et al., arXiv 2510.18927).

For every policy update the ratio bounds ``[c_low, c_high]`` restart at ``[a-, a+]`` and move
along a fixed path until the *positive contribution* reaches a target (paper Algorithm 1):

* ``contribution="grad"`` (default, the paper): share ``rho = P / (P + N)`` (paper Eq. 8, read as a
  magnitude share) with target ``rho0 = 0.4``; ``c_high`` is raised first (1.2 -> 3.0, step
  0.05), then ``c_low`` (0.6 -> 0.9, step 0.02). ``P`` and ``N`` count **gradient-carrying**
  tokens only, each weighted by ``w |A| r``: the magnitude of the derivative of the aggregated
  loss ``sum_t w_t l_t`` in the token's log-prob (``d(r A)/d log p = r A``), where ``w`` is the
  weight the aggregated loss really applies to the token: aggregation weight (GRPO, Shao et al.
  2024 Eq. 21: ``1/(G |o_i|)``; token mean: ``1/sum|o|``) times importance-sampling weights and
  masks::

      P(c_high) = sum_{A>0, r <= c_high} w |A| r
      N(c_low)  = sum_{A<0, c_low <= r <= dual_clip} w |A| r

  (bounds inclusive, as in the loss: a token exactly on a bound keeps its gradient)

  so raising ``c_low`` removes low-probability negative tokens from the gradient and raises the
  share, as the paper intends (reference notes, pitfall 3).
* ``contribution="value"`` (the official verl recipe, ``recipe/bapo/policy_loss.py``):
  effective-advantage values ``P = sum_{A>0} w A min(r, c_high)``, ``N = sum_{A<0} w |A| max(r, c_low)``,
  statistic ``P / (N + 1e-8)`` (``+inf`` when ``N == 0``) compared with a pos/neg *ratio* target,
  ``c_low`` raised first, then ``c_high``; like the official code the last step of each bound may
  be partial (clamped to the maximum).

With sequence-level ratios (``(B, 1)``, GSPO / ``importance_sampling_level="sequence"``) every
token of response ``i`` carries the same ``r_i``, and the gradient reaching the response's
log-probs has magnitude ``|A_i| r_i sum_t w_it``: the same sums with the ratio broadcast.

Search path semantics (both modes). Candidates are ``start + k * step`` for integer
``k = 0..floor((max - start) / step)`` (integer steps, so no floating drift past the maximum).
The path is the start pair, then every step of the first bound with the second at its start,
then every step of the second with the first at its maximum. The chosen pair is the first on the
path that meets the target. If none does (``reached = False``), the paper's loop ends at both
maxima; we report the **first pair on the path whose gradient is the same as at the maxima**
(no token with non-zero weight has its ratio between the two), so an on-policy batch (r = 1,
where no bound on the path clips anything) keeps and logs the start bounds instead of saturated
ones that change nothing. A vacuous batch (``P + N == 0``, e.g. empty) counts as balanced
(share 1): start bounds.

Vectorised: P depends on ``c_high`` only and N on ``c_low`` only, so one binning of the
ratios on the candidate grids gives a small histogram, and prefix sums of it give P and N for
every candidate. The statistics vector is that histogram (sums over tokens), so a trainer
all-reduces it (SUM) once - over ranks and, for one search per optimizer update, over the
micro-batches of the accumulation window - and every rank picks the same bounds. No host sync
(``torch.compile(fullgraph=True)`` traces it), no Python loop over candidates, and no
``torch.cumsum`` on CUDA (non-deterministic there, refused under
``torch.use_deterministic_algorithms(True)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ..checks import (
    FieldValueError,
    check_bounds,
    check_choice,
    check_dual_clip,
    check_non_negative,
    check_open_unit,
    check_order,
    check_positive,
)
from .surrogate import _as_2d, clipped_surrogate

ReduceFn = Callable[[Tensor], Tensor]
_STEP_EPS = 1e-9
_MAX_GRID = 10_000  # keeps the float32 bin guess of bapo_statistics exact (see _BIAS)


def _grid(start: float, end: float, step: float, partial_last: bool = False) -> list[float]:
    """``start + k*step`` for ``k = 0..floor((end-start)/step)``; just ``[start]`` if step is 0.

    ``partial_last``: if the last whole step stops short of ``end``, take one more, partial step
    to ``end`` (the official verl recipe's ``min(c + step, max)``)."""
    if step == 0 or end == start:
        return [start]
    n = math.floor((end - start) / step + _STEP_EPS)
    grid = [start + k * step for k in range(n + 1)]
    if partial_last and end - grid[-1] > _STEP_EPS * step:
        grid.append(end)
    return grid


@dataclass(frozen=True)
class BAPOConfig:
    """BAPO search settings. Defaults are the paper's (Sec. 5.1).

    Args:
        target: ``contribution="grad"``: target positive share rho0 in (0, 1) (paper: 0.4).
            ``contribution="value"``: target pos/neg ratio > 0 (official yaml: 1.0).
        low_start, low_max, low_step: range ``[a-, b-]`` and step delta2 of ``c_low``.
        high_start, high_max, high_step: range ``[a+, b+]`` and step delta1 of ``c_high``.
        contribution: "grad" (paper, upper bound first, whole steps only: Algorithm 1 moves a
            bound only while ``c + delta <= b``) or "value" (official code, lower bound first,
            last step partial: ``c = min(c + step, max)``).
        dual_clip: dual-clip constant for A<0 (verl default 3.0); None disables it.
        scope: "update" (one search per optimizer update over the accumulation window and the
            ranks: the paper's Algorithm 1) or "micro_batch" (one per loss call: verl). The
            trainer reads it; the search functions here act on what they are given.
    """

    target: float = field(
        default=0.4,
        metadata={"help": "BAPO target rho0: share of positive-advantage contribution in (0, 1) (paper: 0.4). "
                  "With bapo_contribution='value' it is the official code's pos/neg ratio target (> 0)."},
    )
    low_start: float = field(default=0.6, metadata={"help": "BAPO lower bound start a- (paper 0.6)."})
    low_max: float = field(default=0.9, metadata={"help": "BAPO lower bound maximum b- (paper 0.9)."})
    low_step: float = field(default=0.02, metadata={"help": "BAPO lower bound step delta2 (paper 0.02)."})
    high_start: float = field(default=1.2, metadata={"help": "BAPO upper bound start a+ (paper 1.2)."})
    high_max: float = field(default=3.0, metadata={"help": "BAPO upper bound maximum b+ (paper 3.0)."})
    high_step: float = field(default=0.05, metadata={"help": "BAPO upper bound step delta1 (paper 0.05)."})
    contribution: Literal["grad", "value"] = field(
        default="grad",
        metadata={"help": "'grad': the paper (gradient-carrying contribution share, upper bound first); 'value': "
                  "the official verl recipe (effective-advantage pos/neg ratio, lower bound first)."},
    )
    dual_clip: float | None = field(
        default=3.0, metadata={"help": "Dual-clip constant for A<0 under BAPO (verl default 3.0); None disables."}
    )
    scope: Literal["update", "micro_batch"] = field(
        default="update",
        metadata={"help": "'update': one bound search per optimizer update, on the statistics of every "
                  "micro-batch of the accumulation window and every rank (the paper's Algorithm 1; costs one "
                  "extra forward without grad of each other micro-batch when gradient_accumulation_steps > 1). "
                  "'micro_batch': one search per loss call, reduced across ranks (the official verl recipe)."},
    )
    value_weights: Literal["loss", "mask"] = field(
        default="loss",
        metadata={"help": "Weights of the value-mode statistic (bapo_contribution='value'): 'loss' (each token as the "
                  "aggregated loss weighs it: loss_type aggregation x importance weights x masks) or 'mask' (the "
                  "response mask only, as the official verl recipe's policy_loss.py)."},
    )

    def __post_init__(self) -> None:
        check_choice("contribution", self.contribution, ("grad", "value"))
        if self.contribution == "grad":
            check_open_unit("target", self.target)
        else:
            check_positive("target", self.target)
        check_bounds("low_start", self.low_start, "high_start", self.high_start)
        check_bounds("low_max", self.low_max, "high_max", self.high_max)
        check_order("low_start", self.low_start, "low_max", self.low_max)
        check_order("high_start", self.high_start, "high_max", self.high_max)
        check_non_negative("low_step", self.low_step)
        check_non_negative("high_step", self.high_step)
        for name, step, end in (("low_step", self.low_step, self.low_max), ("high_step", self.high_step, self.high_max)):
            if step and end / step > _MAX_GRID:
                raise FieldValueError(f"{{0}} must be 0 or >= {end / _MAX_GRID:.2g} (at most {_MAX_GRID} steps up "
                                      f"to the bound's maximum); got {step!r}", name)
        check_dual_clip("dual_clip", self.dual_clip)
        check_choice("scope", self.scope, ("update", "micro_batch"))
        check_choice("value_weights", self.value_weights, ("loss", "mask"))
        if self.value_weights != "loss" and self.contribution != "value":
            raise FieldValueError(f"{{0}} must be 'loss' with {{1}}={self.contribution!r} (the gradient share weighs "
                                  f"each token as the loss does); got {self.value_weights!r}", "value_weights",
                                  "contribution")

    @property
    def searches_per_update(self) -> bool:
        """One search per optimizer update (``scope="update"``, the paper's Algorithm 1)."""
        return self.scope == "update"

    @classmethod
    def official(cls, **overrides) -> BAPOConfig:
        """The official verl recipe's defaults (``config/bapo_trainer.yaml``): value-based pos/neg
        ratio target 1.0, ``c_low`` 0.6 -> 0.8 then ``c_high`` 1.2 -> 2.0, both steps 0.05, statistic
        weighted by the response mask only (``value_weights="mask"``)."""
        base = dict(
            target=1.0, low_start=0.6, low_max=0.8, low_step=0.05, high_start=1.2, high_max=2.0,
            high_step=0.05, contribution="value", value_weights="mask",
        )
        base.update(overrides)
        return cls(**base)

    @property
    def low_grid(self) -> list[float]:
        return _grid(self.low_start, self.low_max, self.low_step, self.contribution == "value")

    @property
    def high_grid(self) -> list[float]:
        return _grid(self.high_start, self.high_max, self.high_step, self.contribution == "value")

    @property
    def arithmetic(self) -> bool:
        """Both grids are whole steps (the fast affine binning applies)."""
        return (_grid(self.low_start, self.low_max, self.low_step) == self.low_grid
                and _grid(self.high_start, self.high_max, self.high_step) == self.high_grid)

    @property
    def order(self) -> Literal["high_first", "low_first"]:
        return "high_first" if self.contribution == "grad" else "low_first"

    def path(self) -> list[tuple[int, int]]:
        """Candidate path as ``(low_index, high_index)`` pairs, start first, maxima last."""
        n_low, n_high = len(self.low_grid), len(self.high_grid)
        if self.order == "high_first":
            return [(0, j) for j in range(n_high)] + [(i, n_high - 1) for i in range(1, n_low)]
        return [(i, 0) for i in range(n_low)] + [(n_low - 1, j) for j in range(1, n_high)]

    @property
    def dual_bin(self) -> int:
        """1 if the statistic keeps a bin for negative tokens beyond the dual clip (grad mode with
        a dual clip not too close to ``low_max`` for the affine binning), else 0."""
        if self.contribution != "grad" or self.dual_clip is None:
            return 0
        step = self.low_step if len(self.low_grid) > 1 else 1.0
        return int(self.dual_clip - self.low_max > 4 * _BIAS * step)

    @property
    def n_bins(self) -> int:
        """Histogram bins of :func:`bapo_statistics`: ``L + 1`` for negative-advantage tokens
        (by ``c_low`` candidate), ``H + 1`` for the others (by ``c_high`` candidate), and with
        :attr:`dual_bin` one more for negative tokens the dual clip blocks."""
        return len(self.high_grid) + len(self.low_grid) + 2 + self.dual_bin

    @property
    def stats_size(self) -> int:
        """Length of the statistics vector to all-reduce: the histogram of ``w A r`` (and, in
        value mode, of ``w A``) over the bins."""
        return self.n_bins * (1 if self.contribution == "grad" else 2)


@dataclass
class BAPOResult:
    """Chosen bounds and search statistics; every field is a 0-d tensor on the input's device.

    ``share_*`` is ``P / (P + N)`` (1 when ``P + N == 0``) under the configured contribution;
    ``pos_neg_*`` is ``P / (N + 1e-8)`` (inf when ``N == 0``). ``index`` is the position on the
    path (= search iterations); ``reached`` whether the target was met.
    """

    clip_low: Tensor
    clip_high: Tensor
    share_before: Tensor
    share_after: Tensor
    pos_neg_before: Tensor
    pos_neg_after: Tensor
    index: Tensor
    reached: Tensor

    def bounds(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(clip_low, clip_high)`` for a ratio of ``dtype``: 0-d tensors in at least float32 (the
        surrogate compares in it), ``clip_low`` rounded up and ``clip_high`` down, so that a ratio is
        clipped exactly when the statistic, which compares with the exact grid, says so
        (``r < c_low`` iff ``r < clip_low``). Cast to bf16 instead, 0.9 would become 0.8984."""
        work = torch.promote_types(dtype, torch.float32)
        return _round_to(self.clip_low, work, up=True), _round_to(self.clip_high, work, up=False)


_cache: dict[tuple, tuple[Tensor, ...]] = {}


def _tables(config: BAPOConfig, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(low grid, high grid, path low indices, path high indices), cached per config and device."""
    key = (config, str(device))
    if key not in _cache:
        path = config.path()
        _cache[key] = (
            torch.tensor(config.low_grid, dtype=torch.float64, device=device),
            torch.tensor(config.high_grid, dtype=torch.float64, device=device),
            torch.tensor([i for i, _ in path], dtype=torch.long, device=device),
            torch.tensor([j for _, j in path], dtype=torch.long, device=device),
        )
    return _cache[key]


def _round_to(grid: Tensor, dtype: torch.dtype, up: bool) -> Tensor:
    """``grid`` (float64) rounded to ``dtype`` towards +inf (``up``) or -inf."""
    g = grid.to(dtype)
    if dtype == torch.float64:
        return g
    direction = torch.full_like(g, math.inf if up else -math.inf)
    off = g.double() < grid if up else g.double() > grid
    return torch.where(off, torch.nextafter(g, direction), g)


_LANES = 8  # histogram copies: consecutive tokens (often in the same bin) accumulate into different ones


def _lanes(shape: tuple[int, ...], n_bins: int, device: torch.device) -> Tensor:
    """Per-token offset ``(i mod 8) * n_bins - 1`` along the longer of the two dims (small tensor)."""
    dim = 1 if shape[1] > 1 else 0
    lane = torch.arange(shape[dim], dtype=torch.int32, device=device).remainder_(_LANES).mul_(n_bins).sub_(1)
    return lane.view(1, -1) if dim == 1 else lane.view(-1, 1)


def _histogram(values: Tensor, index: Tensor, n_bins: int) -> Tensor:
    """Sum of the non-negative ``values`` per bin; ``index`` already spread over the lanes (see
    :func:`_lanes`).

    Deterministic on every device and independent of the tokens' order: the values are summed as
    **integers** (fixed point). With ``S = sum v`` and ``2^(e-1) <= S < 2^e``, each value becomes
    ``q = ceil(v 2^(61-e))`` (so the integers sum to less than ``2^62``, and a positive value never
    becomes 0: a bin is non-zero iff a token in it has weight); integer addition is associative, so
    ``index_add_`` (atomic on CUDA) gives the same bits in any order, unlike a floating one. The
    sums are within ``(tokens) 2^-60 S`` of the exact ones - far tighter than a float32
    accumulation. Repeated additions to one address form a dependency chain (about 4x slower on
    CPU than scattered ones); eight copies of the histogram break it."""
    total = values.sum(dtype=torch.float64)
    _, exponent = torch.frexp(total)  # total < 2^exponent (0 for a zero total)
    scale = torch.ldexp(total.new_ones(()), (61 - exponent).clamp(min=-126, max=126))
    q = torch.mul(values, scale.to(values.dtype)).ceil_().long()  # times a power of two: exact before ceil
    hist = torch.zeros(n_bins * _LANES, dtype=torch.int64, device=values.device).index_add_(0, index, q)
    return (hist.view(_LANES, n_bins).sum(0).double() / scale).to(values.dtype)


def _prefix_sum(x: Tensor) -> Tensor:
    """Inclusive prefix sum of a short 1-D vector. ``torch.cumsum`` on CPU; on other devices a
    log-step (Hillis-Steele) scan of plain additions, because a floating ``cumsum`` on CUDA is
    non-deterministic and raises under ``torch.use_deterministic_algorithms(True)``."""
    return x.cumsum(0) if x.device.type == "cpu" else _scan(x)


def _scan(x: Tensor) -> Tensor:
    """Hillis-Steele inclusive scan: ``ceil(log2 n)`` shifted additions, deterministic everywhere."""
    n, shift = x.numel(), 1
    while shift < n:
        x = x + torch.cat([x.new_zeros(shift), x[:-shift]])
        shift *= 2
    return x


def _suffix_sum(x: Tensor) -> Tensor:
    return _prefix_sum(x.flip(0)).flip(0)


_BIAS = 0.01  # the affine bin guess errs by far less than this (validated grid size <= 10^4)


def _dual_edge(config: BAPOConfig, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(1,)``: the largest ``dtype`` value below ``-dual_clip``: a negative token is counted iff
    ``r <= dual_clip``, i.e. iff ``x = -r`` is above this edge (exact for float32 ``x``). Cached per
    config, dtype and device (built from Python values once: a host-to-device copy)."""
    key = (config, str(device), dtype, "dual_edge")
    if key not in _cache:
        dual = torch.tensor([-config.dual_clip], dtype=torch.float64, device=device)
        edge = _round_to(dual, dtype, up=False)
        below = torch.nextafter(edge, torch.full_like(edge, -math.inf))
        _cache[key] = (torch.where(edge.double() == dual, below, edge),)
    return _cache[key][0]


def _bin_table(config: BAPOConfig, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Lower edges of the merged bins (see :func:`bapo_statistics`), rounded down to ``dtype``."""
    key = (config, str(device), dtype, "edges")
    if key not in _cache:
        low_grid, high_grid, _, _ = _tables(config, device)
        inf = torch.full((1,), math.inf, dtype=low_grid.dtype, device=device)
        edges = _round_to(torch.cat([-inf, -low_grid.flip(0), -inf, high_grid]), dtype, up=False)
        if config.dual_bin:
            edges = torch.cat([edges[:1], _dual_edge(config, dtype, device), edges[1:]])
        _cache[key] = (edges,)
    return _cache[key][0]


def _broadcast(s1: tuple[int, ...], s2: tuple[int, ...]) -> tuple[int, ...] | None:
    """Broadcast shape of two 2-D shapes, None if they do not broadcast (plain Python: traceable)."""
    out = []
    for d1, d2 in zip(s1, s2, strict=True):
        if d1 != d2 and d1 != 1 and d2 != 1:
            return None
        out.append(d2 if d1 == 1 else d1)
    return tuple(out)


def _key_shapes(ratio: Tensor, advantages: Tensor, weights: Tensor) -> tuple[Tensor, tuple[int, ...], tuple[int, ...]]:
    """Validate shapes; returns ``(advantages as 2-D, shape of ratio x advantages, full shape)``."""
    if ratio.dim() != 2:
        raise ValueError(f"ratio must be 2-D, (B, T) or (B, 1); got shape {tuple(ratio.shape)}")
    a = _as_2d(advantages)
    if a.dim() != 2:
        raise ValueError(f"advantages must be (B,), (B, 1) or (B, T); got shape {tuple(advantages.shape)}")
    key = _broadcast(tuple(ratio.shape), tuple(a.shape))
    if key is None:
        raise ValueError(f"advantages of shape {tuple(advantages.shape)} do not broadcast with ratio of shape "
                         f"{tuple(ratio.shape)}")
    full = _broadcast(key, tuple(weights.shape)) if weights.dim() == 2 else None
    if full is None:
        raise ValueError(f"weights (mask) of shape {tuple(weights.shape)} do not broadcast with ratio x advantages "
                         f"of shape {key}")
    return a, key, full


def bapo_statistics(ratio: Tensor, advantages: Tensor, weights: Tensor, config: BAPOConfig) -> Tensor:
    """Local statistics vector: the histogram of ``w A r`` over the candidate bins (value mode:
    followed by the histogram of ``w A``). See the module docstring for P and N.

    Args:
        ratio: importance ratio r, ``(B, T)`` (token level) or ``(B, 1)`` (sequence level);
            detached inside.
        advantages: ``(B,)``, ``(B, 1)`` or ``(B, T)``.
        weights: ``(B, T)`` or ``(B, 1)``, >= 0: the weight each token's loss has in the
            aggregated loss (aggregation weight x importance-sampling weight x masks; see
            :func:`~adaclip_rl.losses.surrogate.aggregation_weights`). A 0/1 loss mask is the
            token-sum special case. Zero-weight tokens never count.

    Shapes broadcast; ``ValueError`` names the argument that does not. When ratio and
    advantages are both per sequence, ``weights`` is summed per sequence first, so only ``B``
    values are binned.

    Returns:
        float32 vector of ``config.stats_size`` (float64 for float64 ratios). Every entry is a
        sum over tokens, so sums over ranks or micro-batches combine exactly.

    How: every token gets one bin on a merged table. A negative-advantage token goes to bin
    ``#{m : l'_m < -r}`` on the reversed, negated low grid ``l'_m = -l_{L-1-m}`` (so its bin
    is ``#{j : l_j > r}``); any other token to bin ``L + 1 + #{j : h_j < r}``. Both grids
    are arithmetic, so the bin is an affine guess (biased up by a hair) corrected by one
    comparison with the bin's lower edge: exact even for ratios sitting on a grid value (r = 1.0
    on-policy), with a handful of float ops per token instead of a binary search (``bucketize``)
    and without ``where``/boolean ops, which are slow on CPU. Comparisons with the float64 grid
    stay exact in float32: for a float32 ``x``, ``x > g`` iff ``x > (g rounded down to float32)``.
    (A value-mode grid whose last step is partial is not arithmetic; it takes ``bucketize``.)
    """
    a, key, full = _key_shapes(ratio, advantages, weights)
    w = weights.detach()
    if full != key:  # e.g. (B, 1) ratio and advantages, (B, T) weights: one total weight per sequence
        w = w.expand(full).sum_to_size(key)
    dtype = torch.float64 if ratio.dtype == torch.float64 else torch.float32  # exact for bf16/fp16
    n_low, n_high, n_bins = len(config.low_grid), len(config.high_grid), config.n_bins
    edges = _bin_table(config, dtype, ratio.device)
    d = config.dual_bin  # 1: bin 0 holds negative tokens beyond the dual clip (no gradient, never counted)

    a = a.detach().to(dtype)
    is_pos = (a > 0).to(dtype)  # per row for (B,) advantages: tiny
    sign = 2.0 * is_pos - 1.0
    r = torch.nan_to_num(ratio.detach().to(dtype), nan=1.0, posinf=1e30, neginf=0.0)  # a fresh buffer
    # w A r on counted tokens (grad mode: w |A| r; r >= 0, w >= 0), before r becomes x in place
    weight = torch.mul(r, w.to(dtype))
    weight.mul_(a.abs())  # value mode: the sign of A is given back per bin (one sign per bin) below
    x = r.mul_(sign) if tuple(r.shape) == key else r * sign  # -r for negative advantages
    if config.arithmetic:
        inv_l = 1.0 / config.low_step if n_low > 1 else 1.0
        inv_h = 1.0 / config.high_step if n_high > 1 else 1.0
        # affine guess per sign: neg: d + 1 + (x - l'_0)/step_l ; pos: d + L + 2 + (x - h_0)/step_h
        l0, h0 = -config.low_grid[-1], config.high_grid[0]  # Python floats: no host sync
        off_neg, off_pos = d + 1.0 - l0 * inv_l + _BIAS, d + n_low + 2.0 - h0 * inv_h + _BIAS
        scale = is_pos * (inv_h - inv_l) + inv_l
        offset = is_pos * (off_pos - off_neg) + off_neg
        lo = is_pos * (n_low + 1.0) + d
        hi = is_pos * (n_high + 1.0) + (n_low + d)
        guess = torch.addcmul(offset, x, scale).clamp_(min=lo, max=hi)
        bins = guess.int()  # >= 0: truncation is floor; int32 (half the memory traffic of int64)
        above = torch.gt(x, edges.index_select(0, bins.view(-1)).view_as(x))  # the guess's lower edge < x
        bins.add_(above).add_(_lanes(key, n_bins, x.device))  # the guess, or one less; then its lane
    else:  # binary search on each sign's own (sorted) edges; value mode only: no dual bin
        neg_edges, pos_edges = edges[1 : n_low + 1].contiguous(), edges[n_low + 2 :].contiguous()
        b_neg = torch.bucketize(x, neg_edges, out_int32=True)  # #{m : l'_m < -r}
        b_pos = torch.bucketize(x, pos_edges, out_int32=True) + (n_low + 1)
        bins = torch.where(is_pos.bool().expand_as(x), b_pos, b_neg).add_(_lanes(key, n_bins, x.device) + 1)
    bins = bins.view(-1)
    if config.contribution == "grad":
        if config.dual_clip is not None and not d:  # dual clip within a hair of low_max: mask instead
            weight.mul_(torch.gt(x, _dual_edge(config, dtype, x.device)))
        return _histogram(weight.view(-1), bins, n_bins)
    a_w = (a.abs() * w.to(dtype)).expand(key).reshape(-1)
    sign = torch.ones(n_bins, dtype=dtype, device=x.device)
    sign[: n_low + 1] = -1.0  # bins 0..L hold the negative-advantage tokens (value mode: no dual bin)
    return torch.cat([_histogram(weight.view(-1), bins, n_bins), _histogram(a_w, bins, n_bins)]) * sign.repeat(2)


def bapo_statistic_weights(config: BAPOConfig, loss_weights: Tensor, mask: Tensor, live: Tensor | None = None
                           ) -> Tensor:
    """The ``weights`` argument of :func:`bapo_statistics` for a trainer.

    Args:
        loss_weights: ``(B, T)`` weight the aggregated loss applies to each token's loss
            (aggregation weight x importance weights x masks).
        mask: ``(B, T)`` response (loss) mask.
        live: where the ratio carries a gradient (see :func:`~adaclip_rl.losses.ratio.clamp_log_ratio`):
            boolean ``(B, T)`` for token ratios, or the ``(B, 1)`` live share of each response for
            sequence ratios; None when nothing is clamped.

    ``contribution="grad"``: ``loss_weights * live``, so the statistic sees exactly the tokens that
    carry gradient (a clamped log-ratio leaves none, whatever ``w |A| r``). ``"value"`` measures loss
    values, which clamped tokens do have: ``loss_weights`` (``value_weights="loss"``) or ``mask``
    (``"mask"``, the official verl recipe).
    """
    if config.contribution == "value":
        return mask if config.value_weights == "mask" else loss_weights
    return loss_weights if live is None else loss_weights * live


def _share(p: Tensor, n: Tensor) -> Tensor:
    total = p + n
    return torch.where(total > 0, p / torch.where(total > 0, total, torch.ones_like(total)), torch.ones_like(p))


def _pos_neg(p: Tensor, n: Tensor) -> Tensor:
    return torch.where(n > 0, p / (n + 1e-8), torch.full_like(p, math.inf))


def bapo_select(stats: Tensor, config: BAPOConfig) -> BAPOResult:
    """Pick the bounds from a (reduced) statistics vector; see the module docstring for semantics.

    Prefix sums of the histogram give, for every candidate, ``P(c_high)`` (grad mode:
    ``sum_{A>0, r <= c_high} w |A| r``) and ``N(c_low)`` (``sum_{A<0, r >= c_low} w |A| r``); value
    mode adds the clipped parts ``c_high sum_{A>0, r > c_high} w A`` and ``c_low sum_{A<0, r < c_low} w |A|``.
    """
    low_grid, high_grid, path_low, path_high = _tables(config, stats.device)
    stats = stats.to(torch.float64)
    if stats.numel() != config.stats_size:
        raise ValueError(f"stats must have {config.stats_size} entries for this config; got {stats.numel()}")
    n_low, n_high, n_bins = low_grid.numel(), high_grid.numel(), config.n_bins
    hist = stats[config.dual_bin : n_bins]  # without the dual-clipped bin: no gradient there
    neg_cum = _prefix_sum(hist[:n_low])  # neg_cum[m]: bins 0..m, i.e. A<0 tokens with r >= l_{L-1-m}
    p = _prefix_sum(hist[n_low + 1 :])[:n_high]  # P_j: bins L+1 .. L+1+j, i.e. r <= h_j
    n = neg_cum.flip(0)
    if config.contribution == "value":
        a_hist = stats[n_bins:]
        p = p + high_grid * _suffix_sum(a_hist[n_low + 1 :])[1:]
        n = -(n + low_grid * _suffix_sum(a_hist[: n_low + 1])[1:].flip(0))
    # a bound moves no token between a candidate and the maxima when no bin in between holds weight
    nz = (hist != 0).to(torch.float64)
    cnt_pos, cnt_neg = _prefix_sum(nz[n_low + 1 : n_low + 1 + n_high]), _prefix_sum(nz[:n_low])
    still_high = cnt_pos[-1] - cnt_pos  # bins between h_j and h_max
    still_low = (cnt_neg - cnt_neg[0]).flip(0)  # bins between l_i and l_max

    p_path, n_path = p[path_high], n[path_low]
    share, pos_neg = _share(p_path, n_path), _pos_neg(p_path, n_path)
    met = share >= config.target if config.contribution == "grad" else pos_neg >= config.target
    same_as_last = (still_high[path_high] == 0) & (still_low[path_low] == 0)
    reached = met.any()
    index = torch.where(reached, met.to(torch.int32).argmax(), same_as_last.to(torch.int32).argmax())
    return BAPOResult(
        clip_low=_at(low_grid, _at(path_low, index)),
        clip_high=_at(high_grid, _at(path_high, index)),
        share_before=share[0],
        share_after=_at(share, index),
        pos_neg_before=pos_neg[0],
        pos_neg_after=_at(pos_neg, index),
        index=index,
        reached=reached,
    )


def _at(values: Tensor, index: Tensor) -> Tensor:
    """``values[index]`` for a 0-d index tensor, as a gather (no data-dependent Python index)."""
    return values.gather(0, index.reshape(1)).reshape(())


def bapo_search(
    ratio: Tensor,
    advantages: Tensor,
    weights: Tensor,
    config: BAPOConfig | None = None,
    *,
    reduce_fn: ReduceFn | None = None,
) -> BAPOResult:
    """BAPO adaptive bound search (paper Algorithm 1, lines 5-10; statistic: paper Eq. 8 read as
    a magnitude share of the gradient), vectorised over candidates.

    Args:
        ratio, advantages, weights: as in :func:`bapo_statistics` (``weights``: the loss mask,
            or better the per-token weight the aggregated loss applies).
        config: search settings (paper defaults if None).
        reduce_fn: applied once to the statistics vector, e.g. an all-reduce SUM across ranks,
            so every process chooses identical bounds.
    """
    config = config or BAPOConfig()
    stats = bapo_statistics(ratio, advantages, weights, config)
    if reduce_fn is not None:
        stats = reduce_fn(stats)
    return bapo_select(stats, config)


def bapo_loss(
    ratio: Tensor,
    advantages: Tensor,
    weights: Tensor,
    config: BAPOConfig | None = None,
    *,
    reduce_fn: ReduceFn | None = None,
    result: BAPOResult | None = None,
) -> tuple[Tensor, BAPOResult]:
    """Per-token BAPO loss ``-min(rA, clip(r, c_low, c_high) A)`` (dual-clipped for A<0) with the
    searched bounds (paper Eq. 5 with Algorithm 1's bounds). Returns ``(loss, result)``; the loss
    has the broadcast shape of ratio and advantages (``(B, T)``, or ``(B, 1)`` for sequence-level
    ratios and advantages), unmasked.

    ``result``: bounds chosen elsewhere (one search per optimizer update, see
    :class:`~adaclip_rl.trainers.AdaClipGRPOTrainer`); the search is then skipped."""
    config = config or BAPOConfig()
    if result is None:
        result = bapo_search(ratio, advantages, weights, config, reduce_fn=reduce_fn)
    loss = clipped_surrogate(ratio, advantages, *result.bounds(ratio.dtype), dual_clip=config.dual_clip)
    return loss, result
