"""Benchmark registry, local loading, field mapping and prompt rendering on the real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaclip_rl.eval.benchmarks import (
    BENCHMARKS,
    MATH_TEMPLATE,
    format_number_answer,
    get_benchmark,
    parse_benchmark_specs,
    sha256_file,
    vote_answer,
)
from adaclip_rl.tasks.tiny_model import build_tokenizer

EXPECTED_ROWS = {"aime24": 30, "amc23": 40, "math500": 500, "gsm8k": 1319, "humaneval": 164}


def test_registry_has_the_six_benchmarks() -> None:
    assert set(BENCHMARKS) == {"aime24", "aime25", "amc23", "math500", "gsm8k", "humaneval"}
    assert get_benchmark("MATH500").name == "math500"
    hub = {b.name: (b.hub_id, b.hub_config, b.split) for b in BENCHMARKS.values()}
    assert hub["gsm8k"] == ("openai/gsm8k", "main", "test")
    assert hub["math500"] == ("HuggingFaceH4/MATH-500", None, "test")
    assert hub["humaneval"][0] == "openai/openai_humaneval"


def test_unknown_benchmark_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown benchmark 'aime23'.*aime24, aime25, amc23, gsm8k, humaneval, math500"):
        get_benchmark("aime23")
    with pytest.raises(ValueError, match="unknown benchmark"):
        parse_benchmark_specs("math500,nope")
    with pytest.raises(ValueError, match="given twice"):
        parse_benchmark_specs("math500,math500")
    with pytest.raises(ValueError, match="no benchmark"):
        parse_benchmark_specs(" , ")


@pytest.mark.parametrize("name", sorted(EXPECTED_ROWS))
def test_load_local_files(name: str, data_dir: Path) -> None:
    bench = get_benchmark(name)
    problems, source = bench.load(data_dir=data_dir)
    assert len(problems) == EXPECTED_ROWS[name] == source["rows"]
    assert source["type"] == "local" and source["sha256"] == sha256_file(data_dir / bench.local_file)
    assert len(source["sha256"]) == 64
    assert all(p.problem.strip() and p.gold.strip() for p in problems)
    assert len({p.id for p in problems}) == len(problems)
    limited, _ = bench.load(data_dir=data_dir, limit=3)
    assert [p.id for p in limited] == [p.id for p in problems[:3]]


def test_field_mapping_details(data_dir: Path) -> None:
    amc, _ = get_benchmark("amc23").load(data_dir=data_dir, limit=1)
    assert amc[0].gold == "27"  # stored as 27.0
    gsm, _ = get_benchmark("gsm8k").load(data_dir=data_dir, limit=1)
    assert gsm[0].gold == "18" and gsm[0].problem.startswith("Janet")
    he, _ = get_benchmark("humaneval").load(data_dir=data_dir, limit=1)
    assert he[0].id == "HumanEval/0" and he[0].extra["entry_point"] == "has_close_elements"
    assert he[0].gold.startswith("    for idx")  # indentation of the canonical body kept
    aime, _ = get_benchmark("aime24").load(data_dir=data_dir, limit=8)
    assert aime[7].gold == "025"
    assert format_number_answer(3.5) == "3.5" and format_number_answer(" 7 ") == "7"


def test_explicit_file_and_missing_files(tmp_path: Path, data_dir: Path) -> None:
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n\n")
    (bench, path), = parse_benchmark_specs(f"math500={f}")
    problems, source = bench.load(path=path)
    assert problems[0].gold == "2" and problems[0].id == "math500/0" and source["path"] == str(f.resolve())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_benchmark_specs(f"math500={tmp_path / 'nope.jsonl'}")
    with pytest.raises(FileNotFoundError, match="aime25"):
        get_benchmark("aime25").load(data_dir=data_dir)  # not bundled with the package
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(KeyError, match="problem columns"):
        get_benchmark("math500").load(path=bad)


def test_prompt_rendering(data_dir: Path) -> None:
    math = get_benchmark("math500")
    (p,), _ = math.load(data_dir=data_dir, limit=1)
    plain = math.render_prompt(p)
    assert plain.text == MATH_TEMPLATE.format(problem=p.problem) and not plain.chat
    assert plain.template == "{problem}\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert plain.text.endswith("put your final answer within \\boxed{}.")
    tok = build_tokenizer(["hello world 123"])
    chat = math.render_prompt(p, tok)
    assert chat.chat and chat.text == f"user: {plain.text}\nassistant: "
    assert math.render_prompt(p, tok, chat=False).text == plain.text
    he = get_benchmark("humaneval")
    (h,), _ = he.load(data_dir=data_dir, limit=1)
    assert he.render_prompt(h).text == h.problem  # completion style without a chat template
    chat_code = he.render_prompt(h, tok).text
    assert "```python" in chat_code and h.problem in chat_code
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template requested"):
        math.render_prompt(p, tok, chat=True)


def test_hub_source_arguments_and_protocol(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    """Without a local file the rows come from ``datasets.load_dataset`` with the registry's arguments."""
    import datasets

    calls = []
    rows = [json.loads(x) for x in (data_dir / "gsm8k_test.jsonl").read_text().splitlines()[:5]]

    def fake_load_dataset(path: str, name: str | None = None, *, split: str, revision: str | None = None):  # type: ignore[no-untyped-def]
        calls.append((path, name, split, revision))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    problems, source = get_benchmark("gsm8k").load(limit=2)
    assert calls == [("openai/gsm8k", "main", "test", None)]
    assert [p.gold for p in problems] == ["18", "3"]
    assert source["type"] == "hub" and source["id"] == "openai/gsm8k" and source["config"] == "main"
    assert source["rows"] == 5 and source["resolved_revision"] is None  # offline: not resolvable

    # The whole evaluation records the Hub source in the summary and in the printed table.
    from eval_fakes import ScriptedBackend

    from adaclip_rl.eval.runner import evaluate

    summary = evaluate("oracle", "gsm8k", backend=ScriptedBackend(lambda prompt, j: "\\boxed{18}"), limit=2)
    entry = summary["benchmarks"]["gsm8k"]
    assert entry["source"]["type"] == "hub" and entry["metrics"]["avg@1"] == 0.5
    assert "gsm8k: hub openai/gsm8k/main:test@unresolved fingerprint=" in summary["table"]
    assert "prompt: plain text, template '{problem}\\nPlease reason step by step" in summary["table"]
    assert summary["protocol"]["limit"] == 2


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("so the result is \\boxed{104.}", "104"),  # last box, final period dropped
        ("first \\boxed{3} then \\boxed{\\dfrac{1}{2}}", "1/2,3"),  # every box: the set of values
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})"),
        ("\\boxed{1,234}", "1234"),
        ("The answer is $\\frac{1}{2}$.", "1/2"),  # no box: "answer is" ...
        ("Answer: 17. Because 17 is prime.", "17"),
        ("3 eggs...\n#### 1,000", "1000"),  # ... GSM8K marker ...
        ("$180 + 24 = 204$. -sepehr2010", "204"),  # ... last number (not inside a word)
        ("no answer here", None),
        ("\\boxed{}", None),
    ],
)
def test_vote_answer(text: str, key: str | None) -> None:
    assert vote_answer(text) == key


def test_unboxed_correct_samples_vote(data_dir: Path) -> None:
    """A sample the verifier accepts without a box still votes, so maj@k cannot fall below a
    problem where every sample is right (the AIME reference solution of row 0 has no box)."""
    bench = get_benchmark("aime24")
    problems, _ = bench.load(data_dir=data_dir, limit=1)
    gold = problems[0].gold
    samples = [[f"So the walk takes {gold} minutes.", f"Total: $180 + 24 = {gold}$.", "\\boxed{7}"]]
    scores, answers = bench.score(problems, samples)
    assert scores == [[1.0, 1.0, 0.0]]
    assert answers == [[gold, gold, "7"]]
