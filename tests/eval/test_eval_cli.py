"""``adaclip-rl eval`` argument checking: bad input fails at once, before any model loads."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adaclip_rl.eval.cli import main
from adaclip_rl.eval.runner import check_model_ref, evaluate

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    """A directory that looks like a saved model (config.json); never loaded by these tests."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    t0 = time.perf_counter()
    rc = main(argv)
    assert time.perf_counter() - t0 < 5.0
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--benchmarks", "aime24,aime23"], "unknown benchmark 'aime23'; known benchmarks: aime24, aime25, amc23"),
        (["--benchmarks", "math500", "--n", "4", "--k", "1,8"], "--k 8 exceeds --n 4"),
        (["--benchmarks", "math500", "--n", "0"], "--n must be an integer >= 1"),
        (["--benchmarks", "math500", "--temperature", "-0.5"], "--temperature must be a finite number >= 0"),
        (["--benchmarks", "math500", "--temperature", "nan"], "--temperature must be a finite number >= 0"),
        (["--benchmarks", "math500", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--benchmarks", "math500", "--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1"),
        (["--benchmarks", "math500", "--limit", "0"], "--limit must be >= 1"),
        (["--benchmarks", "math500", "--k", "a,b"], "--k must be comma-separated integers"),
        (["--benchmarks", "aime25", "--data-dir", "DATA"], "neither 'aime25.jsonl'"),
        (["--benchmarks", "math500", "--data-dir", "/nonexistent/dir"], "--data-dir '/nonexistent/dir' does not exist"),
    ],
)
def test_bad_arguments_fail_fast(
    extra: list[str], message: str, model_dir: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = [str(data_dir) if x == "DATA" else x for x in extra]
    rc, err = _run(["--model", str(model_dir), *extra], capsys)
    assert rc == 2
    assert err.startswith("adaclip-rl eval: error: ")
    assert message in err


def test_missing_model_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _run(["--model", str(tmp_path / "no-such-model"), "--benchmarks", "math500"], capsys)
    assert rc == 2 and "model path" in err and "does not exist" in err
    (tmp_path / "empty").mkdir()
    rc, err = _run(["--model", str(tmp_path / "empty"), "--benchmarks", "math500"], capsys)
    assert rc == 2 and "has no config.json" in err


def test_argparse_errors_return_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "--benchmarks" in capsys.readouterr().out
    assert main(["--model", "x"]) == 2  # --benchmarks missing
    assert main(["--model", "x", "--benchmarks", "math500", "--backend", "tgi"]) == 2
    assert main(["--model", "x", "--benchmarks", "math500", "--temperature", "hot"]) == 2


def test_check_model_ref_hub_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        check_model_ref("some-org/some-model-not-cached")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    check_model_ref("some-org/some-model")  # plausible Hub id: accepted, resolved at load time
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_model_ref("out/checkpoint-500")  # 'out' is local: a mistyped path, not a Hub id


def test_python_api_validates_before_loading(model_dir: Path, data_dir: Path) -> None:
    with pytest.raises(ValueError, match="1 <= k <= n=2"):
        evaluate(str(model_dir), "math500", n=2, ks=[4], data_dir=data_dir)
    with pytest.raises(ValueError, match="unknown benchmark"):
        evaluate(str(model_dir), "math5000", data_dir=data_dir)
    with pytest.raises(ValueError, match="unknown backend"):
        evaluate(str(model_dir), "math500", backend="tgi", data_dir=data_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate(str(model_dir / "nope"), "math500", data_dir=data_dir)


def test_command_line_entry_point_fails_fast(tmp_path: Path) -> None:
    """The real ``python -m adaclip_rl.cli eval`` process: no torch/vLLM import before failing."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = (
        "import sys; from adaclip_rl.cli import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules and 'vllm' not in sys.modules, 'heavy import'; sys.exit(rc)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, "eval", "--model", str(tmp_path / "missing"), "--benchmarks", "aime24,foo"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "unknown benchmark 'foo'" in proc.stderr
    assert time.perf_counter() - t0 < 10
