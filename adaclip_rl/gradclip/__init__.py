"""Adaptive gradient clipping, pure PyTorch (no trl / transformers import).

Clippers (one interface, :class:`GradClipper`):

- :class:`FixedClip` - ``torch.nn.utils.clip_grad_norm_`` semantics (baseline).
- :class:`ZClip` - z-score of the global norm against its EMA mean/variance (arXiv 2504.02507).
- :class:`AdaGC` - per-tensor thresholds from an EMA of clipped per-tensor norms (arXiv 2502.11034).
- :class:`AutoClip` - percentile of a bounded window of past norms (arXiv 2007.14469).
- :class:`QuantileClip` - Andrew et al.'s geometric quantile tracker, no noise (arXiv 1905.03871).

Typical use, once per optimizer step after backward (and after AMP unscaling)::

    clipper = build_grad_clipper("zclip")                  # "none" -> None
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    pre_clip_norm = clipper.clip_(params, norm_reduce_fn=norm_reduce_fn_for(model, params))
    optimizer.step()
    logs.update({f"gradclip/{k}": v for k, v in clipper.metrics().items()})
    ckpt["gradclip"] = clipper.state_dict()                # plain JSON-serialisable values

HF Trainer (transformers 5.x calls ``self._clip_grad_norm(model)`` at every sync step, only if
``args.max_grad_norm > 0``, and logs its return value as ``grad_norm``)::

    def _clip_grad_norm(self, model):
        if self.clipper is None:
            return super()._clip_grad_norm(model)
        self.accelerator.unscale_gradients()               # fp16 AMP only; exactly once
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        norm = self.clipper.clip_(params, norm_reduce_fn=norm_reduce_fn_for(model, params))
        for k, v in self.clipper.metrics().items():
            self._metrics["train"][f"gradclip/{k}"].append(v)
        return norm                                        # pre-clip norm, identical on all ranks

Sharded parameters: :func:`norm_reduce_fn_for` picks the reduction (DTensor/FSDP2 placements,
FSDP1 shard group, or none for DDP). DeepSpeed ZeRO clips inside ``engine.step()`` (run by
``accelerator.backward``) and ``p.grad`` is empty: set ``engine.optimizer.clip_grad =
clipper.lagged_threshold()`` for the next step and call ``clipper.step(engine.get_global_grad_norm())``
after each step (global clippers only; AdaGC is not supported under ZeRO).
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
from .registry import (
    GRAD_CLIPPER_SPECS,
    GRAD_CLIPPERS,
    GradClipperSpec,
    build_grad_clipper,
    get_grad_clipper_spec,
    register_grad_clipper,
)
from .zclip import ZClip

__all__ = [
    "GRAD_CLIPPERS",
    "GRAD_CLIPPER_SPECS",
    "AdaGC",
    "AutoClip",
    "FixedClip",
    "GlobalNormClipper",
    "GradClipper",
    "GradClipperSpec",
    "NormReduceFn",
    "QuantileClip",
    "ZClip",
    "all_reduce_sum",
    "apply_coefficients_",
    "build_grad_clipper",
    "dtensor_norm_reduce_fn",
    "get_grad_clipper_spec",
    "grad_sq_norms",
    "norm_reduce_fn_for",
    "normalize_param_name",
    "register_grad_clipper",
]
