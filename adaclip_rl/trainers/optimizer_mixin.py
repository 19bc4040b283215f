"""``create_optimizer`` for the ``optimizer`` field (:mod:`adaclip_rl.optim`), shared by every trainer.

:class:`SpikeAwareOptimizerMixin` goes in front of a ``transformers.Trainer`` subclass. With
``optimizer: adamw`` nothing changes (the Trainer builds TRL's ``optim``); with ``spam`` or
``stable_spam`` the Trainer's own ``create_optimizer`` runs with our class and keyword arguments, so
the parameter groups are the Trainer's (no weight decay for biases and norms, one group per DTensor
mesh). An optimizer passed to the Trainer (``optimizers=`` / ``optimizer_cls_and_kwargs=``) together
with ``optimizer`` other than ``adamw`` is refused: one of the two would be ignored.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SpikeAwareOptimizerMixin"]


class SpikeAwareOptimizerMixin:
    """Builds the optimizer named by ``args.optimizer`` (see module doc)."""

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        spec = self.args.optimizer_spec
        if spec.cls is None:
            return super().create_optimizer(model)
        if self.optimizer is not None and not isinstance(self.optimizer, spec.cls):
            raise ValueError(f"optimizer={self.args.optimizer!r} but the Trainer was given an optimizer "
                             f"({type(self.optimizer).__name__}); pass one or the other")
        if self.optimizer is None:
            if getattr(self, "optimizer_cls_and_kwargs", None) is not None and \
                    self.optimizer_cls_and_kwargs[0] is not spec.cls:
                raise ValueError(f"optimizer={self.args.optimizer!r} but the Trainer was given "
                                 "optimizer_cls_and_kwargs; pass one or the other")
            self.optimizer_cls_and_kwargs = (spec.cls, spec.kwargs_from(self.args))
        return super().create_optimizer(model)
