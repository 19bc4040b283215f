"""Math accuracy reward built on Math-Verify, safe to call from any thread.

Math-Verify (``math_verify.parse`` / ``math_verify.verify``) bounds its own work with
``signal.alarm``, which only works in the main thread of a process; called from a worker
thread (TRL reward threads, a data-loader, an async rollout loop) it raises. This module
therefore runs every verification in a small pool of **worker processes**
(``python -m adaclip_rl.rewards._math_worker``): inside a worker, Math-Verify's own alarms work;
around it the parent enforces a hard per-item deadline and kills/restarts a worker that
overruns or crashes. Such an item scores ``0.0`` and is counted (:func:`math_verify_stats`).

Scoring (per item):

* the prediction is read **boxed-first**: the content of the last ``\\boxed{...}`` / ``\\fbox{...}``
  (balanced braces) is parsed; without a box, Math-Verify's default extraction (final-answer
  patterns, then the last LaTeX/expression in the text) is used;
* the gold answer is parsed once per worker (cached). Golds may be bare answers (``\\frac{1}{2}``,
  ``18``, ``x \\in [-2,7]``), full solutions containing a ``\\boxed{}``, GSM8K answers
  (``"... #### 42"``) or numbers (``27.0``); they are wrapped in ``$...$`` (then ``\\boxed{}``)
  so that Math-Verify's LaTeX extractor accepts them;
* score ``1.0`` if ``verify(gold, prediction)`` holds, else ``0.0``; ``None`` when the gold does
  not parse (a logged warning and the ``gold_unparsable`` counter; TRL turns ``None`` into NaN and
  ignores it), never a silent 0.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import math as _pymath
import os
import re
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adaclip_rl.rewards._text import completion_text

logger = logging.getLogger(__name__)

__all__ = [
    "extract_boxed_answer",
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


def extract_boxed_answer(text: str) -> str | None:
    """Return the content of the **last** ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``.

    Braces are matched with a balance counter (escaped ``\\{``/``\\}`` are skipped), so nested
    groups such as ``\\boxed{\\frac{1}{2}}`` come back whole. A box nested inside another box is
    part of the outer one (``\\boxed{\\boxed{5}}`` -> ``\\boxed{5}``). The brace-less form
    ``\\boxed 5`` returns the next token. An unterminated box (a truncated completion) is ignored.

    Returns:
        The stripped content, or ``None`` when ``text`` holds no complete box.
    """
    if not text or "\\boxed" not in text and "\\fbox" not in text:
        return None
    last: str | None = None
    pos = 0
    while True:
        m = _BOXED_RE.search(text, pos)
        if m is None:
            break
        start = m.end()
        if start < len(text) and text[start] == "{":
            end = _matching_brace(text, start)
            if end is None:  # unbalanced: skip this occurrence
                pos = m.end()
                continue
            last = text[start + 1 : end].strip()
            pos = end + 1  # boxes nested inside this one belong to it
        else:
            # brace-less ``\boxed 5``: needs whitespace after the command, takes the next token
            had_space = m.group(0) != m.group(0).rstrip()
            tok = re.match(r"[^\s$]+", text[start:])
            if had_space and tok is not None:
                last = tok.group(0)
                pos = start + tok.end()
            else:
                pos = m.end()
    return last


def _matching_brace(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx`` (None if unbalanced)."""
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "{}":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
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
        m = _BOLD_RE.match(content)
        if m is None or _matching_brace(content, content.index("{")) != len(content) - 1:
            break
        content = m.group(1).strip()
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
# Statistics
# --------------------------------------------------------------------------------------------

_STATS_LOCK = threading.Lock()
_STATS: collections.Counter[str] = collections.Counter()
_WARNED_GOLDS: set[str] = set()


def _count(status: str, n: int = 1) -> None:
    with _STATS_LOCK:
        _STATS[status] += n


def math_verify_stats() -> dict[str, int]:
    """Counters since import (or the last reset), by outcome.

    Keys: ``items`` (all scored items), ``correct``, ``incorrect``, ``no_answer`` (nothing
    parsable in the prediction; scored 0), ``gold_unparsable`` (scored None), ``timeout``
    (the hard per-item deadline fired; scored 0, worker restarted), ``crash`` (a worker died;
    scored 0), ``error`` (an exception inside Math-Verify; scored 0).
    """
    with _STATS_LOCK:
        return dict(_STATS)


def reset_math_verify_stats() -> None:
    """Zero the counters of :func:`math_verify_stats`."""
    with _STATS_LOCK:
        _STATS.clear()


# --------------------------------------------------------------------------------------------
# Worker-process pool
# --------------------------------------------------------------------------------------------

_PKG_ROOT = str(Path(__file__).resolve().parents[2])
_STARTUP_TIMEOUT_S = 120.0


class _Worker:
    """One ``_math_worker`` subprocess speaking JSON lines over stdin/stdout."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PKG_ROOT, env.get("PYTHONPATH", "")) if p)
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "adaclip_rl.rewards._math_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=_PKG_ROOT,
            env=env,
            close_fds=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buf = b""
        self.ready = False
        self.started = time.monotonic()
        self.job: int | None = None
        self.deadline = 0.0

    def send(self, job: int, pred: str, gold: str, timeout_s: int) -> None:
        line = json.dumps({"i": job, "p": pred, "g": gold, "t": timeout_s}) + "\n"
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()

    def read_lines(self) -> list[dict[str, Any]] | None:
        """Non-blocking read; None on EOF (the worker died)."""
        try:
            chunk = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        if not chunk:
            return None
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        out = []
        for ln in lines:
            if ln.strip():
                try:
                    out.append(json.loads(ln))
                except json.JSONDecodeError:
                    logger.debug("math worker sent a non-JSON line: %r", ln[:200])
        return out

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - kill cannot be ignored
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


def _hard_deadline(t_int: int) -> float:
    """Parent-side bound for one item: gold (up to 3 wrappings) + prediction (up to 2 parses) +
    verify, each bounded by ``t_int`` inside the worker, plus slack. Only an item stuck where
    ``signal.alarm`` cannot interrupt it (C code) ever reaches it."""
    return 6.0 * t_int + 2.0


class _MathPool:
    """A fixed number of verification workers; one batch at a time (a lock serialises callers)."""

    def __init__(self, n_workers: int) -> None:
        self.n_workers = n_workers
        self.workers: list[_Worker] = []
        self.lock = threading.Lock()
        self.pid = os.getpid()

    def _ensure(self) -> None:
        self.workers = [w for w in self.workers if w.proc.poll() is None]
        while len(self.workers) < self.n_workers:
            self.workers.append(_Worker())

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        self.workers = []

    def run(
        self, preds: Sequence[str], golds: Sequence[str], timeout_s: float
    ) -> list[tuple[float | None, str]]:
        t_int = max(1, int(_pymath.ceil(timeout_s)))
        hard = _hard_deadline(t_int)
        n = len(preds)
        results: list[tuple[float | None, str] | None] = [None] * n
        pending = collections.deque(range(n))
        with self.lock:
            self._ensure()
            sel = selectors.DefaultSelector()
            try:
                for w in self.workers:
                    sel.register(w.fd, selectors.EVENT_READ, w)
                while pending or any(w.job is not None for w in self.workers):
                    now = time.monotonic()
                    for w in self.workers:
                        if w.ready and w.job is None and pending:
                            job = pending.popleft()
                            try:
                                w.send(job, preds[job], golds[job], t_int)
                            except (BrokenPipeError, OSError):
                                pending.appendleft(job)
                                self._replace(sel, w)
                                break
                            w.job, w.deadline = job, now + hard
                    waits = [w.deadline - now for w in self.workers if w.job is not None]
                    waits += [w.started + _STARTUP_TIMEOUT_S - now for w in self.workers if not w.ready]
                    timeout = max(0.0, min(waits)) if waits else 1.0
                    for key, _ in sel.select(timeout=min(timeout, 1.0)):
                        w = key.data
                        lines = w.read_lines()
                        if lines is None:  # EOF: the worker died
                            if w.job is not None:
                                results[w.job] = (0.0, "crash")
                                w.job = None
                            elif not w.ready:
                                raise RuntimeError(
                                    "math-verify worker failed to start "
                                    f"(exit code {w.proc.poll()}); is math-verify installed?"
                                )
                            self._replace(sel, w)
                            continue
                        for msg in lines:
                            if "ready" in msg:
                                w.ready = True
                            elif w.job is not None and msg.get("i") == w.job:
                                score = msg.get("s")
                                results[w.job] = (
                                    None if score is None else float(score),
                                    str(msg.get("e", "ok")),
                                )
                                w.job = None
                    now = time.monotonic()
                    for w in list(self.workers):
                        if w.job is not None and now > w.deadline:
                            results[w.job] = (0.0, "timeout")
                            w.job = None
                            self._replace(sel, w)
                        elif not w.ready and now > w.started + _STARTUP_TIMEOUT_S:
                            raise RuntimeError(
                                f"math-verify worker did not start within {_STARTUP_TIMEOUT_S:.0f} s"
                            )
            except BaseException:
                self.close()
                raise
            finally:
                sel.close()
        return [r if r is not None else (0.0, "crash") for r in results]

    def _replace(self, sel: selectors.BaseSelector, w: _Worker) -> None:
        try:
            sel.unregister(w.fd)
        except (KeyError, ValueError):
            pass
        w.kill()
        idx = self.workers.index(w)
        new = _Worker()
        self.workers[idx] = new
        sel.register(new.fd, selectors.EVENT_READ, new)


_POOLS: dict[int, _MathPool] = {}
_POOLS_LOCK = threading.Lock()


def _get_pool(n_workers: int) -> _MathPool:
    with _POOLS_LOCK:
        pool = _POOLS.get(n_workers)
        if pool is None or pool.pid != os.getpid():  # a forked child must not reuse parent pipes
            pool = _POOLS[n_workers] = _MathPool(n_workers)
        return pool


def shutdown_math_workers() -> None:
    """Stop all verification worker processes (they restart on the next call)."""
    with _POOLS_LOCK:
        for pool in _POOLS.values():
            if pool.pid == os.getpid():
                with pool.lock:
                    pool.close()
        _POOLS.clear()


atexit.register(shutdown_math_workers)


def _default_workers() -> int:
    env = os.environ.get("ADACLIP_MATH_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(4, os.cpu_count() or 1))


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def verify_math_answers(
    predictions: list[str],
    golds: list[str],
    *,
    timeout_s: float = 5.0,
    max_workers: int | None = None,
) -> list[float | None]:
    """Score model outputs against gold answers with Math-Verify, in worker processes.

    Args:
        predictions: model outputs (free text; the last ``\\boxed{}`` is read first).
        golds: gold answers, one per prediction (bare answers, boxed solutions, GSM8K
            ``#### N`` fields or numbers; see :func:`normalize_gold`).
        timeout_s: Math-Verify's own parse/verify timeout inside the worker (rounded up to whole
            seconds, as ``signal.alarm`` needs); the parent kills a worker stuck for longer than
            ``6 * timeout_s + 2`` s on one item and scores the item 0.
        max_workers: worker processes (default ``min(4, cpu_count)`` or ``$ADACLIP_MATH_WORKERS``).
            Workers persist between calls; concurrent callers are serialised per pool.

    Returns:
        One score per item: ``1.0`` correct, ``0.0`` wrong / no answer / timeout / crash,
        ``None`` where the gold does not parse (logged once per gold and counted).

    Safe to call from any thread. See :func:`math_verify_stats` for the counters.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"predictions and golds differ in length: {len(predictions)} vs {len(golds)}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    n = len(predictions)
    if n == 0:
        return []
    gold_strs: list[str | None] = [normalize_gold(g) for g in golds]
    scores: list[float | None] = [None] * n
    todo = [i for i in range(n) if gold_strs[i] is not None]
    for i in range(n):
        if gold_strs[i] is None:
            _count("gold_unparsable")
            _report_bad_gold(golds[i])
    if todo:
        workers = max_workers if max_workers is not None else _default_workers()
        if workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {workers}")
        workers = min(workers, len(todo))
        pool = _get_pool(workers)
        preds = [completion_text(predictions[i]) for i in todo]
        gs = [gold_strs[i] for i in todo]
        out = pool.run(preds, gs, timeout_s)  # type: ignore[arg-type]
        for i, (score, status) in zip(todo, out, strict=True):
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
    with _STATS_LOCK:
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
