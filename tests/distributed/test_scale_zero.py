"""DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU ranks: the adaptive clippers' lagged-threshold path equals
one process (issue 24, item 2).

DeepSpeed 0.19.8 runs on CPU with ``DS_ACCELERATOR=cpu`` (its CPU accelerator uses gloo). Under
ZeRO the engine clips inside ``engine.step()``; the trainer therefore refuses a non-``fixed``
``grad_clip`` under DeepSpeed (test_scale_configs.py) and the supported path is the one
``scale_zero_worker.py`` runs: before each step ``engine.optimizer.clip_grad =
clipper.lagged_threshold()``, after it ``clipper.step(engine.get_global_grad_norm())``. Checked
against one process that applies DeepSpeed's clip rule to the full-batch gradient itself:

* thresholds and engine norms within rel 1e-5 (float32 norms of gradients averaged over ranks in
  another order; measured rel diff <= 3e-7), identical on both ranks;
* the engine did clip (a norm spike above the lagged threshold at step 3);
* parameters after 3 SGD steps within atol 1e-6 (measured max 1.2e-7, 2-core x86_64 CPU).

Not covered: the trainer itself under DeepSpeed (accelerate + DeepSpeed on CPU miscounts the
processes, docs/scaling.md), optimizer/param offload, bf16.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import scale_zero_worker as w  # noqa: E402
from scale_util import child_env as _env  # noqa: E402
from scale_util import run_with_port, venv_tool  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="needs the deepspeed extra (pip install 'adaclip-rl[deepspeed]')")


@pytest.mark.distributed
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_lagged_threshold_two_ranks_equal_one_process(stage, tiny_model_dir, tmp_path, child_env):
    batch = w.make_batch()
    batch_path, out = tmp_path / "batch.pt", tmp_path / "zero.pt"
    torch.save(batch, batch_path)
    env = dict(_env(child_env), DS_ACCELERATOR="cpu")
    proc = run_with_port(lambda port: [venv_tool("torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                                       "--master_port", str(port), str(HERE / "scale_zero_worker.py"),
                                       tiny_model_dir, str(batch_path), str(out), str(stage)], env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got_all = torch.load(out, weights_only=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in w.CLIPPERS:
            got = got_all[f"zero{stage}-{name}"]
            ref = w.reference(tiny_model_dir, name, batch)
            assert got["all_ranks"][0] == got["all_ranks"][1], name  # same thresholds, norms, state on both ranks
            assert got["thresholds"] == pytest.approx(ref["thresholds"], rel=1e-5), name
            assert got["norms"] == pytest.approx(ref["norms"], rel=1e-5), name
            assert any(n > t for n, t in zip(got["norms"], got["thresholds"], strict=True)), name  # the engine clipped
            assert got["thresholds"][-1] < w.CAP, name  # the clipper, not the cap, set the threshold
            for pname, p in ref["params"].items():
                torch.testing.assert_close(got["params"][pname], p, rtol=0, atol=1e-6, msg=f"{name} {pname}")
    finally:
        torch.set_num_threads(threads)
