"""Trainer callbacks for a readable terminal: a progress bar instead of a metrics dict per step.

transformers' ``ProgressCallback`` writes every logged metrics dict to stdout (``PrinterCallback``
does the same without a bar), thousands of lines for a few hundred steps. The ``adaclip-rl``
commands swap them (:func:`use_console_callbacks`) for:

* :class:`MetricsProgressCallback`: a tqdm bar over optimizer steps (on stderr) with a few
  headline metrics as its postfix on a terminal; in a log file (or with ``disable_tqdm``) a plain
  line every N steps with the same metrics, never ``\\r`` frames;
* :class:`JsonlMetricsCallback`: every logged metrics dict as one JSON line in
  ``<output_dir>/metrics.jsonl``. The ``report_to`` sinks (tensorboard, wandb, ...) are untouched.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ..console import BAR_METRICS, METRICS_FILE, format_metrics, is_interactive


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
    """Progress over optimizer steps with headline metrics; never a metrics dict per step.

    On a terminal (``stream.isatty()``), a tqdm bar with the metrics as postfix. Otherwise (a log
    file, a pipe, a CI job) or with ``disable_tqdm: true``: one plain line every ``every_steps``
    optimizer steps (default: a tenth of the run, from ``ADACLIP_PROGRESS_EVERY`` when set) or
    ``every_seconds`` (default 300, ``ADACLIP_PROGRESS_SECONDS``), whichever comes first, and at
    the last step; each line holds the step, elapsed time, s/step and the latest logged metrics::

        grpo training: step 8/16 (50%), 12 s, 1.50 s/step | loss 0.012 reward 0.25 entropy 1.9
    """

    def __init__(self, desc: str | None = None, metrics: Sequence[tuple[str, str]] = BAR_METRICS,
                 stream: TextIO | None = None, every_steps: int | None = None,
                 every_seconds: float | None = None) -> None:
        self.desc = desc
        self.metrics = tuple(metrics)
        self.stream = stream
        self.every_steps = every_steps or _env_number("ADACLIP_PROGRESS_EVERY", int)
        self.every_seconds = every_seconds or _env_number("ADACLIP_PROGRESS_SECONDS", float) or 300.0
        self.bar = None
        self.plain = False
        self._postfix: dict[str, str] = {}
        self._latest: dict[str, Any] = {}
        self._due = False
        self._printed_step = -1

    def _stream(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def on_train_begin(self, args, state, control, **kwargs):
        self.plain = False
        if not state.is_world_process_zero:
            return
        if args.disable_tqdm or not is_interactive(self._stream()):
            self.plain = True
            self._every = self.every_steps or max(1, math.ceil(state.max_steps / 10))
            self._t0 = self._last_line = time.monotonic()
            self._first_step = state.global_step
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc, dynamic_ncols=True,
                        file=self._stream())

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        elif self.plain:
            step = state.global_step
            if (step % self._every == 0 or step >= state.max_steps
                    or time.monotonic() - self._last_line >= self.every_seconds):
                self._due = True  # printed at this step's log (its metrics), or at the next step's end
                if not _logs_at(args, step):
                    self._print_line(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        for key, _ in self.metrics:
            value = logs.get(key)
            if isinstance(value, int | float):
                self._latest[key] = value
        if self.bar is not None:
            for key, short in self.metrics:
                if key in logs and isinstance(logs[key], int | float):
                    self._postfix[short] = f"{logs[key]:.3g}"
            self.bar.set_postfix(self._postfix, refresh=False)
        elif self.plain and self._due:
            self._print_line(state)

    def _print_line(self, state) -> None:
        step = state.global_step
        if step == self._printed_step:
            return
        elapsed = time.monotonic() - self._t0
        done = max(step - self._first_step, 1)
        pct = f" ({100 * step / state.max_steps:.0f}%)" if state.max_steps else ""
        head = f"{self.desc}: " if self.desc else ""
        line = f"{head}step {step}/{state.max_steps}{pct}, {elapsed:.0f} s, {elapsed / done:.2f} s/step"
        metrics = format_metrics(self._latest, self.metrics)
        print(line + (f" | {metrics}" if metrics else ""), file=self._stream(), flush=True)
        self._printed_step, self._due, self._last_line = step, False, time.monotonic()

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.plain and (self._due or self._printed_step != state.global_step):
            self._print_line(state)
        self.plain = False


def _logs_at(args, step: int) -> bool:
    """Whether the trainer logs at ``step`` (then the progress line waits for that step's metrics)."""
    strategy = str(getattr(args.logging_strategy, "value", args.logging_strategy))
    if strategy != "steps":
        return False
    every = args.logging_steps
    if isinstance(every, float) and every < 1:
        return False  # a ratio: resolved by the trainer; print at the step's end
    return step % max(int(every), 1) == 0 or step == 1 and getattr(args, "logging_first_step", False)


def _env_number(name: str, kind: type) -> Any:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(f"{name} must be a positive {kind.__name__}; got {value!r}") from None
    if number <= 0:
        raise ValueError(f"{name} must be a positive {kind.__name__}; got {value!r}")
    return number


def use_console_callbacks(trainer, desc: str | None = None, metrics_file: str | Path | None = None) -> None:
    """Replace the trainer's per-step dict printers by a progress bar and a JSON-lines metrics log."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(MetricsProgressCallback(desc=desc))
    trainer.add_callback(JsonlMetricsCallback(metrics_file))
