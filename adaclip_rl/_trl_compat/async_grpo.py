"""The seam's part for TRL's experimental asynchronous GRPO (see :mod:`adaclip_rl._trl_compat`):
``AsyncGRPOTrainer``, its rollout worker and the worker's private rollout loop class."""

from __future__ import annotations

from typing import Any

import trl.experimental.async_grpo.async_grpo_trainer as _agt
from trl.experimental.async_grpo.async_rollout_worker import (
    AsyncRolloutWorker,
    RolloutGroup,
    RolloutSample,
    _AsyncRolloutLoop,
)

from . import TrainerSeam, swapped_globals

__all__ = ["TREE_ATTENTION", "AsyncGRPOTrainerSeam", "RolloutLoopSeam", "RolloutWorkerSeam", "peak_flops_cpu_safe"]


# --------------------------------------------------------------------------- AsyncGRPOTrainer
TREE_ATTENTION = _agt.TREE_ATTENTION
"""The attention-implementation name TRL's asynchronous trainer registers its tree-attention kernel under."""


def peak_flops_cpu_safe(accelerator, dtype):
    """TRL's peak-FLOPs lookup calls ``torch.cuda.get_device_name``; None (no MFU metric) off CUDA."""
    if accelerator.device.type != "cuda":
        return None
    from trl.trainer.utils import get_peak_flops_per_device

    return get_peak_flops_per_device(accelerator, dtype)


class AsyncGRPOTrainerSeam(TrainerSeam, _agt.AsyncGRPOTrainer):
    """TRL's ``AsyncGRPOTrainer`` with its module globals chosen by class attributes and the private
    members adaclip-rl uses under public names.

    Subclasses set :attr:`rollout_dataset_cls`, :attr:`rollout_collator_cls` and
    :attr:`extra_signature_columns`; the constructor takes ``rollout_worker_cls``."""

    rollout_dataset_cls: type = _agt.RolloutQueueDataset
    rollout_collator_cls: type = _agt.DataCollatorForRollout
    extra_signature_columns: tuple[str, ...] = ()

    def __init__(self, *a: Any, rollout_worker_cls: type | None = None, **kw: Any) -> None:
        swaps: dict[str, Any] = {"get_peak_flops_per_device": peak_flops_cpu_safe}
        if rollout_worker_cls is not None:
            swaps["AsyncRolloutWorker"] = rollout_worker_cls
        with swapped_globals(_agt, **swaps):
            super().__init__(*a, **kw)

    def get_train_dataloader(self):
        with swapped_globals(_agt, RolloutQueueDataset=self.rollout_dataset_cls,
                             DataCollatorForRollout=self.rollout_collator_cls):
            return super().get_train_dataloader()

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        for column in self.extra_signature_columns:
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    def _sync_weight(self):
        super()._sync_weight()
        self.after_weight_sync()

    def after_weight_sync(self) -> None:
        """Called on every rank after TRL published the weights to vLLM and bumped ``model_version``
        (on the main process only, in TRL 1.16)."""

    def prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The Trainer's ``_prepare_inputs`` (tensors to the device)."""
        return self._prepare_inputs(inputs)

    def account_forward(self, inputs: dict[str, Any], forward_s: float) -> None:
        """TRL 1.16's per-step throughput accounting at the end of ``compute_loss`` (``perf/*`` and
        ``batch/*`` metrics, logged by ``_log_step_metrics``), for a ``compute_loss`` that replaces TRL's."""
        self._last_forward_time_s = forward_s
        n_forward_tokens = float(inputs["global_n_forward_tokens"][0])
        mean_seq_len = float(inputs["mean_seq_len"][0])
        self._step_forward_tokens += n_forward_tokens
        self._step_trained_tokens += float(inputs["global_n_tokens"][0])
        self._step_seq_len_weighted += mean_seq_len * n_forward_tokens
        self._step_samples += n_forward_tokens / mean_seq_len
        self._step_forward_s += forward_s


# --------------------------------------------------------------------------- rollout worker
class RolloutLoopSeam(_AsyncRolloutLoop):
    """TRL's rollout loop (the private ``_AsyncRolloutLoop``) with public hooks: override
    :meth:`generate_one_turn`, :meth:`generate_one`, :meth:`score_group` (``super()`` reaches TRL's)."""

    async def _generate_one_turn(self, prompt_ids: list[int]) -> tuple[list[int], list[float]]:
        return await self.generate_one_turn(prompt_ids)

    async def generate_one_turn(self, prompt_ids: list[int]) -> tuple[list[int], list[float]]:
        """One completion of ``prompt_ids``: ``(token ids, log-probs)``."""
        return await super()._generate_one_turn(prompt_ids)

    async def _generate_one(self, prompt, tool_dict, tools, group_id: int = 0):
        return await self.generate_one(prompt, tool_dict, tools, group_id)

    async def generate_one(self, prompt, tool_dict, tools, group_id: int = 0):
        """One rollout (all its turns); ``result[2]`` holds its ``TrainingSequence`` rows."""
        return await super()._generate_one(prompt, tool_dict, tools, group_id)

    async def _score_group(self, group: RolloutGroup) -> list[RolloutSample]:
        return await self.score_group(group)

    async def score_group(self, group: RolloutGroup) -> list[RolloutSample]:
        """The group's samples, one per ``TrainingSequence`` row, in row order."""
        return await super()._score_group(group)

    @property
    def request_model(self) -> str:
        """The model name a request names (the base model or the loaded adapter)."""
        return self._request_model

    async def post_with_retry(self, path: str, payload: dict, timeout: float, *, max_attempts: int, label: str) -> dict:
        """TRL's ``_post`` retried on transport errors (``_retry``)."""
        return await self._retry(lambda: self._post(path, payload, timeout), max_attempts=max_attempts, label=label)


class RolloutWorkerSeam(AsyncRolloutWorker):
    """TRL's ``AsyncRolloutWorker`` with the loop class set by :attr:`loop_cls` and a ``stop`` whose
    join waits :attr:`stop_timeout_s` (TRL: 15 s)."""

    loop_cls: type | None = None
    stop_timeout_s: float = 15.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("loop_cls") is not None:
            cls._loop_cls = cls.loop_cls

    @property
    def loop_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the child's rollout loop is built with (``vllm_server_url``, ...)."""
        return self._loop_kwargs

    def stop(self) -> None:
        """TRL's stop (set the stop event, join, terminate, kill) with a ``stop_timeout_s`` join."""
        process = self._process
        if process is None:
            return
        self._stop_event_mp.set()
        if process._popen is not None:
            process.join(timeout=self.stop_timeout_s)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
                if process.is_alive():
                    process.kill()
        self._process = None


