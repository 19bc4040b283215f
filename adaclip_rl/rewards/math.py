"""Math accuracy reward built on Math-Verify, safe to call from any thread.

Math-Verify (``math_verify.parse`` / ``math_verify.verify``) bounds its own work with
``signal.alarm``, which only works in the main thread of a process; called from a worker
thread (TRL reward threads, a data-loader, an async rollout loop) it raises. This module
therefore runs every verification in a small pool of **worker processes**
(``python -m adaclip_rl.rewards._math_worker``): inside a worker, Math-Verify's own alarms work;
around it the parent enforces a hard per-item deadline and kills/restarts a worker that
overruns or crashes. Such an item scores ``0.0`` and is counted (:func:`math_verify_stats`).
The pool, its deadlines and the counters live in :mod:`adaclip_rl.rewards.math_pool`; this module
holds answer extraction/normalisation, :func:`verify_math_answers` and the TRL reward
:func:`math_accuracy` (and re-exports the pool's public names).

Scoring (per item):

* complete ``<think>...</think>`` pairs are cut first (lighteval's ``remove_reasoning_tags``
  rule; an unclosed ``<think>`` stays);
* the prediction is read **boxed-first**, every box counting: when all complete
  ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces) hold one value, that box is parsed (tidied by
  :func:`clean_boxed`); when they hold different values, Math-Verify's own reading of the text
  decides (boxes joined in one answer become the set of them, separate answers the rightmost);
  without a box, Math-Verify's default extraction (final-answer patterns, then the last
  LaTeX/expression in the text) is used;
* the gold answer is parsed once per worker (cached). Golds may be bare answers (``\\frac{1}{2}``,
  ``18``, ``x \\in [-2,7]``), full solutions containing a ``\\boxed{}``, GSM8K answers
  (``"... #### 42"``) or numbers (``27.0``); they are wrapped in ``$...$`` (then ``\\boxed{}``)
  so that Math-Verify's LaTeX extractor accepts them;
* score ``1.0`` if ``verify(gold, prediction)`` holds, else ``0.0``; ``None`` when the gold does
  not parse (a logged warning and the ``gold_unparsable`` counter; TRL turns ``None`` into NaN and
  ignores it), never a silent 0.
"""

from __future__ import annotations

import logging
import math as _pymath
import re
import threading
from typing import Any

from adaclip_rl.rewards._text import completion_text
from adaclip_rl.rewards.math_pool import (
    _count,
    _default_workers,
    _get_pool,
    math_verify_stats,
    reset_math_verify_stats,
    shutdown_math_workers,
)

logger = logging.getLogger(__name__)

_WARNED_GOLDS_LOCK = threading.Lock()
_WARNED_GOLDS: set[str] = set()

__all__ = [
    "extract_boxed_answer",
    "extract_all_boxed",
    "gsm8k_gold",
    "normalize_gold",
    "clean_boxed",
    "verify_math_answers",
    "math_accuracy",
    "math_verify_stats",
    "reset_math_verify_stats",
    "shutdown_math_workers",
]

# --------------------------------------------------------------------------------------------
# Extraction helpers (pure Python, no Math-Verify import)
# --------------------------------------------------------------------------------------------

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\b\s*")
LIGHTEVAL_MARK = "\x1flighteval\x1f"  # gold prefix: score this item as lighteval's extractive match does
SCORERS = ("adaclip", "lighteval")


def extract_boxed_answer(text: str) -> str | None:
    """Return the content of the **last** ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``.

    Braces are matched with a balance counter (escaped ``\\{``/``\\}`` are skipped), so nested
    groups such as ``\\boxed{\\frac{1}{2}}`` come back whole. A box nested inside another box is
    part of the outer one (``\\boxed{\\boxed{5}}`` -> ``\\boxed{5}``). The brace-less form
    ``\\boxed 5`` returns the next token. An unterminated box (a truncated completion) is ignored.

    Returns:
        The stripped content, or ``None`` when ``text`` holds no complete box.
    """
    boxes = extract_all_boxed(text)
    return boxes[-1] if boxes else None


def extract_all_boxed(text: str) -> list[str]:
    """Contents of every complete top-level ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, in order.

    Same matching rules as :func:`extract_boxed_answer` (which returns the last item). The scorer
    uses the whole list: a completion whose boxes hold different answers (``x=\\boxed{1}`` or
    ``x=\\boxed{-2}``) is read as the set of them, as Math-Verify reads it.
    """
    if not text or "\\boxed" not in text and "\\fbox" not in text:
        return []
    found: list[str] = []
    pos = 0
    while True:
        match = _BOXED_RE.search(text, pos)
        if match is None:
            break
        start = match.end()
        if start < len(text) and text[start] == "{":
            end = _matching_brace(text, start)
            if end is None:  # unbalanced: skip this occurrence
                pos = match.end()
                continue
            found.append(text[start + 1 : end].strip())
            pos = end + 1  # boxes nested inside this one belong to it
        else:
            # brace-less ``\\boxed 5``: needs whitespace after the command, takes the next token
            had_space = match.group(0) != match.group(0).rstrip()
            token = re.match(r"[^\s$]+", text[start:])
            if had_space and token is not None:
                found.append(token.group(0))
                pos = start + token.end()
            else:
                pos = match.end()
    return found


def _matching_brace(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx`` (None if unbalanced)."""
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        char = text[i]
        if char == "\\" and i + 1 < n and text[i + 1] in "{}":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


_BOLD_RE = re.compile(r"\A\\(?:textbf|mathbf|bf|mathrm|textrm)\s*\{(.*)\}\Z", re.DOTALL)


def clean_boxed(content: str) -> str:
    """Tidy a box's content before parsing: drop sentence punctuation at the end
    (``\boxed{104.}``) and a whole-content bold/roman wrapper (``\textbf{(073)}``)."""
    content = content.strip()
    for _ in range(3):
        match = _BOLD_RE.match(content)
        if match is None or _matching_brace(content, content.index("{")) != len(content) - 1:
            break
        content = match.group(1).strip()
    while content.endswith((".", ",", ";")) and not content.endswith("\\."):
        content = content[:-1].rstrip()
    return content


def gsm8k_gold(answer_field: str) -> str:
    """Gold answer of a GSM8K row: ``"... #### 1,234"`` -> ``"1234"``.

    Takes the text after the last ``####``, strips whitespace, a leading ``$`` and thousands
    separators. A field without ``####`` is returned stripped (already a bare answer).
    """
    tail = answer_field.rsplit("####", 1)[-1].strip()
    tail = tail.lstrip("$").strip()
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", tail):
        tail = tail.replace(",", "")
    return tail


def normalize_gold(gold: Any) -> str | None:
    """Turn a dataset's gold field into the answer string that is parsed.

    * numbers: ``27.0`` -> ``"27"``, ``0.5`` -> ``"0.5"`` (bools and NaN are rejected -> None);
    * GSM8K style ``"... #### 42"`` -> ``"42"`` (:func:`gsm8k_gold`);
    * a solution text containing ``\\boxed{}`` -> the last box's content;
    * otherwise the stripped string. ``None``/empty -> ``None``.
    """
    if gold is None or isinstance(gold, bool):
        return None
    if isinstance(gold, int):
        return str(gold)
    if isinstance(gold, float):
        if not _pymath.isfinite(gold):
            return None
        return str(int(gold)) if gold.is_integer() else repr(gold)
    if not isinstance(gold, str):
        gold = str(gold)
    if "####" in gold:
        return gsm8k_gold(gold) or None
    boxed = extract_boxed_answer(gold)
    if boxed is not None:
        return clean_boxed(boxed) or None
    gold = gold.strip()
    return gold or None


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def verify_math_answers(
    predictions: list[str],
    golds: list[str],
    *,
    timeout_s: float = 5.0,
    max_workers: int | None = None,
    scorer: str = "adaclip",
) -> list[float | None]:
    """Score model outputs against gold answers with Math-Verify, in worker processes.

    Args:
        predictions: model outputs (free text; boxes are read first, see the module docstring).
        golds: gold answers, one per prediction (bare answers, boxed solutions, GSM8K
            ``#### N`` fields or numbers; see :func:`normalize_gold`).
        timeout_s: Math-Verify's own parse/verify timeout inside the worker (rounded up to whole
            seconds, as ``signal.alarm`` needs); the parent kills a worker stuck for longer than
            ``6 * timeout_s + 2`` s on one item and scores the item 0.
        max_workers: worker processes (default ``min(4, cpu_count)`` or ``$ADACLIP_MATH_WORKERS``).
            Workers persist between calls; concurrent callers are serialised per pool.
        scorer: ``"adaclip"`` (default: complete ``<think>`` pairs cut, every box read - one
            value, or the set of several -, box contents tidied, golds wrapped so that lists and
            intervals parse) or ``"lighteval"`` (lighteval 0.13's extractive-match metric as
            open-r1 runs it: Math-Verify on the whole text with ``[Expr, Latex]`` targets, the raw
            gold, precision 6; see docs/evaluation.md for where the two differ).

    Returns:
        One score per item: ``1.0`` correct, ``0.0`` wrong / no answer / timeout / crash,
        ``None`` where the gold does not parse (logged once per gold and counted).

    Safe to call from any thread. See :func:`math_verify_stats` for the counters.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"predictions and golds differ in length: {len(predictions)} vs {len(golds)}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if scorer not in SCORERS:
        raise ValueError(f"scorer must be one of {SCORERS}; got {scorer!r}")
    n = len(predictions)
    if n == 0:
        return []
    gold_strs: list[str | None] = [normalize_gold(g) for g in golds]
    scores: list[float | None] = [None] * n
    todo_idx = [i for i in range(n) if gold_strs[i] is not None]
    for i in range(n):
        if gold_strs[i] is None:
            _count("gold_unparsable")
            _report_bad_gold(golds[i])
    if todo_idx:
        workers = max_workers if max_workers is not None else _default_workers()
        if workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {workers}")
        workers = min(workers, len(todo_idx))
        pool = _get_pool(workers)
        todo_preds = [completion_text(predictions[i]) for i in todo_idx]
        mark = LIGHTEVAL_MARK if scorer == "lighteval" else ""
        todo_golds = [mark + str(gold_strs[i]) for i in todo_idx]
        pool_results = pool.run(todo_preds, todo_golds, timeout_s)  # type: ignore[arg-type]
        for i, (score, status) in zip(todo_idx, pool_results, strict=True):
            scores[i] = score
            if status != "ok":
                _count(status)
            if status == "gold_unparsable":
                _report_bad_gold(golds[i])
            elif status in ("timeout", "crash", "error"):
                logger.warning("math-verify %s on an item (scored 0); gold=%r", status, gold_strs[i])
            if score is not None:
                _count("correct" if score > 0 else "incorrect")
    _count("items", n)
    return scores


def _report_bad_gold(gold: Any) -> None:
    key = repr(gold)[:200]
    with _WARNED_GOLDS_LOCK:
        first = key not in _WARNED_GOLDS
        if first and len(_WARNED_GOLDS) < 10_000:
            _WARNED_GOLDS.add(key)
    if first:
        logger.warning("gold answer does not parse with math-verify; item scored None: %s", key)


def math_accuracy(
    completions: list[Any],
    solution: list[Any] | None = None,
    answer: list[Any] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """TRL reward function: 1.0 when the completion's final answer equals the gold answer.

    Args:
        completions: TRL completions, strings or conversational message lists.
        solution: dataset column with a reference solution (its last ``\\boxed{}`` is the gold).
        answer: dataset column with the bare gold answer; preferred over ``solution`` when both
            are given. GSM8K ``"... #### 42"`` fields and numbers are accepted.
        **kwargs: other dataset columns / TRL arguments; ``math_timeout_s`` and
            ``math_workers`` are honoured, the rest ignored.

    Returns:
        ``list[float | None]`` of length ``len(completions)``; ``None`` marks an unparsable gold
        (TRL treats it as NaN and skips it).
    """
    golds = answer if answer is not None else solution
    if golds is None:
        raise ValueError("math_accuracy needs an 'answer' or 'solution' column in the dataset")
    if len(golds) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
    timeout_s = float(kwargs.get("math_timeout_s", 5.0))
    workers = kwargs.get("math_workers")
    texts = [completion_text(c) for c in completions]
    return verify_math_answers(texts, list(golds), timeout_s=timeout_s, max_workers=workers)
