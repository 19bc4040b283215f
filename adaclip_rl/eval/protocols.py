"""Named evaluation protocols: the settings of a published table, so that our number can stand
beside it.

A :class:`Protocol` fixes, per benchmark, the sampling (temperature, top-p, ``n`` samples,
generation budget, stop strings), the prompt (user template, system prompt) and the scoring rule
for samples cut at the budget. ``evaluate(..., protocol="open-r1")`` / ``adaclip-rl eval
--protocol open-r1`` use them; any explicit argument (``--n``, ``--temperature``...) overrides the
preset's value for every benchmark, and the summary records the preset and every resolved value.

Sources (see docs/evaluation.md for the table and what each source leaves open):

* ``r1`` - DeepSeek-R1 (arXiv:2501.12948, section 3 "Evaluation setup"; model card "Usage
  recommendations"): T=0.6, top-p=0.95, 32,768 generated tokens, no system prompt, the user
  prompt "{problem}\\nPlease reason step by step, and put your final answer within \\boxed{}.".
  The paper samples "4 to 64" responses per question without naming ``n`` per benchmark; we
  use open-r1's choices (64 for AIME, 4 for MATH-500) and 64 for AMC (40 problems, AIME-sized).
* ``open-r1`` - huggingface/open-r1 README "Evaluating models" / "Reproducing Deepseek's
  evaluation results": lighteval with vLLM, ``max_new_tokens=32768, temperature=0.6,
  top_p=0.95``; ``n`` = 64 (AIME 2024), 4 (MATH-500); the prompt of lighteval at the commit
  open-r1 pins (``d3da6b9``: ``src/lighteval/tasks/default_prompts.py``, ``aime_prompt_fn`` and
  ``math_500``) and lighteval's scoring (``scorer="lighteval"``).
* ``qwen-math`` - QwenLM/Qwen2.5-Math ``evaluation/sh/eval.sh`` (``--temperature 0 --top_p 1
  --n_sampling 1``) and ``evaluation/utils.py`` prompt ``qwen25-math-cot`` (the system prompt
  "Please reason step by step, and put your final answer within \\boxed{}.", the problem as the
  user message); ``math_eval.py`` budget ``max_tokens_per_call=2048`` and stop words
  ``<|im_end|>``, ``<|endoftext|>``.
* ``dapo`` - BytedTsinghua-SIA/DAPO README "Evaluation on AIME 2024": avg@32, T=1.0, top-p=0.7,
  20,480 tokens, the "Answer: $Answer" prompt of its training data.
* ``archer`` - wizard-III/ArcherCodeR README and ``scripts/eval/run_eval.sh``: T=0.8, top-p=1.0,
  32K tokens, avg@64 on AIME and AMC, avg@4 on MATH-500.

HumanEval in every preset follows Chen et al. 2021 (Codex) / openai/human-eval for pass@1:
greedy (T=0, one sample), completion mode cut at the stop sequences of the Codex paper; the math
presets do not report HumanEval and their budget is kept.

No preset scores truncated samples 0 (``truncated_zero``), because none of these sources says it
does; the option exists for users who want it (``--truncated-zero``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

R1_MATH_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
LIGHTEVAL_MATH_TEMPLATE = (
    "Solve the following math problem efficiently and clearly.  The last line of your response should be "
    "of the following format: 'Therefore, the final answer is: $\\boxed{{ANSWER}}$. I hope it is correct' "
    "(without quotes) where ANSWER is just the final number or expression that solves the problem. Think "
    "step by step before answering.\n\n{problem}"
)
QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
DAPO_MATH_TEMPLATE = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\n"
    'Remember to put your answer on its own line after "Answer:".'
)
MATH_BENCHMARKS = ("aime24", "aime25", "amc23", "math500", "gsm8k")


@dataclass(frozen=True)
class BenchSettings:
    """Resolved generation and scoring settings of one benchmark.

    Attributes:
        n: samples per problem.
        temperature, top_p: sampling (temperature 0 = greedy).
        max_new_tokens: generation budget per sample.
        stop: stop strings (the engine stops there; the text is cut before them).
        system_prompt: system message of the chat template (None = none).
        template: user-message template with a ``{problem}`` slot (None = the benchmark's own).
        truncated_zero: score samples that hit ``max_new_tokens`` 0.
        scorer: math answer checking, ``"adaclip"`` (boxed-first, every box, tidied golds) or
            ``"lighteval"`` (lighteval's extractive match as open-r1 runs it); see
            :func:`adaclip_rl.rewards.math.verify_math_answers`.
    """

    n: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 4096
    stop: tuple[str, ...] = ()
    system_prompt: str | None = None
    template: str | None = None
    truncated_zero: bool = False
    scorer: str = "adaclip"

    def __post_init__(self) -> None:
        from adaclip_rl.rewards.math import SCORERS

        if self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {', '.join(SCORERS)}; got {self.scorer!r}")


# HumanEval keeps its own prompt (completion mode, or the fenced-function chat prompt) and stop
# sequences; a math preset's template, system prompt and chat stop strings do not apply.
HUMANEVAL_GREEDY = {"n": 1, "temperature": 0.0, "top_p": 1.0, "template": None, "system_prompt": None, "stop": ()}


@dataclass(frozen=True)
class Protocol:
    """A named preset: defaults for every benchmark plus per-benchmark overrides."""

    name: str
    source: str
    default: BenchSettings
    per_benchmark: dict[str, dict[str, Any]] = field(default_factory=dict)

    def settings(self, benchmark: str) -> BenchSettings:
        """The settings of ``benchmark`` under this preset."""
        return replace(self.default, **self.per_benchmark.get(benchmark, {}))

    def describe(self) -> dict[str, Any]:
        """Preset as a plain dict (for summaries)."""
        return {"name": self.name, "source": self.source, "default": asdict(self.default),
                "per_benchmark": self.per_benchmark}


def _math_n(aime: int, amc: int, math500: int, gsm8k: int) -> dict[str, dict[str, Any]]:
    return {"aime24": {"n": aime}, "aime25": {"n": aime}, "amc23": {"n": amc}, "math500": {"n": math500},
            "gsm8k": {"n": gsm8k}, "humaneval": dict(HUMANEVAL_GREEDY)}


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            "r1",
            "DeepSeek-R1 (arXiv:2501.12948 sec. 3; model card usage recommendations)",
            BenchSettings(n=1, temperature=0.6, top_p=0.95, max_new_tokens=32768, template=R1_MATH_TEMPLATE),
            _math_n(aime=64, amc=64, math500=4, gsm8k=1),
        ),
        Protocol(
            "open-r1",
            "huggingface/open-r1 README (lighteval vLLM, generation_parameters) + lighteval@d3da6b9 prompts",
            BenchSettings(n=1, temperature=0.6, top_p=0.95, max_new_tokens=32768, template=LIGHTEVAL_MATH_TEMPLATE,
                          scorer="lighteval"),
            _math_n(aime=64, amc=64, math500=4, gsm8k=1),
        ),
        Protocol(
            "qwen-math",
            "QwenLM/Qwen2.5-Math evaluation/sh/eval.sh + utils.py prompt qwen25-math-cot",
            BenchSettings(n=1, temperature=0.0, top_p=1.0, max_new_tokens=2048, stop=("<|im_end|>", "<|endoftext|>"),
                          system_prompt=QWEN_MATH_SYSTEM, template="{problem}"),
            _math_n(aime=1, amc=1, math500=1, gsm8k=1),
        ),
        Protocol(
            "dapo",
            "BytedTsinghua-SIA/DAPO README (evaluation on AIME 2024)",
            BenchSettings(n=32, temperature=1.0, top_p=0.7, max_new_tokens=20480, template=DAPO_MATH_TEMPLATE),
            {"humaneval": dict(HUMANEVAL_GREEDY)},
        ),
        Protocol(
            "archer",
            "wizard-III/ArcherCodeR README + scripts/eval/run_eval.sh",
            BenchSettings(n=4, temperature=0.8, top_p=1.0, max_new_tokens=32768, template=R1_MATH_TEMPLATE),
            _math_n(aime=64, amc=64, math500=4, gsm8k=4),
        ),
    )
}


def get_protocol(name: str) -> Protocol:
    """Preset by name; ``ValueError`` naming the known presets otherwise."""
    key = name.strip().lower()
    if key not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[key]


OVERRIDABLE = tuple(BenchSettings.__dataclass_fields__)


def resolve_settings(
    benchmark: str, protocol: str | Protocol | None, overrides: dict[str, Any]
) -> BenchSettings:
    """Settings of ``benchmark``: the preset's (or the plain defaults) with ``overrides`` (values
    that are not None) applied on top, for every benchmark alike."""
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; allowed: {', '.join(OVERRIDABLE)}")
    base = BenchSettings() if protocol is None else (
        get_protocol(protocol) if isinstance(protocol, str) else protocol
    ).settings(benchmark)
    given = {k: (tuple(v) if k == "stop" else v) for k, v in overrides.items() if v is not None}
    return replace(base, **given)
