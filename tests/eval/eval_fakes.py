"""Scripted generation backends and helpers shared by the evaluation tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from adaclip_rl.data import BENCHMARK_DIR
from adaclip_rl.eval.backends import Completion, GenerationBackend, SamplingConfig
from adaclip_rl.eval.benchmarks import Benchmark

DATA_DIR = BENCHMARK_DIR


class ScriptedBackend(GenerationBackend):
    """Answers each prompt with ``answer(prompt, j)`` for sample ``j`` (no model)."""

    name = "scripted"

    def __init__(self, answer: Callable[[str, int], str], tokenizer: object = None) -> None:
        self.answer = answer
        self.tokenizer = tokenizer
        self.calls = 0

    def generate(self, prompts: Sequence[str], params: SamplingConfig) -> list[list[Completion]]:
        self.calls += 1
        return [
            [Completion(text=(t := self.answer(p, j)), num_tokens=len(t.split()) + 1, finish_reason="stop")
             for j in range(params.n)]
            for p in prompts
        ]


def prompt_table(bench: Benchmark, make: Callable[[object], str], limit: int | None = None) -> dict[str, str]:
    """``{rendered prompt: make(problem)}`` for a benchmark's local rows (plain-text prompts)."""
    problems, _ = bench.load(data_dir=DATA_DIR, limit=limit)
    table: dict[str, str] = {}
    for p in problems:
        prompt = bench.render_prompt(p).text
        ans = make(p)
        # Identical prompts must want the same answer, or a prompt-keyed backend would be ambiguous.
        assert table.get(prompt, ans) == ans, f"{bench.name}: duplicate prompt with different answers"
        table[prompt] = ans
    return table
