"""Adaptive gradient clipping and its checkpoint state, shared by every adaclip-rl trainer.

:class:`AdaptiveGradClipMixin` goes in front of one of the seam's trainers
(:class:`~adaclip_rl._trl_compat.grpo.GRPOTrainerSeam` or
:class:`~adaclip_rl._trl_compat.async_grpo.AsyncGRPOTrainerSeam`, which expose transformers'
``_clip_grad_norm`` / ``_save_checkpoint`` / ``_load_optimizer_and_scheduler`` as public hooks). The trainer sets ``self.grad_clipper_spec`` (the registry's
:class:`~adaclip_rl.gradclip.GradClipperSpec` of ``grad_clip``) and ``self.grad_clipper`` (the
built clipper, ``None`` for ``fixed`` and ``none``) in its constructor; the mixin then

* overrides :meth:`clip_gradients` (the Trainer's ``_clip_grad_norm``): ``fixed`` is the Trainer's own clip, ``none`` measures the global
  norm without clipping, an adaptive clipper clips the accumulated gradient and logs ``gradclip/*``;
* writes the adaptive state (:meth:`adaclip_state_dict`) to ``adaclip_state.json`` in every
  checkpoint and restores it on resume.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from ..gradclip import grad_sq_norms, norm_reduce_fn_for

logger = logging.getLogger(__name__)

__all__ = ["ADACLIP_STATE_FILE", "AdaptiveGradClipMixin"]

ADACLIP_STATE_FILE = "adaclip_state.json"


def refuse_deepspeed_checkpoint_without_deepspeed(checkpoint: str) -> None:
    """A checkpoint written under DeepSpeed keeps its optimizer state as ZeRO shards (``global_step*/``,
    named by its ``latest`` file) and no ``optimizer.pt``; transformers, resuming it without DeepSpeed,
    finds no optimizer file and silently starts the optimizer afresh (AdamW's moments lost). Refused."""
    latest = os.path.join(checkpoint, "latest")
    if os.path.isfile(latest) and not os.path.isfile(os.path.join(checkpoint, "optimizer.pt")):
        with open(latest) as f:
            tag = f.read().strip()
        raise ValueError(
            f"resume_from_checkpoint={checkpoint!r} was written under DeepSpeed (optimizer state as ZeRO shards in "
            f"{tag}/, no optimizer.pt) but this run is not under DeepSpeed: resuming would silently restart the "
            "optimizer. Resume under the same DeepSpeed config and world size, or start a new run from the saved "
            "weights (model_name_or_path=<checkpoint>); see docs/scaling.md")


class AdaptiveGradClipMixin:
    """Gradient clipping by the registry's clipper and checkpointed adaptive state (see module doc)."""

    def clip_gradients(self, model):
        """Adaptive clipping (``grad_clip``); returns the pre-clip global norm, like transformers."""
        if self.grad_clipper_spec.trainer_clips:
            return super().clip_gradients(model)
        if getattr(self, "is_deepspeed_enabled", False):
            raise NotImplementedError(
                "grad_clip other than 'fixed' is not supported under DeepSpeed (the engine clips inside its step); "
                "see docs/gradient_clipping.md for the lagged-threshold path")
        self.accelerator.unscale_gradients()
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        reduce_fn = norm_reduce_fn_for(model, params)
        if self.grad_clipper is None:  # "none": measure, do not clip
            sq = grad_sq_norms([p for _, p in params])
            if reduce_fn is not None:
                sq = reduce_fn(sq)
            return sq.sum().sqrt()
        norm = self.grad_clipper.clip_(params, norm_reduce_fn=reduce_fn)
        for key, value in self.grad_clipper.metrics().items():
            self.logged_metrics["train"][f"gradclip/{key}"].append(float(value))
        return norm

    def adaclip_state_dict(self) -> dict[str, Any]:
        """Adaptive state that must survive a resume (TRL saves its entropy controller itself)."""
        return {"grad_clipper": self.grad_clipper.state_dict() if self.grad_clipper is not None else None}

    def load_adaclip_state_dict(self, state: dict[str, Any]) -> None:
        if self.grad_clipper is not None and state.get("grad_clipper") is not None:
            self.grad_clipper.load_state_dict(state["grad_clipper"])

    def save_checkpoint_extras(self, folder: str) -> None:
        super().save_checkpoint_extras(folder)
        if self.args.should_save:
            with open(os.path.join(folder, ADACLIP_STATE_FILE), "w") as f:
                json.dump(self.adaclip_state_dict(), f)

    def check_checkpoint(self, checkpoint: str) -> None:
        super().check_checkpoint(checkpoint)
        if not getattr(self, "is_deepspeed_enabled", False):
            refuse_deepspeed_checkpoint_without_deepspeed(checkpoint)

    def load_checkpoint_extras(self, checkpoint: str) -> None:
        super().load_checkpoint_extras(checkpoint)
        path = os.path.join(checkpoint, ADACLIP_STATE_FILE)
        if os.path.exists(path):
            with open(path) as f:
                self.load_adaclip_state_dict(json.load(f))
        else:
            logger.warning("checkpoint %s has no %s: adaptive state starts fresh", checkpoint, ADACLIP_STATE_FILE)
