"""``AdaClipAsyncGRPOConfig``: TRL's ``AsyncGRPOConfig`` plus the adaclip-rl fields.

TRL 1.16's asynchronous GRPO (``trl.experimental.async_grpo``) generates with a separate vLLM
server while the trainer trains; this config adds the policy-loss fields (``policy_loss``,
``bapo_*``, ``archer_*``), the gradient clippers (``grad_clip*``) and the weight-transfer choice.
Invalid values are refused at construction, naming the field, the value and the allowed range.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trl.experimental.async_grpo import AsyncGRPOConfig

from ..losses.registry import get_policy_loss_spec
from ..rollout.config import STALENESS_POLICIES, RolloutConfig
from . import field_checks
from .adaclip_fields import AdaClipFields

__all__ = ["WEIGHT_TRANSFERS", "AdaClipAsyncGRPOConfig", "AsyncModelArguments"]

WEIGHT_TRANSFERS = ("auto", "nccl", "shared_file")
PAUSE_MODES = ("keep", "wait")


class _AsyncFieldView:
    """The config seen by :mod:`.field_checks`, whose checks read ``GRPOConfig`` fields that
    ``AsyncGRPOConfig`` does not have: the asynchronous loss is TRL's global token mean (the
    ``"dapo"`` aggregation) and has no ``delta`` cap."""

    _ASYNC_DEFAULTS: dict[str, Any] = {"loss_type": "dapo", "delta": None, "steps_per_generation": None}

    def __init__(self, cfg: Any) -> None:
        self._cfg = cfg

    def __getattr__(self, name: str) -> Any:
        if name in self._ASYNC_DEFAULTS and not hasattr(self._cfg, name):
            return self._ASYNC_DEFAULTS[name]
        return getattr(self._cfg, name)


@dataclass
class AdaClipAsyncGRPOConfig(AdaClipFields, AsyncGRPOConfig):
    r"""Asynchronous GRPO with adaptive clipping. See TRL's ``AsyncGRPOConfig`` for the base fields
    (``vllm_server_base_url``, ``max_staleness``, ``weight_sync_steps``, ``token_budget``, ...).

    The policy term is the registry's (``policy_loss``: ``grpo``, ``bapo``, ``archer``), applied to
    the ratio to the behaviour log-probs the rollout worker records per token.

    Parameters (besides :class:`~adaclip_rl.trainers.adaclip_fields.AdaClipFields`):
        weight_transfer: ``"nccl"`` (TRL's NCCL stream into the server; GPU), ``"shared_file"``
            (safetensors file + the server's in-place reload through its dev-mode RPC endpoint; works on
            CPU, needs a shared filesystem) or ``"auto"`` (NCCL when CUDA is available).
        weight_transfer_dir: folder in which the shared-file transfer makes its own private subfolder
            (``/dev/shm`` when None); only that subfolder is ever removed.
        weight_transfer_pause_mode: ``"keep"`` (TRL: in-flight requests continue under new weights)
            or ``"wait"`` (drain them first, one version per request) for the shared-file transfer.
        record_token_versions: record each generated token's policy version (needs the server's
            ``--enable-scale-out``; logged as ``staleness/*``).
        staleness_policy, staleness_decay: what the loss does with a sample whose oldest token is more
            than ``max_staleness`` versions old when it is trained (``"drop"``: weight 0,
            ``"downweight"``: ``staleness_decay ** excess``); TRL's own check drops samples by their
            group's first version when they are pulled, which a sample continued under newer
            weights (``pause_mode="keep"``) or trained a sync later can exceed.
    """

    weight_transfer: str = field(
        default="auto",
        metadata={"help": "'nccl' (TRL's NCCL transfer, GPU), 'shared_file' (safetensors file reloaded by the "
                  "server through VLLM_SERVER_DEV_MODE's /collective_rpc; CPU) or 'auto' (nccl with CUDA)."},
    )
    weight_transfer_dir: str | None = field(
        default=None, metadata={"help": "Folder in which the 'shared_file' transfer makes a private subfolder for the "
                                  "weights file (only that subfolder is removed); /dev/shm when None."}
    )
    weight_transfer_pause_mode: str = field(
        default="keep",
        metadata={"help": "'keep': in-flight requests continue under the new weights (TRL); 'wait': drain them "
                  "first so every request has one policy version ('shared_file' transfer)."},
    )
    record_token_versions: bool = field(
        default=True,
        metadata={"help": "Record the policy version of every generated token (server needs --enable-scale-out)."},
    )
    staleness_policy: str = field(
        default=RolloutConfig.__dataclass_fields__["staleness_policy"].default,
        metadata=RolloutConfig.__dataclass_fields__["staleness_policy"].metadata,
    )
    staleness_decay: float = field(
        default=RolloutConfig.__dataclass_fields__["staleness_decay"].default,
        metadata=RolloutConfig.__dataclass_fields__["staleness_decay"].metadata,
    )

    def __post_init__(self) -> None:
        self._validate_adaclip_fields()
        super().__post_init__()
        field_checks.check_optimizer_with_trl(self)
        if self.max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0; got {self.max_staleness!r}")
        if self.weight_sync_steps < 1:
            raise ValueError(f"weight_sync_steps must be >= 1; got {self.weight_sync_steps!r}")

    def _validate_adaclip_fields(self) -> None:
        """Refuse invalid adaclip-rl fields, naming the field, the value and the allowed range."""
        if self.weight_transfer not in WEIGHT_TRANSFERS:
            raise ValueError(f"weight_transfer must be one of {WEIGHT_TRANSFERS}; got {self.weight_transfer!r}")
        if self.staleness_policy not in STALENESS_POLICIES:
            raise ValueError(f"staleness_policy must be one of {list(STALENESS_POLICIES)}; got {self.staleness_policy!r}")
        if not (isinstance(self.staleness_decay, int | float) and 0.0 <= self.staleness_decay <= 1.0):
            raise ValueError(f"staleness_decay must be in [0.0, 1.0]; got {self.staleness_decay!r}")
        if self.weight_transfer_pause_mode not in PAUSE_MODES:
            raise ValueError(f"weight_transfer_pause_mode must be one of {PAUSE_MODES}; got "
                             f"{self.weight_transfer_pause_mode!r}")
        field_checks.validate_adaclip_fields(_AsyncFieldView(self))
        if get_policy_loss_spec(self.policy_loss).needs_old_entropies(self.policy_loss_config()):
            raise ValueError(
                f"archer_entropy_source must be 'current' with the asynchronous trainer; got "
                f"{self.archer_entropy_source!r} (the vLLM server returns sampled log-probs, not the entropies of "
                "the policy that generated the tokens)")

    def policy_loss_config(self):
        """The :mod:`adaclip_rl.losses` config for ``policy_loss``, built by the registry's spec."""
        return get_policy_loss_spec(self.policy_loss).config_from(_AsyncFieldView(self))

    def resolved_weight_transfer(self) -> str:
        """``weight_transfer`` with ``"auto"`` resolved (``"nccl"`` when CUDA is available)."""
        if self.weight_transfer != "auto":
            return self.weight_transfer
        import torch

        return "nccl" if torch.cuda.is_available() else "shared_file"


@dataclass
class AsyncModelArguments:
    """The model of ``adaclip-rl train`` with ``trainer: async`` (TRL's ``ModelConfig`` would clash
    with ``AsyncGRPOConfig.dtype``; the model is loaded by the trainer from its path)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Model id or directory; also the model name the vLLM server serves."}
    )
