"""Worker-process pool that runs Math-Verify for :mod:`adaclip_rl.rewards.math`.

Math-Verify bounds its own work with ``signal.alarm``, which only works in a process's main
thread, so every verification runs in a worker subprocess
(``python -m adaclip_rl.rewards._math_worker``) speaking JSON lines over stdin/stdout. This
module holds:

* :class:`_Worker` (one such subprocess) and :class:`_MathPool` (a fixed number of them serving
  one batch at a time, with a hard per-item deadline, :func:`_hard_deadline`; a worker that
  overruns it or dies is killed and replaced, and its item scores ``0.0``);
* the per-process pool registry (:func:`_get_pool`, :func:`shutdown_math_workers`, run at exit)
  and the default worker count (:func:`_default_workers`, ``$ADACLIP_MATH_WORKERS``);
* the outcome counters (:func:`_count`, :func:`math_verify_stats`,
  :func:`reset_math_verify_stats`).

It does not import :mod:`adaclip_rl.rewards.math` (the worker process does), so there is no
import cycle; the public names are re-exported from :mod:`adaclip_rl.rewards.math`.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import math as _pymath
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["math_verify_stats", "reset_math_verify_stats", "shutdown_math_workers"]

# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------

_STATS_LOCK = threading.Lock()
_STATS: collections.Counter[str] = collections.Counter()


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
        messages = []
        for line in lines:
            if line.strip():
                try:
                    messages.append(json.loads(line))
                except json.JSONDecodeError:
                    logger.debug("math worker sent a non-JSON line: %r", line[:200])
        return messages

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - kill cannot be ignored
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


def _hard_deadline(timeout_int: int) -> float:
    """Parent-side bound for one item: gold (up to 3 wrappings) + prediction (up to 2 parses) +
    verify, each bounded by ``timeout_int`` inside the worker, plus slack. Only an item stuck
    where ``signal.alarm`` cannot interrupt it (C code) ever reaches it."""
    return 6.0 * timeout_int + 2.0


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
        for worker in self.workers:
            worker.kill()
        self.workers = []

    def run(
        self, preds: Sequence[str], golds: Sequence[str], timeout_s: float
    ) -> list[tuple[float | None, str]]:
        """Score ``preds`` against ``golds``; one ``(score, status)`` per item, in order."""
        timeout_int = max(1, int(_pymath.ceil(timeout_s)))
        hard_deadline_s = _hard_deadline(timeout_int)
        n_items = len(preds)
        results: list[tuple[float | None, str] | None] = [None] * n_items
        pending = collections.deque(range(n_items))
        with self.lock:
            self._ensure()
            selector = selectors.DefaultSelector()
            try:
                for w in self.workers:
                    selector.register(w.fd, selectors.EVENT_READ, w)
                while pending or any(w.job is not None for w in self.workers):
                    now = time.monotonic()
                    for w in self.workers:
                        if w.ready and w.job is None and pending:
                            job = pending.popleft()
                            try:
                                w.send(job, preds[job], golds[job], timeout_int)
                            except (BrokenPipeError, OSError):
                                pending.appendleft(job)
                                self._replace(selector, w)
                                break
                            w.job, w.deadline = job, now + hard_deadline_s
                    waits = [w.deadline - now for w in self.workers if w.job is not None]
                    waits += [w.started + _STARTUP_TIMEOUT_S - now for w in self.workers if not w.ready]
                    wait_s = max(0.0, min(waits)) if waits else 1.0
                    for key, _ in selector.select(timeout=min(wait_s, 1.0)):
                        w = key.data
                        messages = w.read_lines()
                        if messages is None:  # EOF: the worker died
                            if w.job is not None:
                                results[w.job] = (0.0, "crash")
                                w.job = None
                            elif not w.ready:
                                raise RuntimeError(
                                    "math-verify worker failed to start "
                                    f"(exit code {w.proc.poll()}); is math-verify installed?"
                                )
                            self._replace(selector, w)
                            continue
                        for msg in messages:
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
                            self._replace(selector, w)
                        elif not w.ready and now > w.started + _STARTUP_TIMEOUT_S:
                            raise RuntimeError(
                                f"math-verify worker did not start within {_STARTUP_TIMEOUT_S:.0f} s"
                            )
            except BaseException:
                self.close()
                raise
            finally:
                selector.close()
        return [r if r is not None else (0.0, "crash") for r in results]

    def _replace(self, selector: selectors.BaseSelector, worker: _Worker) -> None:
        try:
            selector.unregister(worker.fd)
        except (KeyError, ValueError):
            pass
        worker.kill()
        idx = self.workers.index(worker)
        replacement = _Worker()
        self.workers[idx] = replacement
        selector.register(replacement.fd, selectors.EVENT_READ, replacement)


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
    configured = os.environ.get("ADACLIP_MATH_WORKERS")
    if configured:
        return max(1, int(configured))
    return max(1, min(4, os.cpu_count() or 1))
