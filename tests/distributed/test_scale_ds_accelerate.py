"""accelerate + DeepSpeed on CPU: why the Trainer's DeepSpeed setup failed with ``train_batch_size 4
!= 4 * 1 * 2``, and the settings that make accelerate build a ZeRO-2 engine on 2 CPU ranks
(issue 24, item 2). accelerate 1.16.0, DeepSpeed 0.19.8, transformers' ``TrainingArguments``,
TRL's ``zero2.yaml``, ``DS_ACCELERATOR=cpu``.

The cause (accelerate ``state.py``): with ``use_cpu: false`` and no GPU, ``_prepare_backend`` finds no
device backend and leaves ``backend = None``. DeepSpeed's ``init_distributed`` still connects 2 ranks
(gloo, from its CPU accelerator), but accelerate's "no backend == no distributed training" branch sets
``num_processes = 1``. ``prepare`` then writes ``train_batch_size = 4 * 1 * 1`` while DeepSpeed
counts ``world_size = 2``: ``4 != 4 * 1 * 2``. With ``use_cpu: true`` accelerate skips DeepSpeed
altogether (its DeepSpeed branches are ``if not cpu``): ``MULTI_CPU``, no DeepSpeed plugin, no message.
With ``use_cpu: false`` and ``ddp_backend: gloo`` the backend is set, ``num_processes = 2`` and
``prepare`` returns a ``DeepSpeedEngine``.

The trainer itself under these settings (``train()`` on ZeRO-2 and ZeRO-3, equal to one process):
test_scale_ds_trainer.py.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scale_util import child_env as _env  # noqa: E402
from scale_util import run_with_port, venv_tool  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="needs the deepspeed extra (pip install 'adaclip-rl[deepspeed]')")


def _probe(tmp_path: Path, env: dict, use_cpu: bool, backend: str) -> list[dict]:
    import trl.accelerate_configs as configs

    out = tmp_path / f"ds-{int(use_cpu)}-{backend or 'none'}"
    proc = run_with_port(lambda port: [venv_tool("accelerate"), "launch", "--config_file",
                                       str(Path(configs.__path__[0]) / "zero2.yaml"), "--num_processes", "2",
                                       "--main_process_port", str(port), str(HERE / "scale_ds_probe.py"),
                                       str(out), str(int(use_cpu)), backend], env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1)]


@pytest.mark.distributed
def test_no_gpu_deepspeed_counts_one_process_without_a_backend_and_two_with_gloo(tmp_path, child_env):
    env = dict(_env(child_env), DS_ACCELERATOR="cpu")
    for got in _probe(tmp_path, env, use_cpu=False, backend=""):
        assert got["distributed_type"] == "DistributedType.DEEPSPEED" and got["deepspeed_plugin"]
        assert (got["num_processes"], got["args_world_size"], got["torch_world_size"]) == (1, 1, 2)
        assert "train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step * world_size 4 != 4 * 1 * 2" in got["error"]
    for got in _probe(tmp_path, env, use_cpu=False, backend="gloo"):
        assert got["distributed_type"] == "DistributedType.DEEPSPEED"
        assert (got["num_processes"], got["args_world_size"], got["torch_world_size"]) == (2, 2, 2)
        assert got.get("prepared") == "DeepSpeedEngine", got.get("error")


@pytest.mark.distributed
def test_use_cpu_drops_deepspeed_silently(tmp_path, child_env):
    for got in _probe(tmp_path, dict(_env(child_env), DS_ACCELERATOR="cpu"), use_cpu=True, backend=""):
        assert got["distributed_type"] == "DistributedType.MULTI_CPU" and not got["deepspeed_plugin"]
        assert got["num_processes"] == 2 and "error" not in got
