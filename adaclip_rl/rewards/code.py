"""Code-execution rewards: HumanEval-style function tests and stdin/stdout cases, sandboxed.

Every program runs in :mod:`adaclip_rl.sandbox`. Nothing the program prints or returns
as an exit status is trusted as a verdict:

* function tests (:func:`check_humaneval`) are judged in a separate process that holds the tests
  and calls the candidate over a plain-data pipe (see
  :func:`~adaclip_rl.sandbox.run_python_function_tests`);
* stdin/stdout cases (:func:`check_stdio`) are judged here, in the parent, by comparing the
  captured output with the expected output.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
from collections.abc import Sequence
from typing import Any, Literal

from adaclip_rl.rewards._text import completion_text, fenced_blocks
from adaclip_rl.sandbox import (
    SandboxLimits,
    SandboxResult,
    max_parallel,
    run_python,
    run_python_function_tests,
)

logger = logging.getLogger(__name__)

__all__ = [
    "extract_code",
    "build_humaneval_program",
    "check_humaneval",
    "check_stdio",
    "code_accuracy",
    "outputs_match",
]


def extract_code(text: str, entry_point: str | None = None) -> str:
    """Pull the program out of a completion.

    With Markdown fences, the fenced blocks tagged ``python``/``py`` (or untagged) are
    considered; the last one defining ``entry_point`` wins, else the last block. Without fences
    the text is returned unchanged (a bare program, or a function body continuing a prompt).
    An unterminated final fence (a truncated completion) is taken up to the end of the text.
    Runs in time linear in ``len(text)`` (see :func:`~adaclip_rl.rewards._text.fenced_blocks`).
    """
    blocks = [(lang.lower(), body) for lang, body in fenced_blocks(text)]
    if not blocks:
        return text
    py = [b for lang, b in blocks if lang in ("python", "py", "python3", "")] or [b for _, b in blocks]
    if entry_point:
        defining = [b for b in py if _defines(b, entry_point)]
        if defining:
            return defining[-1]
    return py[-1]


def _defines(code: str, name: str) -> bool:
    return re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def build_humaneval_program(completion: str, prompt: str, entry_point: str) -> str:
    """The program to run for a HumanEval-style completion.

    * a completion that defines ``entry_point`` at top level (a full program, possibly inside a
      Markdown fence) runs after the prompt, so the prompt's imports and helper functions stay
      available and the completion's definition replaces the prompt's stub;
    * otherwise the completion is a function body continuing the prompt: ``prompt + completion``.
    """
    code = extract_code(completion, entry_point)
    if _defines(code, entry_point):
        if not prompt:
            return f"{code}\n"
        try:
            compile(prompt, "prompt", "exec")
            head = prompt.rstrip("\n") + "\n"
        except SyntaxError:  # a prompt ending in a bare ``def ...:`` needs a body
            head = prompt.rstrip("\n") + "\n    pass\n"
        return f"{head}\n\n{code}\n"
    return prompt + code + "\n"


def check_humaneval(
    completion: str,
    prompt: str,
    test: str,
    entry_point: str,
    *,
    limits: SandboxLimits | None = None,
) -> float:
    """1.0 if the completion passes the HumanEval ``test`` (``check(candidate)``), else 0.0.

    Args:
        completion: model output: a function body continuing ``prompt``, or a full program
            (optionally in a ```` ```python ```` block) defining ``entry_point``.
        prompt: the problem's code prompt (signature, docstring and helpers). It is trusted: the
            judge also executes it, so tests that call prompt helpers (e.g. ``poly``) work.
        test: test code defining ``check(candidate)``.
        entry_point: name of the function under test.
        limits: sandbox limits (default :class:`SandboxLimits`).
    """
    return _humaneval(completion, prompt, test, entry_point, limits)[0]


def _humaneval(
    completion: str, prompt: str, test: str, entry_point: str, limits: SandboxLimits | None
) -> tuple[float, list[SandboxResult]]:
    program = build_humaneval_program(completion, prompt, entry_point)
    res = run_python_function_tests(program, entry_point=entry_point, test=test, prompt=prompt, limits=limits)
    if res.error:
        logger.warning("sandbox error while judging %s: %s", entry_point, res.error)
    return (1.0 if res.passed else 0.0), [res]


def outputs_match(actual: str, expected: str) -> bool:
    """Compare program output with the expected output, token-insensitive to trailing space.

    Lines are compared after stripping trailing whitespace; trailing empty lines are ignored.
    """

    def norm(s: str) -> list[str]:
        lines = [ln.rstrip() for ln in s.replace("\r\n", "\n").split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        return lines

    return norm(actual) == norm(expected)


def check_stdio(
    program: str,
    cases: Sequence[tuple[str, str]],
    *,
    score: Literal["binary", "fraction"] = "binary",
    limits: SandboxLimits | None = None,
) -> float:
    """Run ``program`` once per ``(stdin, expected_stdout)`` case; the parent compares outputs.

    Args:
        program: Python source (a Markdown ```` ```python ```` block is extracted).
        cases: input/expected-output pairs (also accepts ``{"input": ..., "output": ...}``).
        score: ``"binary"`` (1.0 iff every case passes; stops at the first failure) or
            ``"fraction"`` (share of passing cases).
        limits: sandbox limits per case.

    Returns:
        The score in [0, 1]. A case passes only if the program exits with status 0 within its
        limits and its stdout matches (:func:`outputs_match`).
    """
    return _stdio(program, cases, score, limits)[0]


def _stdio(
    program: str, cases: Sequence[tuple[str, str]], score: str, limits: SandboxLimits | None
) -> tuple[float, list[SandboxResult]]:
    if score not in ("binary", "fraction"):
        raise ValueError(f"score must be 'binary' or 'fraction', got {score!r}")
    if not cases:
        raise ValueError("check_stdio needs at least one test case")
    code = extract_code(program)
    passed = 0
    runs: list[SandboxResult] = []
    for case in cases:
        stdin, expected = _case(case)
        res = run_python(code, stdin=stdin, limits=limits)
        runs.append(res)
        ok = res.ok and outputs_match(res.stdout, expected)
        passed += ok
        if not ok and score == "binary":
            return 0.0, runs
    return (passed / len(cases) if score == "fraction" else 1.0), runs


def _code_prefix(prompt: Any) -> str:
    """The prompt as a code prefix, or "" when it is not Python (a chat prompt, prose)."""
    if not isinstance(prompt, str) or not prompt.strip():
        return ""
    for candidate in (prompt, prompt.rstrip("\n") + "\n    pass\n"):
        try:
            compile(candidate, "prompt", "exec")
            return prompt
        except (SyntaxError, ValueError):
            continue
    return ""


def _case(case: Any) -> tuple[str, str]:
    if isinstance(case, dict):
        return str(case.get("input", "")), str(case.get("output", case.get("expected_output", "")))
    stdin, expected = case
    return str(stdin), str(expected)


def code_accuracy(
    completions: list[Any],
    test: list[str] | None = None,
    entry_point: list[str] | None = None,
    prompt: list[Any] | None = None,
    **kwargs: Any,
) -> list[float]:
    """TRL reward function for code: sandboxed tests, scored 1.0 / 0.0 (or a fraction).

    Dataset columns:
        * HumanEval style: ``test`` and ``entry_point``; the code prefix comes from
          ``code_prompt`` if present, else from the prompt (``prompt``, or TRL's ``prompts``)
          when it is a string that parses as Python (a conversational or prose prompt cannot be
          a code prefix, so the completion must then be a full program).
        * stdin/stdout style: ``test_cases``, a list of ``(input, output)`` pairs or
          ``{"input", "output"}`` dicts, per row; ``code_score`` (``"binary"``/``"fraction"``,
          default binary) per row or as a keyword.

    Runs the rows in parallel on a thread pool of the sandbox's ``max_parallel`` size; each row
    scores 0.0 on any failure (a sandbox error is logged, never raised).

    Under TRL's GRPO trainer (which passes ``log_metric`` and ``log_extra``), the sandbox's
    figures for the batch are logged: ``sandbox/memory_peak_mb`` (largest per-run peak, shared
    memory and kernel memory included), ``sandbox/memory_limit_mb``, ``sandbox/memory_exceeded``,
    ``sandbox/pids_exceeded`` and ``sandbox/timed_out`` (shares of runs), ``sandbox/cpu_s`` (mean
    per run); and a ``sandbox_mode`` column (the isolation mode) in the completions table.
    """
    n = len(completions)
    if prompt is None:  # TRL passes the prompts as ``prompts`` (the dataset's ``prompt`` column is withheld)
        prompt = kwargs.get("prompts")
    test_cases = kwargs.get("test_cases")
    code_prompt = kwargs.get("code_prompt")
    limits = kwargs.get("sandbox_limits")
    score_mode = kwargs.get("code_score", "binary")

    def one(i: int) -> tuple[float, list[SandboxResult]]:
        text = completion_text(completions[i])
        try:
            if test is not None and test[i] and entry_point is not None:
                prefix = ""
                if code_prompt is not None:
                    prefix = code_prompt[i] or ""
                elif prompt is not None:
                    prefix = _code_prefix(prompt[i])
                return _humaneval(text, prefix, test[i], entry_point[i], limits)
            if test_cases is not None and test_cases[i]:
                mode = score_mode[i] if isinstance(score_mode, (list, tuple)) else score_mode
                return _stdio(text, test_cases[i], mode, limits)
        except Exception:  # noqa: BLE001 - a broken row costs that sample only
            logger.exception("code_accuracy: row %d could not be judged; scored 0", i)
            return 0.0, []
        raise ValueError("code_accuracy needs 'test' + 'entry_point' or 'test_cases' columns")

    if n == 0:
        return []
    workers = max(1, min(n, max_parallel()))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="code-reward") as pool:
        rows = list(pool.map(one, range(n)))
    _log_sandbox_metrics(rows, limits, kwargs.get("log_metric"), kwargs.get("log_extra"))
    return [score for score, _ in rows]


def _log_sandbox_metrics(
    rows: list[tuple[float, list[SandboxResult]]],
    limits: SandboxLimits | None,
    log_metric: Any,
    log_extra: Any,
) -> None:
    """Report the batch's sandbox figures through TRL's reward-function logging hooks."""
    runs = [r for _, rs in rows for r in rs]
    if callable(log_extra):
        log_extra("sandbox_mode", [rs[0].isolation_mode if rs else "" for _, rs in rows])
    if not callable(log_metric) or not runs:
        return
    lim = limits or SandboxLimits()
    peaks = [r.memory_peak_mb for r in runs if r.memory_peak_mb is not None]
    cpu = [r.cpu_s for r in runs if r.cpu_s is not None]
    if peaks:
        log_metric("sandbox/memory_peak_mb", max(peaks))
    log_metric("sandbox/memory_limit_mb", float(lim.memory_mb))
    log_metric("sandbox/memory_exceeded", sum(r.memory_exceeded for r in runs) / len(runs))
    log_metric("sandbox/pids_exceeded", sum(r.pids_exceeded for r in runs) / len(runs))
    log_metric("sandbox/timed_out", sum(r.timed_out for r in runs) / len(runs))
    if cpu:
        log_metric("sandbox/cpu_s", sum(cpu) / len(cpu))
