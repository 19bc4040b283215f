"""One source of truth per setting: every field of a loss config, a clipper's exposed arguments and
``RolloutConfig`` has exactly one twin on the trainer configs (prefixed name, same default, same
help), and every registry entry is complete."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from trl import GRPOConfig

from adaclip_rl.gradclip import GRAD_CLIPPER_SPECS, GradClipper
from adaclip_rl.losses import POLICY_LOSS_SPECS
from adaclip_rl.optim import OPTIMIZER_SPECS
from adaclip_rl.rollout import RolloutConfig
from adaclip_rl.trainers.async_config import AdaClipAsyncGRPOConfig, _AsyncFieldView
from adaclip_rl.trainers.config import AdaClipGRPOConfig, OffPolicyGRPOConfig

TRAINER_CONFIGS = (AdaClipGRPOConfig, OffPolicyGRPOConfig, AdaClipAsyncGRPOConfig)
TRL_FIELDS = {f.name: f for f in dataclasses.fields(GRPOConfig)}
# the asynchronous config's own settings (weight transfer to the vLLM server), not twins of any
ASYNC_OWN = {"weight_transfer", "weight_transfer_dir", "weight_transfer_pause_mode", "record_token_versions",
             "staleness_policy", "staleness_decay"}  # the last two: same default and help as RolloutConfig's


def _trl_fields(cls) -> dict[str, dataclasses.Field]:
    """The fields of the TRL config ``cls`` extends (``GRPOConfig`` or ``AsyncGRPOConfig``)."""
    base = next(c for c in cls.__mro__ if c.__module__.startswith("trl."))
    return {f.name: f for f in dataclasses.fields(base)}


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _ours(cls) -> dict[str, dataclasses.Field]:
    """The fields a trainer config adds to TRL's."""
    trl_fields = _trl_fields(cls)
    return {n: f for n, f in _fields(cls).items() if n not in trl_fields}


def _owners(cls) -> dict[str, list[str]]:
    """Trainer field -> every setting (``loss:field``, ``clipper:arg``, ``rollout:field``) it twins."""
    owners: dict[str, list[str]] = {}
    for spec in POLICY_LOSS_SPECS.values():
        for f in dataclasses.fields(spec.config_cls):
            owners.setdefault(spec.trainer_field(f.name), []).append(f"{spec.name}:{f.name}")
    for spec in GRAD_CLIPPER_SPECS.values():
        for param in spec.params:
            owners.setdefault(spec.trainer_field(param), []).append(f"{spec.name}:{param}")
    for spec in OPTIMIZER_SPECS.values():
        for f in spec.own_fields():
            owners.setdefault(spec.trainer_field(f.name), []).append(f"{spec.name}:{f.name}")
    if "partial_rollouts" in _fields(cls):
        for f in dataclasses.fields(RolloutConfig):
            owners.setdefault(f.name, []).append(f"rollout:{f.name}")
    return owners


@pytest.mark.parametrize("cls", TRAINER_CONFIGS)
def test_every_loss_config_field_has_one_prefixed_twin_with_its_default_and_help(cls):
    trainer = _fields(cls)
    for spec in POLICY_LOSS_SPECS.values():
        for f in dataclasses.fields(spec.config_cls):
            name = spec.trainer_field(f.name)
            if f.name in spec.external:  # taken from a field TRL already has (grpo's epsilon)
                # AsyncGRPOConfig has no delta: the async config's view supplies TRL's "no cap"
                assert name in _trl_fields(cls) or (cls is AdaClipAsyncGRPOConfig
                                                    and name in _AsyncFieldView._ASYNC_DEFAULTS), (spec.name, f.name)
                continue
            assert name in trainer, (spec.name, f.name)
            assert name == spec.prefix + f.name
            assert trainer[name].default == f.default, name
            assert trainer[name].metadata["help"] == f.metadata["help"], name


@pytest.mark.parametrize("cls", TRAINER_CONFIGS)
def test_every_clipper_argument_has_one_twin_with_the_constructor_default(cls):
    trainer = _fields(cls)
    for spec in GRAD_CLIPPER_SPECS.values():
        if spec.cls is None:
            continue
        signature = inspect.signature(spec.cls)
        for param, help_text in spec.params.items():
            name = spec.trainer_field(param)
            assert name.startswith(spec.prefix), name
            assert trainer[name].default == signature.parameters[param].default, name
            assert trainer[name].metadata["help"] == help_text, name
        for param in spec.from_max_grad_norm:
            assert param in signature.parameters, (spec.name, param)


@pytest.mark.parametrize("cls", TRAINER_CONFIGS)
def test_every_optimizer_config_field_has_one_twin_with_the_constructor_default(cls):
    trainer = _fields(cls)
    for spec in OPTIMIZER_SPECS.values():
        signature = inspect.signature(spec.cls) if spec.cls is not None else None
        for f in spec.own_fields():
            name = spec.trainer_field(f.name)
            assert name.startswith(spec.prefix), name
            assert trainer[name].default == f.default == signature.parameters[f.name].default, name
            assert trainer[name].metadata["help"] == f.metadata["help"], name


def test_every_rollout_field_has_one_twin_on_the_off_policy_config():
    trainer = _fields(OffPolicyGRPOConfig)
    for f in dataclasses.fields(RolloutConfig):
        assert f.name in trainer, f.name
        if f.name in TRL_FIELDS:  # max_completion_length, seed: the trainer passes TRL's
            continue
        if f.name == "ratio_anchor":  # the trainer adds "auto", resolved from the policy loss
            assert trainer[f.name].default == "auto" and "auto" not in str(f.default)
            continue
        assert trainer[f.name].default == f.default, f.name
        assert trainer[f.name].metadata["help"] == f.metadata["help"], f.name


@pytest.mark.parametrize("cls", TRAINER_CONFIGS)
def test_no_trainer_field_is_a_twin_of_two_settings_or_of_none(cls):
    owners = _owners(cls)
    shared = {name: who for name, who in owners.items() if len(who) > 1}
    assert not shared
    prefixes = tuple(s.prefix for s in [*POLICY_LOSS_SPECS.values(), *GRAD_CLIPPER_SPECS.values(),
                                        *OPTIMIZER_SPECS.values()] if s.prefix)
    orphans = [n for n in _ours(cls) if n.startswith(prefixes) and n not in owners]
    assert not orphans  # e.g. a hand-written bapo_* field the registry does not know
    own = ASYNC_OWN if cls is AdaClipAsyncGRPOConfig else set()
    unexplained = set(_ours(cls)) - set(owners) - {"policy_loss", "grad_clip", "optimizer"} - own
    assert not unexplained


def _loss_inputs():
    gen = torch.Generator().manual_seed(0)
    logp = (-torch.rand(4, 8, generator=gen)).requires_grad_()
    ratio = torch.exp(logp - (logp.detach() + 0.3 * torch.randn(4, 8, generator=gen)))
    return logp, ratio, torch.randn(4, 1, generator=gen), torch.ones(4, 8)


@pytest.mark.parametrize("name", sorted(POLICY_LOSS_SPECS))
def test_every_policy_loss_entry_is_complete(name):
    spec = POLICY_LOSS_SPECS[name]
    assert spec.name == name and callable(spec.fn)
    assert dataclasses.is_dataclass(spec.config_cls) and spec.config_cls.__dataclass_params__.frozen
    for f in spec.own_fields():
        assert f.metadata.get("help"), (name, f.name)
        assert f.default is not dataclasses.MISSING, (name, f.name)
    assert (spec.statistics is None) == (spec.select is None)
    assert spec.statistics is None or spec.needs_loss_weights  # the search weighs tokens as the loss does
    config = spec.config_cls()
    assert isinstance(spec.needs_ref_logps(config), bool) and isinstance(spec.needs_old_entropies(config), bool)
    # the trainer's defaults build the config's own defaults (TRL's epsilon 0.2 = GRPOClipConfig's)
    assert spec.config_from(AdaClipGRPOConfig(output_dir="unused", use_cpu=True, report_to="none")) == config
    # the metrics it logs are the ones it declares
    logp, ratio, adv, mask = _loss_inputs()
    out = spec.fn(ratio, adv, mask, config=config, logp=logp, ref_logp=logp.detach() - 0.1,
                  entropy=torch.rand(4, 8), weights=mask / mask.sum())
    assert out.metrics and set(out.metrics) <= set(spec.metrics), set(out.metrics) - set(spec.metrics)


def test_prefixes_are_distinct_and_every_clipper_entry_is_complete():
    prefixes = [s.prefix for s in [*POLICY_LOSS_SPECS.values(), *GRAD_CLIPPER_SPECS.values(),
                                   *OPTIMIZER_SPECS.values()] if s.prefix]
    assert len(prefixes) == len(set(prefixes))
    for spec in GRAD_CLIPPER_SPECS.values():
        assert spec.cls is None or issubclass(spec.cls, GradClipper)
        assert (spec.cls is None) == spec.measures_only
        signature = inspect.signature(spec.cls) if spec.cls is not None else None
        for param, help_text in spec.params.items():
            assert help_text and param in signature.parameters, (spec.name, param)


def test_errors_name_the_trainer_field_and_leave_the_value_alone(tmp_path):
    # the message is rebuilt from the names the check recorded, not rewritten by pattern: a value
    # that spells another field's name stays as it was
    with pytest.raises(ValueError, match=r"^bapo_contribution must be one of \['grad', 'value'\]; got 'target'$"):
        AdaClipGRPOConfig(output_dir=str(tmp_path), use_cpu=True, policy_loss="bapo", bapo_contribution="target")
    with pytest.raises(ValueError, match=r"^bapo_high_max \(1\.1\) must be >= bapo_high_start \(1\.2\)$"):
        AdaClipGRPOConfig(output_dir=str(tmp_path), use_cpu=True, policy_loss="bapo", bapo_high_max=1.1)
    with pytest.raises(ValueError, match=r"^QuantileClip: quantile_lr must be a finite number > 0; got -1$"):
        AdaClipGRPOConfig(output_dir=str(tmp_path), use_cpu=True, grad_clip="quantile", quantile_lr=-1)
