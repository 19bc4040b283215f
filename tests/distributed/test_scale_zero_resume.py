"""DeepSpeed ZeRO-2 / ZeRO-3 checkpoint and resume with the adaptive clipper's state (issue 24, item 4).

``scale_zero_resume_worker.py save`` on 2 CPU ranks (``DS_ACCELERATOR=cpu``, gloo): 3 steps of the
lagged-threshold path (ZClip) uninterrupted, with ``engine.save_checkpoint`` after step 2 (the
clipper's ``state_dict()`` in DeepSpeed's ``client_state``); then a fresh engine and clipper load it
and run step 3. The optimizer is SGD with momentum 0.9, so step 3 reads the ZeRO-partitioned
momentum buffers, the weights and the clipper's EMAs from the checkpoint.

Invariants:

* 2 -> 2: the resumed step 3 equals the uninterrupted step 3: threshold, engine norm and clipper
  state exactly, parameters exactly (measured max diff 0.0 on a 2-core x86_64 CPU; asserted within
  atol 1e-6, the tolerance of test_scale_zero.py). The clipper acted on the resumed step (its
  threshold is below the cap and the norm spike is above it), so a resume that lost the EMAs (ZClip
  back in warm-up, threshold = cap) fails.
* distributed equals one process: the resumed run equals a single process applying DeepSpeed's clip
  rule with the same SGD-momentum optimizer over the whole batch (thresholds and norms rel 1e-5,
  parameters atol 1e-6, as test_scale_zero.py).
* 2 -> 1 is refused by DeepSpeed 0.19.8 for both stages, in ``engine.load_checkpoint``, with
  ``ZeRORuntimeException: The checkpoint being loaded used a DP world size of 2 but the current world
  size is 1. Automatic adjustment of ZeRO's optimizer state partitioning with a new world size is not
  currently supported.`` The test pins that message, so a DeepSpeed that starts accepting it shows up.

Not covered: DeepSpeed's universal checkpoint (``ds_to_universal``), the route to a new world size
with optimizer state; ``zero_to_fp32`` (weights only); transformers' ``_save_checkpoint`` under
accelerate + DeepSpeed (the trainer does not run under DeepSpeed on CPU, docs/scaling.md); offload, bf16.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import scale_zero_resume_worker as rw  # noqa: E402
import scale_zero_worker as w  # noqa: E402
from scale_util import child_env as _env  # noqa: E402
from scale_util import run_with_port, venv_tool  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="needs the deepspeed extra (pip install 'adaclip-rl[deepspeed]')")

REFUSAL = ("The checkpoint being loaded used a DP world size of 2 but the current world size is 1. "
           "Automatic adjustment of ZeRO's optimizer state partitioning with a new world size is not currently supported.")


def _launch(mode: str, nproc: int, model_dir: str, batch: Path, ckpt: Path, out: Path, stage: int, env: dict) -> dict:
    proc = run_with_port(lambda port: [venv_tool("torchrun"), "--nproc_per_node", str(nproc), "--master_addr",
                                       "127.0.0.1", "--master_port", str(port), str(HERE / "scale_zero_resume_worker.py"),
                                       mode, model_dir, str(batch), str(ckpt), str(out), str(stage)], env)
    if proc.returncode != 0:  # the first lines that name the failure, then the tail
        named = [ln for ln in proc.stderr.splitlines() if any(k in ln for k in ("Error", "terminate", "what()", "gloo"))]
        pytest.fail("\n".join(named[:20]) + "\n...\n" + proc.stderr[-3000:])
    return torch.load(out, weights_only=False)


@pytest.mark.distributed
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_resume_equals_uninterrupted_and_one_process_and_two_to_one_is_refused(
        stage, tiny_model_dir, tmp_path, child_env):
    batch = w.make_batch()
    batch_path, ckpt = tmp_path / "batch.pt", tmp_path / "ckpt"
    torch.save(batch, batch_path)
    env = dict(_env(child_env), DS_ACCELERATOR="cpu")
    got = _launch("save", 2, tiny_model_dir, batch_path, ckpt, tmp_path / "save.pt", stage, env)
    assert "refused" not in got, got.get("refused")
    whole, resumed = got["uninterrupted"], got["resumed"]
    assert got["all_ranks"][0] == got["all_ranks"][1]  # both ranks resumed to the same step and state
    # 2 -> 2: the resumed step is the uninterrupted one
    assert resumed["steps"] == whole["steps"][-1:]
    assert resumed["state"] == whole["state"]
    assert resumed["state"] != got["state_at_save"]  # the clipper learned from the resumed step
    step = resumed["steps"][0]
    assert step["threshold"] < w.CAP and step["norm"] > step["threshold"]  # the restored EMAs set a clip that acted
    for name, p in whole["params"].items():
        torch.testing.assert_close(resumed["params"][name], p, rtol=0, atol=1e-6, msg=f"2->2 {name}")
    # distributed equals one process (same clip rule and momentum SGD, whole batch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = w.reference(tiny_model_dir, rw.CLIP, batch, momentum=rw.MOMENTUM)
    finally:
        torch.set_num_threads(threads)
    assert [s["threshold"] for s in whole["steps"]] == pytest.approx(ref["thresholds"], rel=1e-5)
    assert [s["norm"] for s in whole["steps"]] == pytest.approx(ref["norms"], rel=1e-5)
    for name, p in ref["params"].items():
        torch.testing.assert_close(resumed["params"][name], p, rtol=0, atol=1e-6, msg=f"vs one process {name}")
    # 2 -> 1: DeepSpeed refuses to repartition the ZeRO optimizer state
    one = _launch("load", 1, tiny_model_dir, batch_path, ckpt, tmp_path / "load.pt", stage, env)
    assert one["world"] == 1 and "resumed" not in one
    assert one["refused"] == f"ZeRORuntimeException: {REFUSAL}"
