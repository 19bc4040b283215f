"""The fast tier: ``pytest tests --fast`` (``bash scripts/test.sh --fast``), the tests a developer runs on
every change; the full suite (``bash scripts/test.sh``, what CI runs) stays the gate.

It keeps the unit, property and parity tests of the core (losses, gradient clipping, optimizers,
rollout machinery, the reward and config checks, the import direction, the loss parity with TRL)
and leaves out what costs seconds per test: vLLM engines, torchrun and DeepSpeed, training runs,
wheel and docs builds, ``torch.compile``, the sandbox's security batteries and the full benchmark
sweeps. A test file outside :data:`FAST_FILES` is not even imported; within them, tests marked
``slow``, ``vllm`` or ``distributed`` and the tests in :data:`SLOW_IN_FAST_FILES` are deselected.
Measured times are in the README ("Tests").
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

FAST_FILES = frozenset({
    "test_imports_direction.py",
    "test_fast_tier.py",
    "test_console.py",
    "losses/test_archer.py",
    "losses/test_bapo.py",
    "losses/test_bf16.py",
    "losses/test_premise.py",
    "losses/test_import_isolation.py",
    "losses/test_no_host_sync.py",
    "losses/test_ratio.py",
    "losses/test_registry.py",
    "losses/test_surrogate.py",
    "gradclip/test_gradclip_adagc.py",
    "gradclip/test_gradclip_autoclip_quantile.py",
    "gradclip/test_gradclip_base.py",
    "gradclip/test_gradclip_zclip.py",
    "optim/test_optim_options.py",
    "optim/test_optim_trainer.py",
    "rollout/test_behaviour.py",
    "rollout/test_config.py",
    "rollout/test_partial.py",
    "rollout/test_replay.py",
    "rollout/test_schedule_grid.py",
    "rollout/test_staleness.py",
    "rewards/test_rewards_code.py",
    "rewards/test_rewards_format_registry.py",
    "rewards/test_rewards_math.py",
    "rewards/test_rewards_sandbox.py",
    "eval/test_eval_metrics.py",
    "study/test_scratchpad_task.py",
    "trainers/test_adaclip_config.py",
    "trainers/test_offpolicy_units.py",
    "trainers/test_parity.py",
    "trainers/test_generated_fields.py",
    "trainers/test_policy_term.py",
    "trainers/test_trl_seam.py",
})

# node-id prefixes (relative to tests/) of the slow tests inside fast files
SLOW_IN_FAST_FILES = (
    "gradclip/test_gradclip_base.py::test_import_does_not_pull_trl_or_transformers",  # a subprocess; the
    # static direction test covers the edge
    "rewards/test_rewards_code.py::test_all_humaneval_",  # 164 programs each; one sample stays
    "rewards/test_rewards_math.py::test_every_gold_verifies_and_perturbed_fails",  # every gold of 3 sets
    "rewards/test_rewards_math.py::test_hard_timeout_and_crash_recovery",  # waits out real timeouts
    "rewards/test_rewards_math.py::test_reference_solutions_verify[math500]",  # 500 solutions
)

DESELECTED_MARKERS = ("slow", "vllm", "distributed")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast", action="store_true", default=False,
                     help="run the fast tier only (tests/fast_tier.py); the full suite is the default")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if not config.getoption("fast") or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    try:
        rel = collection_path.resolve().relative_to(TESTS).as_posix()
    except ValueError:
        return None
    return True if rel not in FAST_FILES else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("fast"):
        return
    keep, drop = [], []
    for item in items:
        rel = Path(str(item.path)).resolve().relative_to(TESTS).as_posix() + "::" + item.name
        slow = any(item.get_closest_marker(m) for m in DESELECTED_MARKERS) or rel.startswith(SLOW_IN_FAST_FILES)
        (drop if slow else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
