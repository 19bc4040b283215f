"""End-to-end extraction + verification on the real benchmark files with scripted backends.

A backend answering with the gold solution must score 100% on every row of math500, aime24,
amc23, gsm8k (``\\boxed{gold}``) and humaneval (the canonical solution); the datasets' own worked
solutions score 100% on math500 and aime24; a backend answering wrong must score 0%. All rows are
used.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_fakes import ScriptedBackend, prompt_table

from adaclip_rl.eval.benchmarks import Problem, get_benchmark
from adaclip_rl.eval.runner import evaluate

MATH = ["math500", "aime24", "amc23", "gsm8k"]


def _wrong_math(p: Problem) -> str:
    # A number no benchmark answer equals, different per problem (so votes are not all alike).
    return f"Some reasoning.\nThe final answer is \\boxed{{{p.index + 1}.123456789}}."


def _wrong_code(p: Problem) -> str:
    return "    raise NotImplementedError('wrong on purpose')\n"


def _backend(names: list[str], make_math, make_code) -> ScriptedBackend:  # type: ignore[no-untyped-def]
    table: dict[str, str] = {}
    for name in names:
        bench = get_benchmark(name)
        table.update(prompt_table(bench, make_math if bench.kind == "math" else make_code))
    return ScriptedBackend(lambda prompt, j: table[prompt])


@pytest.mark.slow
def test_gold_answers_score_100_and_wrong_answers_0_on_math(tmp_path: Path, data_dir: Path) -> None:
    gold = _backend(MATH, lambda p: get_benchmark("math500").gold_completion(p), None)
    summary = evaluate("gold-oracle", MATH, backend=gold, data_dir=data_dir, out_dir=tmp_path / "gold", n=1)
    for name in MATH:
        entry = summary["benchmarks"][name]
        assert entry["gold_unparsable"] == 0, name
        assert entry["metrics"]["avg@1"] == 1.0, (name, entry["metrics"])
        assert entry["metrics"]["pass@1"] == 1.0 and entry["metrics"]["maj@1"] == 1.0
    counts = {name: summary["benchmarks"][name]["num_problems"] for name in MATH}
    assert counts == {"math500": 500, "aime24": 30, "amc23": 40, "gsm8k": 1319}
    # records carry the extracted answers
    rec = json.loads((tmp_path / "gold" / "amc23.records.jsonl").read_text().splitlines()[0])
    assert rec["extracted"] == ["27"] and rec["scores"] == [1.0] and rec["gold"] == "27"

    wrong = _backend(MATH, _wrong_math, None)
    summary = evaluate("wrong-oracle", MATH, backend=wrong, data_dir=data_dir, n=1)
    for name in MATH:
        m = summary["benchmarks"][name]["metrics"]
        assert m["avg@1"] == 0.0 and m["pass@1"] == 0.0 and m["maj@1"] == 0.0, (name, m)


@pytest.mark.slow
def test_reference_solutions_score_100(data_dir: Path) -> None:
    """Whole worked solutions (the datasets' ``solution`` text, answer boxed at the end) as samples."""
    from adaclip_rl.eval.benchmarks import read_jsonl

    names = ["math500", "aime24"]
    table: dict[str, str] = {}
    for name in names:
        bench = get_benchmark(name)
        rows = read_jsonl(data_dir / bench.local_file)
        table.update(prompt_table(bench, lambda p, rows=rows: rows[p.index]["solution"]))
    summary = evaluate("solution-oracle", names, backend=ScriptedBackend(lambda prompt, j: table[prompt]),
                       data_dir=data_dir, n=2)
    for name in names:
        entry = summary["benchmarks"][name]
        assert entry["num_problems"] == {"math500": 500, "aime24": 30}[name]
        assert entry["metrics"]["avg@2"] == 1.0 and entry["metrics"]["maj@2"] == 1.0, (name, entry["metrics"])


@pytest.mark.slow
def test_gold_canonical_solutions_pass_and_wrong_fail_on_humaneval(tmp_path: Path, data_dir: Path) -> None:
    gold = _backend(["humaneval"], None, lambda p: p.gold)
    summary = evaluate("gold-oracle", "humaneval", backend=gold, data_dir=data_dir, out_dir=tmp_path)
    entry = summary["benchmarks"]["humaneval"]
    assert entry["num_problems"] == 164
    assert entry["metrics"]["pass@1"] == 1.0, entry["metrics"]
    assert "maj@1" not in entry["metrics"]  # no majority vote for code
    wrong = _backend(["humaneval"], None, _wrong_code)
    summary = evaluate("wrong-oracle", "humaneval", backend=wrong, data_dir=data_dir)
    assert summary["benchmarks"]["humaneval"]["metrics"]["pass@1"] == 0.0


def test_mixed_samples_give_the_expected_metrics(tmp_path: Path, data_dir: Path) -> None:
    """n=4 samples per AIME problem; sample j is right iff j < (index % 5): exact metric values."""
    bench = get_benchmark("aime24")
    problems = {bench.render_prompt(p).text: p for p in bench.load(data_dir=data_dir)[0]}

    def answer(prompt: str, j: int) -> str:
        p = problems[prompt]
        return bench.gold_completion(p) if j < p.index % 5 else _wrong_math(p)

    summary = evaluate(
        "mixed", "aime24", backend=ScriptedBackend(answer), data_dir=data_dir, n=4, ks=[1, 2, 4], out_dir=tmp_path
    )
    m = summary["benchmarks"]["aime24"]["metrics"]
    cs = [min(p.index % 5, 4) for p in problems.values()]
    assert m["avg@4"] == pytest.approx(sum(c / 4 for c in cs) / 30)
    assert m["pass@4"] == pytest.approx(sum(c > 0 for c in cs) / 30)
    assert m["pass@1"] == pytest.approx(m["avg@4"])
    # A problem's wrong samples all repeat one answer: the vote over the first k samples picks the
    # gold when it has at least as many votes (ties go to the earliest sample, a correct one).
    assert m["maj@1"] == pytest.approx(sum(c >= 1 for c in cs) / 30)
    assert m["maj@2"] == pytest.approx(sum(c >= 1 for c in cs) / 30)
    assert m["maj@4"] == pytest.approx(sum(c >= 2 for c in cs) / 30)
    recs = [json.loads(x) for x in (tmp_path / "aime24.records.jsonl").read_text().splitlines()]
    assert len(recs) == 30 and all(len(r["samples"]) == 4 == len(r["scores"]) for r in recs)
    assert [r["num_correct"] for r in recs] == cs
