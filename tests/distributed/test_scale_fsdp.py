"""FSDP2 (``fully_shard``) on 2 CPU ranks equals one process, for the trainer's update path (issue 24, item 1).

accelerate 1.16 gives no FSDP on CPU (test_scale_launch.py shows what it turns the FSDP config
into), so ``scale_fsdp_worker.py`` builds ``AdaClipGRPOTrainer`` under torchrun (gloo, as
``accelerate launch`` with ``use_cpu`` does) and shards its model, and for Archer its reference
model, with ``fully_shard`` itself. Covered: the trainer's ``_compute_loss`` + backward over a
2-micro-batch accumulation window (BAPO ``bapo_scope: update``: one search and one all-reduce per
update), ``_clip_grad_norm`` (ZClip, AdaGC reading ``DTensor`` gradients sharded ``Shard(0)``), an
optimizer step, 3 updates. Not covered: generation/rewards, transformers' loop, accelerate's FSDP
plugin (GPU only).

Invariant: the 2-rank sharded run equals one process on the whole batch (two micro-batches of 4):
* BAPO bounds: exactly equal at every step and micro-batch (they are grid points chosen from a
  reduced histogram; a different choice would differ by a whole grid step);
* clipper decisions (clipped or not) equal; pre-clip norms within rel 1e-5;
* parameters after 3 SGD steps within atol 1e-6. float32 sums in another order (FSDP's
  reduce-scatter of per-rank means vs one mean over 8 sequences) differ by a few ulps per step;
  measured max |diff| 1.5e-8 against a max parameter move of 4e-3 .. 2.8e-2 (2-core x86_64 CPU),
  so 1e-6 is ~70x the noise and ~4000x below the smallest move. SGD rather than Adam because Adam's
  g/sqrt(v) turns rounding noise on near-zero gradients into lr-sized steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scale_compare import assert_equal_to_single_process, single_process  # noqa: E402
from scale_util import child_env as _env  # noqa: E402
from scale_util import run_with_port, venv_tool  # noqa: E402


@pytest.mark.distributed
def test_fully_shard_two_ranks_equal_one_process(tiny_model_dir, tmp_path, child_env):
    batch_path, single = single_process(tiny_model_dir, tmp_path)
    out = tmp_path / "fsdp.pt"
    proc = run_with_port(lambda port: [venv_tool("torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                                       "--master_port", str(port), str(HERE / "scale_fsdp_worker.py"),
                                       tiny_model_dir, str(batch_path), str(out), "fsdp"], _env(child_env))
    assert proc.returncode == 0, proc.stderr[-4000:]
    sharded = torch.load(out, weights_only=False)
    for case, got in sharded.items():
        assert got["param_types"] == ["DTensor"], case  # every policy parameter was sharded
        assert got["ref_sharded"] == case.startswith("archer"), case  # and Archer's reference model
    assert_equal_to_single_process(single, sharded)
