"""Transformers backend on the tiny model: shapes, token counts, seeding, side effects, and the
whole ``adaclip-rl eval --backend transformers`` run producing records and summary files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adaclip_rl.eval.backends import SamplingConfig, TransformersBackend, make_backend
from adaclip_rl.eval.benchmarks import sha256_file
from adaclip_rl.eval.cli import main

PROMPTS = ["What is 12+34?", "def add(a, b):\n", "Janet has 3 ducks."]


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> TransformersBackend:
    return TransformersBackend(str(tiny_model_dir), batch_size=4, progress=False)


def test_shapes_token_counts_and_seeding(backend: TransformersBackend) -> None:
    params = SamplingConfig(n=3, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=7)
    out = backend.generate(PROMPTS, params)
    assert [len(r) for r in out] == [3, 3, 3]
    for row in out:
        for c in row:
            assert 1 <= c.num_tokens <= 12 and c.finish_reason in ("stop", "length")
            assert (c.finish_reason == "length") == (c.num_tokens == 12 and c.finish_reason != "stop")
    again = backend.generate(PROMPTS, params)
    assert [[c.text for c in r] for r in out] == [[c.text for c in r] for r in again]
    other = backend.generate(PROMPTS, SamplingConfig(n=3, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=8))
    assert [[c.text for c in r] for r in out] != [[c.text for c in r] for r in other]
    # samples of one prompt differ (sampling, not copies)
    assert len({c.text for c in out[0]}) > 1


def test_samples_are_per_problem_under_limit_and_batch_size(tiny_model_dir: Path) -> None:
    """Issue 30: a problem's samples do not depend on --limit (which prompts come along) or on the
    batch size (how rows are grouped): each sample has its own seeded generator, as vLLM seeds
    per problem. (Before, the seed was per length-sorted batch, so both changed the samples.)"""
    params = SamplingConfig(n=3, temperature=1.0, top_p=0.9, max_new_tokens=10, seed=11)
    texts = {}
    for batch_size, prompts in ((16, PROMPTS), (3, PROMPTS), (1, PROMPTS), (4, PROMPTS[:2]), (2, PROMPTS[:1])):
        b = TransformersBackend(str(tiny_model_dir), batch_size=batch_size, progress=False)
        out = b.generate(prompts, params)
        for i, row in enumerate(out):
            texts.setdefault(i, []).append([c.text for c in row])
    for i, runs in texts.items():
        assert all(r == runs[0] for r in runs), (i, runs)
    assert len({t for r in texts[0] for t in r}) > 1  # still n different samples per problem


def test_stop_strings_end_generation(backend: TransformersBackend) -> None:
    params = SamplingConfig(n=1, temperature=1.0, max_new_tokens=24, seed=5)
    free = backend.generate(PROMPTS[:1], params)[0][0]
    text = free.text
    ks = [k for k in range(3, len(text) - 2) if text.find(text[k : k + 2]) == k and text[k : k + 2].strip()]
    assert ks, f"no usable stop string in the sampled text {text!r}"
    stop = text[ks[0] : ks[0] + 2]
    cut = backend.generate(PROMPTS[:1], SamplingConfig(**{**params.__dict__, "stop": (stop,)}))[0][0]
    assert cut.text == text[: ks[0]] and cut.finish_reason == "stop"
    assert cut.num_tokens < free.num_tokens or free.finish_reason == "stop"  # the engine stopped early


def test_greedy_and_ignore_eos(backend: TransformersBackend) -> None:
    greedy = backend.generate(PROMPTS, SamplingConfig(n=2, temperature=0.0, max_new_tokens=6))
    assert all(r[0] == r[1] for r in greedy)
    # batch composition does not change greedy outputs (left padding is handled)
    single = [backend.generate([p], SamplingConfig(n=1, temperature=0.0, max_new_tokens=6))[0][0] for p in PROMPTS]
    assert [r[0].text for r in greedy] == [c.text for c in single]
    full = backend.generate(PROMPTS, SamplingConfig(n=2, temperature=1.0, max_new_tokens=9, ignore_eos=True))
    assert all(c.num_tokens == 9 and c.finish_reason == "length" for r in full for c in r)


def test_in_memory_model_state_is_restored(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.train()
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    b = make_backend("transformers", model, tok, progress=False)
    out = b.generate(PROMPTS[:1], SamplingConfig(n=2, temperature=1.0, max_new_tokens=4))
    assert len(out[0]) == 2
    assert model.training, "train mode restored"
    assert torch.equal(torch.rand(1), expected_next), "global RNG untouched"
    with pytest.raises(ValueError, match="needs its tokenizer"):
        TransformersBackend(model)


@pytest.mark.slow
def test_cli_end_to_end_transformers(tiny_model_dir: Path, data_dir: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    rc = main([
        "--model", str(tiny_model_dir), "--benchmarks", "math500,gsm8k,humaneval", "--backend", "transformers",
        "--n", "2", "--temperature", "0.7", "--top-p", "0.9", "--max-new-tokens", "16", "--limit", "3",
        "--data-dir", str(data_dir), "--out", str(out), "--seed", "3", "--log-level", "WARNING",
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "math500" in printed and "pass@2" in printed and "backend=transformers" in printed
    # the terminal table records the protocol: sampling, dataset file hash and prompt template
    assert "protocol=none  model=" in printed and "seed=3  limit=3" in printed
    assert "math500: n=2 T=0.7 top_p=0.9 max_new_tokens=16 stop=[] truncated_zero=False" in printed
    assert "humaneval: n=2 T=0.7 top_p=0.9 max_new_tokens=16 stop=[] truncated_zero=False" in printed  # chat mode
    sha = sha256_file(data_dir / "gsm8k_test.jsonl")[:12]
    assert f"gsm8k: file {data_dir / 'gsm8k_test.jsonl'} sha256={sha} (1319 rows); prompt: chat template" in printed
    assert "Please reason step by step" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "summary.txt").read_text().strip() == summary["table"].strip()
    assert summary["model"] == str(tiny_model_dir)
    assert summary["backend"]["name"] == "transformers"
    proto = summary["protocol"]
    assert (proto["n"], proto["temperature"], proto["top_p"], proto["max_new_tokens"], proto["seed"]) == (2, 0.7, 0.9, 16, 3)
    assert proto["limit"] == 3
    for name, file in (("math500", "math500.jsonl"), ("gsm8k", "gsm8k_test.jsonl"), ("humaneval", "humaneval.jsonl")):
        entry = summary["benchmarks"][name]
        assert entry["num_problems"] == 3
        assert entry["source"]["sha256"] == sha256_file(data_dir / file)
        assert entry["chat_template"] is True and entry["chat_template_sha256"]
        assert "{problem}" in entry["prompt_template"] and "{{}}" not in entry["prompt_template"]
        gen = entry["generation"]
        assert 0 < gen["generated_tokens"] <= 3 * 2 * 16 and gen["tokens_per_s"] > 0
        assert set(entry["metrics"]) >= {"avg@2", "pass@1", "pass@2"}
        records = [json.loads(x) for x in (out / f"{name}.records.jsonl").read_text().splitlines()]
        assert len(records) == 3
        for r in records:
            assert r["prompt"].startswith("user: ") and r["prompt"].endswith("assistant: ")
            assert len(r["samples"]) == len(r["scores"]) == len(r["extracted"]) == len(r["num_tokens"]) == 2
            assert all(s in (0.0, 1.0) for s in r["scores"])


def test_evaluate_in_memory_model(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaclip_rl.eval.runner import evaluate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    summary = evaluate(model, ["amc23"], backend="transformers", tokenizer=tok, n=2, max_new_tokens=6, limit=2,
                       data_dir=data_dir, out_dir=tmp_path, backend_kwargs={"progress": False})
    assert summary["benchmarks"]["amc23"]["num_problems"] == 2
    assert summary["model"] == str(tiny_model_dir)  # name_or_path of the in-memory model
    assert (tmp_path / "amc23.records.jsonl").is_file()
    with pytest.raises(ValueError, match="vllm backend needs a model path"):
        evaluate(model, ["amc23"], backend="vllm", data_dir=data_dir)
