"""The scratchpad addition task: worked solutions are arithmetic facts, the reward is exact, the
splits are disjoint, and completions are reasoning-length (>= 20 tokens) under the tiny tokenizer."""

from __future__ import annotations

import random
import re

import pytest

from adaclip_rl.tasks.scratchpad import ScratchpadAdditionTask, parse_final, scratchpad_reward


def test_every_scratchpad_step_is_a_true_column_sum_and_the_answer_is_the_sum():
    task = ScratchpadAdditionTask(digits=3)
    rng = random.Random(0)
    for _ in range(300):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        sol, answer = task.solution(a, b)
        assert int(answer[::-1]) == a + b
        body, final = sol.split("|>")
        assert final == answer
        carry = 0
        cols = body.split("|")
        assert len(cols) == max(len(str(a)), len(str(b)))
        for i, col in enumerate(cols):
            x, y, c, d, s = map(int, re.fullmatch(r"(\d)\+(\d)\+(\d)=(\d)(\d)", col).groups())
            assert (x, y) == ((a // 10**i) % 10, (b // 10**i) % 10)
            assert c == carry and x + y + c == d + 10 * s
            carry = s


def test_reward_reads_the_last_final_answer_only():
    ans = ["2331"]
    assert scratchpad_reward(["4+8+0=21|>2331"], ans) == [1.0]
    assert scratchpad_reward(["4+8+0=21|>2331|>9"], ans) == [0.0]  # the last answer counts
    assert scratchpad_reward(["2331"], ans) == [0.0]  # no ">": no answer
    assert scratchpad_reward([[{"role": "assistant", "content": ">2331"}]], ans) == [1.0]
    assert parse_final("x> 17") == "17" and parse_final("") is None


def test_splits_are_disjoint_and_invalid_values_are_refused():
    task = ScratchpadAdditionTask(digits=2)
    train = {r["prompt"] for r in task.sample(3000, "train", seed=1)}
    test = {r["prompt"] for r in task.sample(300, "test", seed=2)}
    assert train and test and not train & test
    with pytest.raises(ValueError, match="digits must be in"):
        ScratchpadAdditionTask(digits=1)
    with pytest.raises(ValueError, match="split must be"):
        task.sample(1, "dev")


def test_completions_are_reasoning_length_under_the_tiny_tokenizer():
    from adaclip_rl.tasks import build_tokenizer

    task = ScratchpadAdditionTask(digits=3)
    tok = build_tokenizer(task.corpus(500))
    lengths = [len(tok(r["solution"], add_special_tokens=False)["input_ids"]) + 1 for r in task.sample(200, seed=3)]
    assert sum(lengths) / len(lengths) >= 20
    assert max(lengths) <= task.max_completion_tokens()
