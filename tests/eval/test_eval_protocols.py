"""Issue 30: evaluation numbers comparable with published ones.

Protocol presets, truncation handling, standard errors, HumanEval scored as the official harness,
maj@k by answer equivalence. Each test fails on the code before the issue (no ``protocol``, no
``_se`` metrics, untruncated HumanEval programs with fence extraction, raw-string votes).
"""

from __future__ import annotations

import json
import logging
import math
import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from eval_fakes import ScriptedBackend

from adaclip_rl.eval.answers import answer_key
from adaclip_rl.eval.backends import Completion, GenerationBackend, SamplingConfig
from adaclip_rl.eval.benchmarks import HUMANEVAL_STOP, get_benchmark
from adaclip_rl.eval.cli import main
from adaclip_rl.eval.metrics import compute_metrics, pass_at_k
from adaclip_rl.eval.protocols import LIGHTEVAL_MATH_TEMPLATE, PROTOCOLS, QWEN_MATH_SYSTEM
from adaclip_rl.eval.runner import evaluate


class RecordingBackend(GenerationBackend):
    """Scripted completions (text, finish reason) that records every prompt and SamplingConfig."""

    name = "recording"

    def __init__(self, answer: Any, tokenizer: object = None) -> None:
        self.answer = answer
        self.tokenizer = tokenizer
        self.seen: list[tuple[list[str], SamplingConfig]] = []

    def generate(self, prompts: Sequence[str], params: SamplingConfig) -> list[list[Completion]]:
        self.seen.append((list(prompts), params))
        out = []
        for p in prompts:
            row = []
            for j in range(params.n):
                text, reason = self.answer(p, j)
                row.append(Completion(text=text, num_tokens=len(text.split()) + 1, finish_reason=reason))
            out.append(row)
        return out


class ChatTok:
    """Minimal tokenizer with a chat template: renders ``[role]content`` lines."""

    chat_template = "fake"
    bos_token = None

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str:
        return "".join(f"[{m['role']}]{m['content']}\n" for m in messages) + "[assistant]"


# ----------------------------------------------------------------------------- 1. presets
def test_open_r1_preset_sets_every_setting_per_benchmark(data_dir: Path, tmp_path: Path) -> None:
    be = RecordingBackend(lambda p, j: ("\\boxed{0}", "stop"))
    summary = evaluate("m", "aime24,math500", backend=be, protocol="open-r1", data_dir=data_dir, limit=2,
                       out_dir=tmp_path)
    (aime_prompts, aime_params), (m5_prompts, m5_params) = be.seen
    # open-r1 README: lighteval vLLM with max_new_tokens=32768, temperature=0.6, top_p=0.95; n 64 / 4
    assert (aime_params.n, aime_params.temperature, aime_params.top_p, aime_params.max_new_tokens) == (
        64, 0.6, 0.95, 32768)
    assert m5_params.n == 4 and m5_params.max_new_tokens == 32768
    # lighteval's prompt (not the R1 card's) with the problem in it
    problem0 = get_benchmark("aime24").load(data_dir=data_dir, limit=1)[0][0].problem
    assert aime_prompts[0] == LIGHTEVAL_MATH_TEMPLATE.format(problem=problem0)
    assert "Therefore, the final answer is" in aime_prompts[0]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["protocol"]["preset"] == "open-r1" and saved["protocol"]["n"] == "per benchmark"
    st = saved["benchmarks"]["aime24"]["settings"]
    assert (st["n"], st["temperature"], st["top_p"], st["max_new_tokens"], st["truncated_zero"], st["scorer"]) == (
        64, 0.6, 0.95, 32768, False, "lighteval")
    assert "avg@64" in summary["benchmarks"]["aime24"]["metrics"]
    assert "avg@4" in summary["benchmarks"]["math500"]["metrics"]


def test_explicit_settings_override_the_preset(data_dir: Path) -> None:
    be = RecordingBackend(lambda p, j: ("\\boxed{0}", "stop"))
    summary = evaluate("m", "aime24,math500", backend=be, protocol="archer", n=2, max_new_tokens=100,
                       data_dir=data_dir, limit=1)
    for _, params in be.seen:
        assert (params.n, params.max_new_tokens, params.temperature, params.top_p) == (2, 100, 0.8, 1.0)
    assert summary["protocol"]["overrides"] == {"n": 2, "max_new_tokens": 100}


def test_qwen_math_preset_system_prompt_stop_and_greedy(data_dir: Path) -> None:
    be = RecordingBackend(lambda p, j: ("\\boxed{0}", "stop"), tokenizer=ChatTok())
    summary = evaluate("m", "gsm8k", backend=be, protocol="qwen-math", data_dir=data_dir, limit=1)
    (prompts, params), = be.seen
    assert prompts[0].startswith(f"[system]{QWEN_MATH_SYSTEM}\n[user]")
    assert params.stop == ("<|im_end|>", "<|endoftext|>") and params.temperature == 0.0 and params.n == 1
    assert summary["benchmarks"]["gsm8k"]["settings"]["system_prompt"] == QWEN_MATH_SYSTEM


def test_every_preset_is_valid_for_every_benchmark() -> None:
    from adaclip_rl.eval.benchmarks import BENCHMARKS

    for proto in PROTOCOLS.values():
        for name, bench in BENCHMARKS.items():
            st = proto.settings(name)
            SamplingConfig(n=st.n, temperature=st.temperature, top_p=st.top_p, max_new_tokens=st.max_new_tokens,
                           stop=st.stop)
            if bench.kind == "code":  # HumanEval is greedy pass@1 with its own prompt in every preset
                assert (st.n, st.temperature, st.template, st.system_prompt) == (1, 0.0, None, None), proto.name
            else:
                assert st.template is not None and "{problem}" in st.template, (proto.name, name)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--protocol", "r2"], "invalid choice: 'r2'"),
        (["--protocol", "open-r1", "--benchmarks", "math500", "--k", "8"], "--k 8 exceeds n=4 of math500"),
        (["--benchmarks", "math500", "--prompt-template", "no slot"], "--prompt-template must hold a {problem}"),
    ],
)
def test_cli_protocol_arguments(extra: list[str], message: str, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    argv = ["--model", str(model), *extra]
    if "--benchmarks" not in argv:
        argv += ["--benchmarks", "math500"]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------- 1b. truncation
def test_truncated_samples_warn_and_can_score_zero(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A sample cut at the budget ("...check 204 more carefully and") scores 1 from its last
    number; with truncated_zero it scores 0, and a budget hit by > 5% of samples is reported."""
    gold = get_benchmark("aime24").load(data_dir=data_dir, limit=1)[0][0].gold
    cut = f"... so the count is {gold}. Let me check {gold} more carefully and"
    be = RecordingBackend(lambda p, j: (cut, "length"))
    with caplog.at_level(logging.WARNING, logger="adaclip_rl.eval.runner"):
        loose = evaluate("m", "aime24", backend=be, data_dir=data_dir, limit=1, n=2)
    assert loose["benchmarks"]["aime24"]["metrics"]["avg@2"] == 1.0
    assert loose["benchmarks"]["aime24"]["generation"]["truncated_fraction"] == 1.0
    assert any("100.0% of the samples hit max_new_tokens" in r.getMessage() for r in caplog.records)
    strict = evaluate("m", "aime24", backend=be, data_dir=data_dir, limit=1, n=2, truncated_zero=True)
    assert strict["benchmarks"]["aime24"]["metrics"]["avg@2"] == 0.0
    assert strict["benchmarks"]["aime24"]["settings"]["truncated_zero"] is True


# ----------------------------------------------------------------------------- 2. standard errors
def test_standard_errors_match_the_plain_formula() -> None:
    rng = random.Random(0)
    for _ in range(20):
        n, problems = rng.randint(1, 6), rng.randint(2, 12)
        scores = [[float(rng.random() < 0.4) for _ in range(n)] for _ in range(problems)]
        answers = [[str(rng.randint(0, 2)) for _ in range(n)] for _ in range(problems)]
        m = compute_metrics(scores, answers, ks=[1, n])
        per_avg = [sum(r) / n for r in scores]
        assert m[f"avg@{n}_se"] == pytest.approx(statistics.stdev(per_avg) / math.sqrt(problems))
        for k in range(1, n + 1):
            per = [pass_at_k(n, int(sum(r)), k) for r in scores]
            assert m[f"pass@{k}_se"] == pytest.approx(statistics.stdev(per) / math.sqrt(problems))
        assert m[f"maj@{n}_se"] >= 0.0
    # the example: n=1 on AIME's 30 problems at 30% correct is about +-8.5 points
    m = compute_metrics([[1.0]] * 9 + [[0.0]] * 21)
    assert m["avg@1_se"] == pytest.approx(math.sqrt(0.3 * 0.7 / 29), rel=1e-12)
    assert 0.08 < m["avg@1_se"] < 0.09
    assert math.isnan(compute_metrics([[1.0, 0.0]])["avg@2_se"])  # one problem: undefined


def test_table_prints_standard_errors(data_dir: Path) -> None:
    answers = iter(range(10_000))
    be = ScriptedBackend(lambda p, j: f"\\boxed{{{next(answers) % 2}}}")
    summary = evaluate("m", "gsm8k", backend=be, data_dir=data_dir, limit=4, n=2)
    row = next(line for line in summary["table"].splitlines() if line.startswith("gsm8k "))
    assert "\u00b1" in row


# ----------------------------------------------------------------------------- 3. HumanEval
def _humaneval_with(data_dir: Path, tail: str, limit: int = 12, **kw: Any) -> tuple[dict, RecordingBackend]:
    bench = get_benchmark("humaneval")
    problems = bench.load(data_dir=data_dir, limit=limit)[0]
    body = {p.problem: p.gold for p in problems}
    be = RecordingBackend(lambda prompt, j: (body[prompt] + tail, "stop"))
    return evaluate("m", "humaneval", backend=be, data_dir=data_dir, limit=limit, n=1, **kw), be


@pytest.mark.parametrize(
    "tail",
    [
        "\ndef check_more(x):\n    return x +",  # run-on text cut mid-line
        "\n# Example usage\nprint(42)",
        "\nprint('usage:')\n```python\nresult = 1\n```\n",  # a fenced usage example after the body
        "\nif __name__ == '__main__':\n    import doctest\n",
        "\nclass Helper:\n    pass",
    ],
)
@pytest.mark.slow
def test_humaneval_completion_cut_at_official_stop_sequences(data_dir: Path, tail: str) -> None:
    summary, be = _humaneval_with(data_dir, tail)
    assert summary["benchmarks"]["humaneval"]["metrics"]["avg@1"] == 1.0
    (_, params), = be.seen
    assert params.stop == HUMANEVAL_STOP  # the engine stops there too


def test_humaneval_completion_runs_prompt_plus_completion_with_3s_limit(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No fence extraction in completion mode (the program is prompt + completion, as
    human_eval/execution.py builds it) and the official per-problem limit of 3 s."""
    import adaclip_rl.sandbox.runner as sandbox

    seen: list[tuple[str, Any]] = []

    def fake(program: str, **kw: Any) -> sandbox.SandboxResult:
        seen.append((program, kw["limits"]))
        return sandbox.SandboxResult(returncode=0, stdout="", stderr="", timed_out=False, killed_signal=None,
                                     wall_s=0.0, isolation_mode="fake", passed=True)

    monkeypatch.setattr(sandbox, "run_python_function_tests", fake)
    bench = get_benchmark("humaneval")
    p = bench.load(data_dir=data_dir, limit=1)[0][0]
    fenced = "```python\nresult = other(1)\n```"  # no stop sequence inside: kept, not extracted
    assert bench.score([p], [["    return 1\n" + fenced]]) == ([[1.0]], [[None]])
    program, limits = seen[0]
    assert program == p.problem + "    return 1\n" + fenced + "\n"
    assert limits.wall_time_s == 3.0 and limits.cpu_time_s == 3.0


# ----------------------------------------------------------------------------- 4. maj@k by equivalence
def test_answer_keys_group_spellings_of_one_answer() -> None:
    groups = [
        ["\\$18", "18", "18.00", "18\\text{dollars}", "18\\text{ dollars}", "$18$.", "18.0"],
        ["0.5", "\\frac{1}{2}", "\\dfrac12", "1/2", "\\tfrac{1}{2}", ".5"],
        ["025", "25"],
        ["90^\\circ", "90^{\\circ}", "90"],
        ["1,234", "1234"],
        ["\\left(3, \\frac{\\pi}{2}\\right)", "(3,\\frac{\\pi}{2})"],
        ["50\\%", "50"],
    ]
    keys = [{answer_key(a) for a in g} for g in groups]
    assert all(len(k) == 1 for k in keys), keys
    assert len(set().union(*keys)) == len(groups)  # different answers keep different keys
    assert answer_key("\\text{even}") == "even" and answer_key(None) is None and answer_key("  ") is None


@pytest.mark.slow
def test_three_right_spellings_beat_two_identical_wrong(data_dir: Path) -> None:
    bench = get_benchmark("gsm8k")
    problems = bench.load(data_dir=data_dir, limit=1)[0]
    g = problems[0].gold
    samples = [[f"\\boxed{{\\${g}}}", f"\\boxed{{{g}.00}}", "\\boxed{7}", f"\\boxed{{{g}\\text{{ dollars}}}}",
                "\\boxed{7}"]]
    scores, answers = bench.score(problems, samples)
    assert scores == [[1.0, 1.0, 0.0, 1.0, 0.0]]
    m = compute_metrics(scores, answers, ks=[5])
    assert m["maj@5"] == 1.0
    # tie-break: equal groups -> the group whose first sample came first
    m2 = compute_metrics([[0.0, 1.0, 0.0, 1.0]], [["7", g, "7", g]], ks=[4])
    assert m2["maj@4"] == 0.0
