"""YAML recipes: unknown keys and out-of-range values fail at parse time, before any model loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from adaclip_rl.data import BENCHMARK_DIR as DATA_DIR
from adaclip_rl.trainers.cli import make_parser

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


def test_cli_process_fails_before_loading_the_model(tmp_path, child_env):
    out = subprocess.run(
        [sys.executable, "-m", "adaclip_rl.cli", "train", "--config",
         _write(tmp_path, policy_loss="bapo", bapo_target=2.0)],
        capture_output=True, text=True, cwd=REPO, timeout=300, env=child_env,
    )
    assert out.returncode != 0
    assert "bapo_target must be in (0, 1); got 2.0" in out.stderr
    assert MISSING_MODEL not in out.stderr  # the model path was never touched


@pytest.mark.parametrize("recipe", sorted((REPO / "configs" / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_parse(recipe):
    script, grpo, model = make_parser().parse_args_and_config(
        ["--config", str(recipe), "--use_cpu", "true", "--bf16", "false"])
    assert grpo.policy_loss in ("grpo", "bapo", "archer") and model.model_name_or_path
    assert grpo.steps_per_generation >= grpo.gradient_accumulation_steps


def test_cli_trains_from_yaml(tiny_model_dir, tmp_path, child_env):
    recipe = _write(tmp_path, model_name_or_path=tiny_model_dir, policy_loss="archer", max_steps=2,
                    per_device_train_batch_size=8, num_generations=4, max_completion_length=4,
                    logging_steps=1, report_to="none", save_strategy="no", gradient_checkpointing=False,
                    periodic_eval_benchmarks="amc23", periodic_eval_every=2, periodic_eval_limit=2,
                    periodic_eval_max_new_tokens=4, periodic_eval_data_dir=str(DATA_DIR))
    out = subprocess.run([sys.executable, "-m", "adaclip_rl.cli", "train", "--config", recipe],
                         capture_output=True, text=True, cwd=REPO, timeout=600, env=child_env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "archer/high_frac" in out.stdout
    assert "eval/amc23/avg@1" in out.stdout  # periodic evaluation from the recipe
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_unknown_periodic_eval_benchmark_fails_before_the_model_loads(tmp_path):
    from adaclip_rl.trainers.cli import build_trainer

    args = make_parser().parse_args_and_config(
        ["--config", _write(tmp_path, policy_loss="grpo", periodic_eval_benchmarks="aime23",
                            periodic_eval_data_dir=str(DATA_DIR))])
    with pytest.raises(ValueError, match="unknown benchmark 'aime23'"):
        build_trainer(*args)
