"""Off-policy rollout machinery: behaviour data, vLLM colocate engine, partial rollouts, replay, staleness.

* :mod:`.config` - :class:`RolloutConfig`, validated at construction
* :mod:`.behaviour` - per-sample tokens, behaviour log-probs and per-token policy versions; collation
* :mod:`.engine` - engine protocol (requests, outputs, sampling settings)
* :mod:`.vllm_engine` - in-process ``vllm.LLM`` (TRL colocate mode) with versioned weight sync
* :mod:`.partial` - round-based partial rollouts with carry-over across weight updates
* :mod:`.importance` - importance correction against the behaviour policy: truncated / masked importance weights and staleness weights (pure torch)
* :mod:`.replay` - replay buffer of scored groups with exact checkpoint round-trip
* :mod:`.schedule` - one rank's generation batch: replayed share, pre-fill, top-up, checkpoint state

Nothing here imports vLLM at module import time; :mod:`.vllm_engine` imports it when an engine is built.
"""

from .behaviour import BehaviourSample, collate_behaviour, pad_versions
from .config import RolloutConfig
from .engine import GenerationOutput, GenerationRequest, RolloutEngine, SamplingSettings
from .importance import (
    BehaviourCorrection,
    behaviour_correction,
    importance_weights,
    sequence_staleness,
    staleness_weights,
    token_staleness,
)
from .partial import PartialRolloutManager, RolloutGroup
from .replay import ReplayBuffer, ReplayGroup
from .schedule import BatchScheduler, ReplayShare

__all__ = [
    "BatchScheduler",
    "BehaviourCorrection",
    "BehaviourSample",
    "GenerationOutput",
    "GenerationRequest",
    "PartialRolloutManager",
    "ReplayBuffer",
    "ReplayGroup",
    "ReplayShare",
    "RolloutConfig",
    "RolloutEngine",
    "RolloutGroup",
    "SamplingSettings",
    "behaviour_correction",
    "collate_behaviour",
    "importance_weights",
    "pad_versions",
    "sequence_staleness",
    "staleness_weights",
    "token_staleness",
]
