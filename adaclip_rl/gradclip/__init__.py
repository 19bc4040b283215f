"""Adaptive gradient clipping, pure PyTorch (no trl / transformers import).

Clippers (one interface, :class:`GradClipper`):

- :class:`FixedClip` - ``torch.nn.utils.clip_grad_norm_`` semantics (baseline).
- :class:`ZClip` - z-score of the global norm against its EMA mean/variance (arXiv 2504.02507).
- :class:`AdaGC` - per-tensor thresholds from an EMA of clipped per-tensor norms (arXiv 2502.11034).
- :class:`AutoClip` - percentile of a bounded window of past norms (arXiv 2007.14469).
- :class:`QuantileClip` - Andrew et al.'s geometric quantile tracker, no noise (arXiv 1905.03871).

Typical use, once per optimizer step after backward (and after AMP unscaling)::

    clipper = build_grad_clipper("zclip")
    pre_clip_norm = clipper.clip_(model.named_parameters(), norm_reduce_fn=None)  # DDP / 1 process
    optimizer.step()
    logs.update({f"gradclip/{k}": v for k, v in clipper.metrics().items()})
    ckpt["gradclip"] = clipper.state_dict()

Sharded parameters (FSDP): pass ``norm_reduce_fn=all_reduce_sum(shard_group)`` or
``dtensor_norm_reduce_fn(params)`` (FSDP2). DeepSpeed ZeRO clips inside ``engine.step()``: set
``engine.optimizer.clip_grad = clipper.lagged_threshold()`` before the step and call
``clipper.step(engine.get_global_grad_norm())`` after it (global clippers only).
"""

from .adagc import AdaGC
from .autoclip import AutoClip
from .base import (
    GlobalNormClipper,
    GradClipper,
    NormReduceFn,
    apply_coefficients_,
    grad_sq_norms,
    normalize_param_name,
)
from .distributed import all_reduce_sum, dtensor_norm_reduce_fn, norm_reduce_fn_for
from .fixed import FixedClip
from .quantile import QuantileClip
from .registry import GRAD_CLIPPERS, build_grad_clipper, register_grad_clipper
from .zclip import ZClip

__all__ = [
    "GRAD_CLIPPERS",
    "AdaGC",
    "AutoClip",
    "FixedClip",
    "GlobalNormClipper",
    "GradClipper",
    "NormReduceFn",
    "QuantileClip",
    "ZClip",
    "all_reduce_sum",
    "apply_coefficients_",
    "build_grad_clipper",
    "dtensor_norm_reduce_fn",
    "grad_sq_norms",
    "norm_reduce_fn_for",
    "normalize_param_name",
    "register_grad_clipper",
]
