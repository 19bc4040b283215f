"""Benchmark registry: where each benchmark's rows come from, how a row becomes a prompt, how a
completion is scored.

Built in: ``aime24``, ``aime25``, ``amc23``, ``math500``, ``gsm8k`` (math, scored with Math-Verify
through :mod:`adaclip_rl.rewards.math`) and ``humaneval`` (code, executed against its unit tests
in the sandbox of :mod:`adaclip_rl.rewards.code`).

Normal use loads the rows from the Hugging Face Hub with ``datasets.load_dataset``. A local
JSON-lines file with the same fields replaces the Hub source, either per benchmark
(``"math500=/path/file.jsonl"``) or for all of them through a data directory holding the files
named by :attr:`Benchmark.local_file`; ``"bundled"`` names the offline copies shipped in
:mod:`adaclip_rl.data` (MATH-500, AIME 2024, AMC 2023, GSM8K test, HumanEval).

Default math prompt (the DeepSeek-R1 model card's "usage recommendations"; the ``open-r1``
protocol of :mod:`adaclip_rl.eval.protocols` uses lighteval's own prompt instead)::

    {problem}
    Please reason step by step, and put your final answer within \\boxed{}.

sent as the single user message of the tokenizer's chat template when it has one (``chat=None``
means "if available"), after an optional system message. HumanEval without a chat template is
plain prompt completion scored as the official harness (openai/human-eval) scores it: the model
continues the signature and docstring, generation stops at the Codex paper's stop sequences
(Chen et al. 2021, sec. 3.3: ``\\nclass``, ``\\ndef``, ``\\n#``, ``\\nif``, ``\\nprint``), which are
passed to the engine and cut again before scoring, and the program is ``prompt + completion``
(no code-fence extraction), run against the tests with the official 3 s limit
(``human_eval/evaluation.py``, ``timeout=3.0``). With a chat template the model is asked for the
whole function in a fenced code block, and the function is extracted from the fence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adaclip_rl.data import resolve_data_dir
from adaclip_rl.eval.answers import answer_key

logger = logging.getLogger(__name__)

MATH_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
CODE_CHAT_TEMPLATE = (
    "Complete the following Python function. Return the complete function (signature included) "
    "in a single ```python code block.\n\n```python\n{problem}```"
)
CODE_COMPLETION_TEMPLATE = "{problem}"
HUMANEVAL_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
HUMANEVAL_TIMEOUT_S = 3.0


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any stop string (the stop string excluded)."""
    cut = len(text)
    for s in stop:
        i = text.find(s) if s else -1
        if 0 <= i < cut:
            cut = i
    return text[:cut]


@dataclass(frozen=True)
class Problem:
    """One benchmark row, normalised.

    Attributes:
        index: position in the source file / split (0-based).
        id: the row's own id when it has one, else ``"<benchmark>/<index>"``.
        problem: the question text (math) or the HumanEval prompt (signature + docstring).
        gold: reference answer (math: final answer string; code: canonical solution, may be "").
        extra: benchmark-specific fields the verifier needs (code: ``test``, ``entry_point``).
    """

    index: int
    id: str
    problem: str
    gold: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderedPrompt:
    """A prompt ready for generation plus a description of how it was built."""

    text: str
    template: str  # the user message with a literal ``{problem}`` slot
    chat: bool


def format_number_answer(value: Any) -> str:
    """Gold answers stored as numbers (AMC23's ``27.0``) as their shortest exact string (``"27"``)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def gsm8k_answer(value: Any) -> str:
    """GSM8K gold: the number after ``####`` (commas removed), via the rewards module."""
    from adaclip_rl.rewards.math import gsm8k_gold

    return gsm8k_gold(str(value))


@dataclass(frozen=True)
class Benchmark:
    """A benchmark definition (immutable; register new ones with :func:`register_benchmark`).

    Attributes:
        name: registry key (lower case).
        kind: ``"math"`` (Math-Verify on the final answer) or ``"code"`` (HumanEval-style tests).
        hub_id, hub_config, split, revision: arguments of ``datasets.load_dataset``. ``revision``
            None means the Hub's current head; the resolved commit is recorded when reachable.
        problem_fields: candidate column names of the question; the first present is used.
        gold_field: column of the reference answer.
        id_field: column of a row id (optional).
        local_file: file name looked up in a data directory.
        gold_parser: raw gold value -> answer string.
        template: user-message template with a ``{problem}`` slot.
        completion_template: template used when no chat template is applied (code: the raw prompt).
        completion_stop: stop strings of completion mode (no chat template), passed to the engine
            and cut again before scoring (HumanEval: the Codex stop sequences).
        timeout_s: code: per-problem time limit of the test run (HumanEval: 3 s, as official).
    """

    name: str
    kind: Literal["math", "code"]
    hub_id: str
    split: str
    problem_fields: tuple[str, ...]
    gold_field: str
    local_file: str
    hub_config: str | None = None
    revision: str | None = None
    id_field: str | None = None
    gold_parser: Callable[[Any], str] = format_number_answer
    template: str = MATH_TEMPLATE
    completion_template: str | None = None
    completion_stop: tuple[str, ...] = ()
    timeout_s: float | None = None
    description: str = ""

    # ------------------------------------------------------------------ loading
    def load(
        self,
        path: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        limit: int | None = None,
    ) -> tuple[list[Problem], dict[str, Any]]:
        """Load the rows (first ``limit`` if given) and describe the source.

        Args:
            path: explicit JSON-lines file; wins over ``data_dir`` and the Hub.
            data_dir: directory holding :attr:`local_file` (or ``<name>.jsonl``).
            limit: keep the first ``limit`` rows (deterministic subset).

        Returns:
            ``(problems, source)``; ``source`` records the Hub id/config/split/revision or the
            local file path, its sha256 and row count.
        """
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None; got {limit}")
        file = Path(path) if path is not None else self.find_local_file(data_dir)
        if file is not None:
            rows = read_jsonl(file)
            source: dict[str, Any] = {
                "type": "local",
                "path": str(file.resolve()),
                "sha256": sha256_file(file),
                "rows": len(rows),
            }
        else:
            rows, source = self._load_hub()
        if limit is not None:
            rows = rows[:limit]
        return [self.to_problem(i, r) for i, r in enumerate(rows)], source

    def find_local_file(self, data_dir: str | os.PathLike[str] | None) -> Path | None:
        """The benchmark's file inside ``data_dir`` (None when ``data_dir`` is None)."""
        data_dir = resolve_data_dir(data_dir)
        if data_dir is None:
            return None
        d = Path(data_dir)
        for cand in (d / self.local_file, d / f"{self.name}.jsonl"):
            if cand.is_file():
                return cand
        raise FileNotFoundError(
            f"benchmark {self.name!r}: neither {self.local_file!r} nor '{self.name}.jsonl' found in "
            f"data dir {str(d)!r}; pass an explicit file with '{self.name}=PATH' or drop the data dir "
            f"to load {self.hub_id!r} from the Hub"
        )

    def _load_hub(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        from datasets import load_dataset

        ds = load_dataset(self.hub_id, self.hub_config, split=self.split, revision=self.revision)
        source = {
            "type": "hub",
            "id": self.hub_id,
            "config": self.hub_config,
            "split": self.split,
            "revision": self.revision,
            "resolved_revision": _resolve_hub_revision(self.hub_id, self.revision),
            "fingerprint": getattr(ds, "_fingerprint", None),
            "rows": len(ds),
        }
        return [dict(r) for r in ds], source

    def to_problem(self, index: int, row: dict[str, Any]) -> Problem:
        """Map a raw row to a :class:`Problem` (raises ``KeyError`` naming missing columns)."""
        problem_key = next((k for k in self.problem_fields if k in row), None)
        if problem_key is None:
            raise KeyError(
                f"benchmark {self.name!r}: row {index} has none of the problem columns "
                f"{list(self.problem_fields)} (columns: {sorted(row)})"
            )
        if self.gold_field not in row:
            raise KeyError(f"benchmark {self.name!r}: row {index} lacks the gold column {self.gold_field!r}")
        rid = row.get(self.id_field) if self.id_field else None
        extra: dict[str, Any] = {}
        if self.kind == "code":
            extra = {"test": row["test"], "entry_point": row["entry_point"]}
        return Problem(
            index=index,
            id=str(rid) if rid is not None else f"{self.name}/{index}",
            problem=str(row[problem_key]),
            gold=self.gold_parser(row[self.gold_field]),
            extra=extra,
        )

    # ------------------------------------------------------------------ prompting
    def render_prompt(
        self,
        problem: Problem,
        tokenizer: Any = None,
        chat: bool | None = None,
        *,
        template: str | None = None,
        system_prompt: str | None = None,
    ) -> RenderedPrompt:
        """Build the generation prompt for ``problem``.

        Args:
            problem: the row.
            tokenizer: used for its chat template (``apply_chat_template`` with
                ``add_generation_prompt=True``); may be None (plain text).
            chat: True = require a chat template, False = never, None = use one when the
                tokenizer has it.
            template: user-message template with a ``{problem}`` slot replacing the benchmark's
                own (a protocol's prompt); None = :attr:`template`.
            system_prompt: system message put before the user message (chat only; in plain text
                it is prepended followed by a blank line).
        """
        has_chat = tokenizer is not None and getattr(tokenizer, "chat_template", None) is not None
        if chat and not has_chat:
            raise ValueError(f"chat template requested but the tokenizer has none ({type(tokenizer).__name__})")
        use_chat = has_chat if chat is None else chat
        if use_chat:
            tmpl = template or self.template
            content = tmpl.format(problem=problem.problem)
            messages = [{"role": "user", "content": content}]
            if system_prompt:
                messages.insert(0, {"role": "system", "content": system_prompt})
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return RenderedPrompt(text=text, template=tmpl.format(problem="{problem}"), chat=True)
        tmpl = template or self.completion_template or self.template
        text = tmpl.format(problem=problem.problem)
        if system_prompt:
            text = f"{system_prompt}\n\n{text}"
        return RenderedPrompt(text=text, template=tmpl.format(problem="{problem}"), chat=False)

    def stop_strings(self, chat: bool) -> tuple[str, ...]:
        """The benchmark's own stop strings for this prompt mode (completion mode only)."""
        return () if chat else self.completion_stop

    # ------------------------------------------------------------------ scoring
    def score(
        self,
        problems: Sequence[Problem],
        samples: Sequence[Sequence[str]],
        *,
        chat: bool = False,
        timeout_s: float | None = None,
        scorer: str = "adaclip",
    ) -> tuple[list[list[float | None]], list[list[str | None]]]:
        """Verify every sample.

        Args:
            problems: the rows (length P).
            samples: ``samples[p][j]`` completion text (generated part only), shape (P, n).
            chat: whether the prompts went through a chat template (code: chat mode extracts
                the function from a fenced block; completion mode cuts at
                :attr:`completion_stop` and runs ``prompt + completion`` as the official
                HumanEval harness does).
            timeout_s: code: per-problem time limit (default :attr:`timeout_s`).
            scorer: math: ``"adaclip"`` or ``"lighteval"`` (see
                :func:`adaclip_rl.rewards.math.verify_math_answers`).

        Returns:
            ``(scores, answers)`` of shape (P, n). Math: score 1.0/0.0 from Math-Verify, ``None``
            when the gold answer cannot be parsed; answer = the majority-vote key of
            :func:`vote_answer`. Code: score from the unit tests; answer = None (no majority
            vote for code).
        """
        if len(problems) != len(samples):
            raise ValueError(f"{len(problems)} problems but {len(samples)} sample lists")
        shape = [len(s) for s in samples]
        flat = [t for s in samples for t in s]
        owner = [p for p, s in zip(problems, samples, strict=True) for _ in s]
        if self.kind == "math":
            from adaclip_rl.rewards.math import verify_math_answers

            flat_scores = verify_math_answers(flat, [p.gold for p in owner], scorer=scorer)
            flat_answers: list[str | None] = [vote_answer(t) for t in flat]
        else:
            flat_scores = self._score_code(flat, owner, chat, timeout_s)
            flat_answers = [None] * len(flat)
        return _unflatten(flat_scores, shape), _unflatten(flat_answers, shape)

    def _score_code(
        self, texts: list[str], owner: list[Problem], chat: bool, timeout_s: float | None
    ) -> list[float | None]:
        from adaclip_rl.sandbox import SandboxLimits

        limit = timeout_s if timeout_s is not None else self.timeout_s
        limits = None if limit is None else SandboxLimits(cpu_time_s=limit, wall_time_s=limit)
        if chat:
            from adaclip_rl.rewards.code import code_accuracy

            return list(
                code_accuracy(
                    texts,
                    test=[p.extra["test"] for p in owner],
                    entry_point=[p.extra["entry_point"] for p in owner],
                    prompt=[p.problem for p in owner],
                    sandbox_limits=limits,
                )
            )
        import concurrent.futures

        from adaclip_rl.sandbox.runner import max_parallel, run_python_function_tests

        def one(i: int) -> float:
            p = owner[i]
            # human_eval/execution.py: prompt + completion + test + check(entry_point)
            program = p.problem + cut_at_stop(texts[i], self.completion_stop) + "\n"
            try:
                res = run_python_function_tests(
                    program, entry_point=p.extra["entry_point"], test=p.extra["test"], prompt=p.problem,
                    limits=limits,
                )
            except Exception:  # noqa: BLE001 - a broken row costs that sample only
                logger.exception("%s: sample %d could not be judged; scored 0", self.name, i)
                return 0.0
            return 1.0 if res.passed else 0.0

        if not texts:
            return []
        workers = max(1, min(len(texts), max_parallel()))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="humaneval") as pool:
            return list(pool.map(one, range(len(texts))))

    def gold_completion(self, problem: Problem) -> str:
        """A completion that must score 1.0 (used by tests and sanity checks)."""
        if self.kind == "math":
            return f"The final answer is \\boxed{{{problem.gold}}}."
        return problem.gold


_GSM8K_MARK = re.compile(r"####\s*([^\n]+)")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*:?\s*([^\n]+)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?(?![\w])")
def vote_answer(text: str) -> str | None:
    """The final answer of a math completion as a majority-vote key (not a verdict).

    Complete ``<think>...</think>`` pairs are cut first (as the scorer does). Then the boxes:
    one distinct box value gives its key; several (``x=\\boxed{1}`` or ``x=\\boxed{-2}``, read by
    the scorer as a set) give their sorted distinct keys joined by ``,``. Without a box the
    verifier still scores the sample from free text, so that such a sample also votes a heuristic
    key is used: the text after the last ``####``, else after the last "answer is" / "answer:",
    else the last number. Keys come from :func:`adaclip_rl.eval.answers.answer_key`, so that
    spellings of one answer (``\\$18``, ``18.00``, ``18\\text{ dollars}``; ``0.5`` and
    ``\\frac{1}{2}``; ``025`` and ``25``; ``90^\\circ`` and ``90``) share one key.

    Returns:
        The key, or ``None`` when the text holds no recognisable answer (the sample then does not
        vote).
    """
    from adaclip_rl.rewards._text import strip_reasoning
    from adaclip_rl.rewards.math import clean_boxed, extract_all_boxed

    text = strip_reasoning(text)
    keys = [answer_key(clean_boxed(b)) for b in extract_all_boxed(text)]
    distinct = list(dict.fromkeys(k for k in keys if k))
    if distinct:
        return distinct[0] if len(distinct) == 1 else ",".join(sorted(distinct))
    for pattern in (_GSM8K_MARK, _ANSWER_IS):
        found = pattern.findall(text)
        if found:
            key = answer_key(re.split(r"\.\s", found[-1], maxsplit=1)[0])
            if key:
                return key
    numbers = _NUMBER.findall(text)
    return answer_key(numbers[-1]) if numbers else None


def _unflatten(flat: Sequence[Any], shape: Sequence[int]) -> list[list[Any]]:
    out, i = [], 0
    for m in shape:
        out.append(list(flat[i : i + m]))
        i += m
    return out


def _resolve_hub_revision(repo_id: str, revision: str | None) -> str | None:
    """Commit sha of a Hub dataset revision, or None when offline/unreachable."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(repo_id, revision=revision).sha
    except Exception as exc:  # noqa: BLE001 - best effort metadata only
        logger.debug("could not resolve revision of %s: %s", repo_id, exc)
        return None


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (a ``.json`` file holding a list also works)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"benchmark file not found: {str(p)!r}")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".json" and text.lstrip().startswith("["):
        return list(json.loads(text))
    rows = []
    for ln, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{p}:{ln}: not valid JSON ({exc})") from exc
    return rows


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------- registry
BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(bench: Benchmark, *, overwrite: bool = False) -> Benchmark:
    """Add ``bench`` to the registry under ``bench.name``."""
    if bench.name in BENCHMARKS and not overwrite:
        raise ValueError(f"benchmark {bench.name!r} is already registered")
    BENCHMARKS[bench.name] = bench
    return bench


def get_benchmark(name: str) -> Benchmark:
    """Registered benchmark by name; ``ValueError`` listing the known names otherwise."""
    key = name.strip().lower()
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[key]


_SPEC = re.compile(r"^\s*([^=\s]+)\s*(?:=\s*(.+?))?\s*$")


def parse_benchmark_specs(specs: str | Sequence[str]) -> list[tuple[Benchmark, Path | None]]:
    """Parse ``"aime24,math500=/data/m.jsonl"`` (or a list of such items) into benchmarks + files.

    Unknown names raise ``ValueError`` listing the known ones; duplicates raise too; a given file
    must exist.
    """
    items = [s for s in (specs.split(",") if isinstance(specs, str) else specs) if s and s.strip()]
    if not items:
        raise ValueError(f"no benchmark given; known benchmarks: {', '.join(sorted(BENCHMARKS))}")
    out: list[tuple[Benchmark, Path | None]] = []
    seen: set[str] = set()
    for item in items:
        m = _SPEC.match(item)
        if m is None:
            raise ValueError(f"cannot parse benchmark spec {item!r} (expected NAME or NAME=PATH)")
        bench = get_benchmark(m.group(1))
        if bench.name in seen:
            raise ValueError(f"benchmark {bench.name!r} given twice")
        seen.add(bench.name)
        path = Path(m.group(2)).expanduser() if m.group(2) else None
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"benchmark {bench.name!r}: file {str(path)!r} does not exist")
        out.append((bench, path))
    return out


for _b in (
    Benchmark(
        name="aime24",
        kind="math",
        hub_id="HuggingFaceH4/aime_2024",
        split="train",
        problem_fields=("problem",),
        gold_field="answer",
        id_field="id",
        local_file="aime24.jsonl",
        description="AIME 2024 I+II, 30 problems (integer answers 0-999)",
    ),
    Benchmark(
        name="aime25",
        kind="math",
        hub_id="yentinglin/aime_2025",
        split="train",
        problem_fields=("problem",),
        gold_field="answer",
        id_field="id",
        local_file="aime25.jsonl",
        description="AIME 2025 I+II, 30 problems",
    ),
    Benchmark(
        name="amc23",
        kind="math",
        hub_id="math-ai/amc23",
        split="test",
        problem_fields=("question", "problem"),
        gold_field="answer",
        id_field="id",
        local_file="amc23.jsonl",
        description="AMC 2023, 40 problems (answers stored as floats)",
    ),
    Benchmark(
        name="math500",
        kind="math",
        hub_id="HuggingFaceH4/MATH-500",
        split="test",
        problem_fields=("problem",),
        gold_field="answer",
        id_field="unique_id",
        local_file="math500.jsonl",
        description="MATH-500 (Lightman et al. subset of the MATH test set)",
    ),
    Benchmark(
        name="gsm8k",
        kind="math",
        hub_id="openai/gsm8k",
        hub_config="main",
        split="test",
        problem_fields=("question",),
        gold_field="answer",
        local_file="gsm8k_test.jsonl",
        gold_parser=gsm8k_answer,
        description="GSM8K test split, 1319 problems (gold after '####')",
    ),
    Benchmark(
        name="humaneval",
        kind="code",
        hub_id="openai/openai_humaneval",
        split="test",
        problem_fields=("prompt",),
        gold_field="canonical_solution",
        id_field="task_id",
        local_file="humaneval.jsonl",
        gold_parser=str,
        template=CODE_CHAT_TEMPLATE,
        completion_template=CODE_COMPLETION_TEMPLATE,
        completion_stop=HUMANEVAL_STOP,
        timeout_s=HUMANEVAL_TIMEOUT_S,
        description="OpenAI HumanEval, 164 Python functions with unit tests",
    ),
):
    register_benchmark(_b)
