"""Launching scale_ds_trainer_worker.py: under ``accelerate launch`` (ZeRO or DDP, 2 CPU ranks) or in
one process; shared by test_scale_ds_trainer.py and test_scale_trainer_resume.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from scale_util import REPO, child_env, run_with_port, venv_tool

HERE = Path(__file__).resolve().parent
WORKER = HERE / "scale_ds_trainer_worker.py"
CPU_CONFIG = REPO / "configs" / "accelerate" / "cpu_2proc.yaml"
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                 "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU")


def clean_env(**extra: str) -> dict[str, str]:
    """tests/conftest.py's ``child_env`` (function-scoped there) for module-scoped fixtures."""
    return dict(child_env({k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}), **extra)


def zero_config(stage: int, folder: Path) -> Path:
    """TRL's zeroN.yaml for 2 float32 processes (bf16 autocast would make the comparison meaningless)."""
    import trl.accelerate_configs as configs

    cfg = yaml.safe_load((Path(configs.__path__[0]) / f"zero{stage}.yaml").read_text())
    cfg.update(num_processes=2, mixed_precision="no")
    path = folder / f"zero{stage}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(config: Path, mode: str, model_dir: str, out: Path, env: dict, losses, *extra: str) -> dict:
    """``accelerate launch --config_file config`` of the worker; its results."""
    proc = run_with_port(lambda port: [venv_tool("accelerate"), "launch", "--config_file", str(config),
                                       "--main_process_port", str(port), str(WORKER), model_dir, str(out),
                                       ",".join(losses), mode, *extra], env)
    assert proc.returncode == 0, [ln for ln in proc.stderr.splitlines() if "Error" in ln][-10:] or proc.stderr[-4000:]
    return torch.load(out, weights_only=False)


def run_single(model_dir: str, out: Path, env: dict, losses, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKER), model_dir, str(out), ",".join(losses), "single", *extra],
                          capture_output=True, text=True, env=env, timeout=300)


def single_results(model_dir: str, out: Path, env: dict, losses, *extra: str) -> dict:
    proc = run_single(model_dir, out, env, losses, *extra)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out, weights_only=False)


def initial_params(model_dir: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {n: p.detach() for n, p in AutoModelForCausalLM.from_pretrained(model_dir).named_parameters()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[n] - b[n]).abs().max().item() for n in a)
