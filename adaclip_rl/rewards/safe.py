"""``safe_reward``: a reward that raises or hangs costs the affected samples, not the step.

TRL calls every reward function on the whole batch inside the training step; one exception
(a malformed row, a verifier bug) or one endless call would kill or stall training.
:class:`SafeReward` wraps a reward function so that

* an exception in the batch call triggers a per-sample retry, so only the samples that really
  fail get ``failure_value`` (default ``0.0``);
* a batch call exceeding ``timeout_s`` is abandoned (it keeps running in a daemon thread:
  Python cannot kill a thread, so rewards with unbounded work should bound it themselves, as
  the math and code rewards do with worker processes) and the samples are retried one by one,
  each bounded by ``timeout_s``, within an overall retry budget; samples that fail again or do
  not fit in the budget get ``failure_value``;
* a result of the wrong length or with non-numeric entries counts as a failure;
* an ``async`` reward function is run to completion on a worker thread's own event loop, so
  the wrapper is a plain synchronous reward for TRL;
* every failure is logged and counted: :attr:`SafeReward.failures` (failed samples) and
  :meth:`SafeReward.stats`.

``failure_value=None`` gives TRL's NaN semantics instead (the sample is ignored for that reward
rather than scored 0). The default 0.0 follows the acceptance rule "costs that sample".
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["SafeReward", "safe_reward"]

RewardFunc = Callable[..., list[Any]]


class _Timeout(Exception):
    pass


class SafeReward:
    """Exception- and time-bounded wrapper around a TRL reward function (see module docs).

    Args:
        fn: the reward function (TRL signature ``fn(completions=..., **kwargs) -> list``).
        timeout_s: bound for one batch call and for each per-sample retry (``None``: no bound,
            only exceptions are caught; the call then runs in the caller's thread).
        failure_value: score given to a failed sample (``0.0``; ``None`` for NaN semantics).
        retry_budget_s: total time for per-sample retries after a batch failure
            (default ``2 * timeout_s``, unlimited without a timeout).
        name: reported name (default ``fn.__name__``); TRL logs rewards under it.
    """

    def __init__(
        self,
        fn: RewardFunc,
        *,
        timeout_s: float | None = None,
        failure_value: float | None = 0.0,
        retry_budget_s: float | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(fn):
            raise ValueError(f"safe_reward needs a callable, got {type(fn).__name__}")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 or None, got {timeout_s}")
        self.fn = fn
        self.timeout_s = timeout_s
        self.failure_value = failure_value
        self.retry_budget_s = (
            retry_budget_s if retry_budget_s is not None else (2 * timeout_s if timeout_s else None)
        )
        self.__name__ = name or getattr(fn, "__name__", type(fn).__name__)
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
        self._lock = threading.Lock()
        self._stats = {
            "calls": 0,
            "batch_failures": 0,
            "exceptions": 0,
            "timeouts": 0,
            "samples_failed": 0,
            "abandoned_threads": 0,
        }
        functools.update_wrapper(self, fn, assigned=("__module__", "__qualname__", "__doc__"), updated=())

    # ---- pickling (locks do not pickle) ----
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def failures(self) -> int:
        """Number of samples that got ``failure_value`` so far."""
        with self._lock:
            return self._stats["samples_failed"]

    def stats(self) -> dict[str, int]:
        """Counters: calls, batch_failures, exceptions, timeouts, samples_failed, abandoned_threads."""
        with self._lock:
            return dict(self._stats)

    def _bump(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _call(self, kwargs: dict[str, Any], timeout: float | None) -> list[Any]:
        if timeout is None and not self._is_async:
            return self.fn(**kwargs)
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                value = self.fn(**kwargs)
                if inspect.isawaitable(value):  # async reward: run it on this thread's own loop
                    value = asyncio.run(_await(value))
                box["value"] = value
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                box["error"] = exc

        t = threading.Thread(target=target, name=f"reward-{self.__name__}", daemon=True)
        t.start()
        t.join(timeout)  # timeout None (an async reward without a bound): wait for it
        if t.is_alive():
            self._bump("abandoned_threads")
            raise _Timeout(f"reward {self.__name__} exceeded {timeout:.3g} s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _valid(self, out: Any, n: int) -> list[Any]:
        if not isinstance(out, (list, tuple)) or len(out) != n:
            raise ValueError(
                f"reward {self.__name__} returned {type(out).__name__} of length {getattr(out, '__len__', lambda: '?')()} for {n} samples"
            )
        clean = []
        for v in out:
            if v is None:
                clean.append(None)
                continue
            if not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
                raise ValueError(f"reward {self.__name__} returned a non-numeric value {v!r}")
            clean.append(float(v))
        return clean

    def __call__(self, *args: Any, **kwargs: Any) -> list[Any]:
        """Score a batch; never raises because of the wrapped function."""
        if args:  # TRL passes keywords; support positional completions for direct use
            kwargs = {"completions": args[0], **kwargs}
        completions = kwargs.get("completions")
        n = len(completions) if completions is not None else _batch_len(kwargs)
        self._bump("calls")
        try:
            return self._valid(self._call(kwargs, self.timeout_s), n)
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self._bump("batch_failures")
            self._bump("timeouts" if isinstance(exc, _Timeout) else "exceptions")
            logger.warning(
                "reward %s failed on a batch of %d (%s: %s); retrying per sample",
                self.__name__,
                n,
                type(exc).__name__,
                exc,
            )
        return self._per_sample(kwargs, n)

    def _per_sample(self, kwargs: dict[str, Any], n: int) -> list[Any]:
        out: list[Any] = []
        t_end = time.monotonic() + self.retry_budget_s if self.retry_budget_s is not None else math.inf
        for i in range(n):
            remaining = t_end - time.monotonic()
            if remaining <= 0:
                out.append(self._fail(i, "retry budget exhausted"))
                continue
            timeout = self.timeout_s if self.timeout_s is None else min(self.timeout_s, remaining)
            try:
                value = self._valid(self._call(_slice(kwargs, i, n), timeout), 1)[0]
                out.append(value)
            except BaseException as exc:  # noqa: BLE001
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                self._bump("timeouts" if isinstance(exc, _Timeout) else "exceptions")
                out.append(self._fail(i, f"{type(exc).__name__}: {exc}"))
        return out

    def _fail(self, i: int, why: str) -> float | None:
        self._bump("samples_failed")
        logger.warning("reward %s: sample %d scored %r (%s)", self.__name__, i, self.failure_value, why)
        return self.failure_value

    def __repr__(self) -> str:
        return f"SafeReward({self.__name__}, timeout_s={self.timeout_s}, failure_value={self.failure_value})"


async def _await(aw: Any) -> Any:
    return await aw


def _batch_len(kwargs: dict[str, Any]) -> int:
    for key in ("prompts", "completion_ids"):
        v = kwargs.get(key)
        if isinstance(v, (list, tuple)):
            return len(v)
    raise ValueError("cannot tell the batch size: no 'completions', 'prompts' or 'completion_ids'")


_UNSLICED = frozenset({"trainer_state", "log_extra", "log_metric", "environments"})


def _slice(kwargs: dict[str, Any], i: int, n: int) -> dict[str, Any]:
    """Keyword arguments for sample ``i`` alone: per-sample lists are cut to ``[v[i]]``."""
    out = {}
    for k, v in kwargs.items():
        if k not in _UNSLICED and isinstance(v, (list, tuple)) and len(v) == n:
            out[k] = [v[i]]
        else:
            out[k] = v
    return out


def safe_reward(
    fn: RewardFunc | None = None,
    *,
    timeout_s: float | None = None,
    failure_value: float | None = 0.0,
    retry_budget_s: float | None = None,
) -> Any:
    """Wrap ``fn`` in a :class:`SafeReward`; usable as ``safe_reward(fn, timeout_s=30)`` or as a
    decorator (``@safe_reward`` / ``@safe_reward(timeout_s=30)``). An already-safe reward is
    returned unchanged."""

    def wrap(f: RewardFunc) -> SafeReward:
        if isinstance(f, SafeReward):
            return f
        return SafeReward(f, timeout_s=timeout_s, failure_value=failure_value, retry_budget_s=retry_budget_s)

    return wrap(fn) if fn is not None else wrap
