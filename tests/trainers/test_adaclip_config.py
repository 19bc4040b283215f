"""AdaClipGRPOConfig refuses settings the chosen policy loss would ignore, and warns once about the rest."""

from __future__ import annotations

import warnings

import pytest

from adaclip_rl import AdaClipGRPOConfig
from adaclip_rl.trainers import field_checks


def _cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", per_device_train_batch_size=4,
                num_generations=4)
    base.update(kw)
    return AdaClipGRPOConfig(**base)


@pytest.mark.parametrize("loss", ["bapo", "archer"])
@pytest.mark.parametrize(("field", "value"), [("delta", 1.5), ("dual_clip", 3.0), ("epsilon_high", 0.28)])
def test_fields_bapo_and_archer_ignore_are_refused(tmp_path, loss, field, value):
    with pytest.raises(ValueError, match=rf"^{field} has no effect with policy_loss='{loss}'"):
        _cfg(tmp_path, policy_loss=loss, **{field: value})


def test_non_default_fields_of_another_loss_warn_once_naming_them(tmp_path):
    field_checks._WARNED.clear()
    with pytest.warns(UserWarning, match=r"^epsilon, archer_low_clip have no effect with policy_loss='bapo'"):
        _cfg(tmp_path, policy_loss="bapo", epsilon=0.3, archer_low_clip=0.3)
    assert not _no_effect_warnings(lambda: _cfg(tmp_path, policy_loss="bapo", epsilon=0.3, archer_low_clip=0.3))  # once
    with pytest.warns(UserWarning, match=r"^bapo_target, bapo_scope has|^bapo_target, bapo_scope have"):
        _cfg(tmp_path, policy_loss="grpo", bapo_target=0.5, bapo_scope="micro_batch")


def _no_effect_warnings(build) -> list[str]:
    """The "... no effect with policy_loss" warnings that ``build()`` emits. Only ours: other libraries
    may warn on a re-initialised process state (accelerate's OMP_NUM_THREADS notice, in the full suite)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build()
    return [str(w.message) for w in caught if "no effect with policy_loss" in str(w.message)]


def test_defaults_do_not_warn(tmp_path):
    field_checks._WARNED.clear()
    for loss in ("grpo", "bapo", "archer"):
        assert not _no_effect_warnings(lambda loss=loss: _cfg(tmp_path, policy_loss=loss)), loss


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"bapo_scope": "epoch"}, r"bapo_scope must be one of \['update', 'micro_batch'\]; got 'epoch'"),
        ({"archer_kl_aggregation": "sum"}, r"archer_kl_aggregation must be one of"),
        ({"gradient_accumulation_steps": 2, "steps_per_generation": 3},
         r"steps_per_generation \(3\) must be a multiple of gradient_accumulation_steps \(2\)"),
    ],
)
def test_invalid_scope_settings_are_refused(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(tmp_path, policy_loss="bapo", **kw)


def test_archer_trainer_does_not_leave_trl_beta_on(tiny_model_dir, arithmetic_dataset, tmp_path):
    # the reference model is loaded for Archer's KL, but TRL's own beta (self.beta) stays 0
    from conftest import digit_reward

    from adaclip_rl import AdaClipGRPOTrainer

    tr = AdaClipGRPOTrainer(model=tiny_model_dir, reward_funcs=[digit_reward], train_dataset=arithmetic_dataset,
                            args=_cfg(tmp_path, policy_loss="archer", max_completion_length=6))
    assert tr.beta == 0.0 and tr.args.beta == 0.0 and tr.ref_model is not None


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        # Archer's KL anchor is the frozen initial model: TR-DPO mixing would move it
        ({"policy_loss": "archer", "sync_ref_model": True}, r"^sync_ref_model must be False with policy_loss='archer'"),
        ({"policy_loss": "archer", "archer_high_kl": 0.01, "archer_low_kl": 0.0, "sync_ref_model": True},
         r"^sync_ref_model must be False"),
        # TRL's k3 on every token on top of Archer's per-class KL
        ({"policy_loss": "archer", "beta": 0.04}, r"^beta must be 0.0 with policy_loss='archer'.*got 0.04"),
        # TRL computes these loss types itself, without a dual clip
        *[({"policy_loss": "grpo", "loss_type": t, "dual_clip": 3.0}, rf"^dual_clip must be None with loss_type='{t}'")
          for t in ("cispo", "sapo", "vespo")],
        # Archer's per-token class bounds on one ratio per sequence: undefined
        ({"policy_loss": "archer", "importance_sampling_level": "sequence"},
         r"^importance_sampling_level must be 'token' with policy_loss='archer'.*got 'sequence'"),
    ],
)
def test_combinations_that_cannot_be_right_are_refused_by_name(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(tmp_path, **kw)
    # the recipe pre-check (before TRL is imported) refuses the same values with the same message
    from adaclip_rl.trainers.recipe_check import _Values, recipe_fields

    with pytest.raises(ValueError, match=match):
        field_checks.validate_adaclip_fields(_Values({**recipe_fields(), **kw}))


@pytest.mark.parametrize(
    "kw",
    [
        {"policy_loss": "archer", "archer_low_kl": 0.0, "beta": 0.04, "sync_ref_model": True},  # TRL's KL only
        {"policy_loss": "bapo", "importance_sampling_level": "sequence"},
        {"policy_loss": "grpo", "loss_type": "cispo"},
        {"policy_loss": "grpo", "loss_type": "dapo", "dual_clip": 3.0},
    ],
)
def test_the_neighbouring_combinations_stay_accepted(tmp_path, kw):
    assert _cfg(tmp_path, **kw).policy_loss == kw["policy_loss"]
