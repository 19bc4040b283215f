"""``AdaClipFields``: the adaclip-rl fields shared by every trainer config (a dataclass mixin).

``AdaClipGRPOConfig`` (TRL's ``GRPOConfig``) and ``AdaClipAsyncGRPOConfig`` (TRL's
``AsyncGRPOConfig``) both inherit them, so each field, its default and its help are written once.
Parameters are grouped by prefix: ``bapo_*`` (BAPO bound search), ``archer_*`` (Archer token
classes), ``grad_clip*`` (adaptive gradient clipping).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..losses import ArcherConfig, BAPOConfig, GRPOClipConfig
from . import field_checks

__all__ = ["AdaClipFields"]


@dataclass
class AdaClipFields:
    """The policy-loss and gradient-clipping fields; mixed into a TRL config (which must come after
    it in the bases, so that TRL's fields come first and its ``__post_init__`` is reached by ``super``)."""

    policy_loss: str = field(
        default="grpo",
        metadata={"help": "Per-token policy term: 'grpo' (PPO clip with epsilon/epsilon_high), 'bapo' "
                  "(BAPO, arXiv 2510.18927) or 'archer' (Archer, arXiv 2507.15778)."},
    )
    dual_clip: float | None = field(
        default=None,
        metadata={"help": "Dual-clip constant c > 1 for negative advantages with policy_loss='grpo' (Ye et al. "
                  "2020). None disables it. BAPO and Archer have their own (bapo_dual_clip, archer_dual_clip)."},
    )
    # --- BAPO (arXiv 2510.18927, Algorithm 1 and Sec. 5.1) ---
    bapo_target: float = field(
        default=0.4,
        metadata={"help": "BAPO target rho0: share of positive-advantage contribution in (0, 1) (paper: 0.4). "
                  "With bapo_contribution='value' it is the official code's pos/neg ratio target (> 0)."},
    )
    bapo_low_start: float = field(default=0.6, metadata={"help": "BAPO lower bound start a- (paper 0.6)."})
    bapo_low_max: float = field(default=0.9, metadata={"help": "BAPO lower bound maximum b- (paper 0.9)."})
    bapo_low_step: float = field(default=0.02, metadata={"help": "BAPO lower bound step delta2 (paper 0.02)."})
    bapo_high_start: float = field(default=1.2, metadata={"help": "BAPO upper bound start a+ (paper 1.2)."})
    bapo_high_max: float = field(default=3.0, metadata={"help": "BAPO upper bound maximum b+ (paper 3.0)."})
    bapo_high_step: float = field(default=0.05, metadata={"help": "BAPO upper bound step delta1 (paper 0.05)."})
    bapo_contribution: str = field(
        default="grad",
        metadata={"help": "'grad': the paper (gradient-carrying contribution share, upper bound first); 'value': "
                  "the official verl recipe (effective-advantage pos/neg ratio, lower bound first)."},
    )
    bapo_dual_clip: float | None = field(
        default=3.0, metadata={"help": "Dual-clip constant for A<0 under BAPO (verl default 3.0); None disables."}
    )
    bapo_scope: str = field(
        default="update",
        metadata={"help": "'update': one bound search per optimizer update, on the statistics of every "
                  "micro-batch of the accumulation window and every rank (the paper's Algorithm 1; costs one "
                  "extra forward without grad of each other micro-batch when gradient_accumulation_steps > 1). "
                  "'micro_batch': one search per loss call, reduced across ranks (the official verl recipe)."},
    )
    # --- Archer (arXiv 2507.15778, Eq. 5 and Sec. 5.1) ---
    archer_quantile: float = field(
        default=0.8, metadata={"help": "Archer per-response entropy quantile rho in (0, 1) (paper 0.8)."}
    )
    archer_high_clip: float = field(
        default=0.5, metadata={"help": "Archer clip width eps_r of high-entropy tokens, in (0, 1) (paper 0.5)."}
    )
    archer_low_clip: float = field(
        default=0.2, metadata={"help": "Archer clip width eps_k of low-entropy tokens, in (0, 1) (paper 0.2)."}
    )
    archer_high_kl: float = field(
        default=0.0, metadata={"help": "Archer KL weight beta_r of high-entropy tokens, >= 0 (paper 0.0)."}
    )
    archer_low_kl: float = field(
        default=0.001, metadata={"help": "Archer KL weight beta_k of low-entropy tokens, >= 0 (paper 0.001)."}
    )
    archer_kl_estimator: str = field(
        default="k3", metadata={"help": "Archer KL estimator: 'k1', 'k2' or 'k3' (official code: k3)."}
    )
    archer_dual_clip: float | None = field(
        default=10.0, metadata={"help": "Dual-clip constant for A<0 under Archer (official script 10.0)."}
    )
    archer_kl_aggregation: str = field(
        default="response",
        metadata={"help": "Archer KL averaging: 'response' (per-response class means, then the mean over responses: "
                  "paper Eq. 5 and the official one-response micro-batches) or 'token' (class means over all tokens "
                  "of the micro-batch; long answers weigh more)."},
    )
    archer_entropy_source: str = field(
        default="current",
        metadata={"help": "Entropies that classify tokens: 'current' (policy being updated, official code) or "
                  "'old' (policy at generation time, paper Algorithm 1; costs one extra forward per batch)."},
    )
    # --- adaptive gradient clipping (see adaclip_rl.gradclip) ---
    grad_clip: str = field(
        default="fixed",
        metadata={"help": "Gradient clipping: 'none', 'fixed' (TRL/transformers max_grad_norm), 'zclip', 'adagc', "
                  "'autoclip' or 'quantile'. Adaptive modes keep max_grad_norm > 0 only as the switch."},
    )
    zclip_alpha: float = field(default=0.97, metadata={"help": "ZClip EMA factor alpha in (0, 1)."})
    zclip_z_thresh: float = field(default=2.5, metadata={"help": "ZClip z-score threshold (> 0)."})
    zclip_warmup_steps: int = field(default=25, metadata={"help": "ZClip warm-up steps (>= 1)."})
    adagc_lambda_rel: float = field(default=1.04, metadata={"help": "AdaGC relative threshold lambda_rel (> 0)."})
    adagc_beta: float = field(default=0.99, metadata={"help": "AdaGC EMA factor beta in (0, 1)."})
    adagc_warmup_steps: int = field(default=100, metadata={"help": "AdaGC warm-up steps of global clipping."})
    autoclip_percentile: float = field(default=10.0, metadata={"help": "AutoClip percentile in (0, 100]."})
    autoclip_window: int = field(default=1000, metadata={"help": "AutoClip window of past norms (>= 1)."})
    quantile_target: float = field(default=0.5, metadata={"help": "Quantile-tracking target quantile in (0, 1)."})
    quantile_lr: float = field(default=0.05, metadata={"help": "Quantile-tracking geometric learning rate (> 0)."})

    def policy_loss_config(self) -> GRPOClipConfig | BAPOConfig | ArcherConfig:
        """The :mod:`adaclip_rl.losses` config for ``policy_loss`` (raises ValueError naming our fields)."""
        return field_checks.policy_loss_config(self)

    def grad_clipper_kwargs(self) -> dict:
        """Keyword arguments for :func:`adaclip_rl.gradclip.build_grad_clipper` (validated there)."""
        return field_checks.grad_clipper_kwargs(self)
