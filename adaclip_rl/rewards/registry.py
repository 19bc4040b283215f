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

__all__ = ["REWARD_REGISTRY", "TRL_REWARD_NAMES", "RewardEntry", "register_reward", "get_reward", "build_reward_funcs",
           "check_reward_names", "import_reward"]

# TRL's grpo script's reward names (trl/scripts/grpo.py), resolved to trl.rewards when not registered here.
TRL_REWARD_NAMES = ("accuracy_reward", "reasoning_accuracy_reward", "think_format_reward",
                    "get_soft_overlong_punishment")


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
    import difflib

    known = sorted({*REWARD_REGISTRY, *TRL_REWARD_NAMES})
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"unknown reward {name!r}{hint}; known rewards: {', '.join(known)}, or a dotted import path "
                      "(my_pkg.rewards.my_reward)")


def _trl_reward(name: str) -> Callable[..., Any]:
    """TRL's built-in reward ``name``, as TRL's grpo script builds it."""
    from trl import rewards as trl_rewards

    if name == "get_soft_overlong_punishment":  # the values trl/scripts/grpo.py uses
        return trl_rewards.get_soft_overlong_punishment(max_completion_len=1280, soft_punish_cache=256)
    return getattr(trl_rewards, name)


def import_reward(path: str) -> Callable[..., Any]:
    """The callable at dotted import path ``path`` (``pkg.module.func``), checked for TRL's reward signature.

    As in TRL's grpo script, the current directory is importable. TRL calls a reward function with
    keyword arguments (``prompts``, ``completions``, ``completion_ids``, the dataset's other columns,
    ``trainer_state``, ...), so it must take ``completions`` and ``**kwargs``.

    Raises:
        ValueError: one line naming the path: module not importable, no such attribute, not callable,
            or a signature TRL cannot call.
    """
    import importlib
    import inspect
    import os
    import sys

    module_path, _, attr = path.rpartition(".")
    if not module_path or not attr:
        raise _unknown(path)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_path)
    except Exception as exc:  # noqa: BLE001 - any import failure is reported in one line
        raise ValueError(f"reward {path!r}: cannot import module {module_path!r} "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise ValueError(f"reward {path!r}: module {module_path!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"reward {path!r} is a {type(fn).__name__}, not a callable")
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return fn  # a builtin without a signature: TRL will call it as it is
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if "completions" not in names or not any(p.kind is p.VAR_KEYWORD for p in params):
        raise ValueError(f"reward {path!r} must have TRL's reward signature (prompts, completions, **kwargs)")
    return fn


def check_reward_names(spec: Sequence[str | Mapping[str, Any]], field: str = "reward_funcs") -> None:
    """Raise ``ValueError`` naming ``field`` for an entry :func:`get_reward` would not resolve
    (dotted paths are imported and their signatures checked; kwargs are not)."""
    if isinstance(spec, (str, Mapping)) or not isinstance(spec, Sequence):
        raise ValueError(f"{field} must be a list of reward names or {{name, weight, kwargs}} mappings; got {spec!r}")
    for item in spec:
        name = item.get("name") if isinstance(item, Mapping) else item
        if not isinstance(name, str):
            raise ValueError(f"{field}: each entry must be a name or a mapping with 'name'; got {item!r}")
        if name in REWARD_REGISTRY or name in TRL_REWARD_NAMES:
            continue
        try:
            if "." not in name:
                raise _unknown(name)
            import_reward(name)
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from None


def get_reward(name: str, **kwargs: Any) -> Callable[..., Any]:
    """The reward function registered as ``name``, TRL's built-in reward of that name, or the
    callable at dotted import path ``name`` (:func:`import_reward`).

    For a factory, ``kwargs`` are its arguments; for a plain reward function they are bound as
    keyword arguments (``functools.partial``), keeping ``__name__`` for TRL's logging.

    Raises:
        ValueError: unknown name (the message lists the known ones) or bad kwargs.
    """
    entry = REWARD_REGISTRY.get(name)
    if entry is None:
        if name in TRL_REWARD_NAMES or "." in name:
            fn = _trl_reward(name) if name in TRL_REWARD_NAMES else import_reward(name)
            if not kwargs:
                return fn
            bound = functools.partial(fn, **kwargs)
            functools.update_wrapper(bound, fn)
            return bound
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
            fn.__name__ = str(item["name"]).rpartition(".")[2]  # TRL logs rewards/<__name__>
        funcs.append(fn)
        weights.append(float(weight))
    return funcs, weights


def _register_builtins() -> None:
    """The built-in rewards, every one listed here (nothing registers itself when its module is imported)."""
    from adaclip_rl.rewards.code import code_accuracy
    from adaclip_rl.rewards.exact import arithmetic_reward, scratchpad_reward
    from adaclip_rl.rewards.format import soft_overlong_penalty, think_format_reward
    from adaclip_rl.rewards.math import math_accuracy

    register_reward("math_accuracy")(math_accuracy)
    register_reward("code_accuracy")(code_accuracy)
    register_reward("think_format")(think_format_reward)
    register_reward("soft_overlong_penalty", factory=True)(soft_overlong_penalty)
    register_reward("arithmetic_exact")(arithmetic_reward)  # the synthetic task of the tests
    register_reward("scratchpad_exact")(scratchpad_reward)  # the synthetic task of the demo and staleness study


_register_builtins()
