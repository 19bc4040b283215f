"""Periodic evaluation during training, as a ``transformers.TrainerCallback``.

Every ``eval_every`` optimizer steps the policy being trained is evaluated in memory (no
checkpoint written) with the transformers backend on a small fixed subset (the first ``limit``
rows) of each benchmark, and ``eval/<benchmark>/avg@<n>`` with its standard error
``eval/<benchmark>/avg@<n>_se`` (plus ``pass@k`` and ``pass@k_se`` for ``k`` in ``ks``, and the
share of samples cut at the budget, ``truncated_fraction``) goes into the trainer's logs (``state.log_history`` and every reporting integration)::

    cb = PeriodicEvalCallback(["math500"], eval_every=50, limit=64, n=4, data_dir="bundled")
    cb.attach(trainer)   # trainer.add_callback(cb) and a handle for logging
    trainer.train()

Only the main process evaluates (a model sharded with ZeRO-3 / FSDP would need every rank to
take part in ``generate``; not supported here). The global RNG state and the model's train mode
are restored afterwards, so evaluation does not change the training run's randomness.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from adaclip_rl.data import resolve_data_dir
from adaclip_rl.eval.backends import SamplingConfig, TransformersBackend
from adaclip_rl.eval.benchmarks import parse_benchmark_specs
from adaclip_rl.eval.protocols import resolve_settings

logger = logging.getLogger(__name__)


class PeriodicEvalCallback(TrainerCallback):
    """Evaluate the in-training model every ``eval_every`` steps and log ``eval/<bench>/...``.

    Args:
        benchmarks: names or ``name=path.jsonl`` items (validated at construction).
        eval_every: evaluate when ``global_step % eval_every == 0`` (>= 1).
        limit: first ``limit`` rows of each benchmark.
        protocol: a preset of :mod:`adaclip_rl.eval.protocols` (None: the quick defaults n=1,
            T=0.6, top_p=0.95, 512 tokens - fine for watching a trend, not a published protocol).
        n, temperature, top_p, max_new_tokens, truncated_zero: explicit settings overriding the
            preset (None = the preset's / the quick default).
        seed: sampling seed (see ``evaluate``).
        ks: pass@k budgets to log besides ``avg@n`` (each <= n).
        data_dir: directory of local JSON-lines files replacing the Hub ("bundled": the shipped copies).
        tokenizer: the policy's tokenizer (default: the trainer's ``processing_class``).
        batch_size: sequences per ``generate`` call.
        eval_on_train_end: also evaluate after the last step if it was not an eval step.
        out_dir: when set, each evaluation writes records/summary under ``out_dir/step-<N>``.
    """

    def __init__(
        self,
        benchmarks: str | Sequence[str],
        *,
        eval_every: int = 100,
        limit: int | None = 32,
        protocol: str | None = None,
        n: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        truncated_zero: bool | None = None,
        seed: int = 0,
        ks: Sequence[int] = (),
        data_dir: str | os.PathLike[str] | None = None,
        tokenizer: Any = None,
        batch_size: int = 32,
        eval_on_train_end: bool = True,
        out_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(eval_every, int) or eval_every < 1:
            raise ValueError(f"eval_every must be an integer >= 1; got {eval_every!r}")
        self.specs = parse_benchmark_specs(benchmarks)
        if protocol is None:
            defaults = {"n": 1, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": 512}
            n, temperature, top_p, max_new_tokens = (
                v if v is not None else defaults[k]
                for k, v in (("n", n), ("temperature", temperature), ("top_p", top_p),
                             ("max_new_tokens", max_new_tokens))
            )
        self.sampling = {"protocol": protocol, "n": n, "temperature": temperature, "top_p": top_p,
                         "max_new_tokens": max_new_tokens, "truncated_zero": truncated_zero, "seed": seed}
        given = {k: v for k, v in self.sampling.items() if k not in ("protocol", "seed")}
        for bench, _ in self.specs:  # refuse bad settings now, not at the first evaluation
            st = resolve_settings(bench.name, protocol, given)
            SamplingConfig(n=st.n, temperature=st.temperature, top_p=st.top_p, max_new_tokens=st.max_new_tokens)
            bad = [k for k in ks if not 1 <= k <= st.n]
            if bad:
                raise ValueError(f"ks must be in [1, n={st.n}] ({bench.name}); got {bad}")
        self.eval_every = eval_every
        self.limit = limit
        self.ks = tuple(ks)
        self.data_dir = data_dir = resolve_data_dir(data_dir)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eval_on_train_end = eval_on_train_end
        self.out_dir = out_dir
        self.trainer: Any = None
        self.history: list[dict[str, float]] = []
        self._last_step = -1
        # Fail fast on missing local files.
        for bench, path in self.specs:
            bench.load(path=path, data_dir=data_dir, limit=1)

    def attach(self, trainer: Any) -> PeriodicEvalCallback:
        """Register on ``trainer`` and keep a handle so metrics go through ``trainer.log``."""
        self.trainer = trainer
        trainer.add_callback(self)
        if self.tokenizer is None:
            self.tokenizer = getattr(trainer, "processing_class", None)
        return self

    def run_eval(self, model: Any, step: int) -> dict[str, float]:
        """Evaluate ``model`` now; returns ``{"eval/<bench>/avg@n": ..., ...}``."""
        from adaclip_rl.eval.runner import evaluate

        if self.tokenizer is None:
            raise ValueError("PeriodicEvalCallback needs a tokenizer (pass tokenizer= or use attach(trainer))")
        backend = TransformersBackend(model, self.tokenizer, batch_size=self.batch_size, progress=False)
        out = None if self.out_dir is None else os.path.join(os.fspath(self.out_dir), f"step-{step}")
        summary = evaluate(
            model,
            [f"{b.name}={p}" if p is not None else b.name for b, p in self.specs],
            backend=backend,
            limit=self.limit,
            data_dir=self.data_dir,
            out_dir=out,
            ks=list(self.ks) or None,
            **self.sampling,
        )
        metrics: dict[str, float] = {}
        for name, entry in summary["benchmarks"].items():
            m = entry["metrics"]
            n = entry["settings"]["n"]
            for key in (f"avg@{n}", *(f"pass@{k}" for k in self.ks)):
                metrics[f"eval/{name}/{key}"] = m[key]
                metrics[f"eval/{name}/{key}_se"] = m[f"{key}_se"]
            metrics[f"eval/{name}/truncated_fraction"] = entry["generation"]["truncated_fraction"]
            metrics[f"eval/{name}/tokens_per_s"] = entry["generation"]["tokens_per_s"] or 0.0
        return metrics

    def _maybe_eval(self, state: TrainerState, control: TrainerControl, model: Any) -> None:
        if not state.is_world_process_zero or model is None or state.global_step == self._last_step:
            return
        self._last_step = state.global_step
        metrics = self.run_eval(model, state.global_step)
        self.history.append({"step": state.global_step, **metrics})
        if self.trainer is not None:
            # GRPOTrainer.log picks its metric buffer by model.training: log in eval mode so the
            # training buffer (averaged over logging_steps) is not flushed early.
            # trainer.log -> on_log clears control.should_log, which would drop the trainer's own
            # loss log due at this step: keep the flag as it was.
            was_training, should_log = model.training, control.should_log
            model.eval()
            try:
                self.trainer.log(dict(metrics))
            finally:
                model.train(was_training)
                control.should_log = should_log
        else:
            state.log_history.append({**metrics, "step": state.global_step})
        logger.info("step %d: %s", state.global_step, metrics)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        """Evaluate every ``eval_every`` steps."""
        if self.tokenizer is None:
            self.tokenizer = kwargs.get("processing_class")
        if state.global_step > 0 and state.global_step % self.eval_every == 0:
            self._maybe_eval(state, control, kwargs.get("model"))
        return control

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        """Final evaluation when the last step was not an evaluation step."""
        if self.eval_on_train_end and state.global_step > 0:
            self._maybe_eval(state, control, kwargs.get("model"))
        return control
