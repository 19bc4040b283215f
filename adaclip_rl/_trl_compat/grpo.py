"""The seam's part for TRL's ``GRPOTrainer`` (see :mod:`adaclip_rl._trl_compat`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from trl import GRPOTrainer

from . import TrainerSeam, swapped_globals

__all__ = ["GRPOTrainerSeam", "vllm_engine_sized"]


# --------------------------------------------------------------------------- GRPOTrainer
class GRPOTrainerSeam(TrainerSeam, GRPOTrainer):
    """TRL's ``GRPOTrainer`` with the private members adaclip-rl uses under public names."""

    # --- hooks TRL calls
    def _compute_loss(self, model, inputs):
        return self.compute_policy_loss(model, inputs)

    def compute_policy_loss(self, model, inputs) -> torch.Tensor:
        """The micro-batch's loss (TRL's ``_compute_loss``, which ``compute_loss`` calls)."""
        return super()._compute_loss(model, inputs)

    def _generate_and_score_completions(self, inputs):
        return self.generate_and_score_completions(inputs)

    def generate_and_score_completions(self, inputs) -> dict[str, Any]:
        """TRL's generation, rewards, advantages and old/ref log-probs for a generation batch."""
        return super()._generate_and_score_completions(inputs)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        return self.calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def calculate_rewards(self, inputs, prompts, completions, completion_ids_list) -> torch.Tensor:
        """TRL's ``(rows, reward functions)`` rewards, gathered over ranks."""
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    # --- helpers
    def per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, **kwargs):
        """TRL's ``_get_per_token_logps_and_entropies``: ``(log-probs, entropies or None, aux loss or None)``."""
        return self._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep, **kwargs)

    def tokenize_prompts(self, prompts: list):
        """TRL's ``_tokenize_prompts``: ``(prompt_ids, ...)`` for a list of prompts."""
        return self._tokenize_prompts(prompts)

    def vllm_named_params(self):
        """``(name, tensor)`` of the policy as TRL streams it into its colocated vLLM."""
        return self.vllm_generation._iter_named_params()

    def mark_weights_synced(self, step: int) -> None:
        """Tell TRL the colocated engine holds the weights of ``step`` (TRL then skips its own push)."""
        self._last_loaded_step = step

    @contextlib.contextmanager
    def first_logps_call_returns(self, fn: Callable[..., Any]) -> Iterator[None]:
        """Within the block, the *first* call of TRL's ``_get_per_token_logps_and_entropies`` returns
        ``fn(model, input_ids, attention_mask, logits_to_keep, ...)`` instead of running the model; later
        calls run normally. TRL 1.16's ``_generate_and_score_completions`` makes its old-log-prob forward
        first (with ``vllm_importance_sampling_correction``), reference log-probs after: the tripwire on
        that function guards the order."""
        real = self._get_per_token_logps_and_entropies
        shadowed = "_get_per_token_logps_and_entropies" in self.__dict__

        def once(*a: Any, **kw: Any):
            self._get_per_token_logps_and_entropies = real  # only this first call is replaced
            return fn(*a, **kw)

        self._get_per_token_logps_and_entropies = once
        try:
            yield
        finally:
            if shadowed:
                self._get_per_token_logps_and_entropies = real
            else:
                del self._get_per_token_logps_and_entropies  # back to the class's method

    # --- state
    @property
    def micro_step(self) -> int:
        """TRL's micro-batch counter (``_step``): position in the generation batch's slices."""
        return self._step

    @property
    def buffered_inputs(self) -> list:
        """TRL's slices of the current generation batch (``_buffered_inputs``), one per micro-step."""
        return self._buffered_inputs

    @buffered_inputs.setter
    def buffered_inputs(self, value: list) -> None:
        self._buffered_inputs = value

    @property
    def entropy_bonus_enabled(self) -> bool:
        return self._entropy_bonus_enabled

    @property
    def last_world_entropy(self) -> float:
        """TRL's adaptive entropy controller: the last all-reduced entropy."""
        return self._last_world_entropy

    @last_world_entropy.setter
    def last_world_entropy(self, value: float) -> None:
        self._last_world_entropy = value

    @property
    def entropy_window_stats(self) -> torch.Tensor | None:
        """TRL's adaptive entropy controller: ``[sum entropy, tokens]`` of the accumulation window."""
        return self._entropy_window_stats

    @entropy_window_stats.setter
    def entropy_window_stats(self, value: torch.Tensor | None) -> None:
        self._entropy_window_stats = value


@contextlib.contextmanager
def vllm_engine_sized(sequences: int, no_chunked_prefill: Callable[[], bool]) -> Iterator[None]:
    """Within the block, TRL's colocated vLLM is built with ``max_num_seqs >= sequences`` and, where
    ``no_chunked_prefill()`` is true, ``enable_chunked_prefill=False``: ``GRPOTrainer.__init__``'s
    ``VLLMGeneration`` and ``trl.generation.vllm_generation``'s ``LLM`` are wrapped (TRL offers no setting)."""
    from trl.generation import vllm_generation
    from trl.trainer import grpo_trainer

    original = grpo_trainer.VLLMGeneration

    class _SizedVLLMGeneration(original):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, max_num_seqs: int | None = None, **kw: Any) -> None:
            super().__init__(*a, max_num_seqs=max(max_num_seqs or 0, sequences), **kw)

    swaps: dict[str, Any] = {}
    original_llm = getattr(vllm_generation, "LLM", None)
    if original_llm is not None:
        def _llm(*a: Any, **kw: Any) -> Any:
            if no_chunked_prefill():
                kw["enable_chunked_prefill"] = False
            return original_llm(*a, **kw)

        swaps["LLM"] = _llm
    with swapped_globals(grpo_trainer, VLLMGeneration=_SizedVLLMGeneration), \
            swapped_globals(vllm_generation, **swaps):
        yield


