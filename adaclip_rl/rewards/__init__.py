"""Verifiable rewards for RL of language models (TRL reward-function signature).

* :mod:`~adaclip_rl.rewards.math`: Math-Verify accuracy (boxed-first, thread-safe, process pool
  with hard per-item timeouts); GSM8K gold helper.
* :mod:`~adaclip_rl.rewards.code`: HumanEval-style function tests and stdin/stdout cases run
  in :mod:`~adaclip_rl.sandbox` (namespaces, unprivileged uid, rlimits, no network).
* :mod:`~adaclip_rl.rewards.format`: think/answer format reward, DAPO soft overlong penalty.
* :mod:`~adaclip_rl.rewards.safe`: ``safe_reward`` (a failing reward costs samples, not the step).
* :mod:`~adaclip_rl.rewards.registry`: rewards by name for YAML recipes.

Importing this package pulls in neither TRL nor Math-Verify (Math-Verify runs in worker
processes only).
"""

from adaclip_rl.rewards.code import check_humaneval, check_stdio, code_accuracy, extract_code
from adaclip_rl.rewards.format import SoftOverlongPenalty, soft_overlong_penalty, think_format_reward
from adaclip_rl.rewards.math import (
    extract_boxed_answer,
    gsm8k_gold,
    math_accuracy,
    math_verify_stats,
    verify_math_answers,
)
from adaclip_rl.rewards.registry import REWARD_REGISTRY, build_reward_funcs, get_reward, register_reward
from adaclip_rl.rewards.safe import SafeReward, safe_reward
from adaclip_rl.sandbox import (
    SandboxLimits,
    SandboxResult,
    SandboxUnavailable,
    configure_sandbox,
    run_python,
    sandbox_info,
)

__all__ = [
    "REWARD_REGISTRY",
    "SafeReward",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "SoftOverlongPenalty",
    "build_reward_funcs",
    "check_humaneval",
    "check_stdio",
    "code_accuracy",
    "configure_sandbox",
    "extract_boxed_answer",
    "extract_code",
    "get_reward",
    "gsm8k_gold",
    "math_accuracy",
    "math_verify_stats",
    "register_reward",
    "run_python",
    "safe_reward",
    "sandbox_info",
    "soft_overlong_penalty",
    "think_format_reward",
    "verify_math_answers",
]
