"""The one seam between adaclip-rl and the private parts of TRL and transformers.

Every private name of TRL or transformers that adaclip-rl reads, writes, overrides or mirrors is
named in this package (``__init__`` here: versions, global swaps, ``transformers.Trainer``;
:mod:`.grpo`: ``GRPOTrainer``; :mod:`.async_grpo`: the asynchronous trainer and rollout worker)
and nowhere else (``tests/trainers/test_trl_seam.py`` reads the ``ast`` of every module of the
package outside ``adaclip_rl/_trl_compat/`` and fails on such a name). The trainers subclass the classes below and see
public names only:

* :class:`TrainerSeam` - ``transformers.Trainer``'s private hooks as public ones:
  ``_clip_grad_norm`` -> :meth:`~TrainerSeam.clip_gradients`, ``_save_checkpoint`` ->
  :meth:`~TrainerSeam.save_checkpoint_extras`, ``_load_optimizer_and_scheduler`` ->
  :meth:`~TrainerSeam.load_checkpoint_extras`; TRL's ``_metrics`` as :attr:`~TrainerSeam.logged_metrics`.
* :class:`GRPOTrainerSeam` - TRL's ``GRPOTrainer``: ``_compute_loss`` ->
  :meth:`~GRPOTrainerSeam.compute_policy_loss`, ``_generate_and_score_completions`` ->
  :meth:`~GRPOTrainerSeam.generate_and_score_completions`, ``_calculate_rewards`` ->
  :meth:`~GRPOTrainerSeam.calculate_rewards`; its state (``_step``, ``_buffered_inputs``, the entropy
  controller's ``_entropy_bonus_enabled`` / ``_last_world_entropy`` / ``_entropy_window_stats``,
  ``_last_loaded_step``) and helpers (``_get_per_token_logps_and_entropies``, ``_tokenize_prompts``,
  ``VLLMGeneration._iter_named_params``) under public names; :meth:`~GRPOTrainerSeam.first_logps_call_returns`
  (the off-policy trainer's skipped old-log-prob forward) and :func:`vllm_engine_sized` (the
  ``VLLMGeneration`` / ``vllm.LLM`` constructors TRL calls, wrapped).
* :class:`AsyncGRPOTrainerSeam` - TRL's experimental ``AsyncGRPOTrainer``: the module globals its
  constructor and ``get_train_dataloader`` read (peak-FLOPs lookup, rollout worker, queue dataset,
  collator) replaced through :func:`swapped_globals`; ``_set_signature_columns_if_needed``,
  ``_prepare_inputs`` and the per-step throughput accounting of its ``compute_loss``
  (:meth:`~AsyncGRPOTrainerSeam.account_forward`).
* :class:`RolloutLoopSeam`, :class:`RolloutWorkerSeam` - TRL's ``_AsyncRolloutLoop`` (a private
  class) and ``AsyncRolloutWorker``: ``_generate_one_turn`` / ``_generate_one`` / ``_score_group``
  as public hooks, ``_post``/``_retry``/``_request_model``/``_loop_kwargs``, the worker's loop class
  and a ``stop`` with a shorter join.

What each mirrored or patched function is, and what to re-check when TRL or transformers changes
it, is listed with its source hash in ``tests/trainers/test_trl_seam.py`` (:data:`MIRRORED` names
them). :func:`check_versions` refuses, at import, a TRL or transformers outside the range these were
checked against (``ADACLIP_RL_ALLOW_UNTESTED_TRL=1`` turns the refusal into a warning).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any

from packaging.version import Version

# --------------------------------------------------------------------------- versions
TRL_RANGE = ("1.16.0", "1.17")
"""TRL versions the mirrors below were checked against: ``>= TRL_RANGE[0]``, ``< TRL_RANGE[1]``."""
TRANSFORMERS_RANGE = ("5.16.1", "5.20")
"""transformers versions (``>=``, ``<``); pyproject.toml's bound and constraints/cpu-x86_64.txt agree."""
ALLOW_UNTESTED_ENV = "ADACLIP_RL_ALLOW_UNTESTED_TRL"


def version_problems(trl_version: str, transformers_version: str) -> list[str]:
    """What is outside the supported ranges, one sentence per package (empty when both are inside)."""
    problems = []
    for name, found, (low, high) in (("trl", trl_version, TRL_RANGE),
                                     ("transformers", transformers_version, TRANSFORMERS_RANGE)):
        if not Version(low) <= Version(found) < Version(high):
            problems.append(f"{name} {found} is installed; adaclip-rl supports {name}>={low},<{high}")
    return problems


def check_versions(trl_version: str | None = None, transformers_version: str | None = None) -> None:
    """Raise ``ImportError`` when TRL or transformers is outside the supported range (the trainers
    mirror and override private code of exactly these versions); a warning instead when
    ``ADACLIP_RL_ALLOW_UNTESTED_TRL=1``."""
    if trl_version is None or transformers_version is None:
        import transformers
        import trl

        trl_version = trl_version or trl.__version__
        transformers_version = transformers_version or transformers.__version__
    problems = version_problems(trl_version, transformers_version)
    if not problems:
        return
    message = ("; ".join(problems) + ". The trainers override and mirror private TRL/transformers code of these "
               "versions (adaclip_rl/trainers/_trl_compat.py); install a supported version (constraints/"
               f"cpu-x86_64.txt pins one), or set {ALLOW_UNTESTED_ENV}=1 to try anyway and run "
               "tests/trainers/test_trl_seam.py to see which mirrored functions changed.")
    if os.environ.get(ALLOW_UNTESTED_ENV, "").strip() in ("1", "true", "yes"):
        warnings.warn(message, UserWarning, stacklevel=2)
        return
    raise ImportError(message)


check_versions()

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR  # noqa: E402

MIRRORED: tuple[str, ...] = (
    "trl.trainer.grpo_trainer.GRPOTrainer.__init__",
    "trl.trainer.grpo_trainer.GRPOTrainer._compute_loss",
    "trl.trainer.grpo_trainer.GRPOTrainer._generate_and_score_completions",
    "trl.trainer.grpo_trainer.GRPOTrainer._get_per_token_logps_and_entropies",
    "trl.trainer.grpo_trainer.GRPOTrainer._calculate_rewards",
    "trl.trainer.grpo_trainer.GRPOTrainer._tokenize_prompts",
    "trl.trainer.grpo_trainer.GRPOTrainer._generate",
    "trl.generation.vllm_generation.VLLMGeneration.__init__",
    "trl.generation.vllm_generation.VLLMGeneration._init_vllm",
    "trl.generation.vllm_generation.VLLMGeneration._iter_named_params",
    "trl.experimental.async_grpo.async_grpo_trainer.AsyncGRPOTrainer.__init__",
    "trl.experimental.async_grpo.async_grpo_trainer.AsyncGRPOTrainer.compute_loss",
    "trl.experimental.async_grpo.async_grpo_trainer.AsyncGRPOTrainer.get_train_dataloader",
    "trl.experimental.async_grpo.async_grpo_trainer.AsyncGRPOTrainer._set_signature_columns_if_needed",
    "trl.experimental.async_grpo.async_grpo_trainer.AsyncGRPOTrainer._log_step_metrics",
    "trl.experimental.async_grpo.async_grpo_trainer.AsyncGRPOTrainer._sync_weight",
    "trl.experimental.async_grpo.async_grpo_trainer.RolloutQueueDataset.__iter__",
    "trl.experimental.async_grpo.async_grpo_trainer.DataCollatorForRollout.torch_call",
    "trl.experimental.async_grpo.async_rollout_worker._AsyncRolloutLoop._generate_one_turn",
    "trl.experimental.async_grpo.async_rollout_worker._AsyncRolloutLoop._generate_one",
    "trl.experimental.async_grpo.async_rollout_worker._AsyncRolloutLoop._score_group",
    "trl.experimental.async_grpo.async_rollout_worker._AsyncRolloutLoop._retry",
    "trl.experimental.async_grpo.async_rollout_worker._AsyncRolloutLoop._post",
    "trl.experimental.async_grpo.async_rollout_worker.AsyncRolloutWorker.__init__",
    "trl.experimental.async_grpo.async_rollout_worker.AsyncRolloutWorker.start",
    "trl.experimental.async_grpo.async_rollout_worker.AsyncRolloutWorker.stop",
    "trl.experimental.async_grpo.packing.tree_attention",
    "transformers.trainer.Trainer._clip_grad_norm",
    "transformers.trainer.Trainer._save_checkpoint",
    "transformers.trainer.Trainer._load_optimizer_and_scheduler",
    "transformers.trainer.Trainer._get_output_dir",
)
"""Every TRL/transformers function the seam overrides, wraps or mirrors, whose module globals it
swaps (the constructors and ``get_train_dataloader`` read them) or whose behaviour it relies on
beyond the signature (the order of calls in ``_generate_and_score_completions``); the tripwire test
(``tests/trainers/test_trl_seam.py``) pins each one's source hash with what to re-check when it changes."""


# --------------------------------------------------------------------------- globals
@contextlib.contextmanager
def swapped_globals(module: Any, **replacements: Any) -> Iterator[None]:
    """Within the block, ``module.<name>`` is ``replacements[name]``; restored on exit (also on error).

    The one way adaclip-rl replaces a TRL global, used where TRL offers no setting or argument
    (a constructor TRL calls by its module-level name). Each use is listed in :data:`MIRRORED`'s
    tripwires (the function that reads the global), so a TRL change to it is caught. Not
    thread-safe: the swap is visible to every thread for the duration of the block."""
    missing = [name for name in replacements if not hasattr(module, name)]
    if missing:
        raise AttributeError(f"{module.__name__} has no {missing}: TRL changed; see tests/trainers/test_trl_seam.py")
    originals = {name: getattr(module, name) for name in replacements}
    for name, value in replacements.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in originals.items():
            setattr(module, name, value)


# --------------------------------------------------------------------------- transformers.Trainer
class TrainerSeam:
    """``transformers.Trainer``'s private hooks under public names; goes in front of a Trainer subclass.

    Override :meth:`clip_gradients` (call ``super().clip_gradients(model)`` for the Trainer's own
    clip), :meth:`save_checkpoint_extras`, :meth:`check_checkpoint` and :meth:`load_checkpoint_extras` (chain with
    ``super()``)."""

    # --- hooks
    def _clip_grad_norm(self, model):
        return self.clip_gradients(model)

    def clip_gradients(self, model):
        """The Trainer's gradient clip (``max_grad_norm``); returns the pre-clip global norm."""
        return super()._clip_grad_norm(model)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        self.save_checkpoint_extras(folder)

    def save_checkpoint_extras(self, folder: str) -> None:
        """Called on every rank after the Trainer saved checkpoint ``folder`` (it may not exist on ranks
        that do not save)."""

    def _load_optimizer_and_scheduler(self, checkpoint):
        if checkpoint is not None:
            self.check_checkpoint(checkpoint)
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.load_checkpoint_extras(checkpoint)

    def check_checkpoint(self, checkpoint: str) -> None:
        """Called on resume from ``checkpoint`` before the Trainer restores anything: raise to refuse it."""

    def load_checkpoint_extras(self, checkpoint: str) -> None:
        """Called on resume from ``checkpoint`` (a folder) after the Trainer restored optimizer and scheduler."""

    # --- state
    @property
    def logged_metrics(self) -> dict[str, Any]:
        """TRL's ``{mode: {name: [values]}}`` averaged into each log (``_metrics``)."""
        return self._metrics



__all__ = [
    "ALLOW_UNTESTED_ENV", "MIRRORED", "TRANSFORMERS_RANGE", "TRL_RANGE", "TrainerSeam", "check_versions",
    "swapped_globals", "version_problems",
]
