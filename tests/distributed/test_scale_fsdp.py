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

import scale_fsdp_worker as w  # noqa: E402
from scale_util import child_env as _env  # noqa: E402
from scale_util import run_with_port, venv_tool  # noqa: E402


@pytest.mark.distributed
def test_fully_shard_two_ranks_equal_one_process(tiny_model_dir, tmp_path, child_env):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: the same summation order inside each op
    try:
        first = w.make_trainer(tiny_model_dir, str(tmp_path / "batch"), "grpo", "zclip", per_device=4)
        full = w.make_batch(first.model)
        batch_path = tmp_path / "batch.pt"
        torch.save(full, batch_path)
        single = {}
        for loss, clip in w.CASES:
            trainer = w.make_trainer(tiny_model_dir, str(tmp_path / f"single-{loss}-{clip}"), loss, clip, per_device=4)
            initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
            single[f"{loss}-{clip}"] = (w.run(trainer, full, 0, 1), initial)
    finally:
        torch.set_num_threads(threads)

    out = tmp_path / "fsdp.pt"
    proc = run_with_port(lambda port: [venv_tool("torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                                       "--master_port", str(port), str(HERE / "scale_fsdp_worker.py"),
                                       tiny_model_dir, str(batch_path), str(out)], _env(child_env))
    assert proc.returncode == 0, proc.stderr[-4000:]
    sharded = torch.load(out, weights_only=False)
    assert set(sharded) == set(single)
    for case, (ref, initial) in single.items():
        got = sharded[case]
        assert got["param_types"] == ["DTensor"], case  # every parameter was sharded
        assert got["ref_sharded"] == case.startswith("archer"), case
        rank0, rank1 = got["all_ranks"]
        assert rank0 == rank1, case  # bounds, norms, clipper metrics and state: identical on both ranks
        clipped = 0
        for k, (s_ref, s_got) in enumerate(zip(ref["steps"], got["steps"], strict=True)):
            assert s_got["bounds"] == s_ref["bounds"], (case, k)  # exactly
            if case.startswith("bapo"):
                assert len(s_got["bounds"]) == 2 and s_got["bounds"][0] == s_got["bounds"][1]  # one search per update
            assert s_got["norm"] == pytest.approx(s_ref["norm"], rel=1e-5), (case, k)
            assert s_got["clip"]["clipped"] == s_ref["clip"]["clipped"], (case, k)
            clipped += s_got["clip"]["clipped"]
        assert clipped >= 1, case  # the clipper acted: its sharded-norm path decided something
        moved = max((ref["params"][n] - initial[n]).abs().max().item() for n in initial)
        assert moved > 1e-3, case
        assert ref["params"].keys() == got["params"].keys()
        for name, p in ref["params"].items():
            torch.testing.assert_close(got["params"][name], p, rtol=0, atol=1e-6, msg=f"{case} {name}")
