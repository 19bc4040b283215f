"""Launch-config defects found by reading them (issue 24, item 6); single process, no launcher.

* the shipped FSDP config used ``SHARDED_STATE_DICT``, with which ``Trainer.save_model`` writes no
  weights, while ``adaclip-rl train`` still printed "model in ...";
* an adaptive ``grad_clip`` under DeepSpeed was refused only at the first optimizer step (after the
  model loaded and the first rollout ran);
* the shipped accelerate configs were near-copies of TRL's ``trl/accelerate_configs``.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import trl.accelerate_configs as trl_configs
import yaml

from adaclip_rl.gradclip import GRAD_CLIPPER_SPECS

REPO = Path(__file__).resolve().parents[2]
TRL_DIR = Path(list(trl_configs.__path__)[0])
# keys whose value only restates accelerate's default or names the machine size
_COSMETIC = {"debug", "downcast_bf16", "enable_cpu_affinity", "tpu_env", "tpu_use_cluster", "tpu_use_sudo",
             "num_processes", "gpu_ids"}


def _normalised(path: Path) -> dict:
    cfg = yaml.safe_load(path.read_text())
    return {k: v for k, v in cfg.items() if k not in _COSMETIC}


def test_every_shipped_accelerate_config_differs_from_each_of_trls():
    """Keep our own launch config only where TRL has none that serves (here: CPU); the GPU ones are
    TRL's, used by name."""
    ours = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))
    theirs = {p.name: _normalised(p) for p in TRL_DIR.glob("*.yaml")}
    assert ours and len(theirs) >= 5
    for path in ours:
        cfg = _normalised(path)
        same = [name for name, t in theirs.items() if t == cfg]
        assert not same, f"{path.name} repeats TRL's {same}: use $TRL_CONFIGS/{same[0]} instead"
        # the reason it is kept is stated in the file
        assert path.read_text().startswith("#"), path.name


def test_no_fsdp_config_shards_the_final_state_dict():
    """``SHARDED_STATE_DICT`` makes ``Trainer.save_model`` write no weights; every FSDP launch config
    the project ships or points to must gather a full one."""
    for path in sorted((REPO / "configs" / "accelerate").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if cfg.get("distributed_type") == "FSDP":
            assert cfg["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT", path.name
    for name in ("fsdp1.yaml", "fsdp2.yaml"):
        assert yaml.safe_load((TRL_DIR / name).read_text())["fsdp_config"]["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_every_launch_config_the_docs_name_exists():
    """``$TRL_CONFIGS/<name>.yaml`` in the README, docs and recipes names a file TRL ships;
    ``configs/accelerate/<name>.yaml`` a file we ship."""
    texts = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "configs").rglob("*.yaml")),
             REPO / "adaclip_rl" / "trainers" / "cli.py"]
    named = 0
    for path in texts:
        text = path.read_text()
        for name in re.findall(r"\$TRL_CONFIGS/([\w.-]+\.yaml)", text):
            assert (TRL_DIR / name).is_file(), (path.name, name)
            named += 1
        for name in re.findall(r"configs/accelerate/([\w.-]+\.yaml)", text):
            assert (REPO / "configs" / "accelerate" / name).is_file(), (path.name, name)
    assert named >= 5


# --- "model in ..." only when weights were written -------------------------------------------------

class _TrainerThatSavesNothing:
    """What ``Trainer.save_model`` does under FSDP with ``SHARDED_STATE_DICT`` (no weights); FSDP
    itself cannot run through accelerate on CPU, so the save is the one thing replaced."""

    def __init__(self, out: Path, write: bool):
        self.out, self.write = out, write
        self.state = SimpleNamespace(log_history=[{"step": 1, "loss": 0.1}])

    def train(self, resume_from_checkpoint=None):
        pass

    def save_model(self, output_dir):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        if self.write:
            (Path(output_dir) / "model.safetensors").write_bytes(b"x")

    def is_world_process_zero(self):
        return True


@pytest.mark.parametrize("write", [False, True])
def test_train_says_model_in_only_when_weights_were_written(tiny_model_dir, tmp_path, monkeypatch, capsys, write):
    from adaclip_rl.trainers import cli

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model_name_or_path": tiny_model_dir, "task": "arithmetic",
                                      "rewards": ["arithmetic_exact"], "output_dir": str(tmp_path / "out"),
                                      "use_cpu": True, "bf16": False, "report_to": "none", "plot_metrics": False}))
    monkeypatch.setattr(cli, "build_trainer", lambda *a, **k: _TrainerThatSavesNothing(tmp_path / "out", write))
    assert cli.main(["--config", str(recipe)]) == 0
    out = capsys.readouterr()
    assert ("model in" in out.out) == write, out
    if not write:
        assert "no model weights were written" in out.err and "FULL_STATE_DICT" in out.err


# --- adaptive grad_clip under DeepSpeed: refused at config time ---------------------------------------

ADAPTIVE_OR_NONE = sorted(n for n in GRAD_CLIPPER_SPECS if n != "fixed")


@pytest.mark.parametrize("grad_clip", ADAPTIVE_OR_NONE)
@pytest.mark.parametrize("how", ["accelerate_env", "deepspeed_field"])
def test_adaptive_grad_clip_under_deepspeed_is_refused_by_the_config(grad_clip, how, monkeypatch, tmp_path):
    """Before any model loads: the config (and the recipe pre-check, which runs the same check on
    YAML values) refuses it, naming ``grad_clip``."""
    from adaclip_rl.trainers import field_checks

    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    ds = None
    if how == "accelerate_env":
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch` exports for DeepSpeed
    else:
        ds = str(tmp_path / "ds.json")
    view = SimpleNamespace(grad_clip=grad_clip, max_grad_norm=1.0, deepspeed=ds)
    with pytest.raises(ValueError, match=r"^grad_clip must be 'fixed' under DeepSpeed.*got '" + grad_clip):
        field_checks.check_clip_under_deepspeed(view)
    from adaclip_rl import AdaClipGRPOConfig

    with pytest.raises(ValueError, match="grad_clip must be 'fixed' under DeepSpeed"):
        AdaClipGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, grad_clip=grad_clip, deepspeed=ds,
                          report_to="none")


def test_fixed_and_no_clipping_stay_accepted_under_deepspeed(monkeypatch):
    from adaclip_rl.trainers import field_checks

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    field_checks.check_clip_under_deepspeed(SimpleNamespace(grad_clip="fixed", max_grad_norm=1.0))
    field_checks.check_clip_under_deepspeed(SimpleNamespace(grad_clip="none", max_grad_norm=0.0))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    field_checks.check_clip_under_deepspeed(SimpleNamespace(grad_clip="zclip", max_grad_norm=1.0))


def test_cli_refuses_adaptive_clip_under_deepspeed_before_the_model_loads(tmp_path, monkeypatch, capsys):
    from adaclip_rl.trainers import cli

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model_name_or_path": "/nonexistent/model", "task": "arithmetic",
                                      "rewards": ["arithmetic_exact"], "output_dir": str(tmp_path / "out"),
                                      "use_cpu": True, "bf16": False, "grad_clip": "zclip"}))
    assert cli.main(["--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "grad_clip must be 'fixed' under DeepSpeed" in err and "/nonexistent/model" not in err


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="the deepspeed extra is not installed; the refusal tests above need no DeepSpeed")
def test_deepspeed_config_with_fixed_clip_still_builds(monkeypatch, tmp_path):
    from adaclip_rl import AdaClipGRPOConfig

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    cfg = AdaClipGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, grad_clip="fixed", report_to="none")
    assert cfg.grad_clip == "fixed"
