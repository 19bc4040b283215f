"""TRL's recipe conventions in ``adaclip-rl train``: ``reward_funcs`` (names, dotted import paths,
a reward model), TRL's dataset keys, ``model_revision`` and quantization, and a check that every
key TRL's own ``grpo`` script accepts is accepted here and read (not dropped)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import sys
from pathlib import Path

import pytest
import yaml

from adaclip_rl.rewards import build_reward_funcs
from adaclip_rl.rewards.registry import check_reward_names
from adaclip_rl.trainers.build import (
    DATASET_CONFIG_KEYS,
    RecipeError,
    TrainScriptArguments,
    build_trainer,
    load_train_dataset,
    make_parser,
)
from adaclip_rl.trainers.cli import parse_recipe
from adaclip_rl.trainers.recipe_check import recipe_fields

REWARD_MODULE = '''
def length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]

def no_kwargs_reward(prompts, completions):
    return [0.0 for _ in completions]

NOT_CALLABLE = 3
'''


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """A user's reward module in the current directory (TRL's grpo script puts the cwd on sys.path)."""
    (tmp_path / "my_rewards_mod.py").write_text(REWARD_MODULE)
    monkeypatch.chdir(tmp_path)
    yield "my_rewards_mod"
    sys.modules.pop("my_rewards_mod", None)


def _recipe(tmp_path, **cfg) -> str:
    base = {"model_name_or_path": "/nonexistent/model", "task": "arithmetic", "output_dir": str(tmp_path / "out"),
            "use_cpu": True, "bf16": False}
    base.update(cfg)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(base))
    return str(path)


def test_reward_funcs_takes_a_dotted_import_path(reward_module, tmp_path):
    script, _, _ = parse_recipe(["--config", _recipe(tmp_path, reward_funcs=[f"{reward_module}.length_reward",
                                                                           "arithmetic_exact"])])
    funcs, weights = build_reward_funcs(script.reward_funcs)
    assert [f.__name__ for f in funcs] == ["length_reward", "arithmetic_exact"] and weights == [1.0, 1.0]
    assert funcs[0](prompts=["p", "q"], completions=["ab", "abcd"]) == [2.0, 4.0]  # the user's function, called


@pytest.mark.parametrize(("attr", "words"), [
    ("no_kwargs_reward", "TRL's reward signature"),
    ("NOT_CALLABLE", "not a callable"),
    ("missing_fn", "has no attribute 'missing_fn'"),
])
def test_bad_dotted_reward_is_one_line_naming_it(reward_module, tmp_path, attr, words):
    with pytest.raises(RecipeError, match=words) as err:
        parse_recipe(["--config", _recipe(tmp_path, reward_funcs=[f"{reward_module}.{attr}"])])
    assert "\n" not in str(err.value) and f"{reward_module}.{attr}" in str(err.value)


def test_unimportable_reward_module_is_named(tmp_path):
    with pytest.raises(RecipeError, match="cannot import module 'no_such_pkg.rewards'"):
        parse_recipe(["--config", _recipe(tmp_path, reward_funcs=["no_such_pkg.rewards.fn"])])


@pytest.mark.parametrize(("typo", "meant"), [("math_acuracy", "math_accuracy"), ("acuracy_reward", "accuracy_reward"),
                                             ("think_fromat", "think_format")])
def test_unknown_reward_says_did_you_mean(tmp_path, typo, meant):
    with pytest.raises(RecipeError, match=f"did you mean '{meant}'"):
        parse_recipe(["--config", _recipe(tmp_path, reward_funcs=[typo])])


def test_trl_reward_names_resolve_to_trl_rewards():
    from trl import rewards as trl_rewards

    funcs, _ = build_reward_funcs(["accuracy_reward", "think_format_reward", "get_soft_overlong_punishment"])
    assert funcs[0].fn is trl_rewards.accuracy_reward and funcs[1].fn is trl_rewards.think_format_reward
    # TRL's script builds the overlong punishment with max_completion_len=1280, soft_punish_cache=256
    assert funcs[2](completion_ids=[[0] * 1024, [0] * 1280]) == [0.0, -1.0]


def test_rewards_is_an_alias_of_reward_funcs(tmp_path):
    a, _, _ = parse_recipe(["--config", _recipe(tmp_path, rewards=["arithmetic_exact"])])
    b, _, _ = parse_recipe(["--config", _recipe(tmp_path, reward_funcs=["arithmetic_exact"])])
    assert a.reward_funcs == a.rewards == b.reward_funcs == b.rewards == ["arithmetic_exact"]
    with pytest.raises(RecipeError, match="only one of reward_funcs and rewards"):
        parse_recipe(["--config", _recipe(tmp_path, rewards=["arithmetic_exact"], reward_funcs=["arithmetic_exact"])])
    with pytest.raises(ValueError, match="reward_funcs"):
        check_reward_names(["nope"], field="reward_funcs")
    with pytest.raises(RecipeError, match="reward_funcs is empty"):
        parse_recipe(["--config", _recipe(tmp_path, reward_funcs=[])])
    script, _, _ = parse_recipe(["--config", _recipe(tmp_path, reward_funcs=[], reward_model_name_or_path="a/b")])
    assert script.reward_funcs == []  # the reward model alone


def test_reward_model_comes_first_and_is_scored(tiny_model_dir, tmp_path):
    """A reward model by path, before the reward functions (as trl/scripts/grpo.py orders them)."""
    args = make_parser().parse_args_and_config(["--config", _recipe(
        tmp_path, model_name_or_path=tiny_model_dir, reward_model_name_or_path=tiny_model_dir,
        reward_funcs=[{"name": "arithmetic_exact", "weight": 0.5}], per_device_train_batch_size=4,
        num_generations=4, max_completion_length=4, report_to="none")])
    trainer = build_trainer(*args)
    from transformers import PreTrainedModel

    assert isinstance(trainer.reward_funcs[0], PreTrainedModel) and len(trainer.reward_funcs) == 2
    assert trainer.reward_func_names[1] == "arithmetic_exact"
    assert trainer.reward_weights.tolist() == [1.0, 0.5]


def test_model_revision_reaches_the_model_loader(tiny_model_dir, tmp_path, monkeypatch):
    """model_revision reaches TRL's model loader (TRL's script: model_init_kwargs['revision'])."""
    from trl.trainer import grpo_trainer

    seen = []
    original = grpo_trainer.create_model_from_path

    def spy(model_id, **kw):
        seen.append(kw.get("revision"))
        return original(model_id, **kw)

    monkeypatch.setattr(grpo_trainer, "create_model_from_path", spy)
    args = make_parser().parse_args_and_config(["--config", _recipe(
        tmp_path, model_name_or_path=tiny_model_dir, model_revision="v1.2", reward_funcs=["arithmetic_exact"],
        per_device_train_batch_size=4, num_generations=4, max_completion_length=4, report_to="none")])
    build_trainer(*args)
    assert seen and seen[0] == "v1.2"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize("field", ["load_in_4bit", "load_in_8bit"])
def test_quantization_without_cuda_is_refused_by_name(tmp_path, field):
    from adaclip_rl.trainers.build import check_quantization

    _, _, model = make_parser().parse_args_and_config(["--config", _recipe(tmp_path, **{field: True})])
    with pytest.raises(RecipeError, match=f"{field}: bitsandbytes quantization needs a CUDA GPU"):
        check_quantization(model)


def test_quantization_config_is_trls(tmp_path):
    """load_in_4bit with use_peft (QLoRA) gives the BitsAndBytesConfig TRL's get_quantization_config builds."""
    from trl import get_quantization_config

    _, _, model = make_parser().parse_args_and_config(["--config", _recipe(
        tmp_path, load_in_4bit=True, use_peft=True, bnb_4bit_quant_type="fp4", use_bnb_nested_quant=True)])
    q = get_quantization_config(model)
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "fp4" and q.bnb_4bit_use_double_quant


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_dataset_test_split_and_mixture(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write_jsonl(data / "train.jsonl", [{"q": f"t{i}"} for i in range(6)])
    _write_jsonl(data / "test.jsonl", [{"q": f"e{i}"} for i in range(3)])
    script, _, _ = parse_recipe(["--config", _recipe(tmp_path, task=None, dataset_name=str(data),
                                                     prompt_template="{q}", conversational=False)])
    assert load_train_dataset(script)["prompt"] == [f"t{i}" for i in range(6)]
    assert load_train_dataset(script, split=script.dataset_test_split)["prompt"] == [f"e{i}" for i in range(3)]
    # TRL's mixture: two files in shares 3:1, then a test split of the mixture (one split, no overlap)
    other = _write_jsonl(tmp_path / "other.jsonl", [{"q": f"o{i}"} for i in range(4)])
    mixture = [{"path": "json", "data_files": str(data / "train.jsonl"), "fraction": 0.75},
               {"path": "json", "data_files": other, "fraction": 0.25}]  # shares: 6 + 2 rows
    script, _, _ = parse_recipe(["--config", _recipe(tmp_path, task=None, datasets=mixture, test_split_size=2,
                                                     prompt_template="{q}", conversational=False)])
    train, test = load_train_dataset(script), load_train_dataset(script, split="test")
    assert len(train) == 6 and len(test) == 2
    assert sorted(list(train["prompt"]) + list(test["prompt"])) == sorted([f"t{i}" for i in range(6)] + ["o0", "o1"])


def test_mixture_entries_are_trls_dataset_config(tmp_path):
    from trl.scripts.utils import DatasetConfig

    assert DATASET_CONFIG_KEYS == tuple(f.name for f in dataclasses.fields(DatasetConfig))
    with pytest.raises(RecipeError, match=r"datasets\[0\] has unknown keys \['splt'\]"):
        parse_recipe(["--config", _recipe(tmp_path, task=None, datasets=[{"path": "json", "splt": "x"}])])


def test_eval_strategy_builds_the_eval_set(tiny_model_dir, tmp_path):
    args = make_parser().parse_args_and_config(["--config", _recipe(
        tmp_path, model_name_or_path=tiny_model_dir, reward_funcs=["arithmetic_exact"], eval_strategy="steps",
        eval_steps=10, per_device_train_batch_size=4, per_device_eval_batch_size=4, num_generations=4,
        max_completion_length=4, report_to="none")])
    trainer = build_trainer(*args)
    assert trainer.eval_dataset is not None and len(trainer.eval_dataset) > 0


# ---- every key of TRL's grpo script --------------------------------------------------------------

def _trl_grpo_classes():
    from trl.scripts import grpo

    return grpo.make_parser().dataclass_types


def test_every_trl_grpo_script_key_is_a_recipe_key():
    """The keys `trl grpo` accepts (GRPOScriptArguments, GRPOConfig, ModelConfig, DatasetMixtureConfig)
    are all keys of an adaclip-rl recipe."""
    trl_keys = {f.name for cls in _trl_grpo_classes() for f in dataclasses.fields(cls)}
    missing = sorted(trl_keys - set(recipe_fields()))
    assert not missing, missing


# Values a recipe written for `trl grpo` may hold for TRL's script-level and model keys (not defaults).
TRL_RECIPE = {
    "model_name_or_path": "Qwen/Qwen2-0.5B-Instruct", "model_revision": "refs/pr/1", "dtype": "bfloat16",
    "attn_implementation": "sdpa", "use_peft": True, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1,
    "lora_target_modules": ["q_proj", "v_proj"], "load_in_4bit": True, "bnb_4bit_quant_type": "fp4",
    "use_bnb_nested_quant": True, "reward_model_name_or_path": "some/reward-model",
    "reward_funcs": ["accuracy_reward", "think_format_reward"], "dataset_name": "trl-lib/DeepMath-103K",
    "dataset_config": "default", "dataset_train_split": "train", "dataset_test_split": "validation",
    "dataset_streaming": True, "eval_strategy": "steps", "eval_steps": 50, "learning_rate": 1e-6,
    "num_generations": 8, "max_completion_length": 256, "use_vllm": True, "vllm_mode": "colocate",
    "trust_remote_code": True, "output_dir": "out", "use_cpu": True, "bf16": False,
}


def test_a_trl_grpo_recipe_parses_with_every_value_kept(tmp_path):
    path = tmp_path / "trl.yaml"
    path.write_text(yaml.safe_dump(TRL_RECIPE))
    parsed = parse_recipe(["--config", str(path)])
    for key, value in TRL_RECIPE.items():
        holder = next(obj for obj in parsed if hasattr(obj, key))
        assert getattr(holder, key) == value, key


def _attrs_read(func_source: str, names: set[str]) -> set[str]:
    tree = ast.parse(func_source)
    return {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id in names}


def test_every_field_trls_grpo_script_reads_is_read_here():
    """What trl/scripts/grpo.py's main() reads from its parsed arguments, adaclip-rl's train path reads
    too (or hands the whole object to the same TRL helper): nothing a TRL recipe sets is dropped."""
    from trl.scripts import grpo
    from trl.trainer import utils as trl_utils

    import adaclip_rl.trainers.build as ours
    import adaclip_rl.trainers.cli as ours_cli

    trl_reads = _attrs_read(inspect.getsource(grpo.main), {"script_args", "model_args", "dataset_args"})
    our_reads = set().union(*(_attrs_read(inspect.getsource(m), {"script_args", "model_args", "args", "grpo_args"})
                              for m in (ours, ours_cli)))
    helpers = {"get_peft_config": trl_utils.get_peft_config, "get_quantization_config": trl_utils.get_quantization_config}
    for name, helper in helpers.items():
        assert f"{name}(model_args)" in inspect.getsource(ours.build_trainer), name
        our_reads |= _attrs_read(inspect.getsource(helper), {"model_args"})
    assert trl_reads, "TRL's script changed shape"
    assert not sorted(trl_reads - our_reads), sorted(trl_reads - our_reads)
    # training_args fields TRL's script reads: GRPOTrainer / Trainer read them themselves here
    # (trust_remote_code: GRPOTrainer's model init; push_to_hub: Trainer.save_model; the rest: main()).
    trl_training = _attrs_read(inspect.getsource(grpo.main), {"training_args"})
    handled = {"trust_remote_code", "push_to_hub", "model_init_kwargs", "eval_strategy", "resume_from_checkpoint",
               "output_dir"}
    assert trl_training <= handled, sorted(trl_training - handled)
    assert {"model_init_kwargs", "eval_strategy", "resume_from_checkpoint", "output_dir"} <= our_reads


def test_script_arguments_still_construct_without_trl_dataset_keys():
    assert TrainScriptArguments(task="arithmetic").reward_funcs == ["math_accuracy"]
