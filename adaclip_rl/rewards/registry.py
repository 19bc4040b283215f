"""Rewards by name, so YAML recipes can list them with weights.

A recipe lists rewards as names or as dicts::

    rewards:
      - math_accuracy
      - {name: think_format, weight: 0.2}
      - {name: soft_overlong_penalty, weight: 1.0, kwargs: {max_completion_len: 4096, cache_len: 512}}
      - {name: code_accuracy, timeout_s: 120}

:func:`build_reward_funcs` turns that into ``(reward_funcs, reward_weights)`` for
``GRPOTrainer(reward_funcs=...)`` / ``GRPOConfig(reward_weights=...)``. Every function is wrapped
in :func:`~adaclip_rl.rewards.safe.safe_reward` (disable per entry with ``safe: false``), so a
failing reward costs samples, never the step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adaclip_rl.rewards.safe import safe_reward

__all__ = ["REWARD_REGISTRY", "RewardEntry", "register_reward", "get_reward", "build_reward_funcs"]


@dataclass(frozen=True)
class RewardEntry:
    """A registered reward: ``obj`` is a reward function, or a factory when ``factory`` is True
    (a factory is called with the recipe's kwargs and returns the reward function)."""

    name: str
    obj: Callable[..., Any]
    factory: bool = False


REWARD_REGISTRY: dict[str, RewardEntry] = {}


def register_reward(
    name: str, *, factory: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering a reward function (or, with ``factory=True``, a reward factory).

    Raises:
        ValueError: if ``name`` is already taken by another object.
    """

    def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
        old = REWARD_REGISTRY.get(name)
        if old is not None and old.obj is not obj:
            raise ValueError(f"reward name {name!r} is already registered to {old.obj!r}")
        REWARD_REGISTRY[name] = RewardEntry(name, obj, factory)
        return obj

    return deco


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(REWARD_REGISTRY))}")


def get_reward(name: str, **kwargs: Any) -> Callable[..., Any]:
    """The reward function registered as ``name``.

    For a factory, ``kwargs`` are its arguments; for a plain reward function they are bound as
    keyword arguments (``functools.partial``), keeping ``__name__`` for TRL's logging.

    Raises:
        ValueError: unknown name (the message lists the known ones) or bad kwargs.
    """
    entry = REWARD_REGISTRY.get(name)
    if entry is None:
        raise _unknown(name)
    if entry.factory:
        try:
            fn = entry.obj(**kwargs)
        except TypeError as exc:
            raise ValueError(f"bad kwargs for reward {name!r}: {exc}") from exc
        if not getattr(fn, "__name__", None):
            try:
                fn.__name__ = name
            except AttributeError:
                pass
        return fn
    if not kwargs:
        return entry.obj
    bound = functools.partial(entry.obj, **kwargs)
    functools.update_wrapper(bound, entry.obj)
    bound.__name__ = name  # type: ignore[attr-defined]
    return bound


def build_reward_funcs(
    spec: Sequence[str | Mapping[str, Any]],
) -> tuple[list[Callable[..., Any]], list[float]]:
    """Build TRL reward functions and weights from a recipe list.

    Args:
        spec: names, or dicts with ``name`` (required), ``weight`` (default 1.0), ``kwargs``
            (default ``{}``), ``safe`` (default True), ``timeout_s`` (safe-wrapper time bound,
            default none) and ``failure_value`` (default 0.0).

    Returns:
        ``(funcs, weights)`` of equal length.

    Raises:
        ValueError: empty spec, unknown name, unknown keys, non-numeric weight.
    """
    if isinstance(spec, (str, Mapping)) or not isinstance(spec, Sequence) or len(spec) == 0:
        raise ValueError("reward spec must be a non-empty list of names or {name, weight, kwargs} dicts")
    funcs: list[Callable[..., Any]] = []
    weights: list[float] = []
    allowed = {"name", "weight", "kwargs", "safe", "timeout_s", "failure_value"}
    for item in spec:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, Mapping) or "name" not in item:
            raise ValueError(f"each reward entry must be a name or a dict with 'name', got {item!r}")
        extra = set(item) - allowed
        if extra:
            raise ValueError(
                f"reward entry {item['name']!r} has unknown keys {sorted(extra)}; allowed: {sorted(allowed)}"
            )
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"reward {item['name']!r}: weight must be a number, got {weight!r}")
        kwargs = dict(item.get("kwargs") or {})
        fn = get_reward(str(item["name"]), **kwargs)
        if item.get("safe", True):
            fn = safe_reward(
                fn, timeout_s=item.get("timeout_s"), failure_value=item.get("failure_value", 0.0)
            )
            fn.__name__ = str(item["name"])
        funcs.append(fn)
        weights.append(float(weight))
    return funcs, weights


def _register_builtins() -> None:
    """The built-in rewards, every one listed here (nothing registers itself when its module is imported)."""
    from adaclip_rl.rewards.code import code_accuracy
    from adaclip_rl.rewards.format import soft_overlong_penalty, think_format_reward
    from adaclip_rl.rewards.math import math_accuracy
    from adaclip_rl.tasks.arithmetic import arithmetic_reward
    from adaclip_rl.tasks.scratchpad import scratchpad_reward

    register_reward("math_accuracy")(math_accuracy)
    register_reward("code_accuracy")(code_accuracy)
    register_reward("think_format")(think_format_reward)
    register_reward("soft_overlong_penalty", factory=True)(soft_overlong_penalty)
    register_reward("arithmetic_exact")(arithmetic_reward)  # the synthetic task of the tests
    register_reward("scratchpad_exact")(scratchpad_reward)  # the synthetic task of the demo and staleness study


_register_builtins()
