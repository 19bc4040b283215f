"""Fixtures for the evaluation tests (the shared benchmark files)."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_fakes import DATA_DIR


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The benchmark files bundled with the package (real rows, ``adaclip_rl/data/benchmarks``)."""
    assert DATA_DIR.is_dir(), f"benchmark data not found at {DATA_DIR}"
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """Random tiny Qwen2 (vLLM-compatible) whose tokenizer is trained on the benchmarks' own text."""
    from adaclip_rl.eval.benchmarks import get_benchmark
    from adaclip_rl.tasks.tiny_model import TinyModelSpec, build_tiny_model

    texts: list[str] = []
    for name in ("math500", "gsm8k", "humaneval"):
        bench = get_benchmark(name)
        problems, _ = bench.load(data_dir=data_dir, limit=40)
        texts += [bench.render_prompt(p).text for p in problems]
    spec = TinyModelSpec(vocab_size=1024, max_position_embeddings=2048)
    return build_tiny_model(tmp_path_factory.mktemp("tiny_eval_model"), texts, spec)
