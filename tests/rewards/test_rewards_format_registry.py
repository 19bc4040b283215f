"""Format and length shaping, the safe wrapper and the registry."""

from __future__ import annotations

import logging
import pickle
import time

import pytest

from adaclip_rl.rewards import (
    REWARD_REGISTRY,
    SafeReward,
    SoftOverlongPenalty,
    build_reward_funcs,
    get_reward,
    math_accuracy,
    register_reward,
    safe_reward,
    soft_overlong_penalty,
    think_format_reward,
)

# ------------------------------------------------------------------ think/answer format


def test_think_format_reward() -> None:
    completions = [
        "<think>\nreasoning\n</think>\n<answer>42</answer>",
        "  <think>r</think><answer> x </answer>\n",
        "<think>r</think>",  # no answer
        "<answer>42</answer>",  # no think
        "<think>a</think><think>b</think><answer>1</answer>",  # two think blocks
        "<think>r</think><answer></answer>",  # empty answer
        "<think>r</think><answer>1</answer> trailing text",
        "<answer>1</answer><think>r</think>",  # wrong order
        [{"role": "assistant", "content": "<think>r</think><answer>1</answer>"}],
    ]
    assert think_format_reward(completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_think_format_with_prefilled_think_in_prompt() -> None:
    prompts = ["<|im_start|>assistant\n<think>", "plain prompt"]
    completions = ["reasoning</think><answer>1</answer>", "reasoning</think><answer>1</answer>"]
    assert think_format_reward(completions, prompts=prompts) == [1.0, 0.0]


# ------------------------------------------------------------------ DAPO soft overlong penalty


def test_soft_overlong_penalty_eq13() -> None:
    pen = soft_overlong_penalty(max_completion_len=20, cache_len=8)
    lengths = [0, 12, 13, 16, 20, 21, 100]
    expected = [0.0, 0.0, -1 / 8, -4 / 8, -1.0, -1.0, -1.0]
    assert pen(completion_ids=[[7] * n for n in lengths]) == pytest.approx(expected)
    assert pen(completion_lengths=lengths) == pytest.approx(expected)
    assert pen(completions=[[1] * n for n in lengths]) == pytest.approx(expected)
    # continuous at the window start, -1 at L_max
    assert pen.penalty(12) == 0.0 and pen.penalty(20) == -1.0


def test_soft_overlong_penalty_is_picklable_and_validated() -> None:
    pen = SoftOverlongPenalty(4096, 512)
    clone = pickle.loads(pickle.dumps(pen))
    assert clone(completion_lengths=[4000]) == pen(completion_lengths=[4000])
    assert clone.__name__ == "soft_overlong_penalty"
    hard = SoftOverlongPenalty(10, 0)  # no cache window: a hard cut at L_max
    assert hard(completion_lengths=[10, 11]) == [0.0, -1.0]
    for args in ((0, 0), (10, 11), (10, -1), (10.5, 2), (True, 1)):
        with pytest.raises(ValueError):
            SoftOverlongPenalty(*args)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="completion_ids"):
        pen(completions=["text"])


# ------------------------------------------------------------------ safe_reward


def _raises_on_bad(completions: list, **kwargs: object) -> list[float]:
    if any(c == "bad" for c in completions):
        raise RuntimeError("verifier bug")
    return [1.0 for _ in completions]


def test_safe_reward_raising_costs_only_that_sample(caplog: pytest.LogCaptureFixture) -> None:
    fn = safe_reward(_raises_on_bad)
    assert isinstance(fn, SafeReward) and fn.__name__ == "_raises_on_bad"
    with caplog.at_level(logging.WARNING, logger="adaclip_rl.rewards.safe"):
        out = fn(completions=["ok", "bad", "ok"], prompts=["p1", "p2", "p3"], trainer_state=None)
    assert out == [1.0, 0.0, 1.0]
    assert fn.failures == 1
    stats = fn.stats()
    assert stats["exceptions"] >= 2 and stats["samples_failed"] == 1 and stats["batch_failures"] == 1
    assert "verifier bug" in caplog.text


def test_safe_reward_slow_reward_is_bounded() -> None:
    def slow(completions: list, **kwargs: object) -> list[float]:
        if "slow" in completions:
            time.sleep(5)
        return [0.5] * len(completions)

    fn = safe_reward(slow, timeout_s=0.3)
    t0 = time.monotonic()
    out = fn(completions=["a", "slow", "b"])
    elapsed = time.monotonic() - t0
    assert out == [0.5, 0.0, 0.5]
    assert elapsed < 0.3 + 2 * 0.3 + 0.5  # batch timeout + retry budget + slack
    assert fn.stats()["timeouts"] == 2 and fn.failures == 1


def test_safe_reward_bad_outputs_and_nan_semantics() -> None:
    wrong_len = safe_reward(lambda completions, **kw: [1.0], failure_value=None)
    assert wrong_len(completions=["a", "b"]) == [1.0, 1.0]  # per-sample retries have the right length
    junk = safe_reward(lambda completions, **kw: ["x"] * len(completions), failure_value=None)
    assert junk(completions=["a", "b"]) == [None, None]
    assert junk.failures == 2
    # None from the reward itself is kept (TRL's "skip this sample")
    assert safe_reward(lambda completions, **kw: [None, 1])(completions=["a", "b"]) == [None, 1.0]


def test_safe_reward_inside_a_trl_style_step() -> None:
    """The training step (here: the TRL reward loop's arithmetic) completes despite the failure."""
    import math

    funcs, weights = build_reward_funcs([{"name": "think_format"}, {"name": "math_accuracy", "weight": 2.0}])
    completions = [
        "<think>r</think><answer>$\\boxed{4}$</answer>",
        "<think>r</think><answer>$\\boxed{5}$</answer>",
    ]
    rows = [
        f(prompts=["p", "p"], completions=completions, completion_ids=[[1], [1]], answer=["4", None])
        for f in funcs
    ]
    totals = [
        sum(w * (r[i] if r[i] is not None else math.nan) for w, r in zip(weights, rows, strict=True))
        for i in range(2)
    ]
    assert totals[0] == 3.0
    assert math.isnan(totals[1])  # unparsable gold -> None -> NaN, as TRL does


def test_safe_reward_runs_async_rewards() -> None:
    import asyncio

    async def async_reward(completions: list, **kwargs: object) -> list[float]:
        await asyncio.sleep(0.01)
        if "boom" in completions:
            raise ValueError("async failure")
        return [2.0] * len(completions)

    fn = safe_reward(async_reward)
    assert fn(completions=["a", "b"]) == [2.0, 2.0]
    assert fn(completions=["a", "boom"]) == [2.0, 0.0] and fn.failures == 1


def test_safe_reward_is_picklable_and_idempotent() -> None:
    fn = safe_reward(think_format_reward, timeout_s=5)
    assert safe_reward(fn) is fn
    clone = pickle.loads(pickle.dumps(fn))
    assert clone(completions=["<think>a</think><answer>b</answer>"]) == [1.0]


# ------------------------------------------------------------------ registry


def test_registry_builds_recipe_lists() -> None:
    spec = [
        "math_accuracy",
        {"name": "think_format", "weight": 0.25},
        {
            "name": "soft_overlong_penalty",
            "kwargs": {"max_completion_len": 10, "cache_len": 4},
            "timeout_s": 10,
        },
    ]
    funcs, weights = build_reward_funcs(spec)
    assert weights == [1.0, 0.25, 1.0]
    assert [f.__name__ for f in funcs] == ["math_accuracy", "think_format", "soft_overlong_penalty"]
    assert all(isinstance(f, SafeReward) for f in funcs)
    assert funcs[2](completion_ids=[[0] * 8]) == [pytest.approx(-0.5)]
    raw, _ = build_reward_funcs([{"name": "math_accuracy", "safe": False}])
    assert raw[0] is math_accuracy


def test_registry_errors_and_kwargs() -> None:
    with pytest.raises(ValueError) as err:
        get_reward("no_such_reward")
    for known in ("math_accuracy", "code_accuracy", "think_format", "soft_overlong_penalty"):
        assert known in str(err.value)
    with pytest.raises(ValueError, match="unknown keys"):
        build_reward_funcs([{"name": "math_accuracy", "wieght": 2}])
    with pytest.raises(ValueError, match="weight"):
        build_reward_funcs([{"name": "math_accuracy", "weight": "high"}])
    with pytest.raises(ValueError, match="non-empty"):
        build_reward_funcs([])
    with pytest.raises(ValueError, match="bad kwargs"):
        get_reward("soft_overlong_penalty", max_len=3)
    bound = get_reward("math_accuracy", math_timeout_s=2.0)
    assert bound.__name__ == "math_accuracy"
    assert bound(["\\boxed{3}"], answer=["3"]) == [1.0]


def test_register_custom_reward() -> None:
    @register_reward("test_len_reward")
    def length_reward(completions: list, **kwargs: object) -> list[float]:
        return [float(len(c)) for c in completions]

    try:
        funcs, weights = build_reward_funcs([{"name": "test_len_reward", "weight": 0.5}])
        assert funcs[0](completions=["ab", "c"]) == [2.0, 1.0] and weights == [0.5]
        with pytest.raises(ValueError, match="already registered"):
            register_reward("test_len_reward")(lambda completions, **kw: [])
    finally:
        REWARD_REGISTRY.pop("test_len_reward", None)
