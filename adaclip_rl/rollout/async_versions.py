"""Per-token policy versions for TRL's asynchronous rollout worker.

TRL 1.16's rollout loop labels a whole group with one ``model_version``, read when the group's
first request is sent; it never reaches the loss. Under ``/pause?mode=keep`` vLLM preempts the
requests in flight and, after ``/resume``, re-prefills them and keeps decoding under the **new**
weights, so one completion can hold tokens of two (or more) policies. The per-token behaviour
log-probs are exact either way (each token's log-prob comes from the weights that sampled it);
this module records the version of every token so the trainer can measure staleness per token:

* :class:`VersionedRolloutLoop` generates through vLLM's ``POST /inference/v1/generate`` (server flag
  ``--enable-scale-out``), which returns ``weight_versions`` spans ``[{version, start, end}]``; the
  trainer's weight transfer sets the version with ``/update_weight_version`` before each resume.
* :class:`VersionedRolloutSample` carries ``token_versions`` (one int per token of ``input_ids``,
  ``-1`` on context tokens) to the trainer.
* :class:`VersionedRolloutWorker` is TRL's ``AsyncRolloutWorker`` running that loop;
  :class:`ServerCheckedRolloutWorker` (its base) reports a dead vLLM server as :class:`~adaclip_rl.rollout.async_weights.ServerUnavailableError` when the
  trainer polls its health.

Rows built from several turns (tool calls) keep TRL's group version (a lower bound) unless their
trained tokens are exactly the turns' outputs in order.
"""

from __future__ import annotations

import contextvars
import random
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from trl.experimental.async_grpo.async_rollout_worker import RolloutGroup, RolloutSample

from .._trl_compat.async_grpo import RolloutLoopSeam, RolloutWorkerSeam
from .async_weights import ServerUnavailableError, _health

__all__ = ["ServerCheckedRolloutWorker", "VersionedRolloutLoop", "VersionedRolloutSample", "VersionedRolloutWorker", "expand_version_spans"]

# versions of each turn's output tokens, per rollout (each rollout runs in its own asyncio task)
_TURN_VERSIONS: contextvars.ContextVar[list[list[int]] | None] = contextvars.ContextVar("_TURN_VERSIONS", default=None)


@dataclass(slots=True)
class VersionedRolloutSample(RolloutSample):
    """TRL's ``RolloutSample`` plus ``token_versions`` (int64, one per token; ``-1`` on context)."""

    token_versions: np.ndarray | None = None


def _version_number(label: Any, default: int) -> int:
    try:
        return int(label)
    except (TypeError, ValueError):
        return default  # "default": the weights the server started with, before any update


def expand_version_spans(spans: list[dict[str, Any]] | None, n: int, default: int) -> list[int]:
    """One version per generated token from vLLM's ``[{version, start, end}]`` spans (``default`` where
    a token is not covered or the label is not a number)."""
    versions = [default] * n
    for span in spans or []:
        v = _version_number(span.get("version"), default)
        for i in range(max(0, int(span["start"])), min(n, int(span["end"]))):
            versions[i] = v
    return versions


class VersionedRolloutLoop(RolloutLoopSeam):
    """TRL's rollout loop with per-token policy versions (see the module docstring)."""

    async def generate_one_turn(self, prompt_ids: list[int]) -> tuple[list[int], list[float]]:
        sampling = {
            "max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty, "n": 1, "logprobs": 0, "seed": random.getrandbits(63),
        }
        if self.min_p is not None:
            sampling["min_p"] = self.min_p
        payload = {"model": self.request_model, "token_ids": list(prompt_ids), "sampling_params": sampling}
        output = await self.post_with_retry("/inference/v1/generate", payload, self.request_timeout,
                                            max_attempts=30, label="vllm /inference/v1/generate")
        choice = output["choices"][0]
        ids = list(choice["token_ids"])
        logprobs = [float(entry["logprob"]) for entry in choice["logprobs"]["content"]]
        versions = _TURN_VERSIONS.get()
        if versions is not None:
            versions.append(expand_version_spans(choice.get("weight_versions"), len(ids), self.model_version))
        return ids, logprobs

    async def generate_one(self, prompt, tool_dict, tools, group_id: int = 0):
        turn_versions: list[list[int]] = []
        token = _TURN_VERSIONS.set(turn_versions)
        try:
            result = await super().generate_one(prompt, tool_dict, tools, group_id)
        finally:
            _TURN_VERSIONS.reset(token)
        flat = [v for turn in turn_versions for v in turn]
        for seq in result[2]:  # TrainingSequence rows (plain dataclasses: an attribute can ride along)
            trained = [i for i, m in enumerate(seq.completion_mask) if m]
            if len(trained) == len(flat):
                versions = [-1] * len(seq.input_ids)
                for i, v in zip(trained, flat, strict=True):
                    versions[i] = v
                seq.token_versions = versions
        return result

    async def score_group(self, group: RolloutGroup) -> list[RolloutSample]:
        samples = await super().score_group(group)
        rows = [seq for seqs in group.completions_sequences for seq in seqs]  # super's order, one sample per row
        versioned_samples = []
        for sample, seq in zip(samples, rows, strict=True):
            versions = getattr(seq, "token_versions", None)
            if versions is None:  # multi-turn row that does not map 1:1: the group's lower bound
                versions = np.where(sample.completion_mask > 0, group.model_version, -1)
            values = {f.name: getattr(sample, f.name) for f in fields(RolloutSample)}
            token_versions = np.asarray(versions, dtype=np.int64)
            versioned_samples.append(VersionedRolloutSample(**values, token_versions=token_versions))
        return versioned_samples


class ServerCheckedRolloutWorker(RolloutWorkerSeam):
    """TRL's ``AsyncRolloutWorker`` whose health check also probes the vLLM server, so that a dead
    server is reported as such within one poll of the trainer (TRL's worker would retry its requests
    for minutes first)."""

    def check_health(self, stale_after_s: float) -> None:
        url = self.loop_kwargs.get("vllm_server_url")
        if url and not _health(url, timeout=2.0):
            raise ServerUnavailableError(
                f"vLLM server at {url} is not answering /health: rollouts cannot continue. Restart the server and "
                "resume training from the last checkpoint (trainer.train(resume_from_checkpoint=True)).")
        super().check_health(stale_after_s)

    stop_timeout_s: float = 5.0
    """``stop`` joins the child this long (TRL: 15 s): a child whose requests are retrying against a
    dead server would otherwise hold the trainer 15 s."""


class VersionedRolloutWorker(ServerCheckedRolloutWorker):
    """:class:`ServerCheckedRolloutWorker` running :class:`VersionedRolloutLoop`."""

    loop_cls = VersionedRolloutLoop
