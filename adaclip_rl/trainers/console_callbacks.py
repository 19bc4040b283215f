"""Trainer callbacks for a readable terminal: a progress bar instead of a metrics dict per step.

transformers' ``ProgressCallback`` writes every logged metrics dict to stdout (``PrinterCallback``
does the same without a bar), thousands of lines for a few hundred steps. The ``adaclip-rl``
commands swap them (:func:`use_console_callbacks`) for:

* :class:`MetricsProgressCallback`: a tqdm bar over optimizer steps (on stderr) with a few
  headline metrics as its postfix, and nothing written per step;
* :class:`JsonlMetricsCallback`: every logged metrics dict as one JSON line in
  ``<output_dir>/metrics.jsonl``. The ``report_to`` sinks (tensorboard, wandb, ...) are untouched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ..console import BAR_METRICS, METRICS_FILE


def _plain(value: Any) -> Any:
    """A JSON-safe copy of one logged value (tensors and numpy scalars become Python numbers)."""
    if hasattr(value, "item") and callable(value.item):
        try:
            value = value.item()
        except (ValueError, RuntimeError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN/inf are not valid JSON
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)


class JsonlMetricsCallback(TrainerCallback):
    """Append each logged metrics dict (with ``step`` and ``epoch``) to a JSON-lines file.

    Written by the main process only; the file is opened in append mode, so a resumed run
    continues the same log.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None

    def _file(self, args) -> Path:
        return self.path if self.path is not None else Path(args.output_dir) / METRICS_FILE

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch}
        record.update({k: _plain(v) for k, v in logs.items()})
        path = self._file(args)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


class MetricsProgressCallback(TrainerCallback):
    """A tqdm bar over optimizer steps with headline metrics as postfix; writes no dict lines."""

    def __init__(self, desc: str | None = None, metrics: Sequence[tuple[str, str]] = BAR_METRICS) -> None:
        self.desc = desc
        self.metrics = tuple(metrics)
        self.bar = None
        self._postfix: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and not args.disable_tqdm:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs:
            return
        for key, short in self.metrics:
            value = logs.get(key)
            if isinstance(value, int | float):
                self._postfix[short] = f"{value:.3g}"
        self.bar.set_postfix(self._postfix, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def use_console_callbacks(trainer, desc: str | None = None, metrics_file: str | Path | None = None) -> None:
    """Replace the trainer's per-step dict printers by a progress bar and a JSON-lines metrics log."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(MetricsProgressCallback(desc=desc))
    trainer.add_callback(JsonlMetricsCallback(metrics_file))
