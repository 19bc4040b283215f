"""2 CPU processes (gloo): BAPO picks identical bounds on both ranks, equal to one process on the whole batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("dist_bapo_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_bapo_bounds_identical_across_ranks_and_equal_to_single_process(tiny_model_dir, tmp_path, child_env):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    out = tmp_path / "result.json"
    env = dict(child_env, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
         str(WORKER), tiny_model_dir, str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    rank0, rank1 = result["ranks"]
    assert rank0 == rank1  # clip_low, clip_high, share, path index, reached: bit-identical
    ref = result["reference"]
    assert rank0[0] == pytest.approx(ref[0]) and rank0[1] == pytest.approx(ref[1])
    assert rank0[2] == pytest.approx(ref[2], rel=1e-5) and rank0[3:] == ref[3:]
    assert result["logged_clip_high"] == pytest.approx(ref[1])
    # the halves alone would have chosen differently: the cross-rank reduction is what aligns them
    assert result["local_only"][0] != result["local_only"][1]


@pytest.mark.distributed
def test_bapo_scope_update_two_ranks_two_micro_batches_equal_one_process_on_the_whole_batch(
    tiny_model_dir, tmp_path, child_env
):
    """bapo_scope="update": one search per optimizer update over every micro-batch and rank gives
    the bounds and gradients of one process on the whole batch; "micro_batch" (verl) does not."""
    import dist_bapo_scope_worker as w
    import torch

    from adaclip_rl import AdaClipGRPOTrainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: same float summation order in the forward
    try:
        single = AdaClipGRPOTrainer(model=tiny_model_dir, reward_funcs=[w.reward], train_dataset=w.dataset(),
                                    args=w.make_args(str(tmp_path / "single"), per_device=8, ga=1))
        full = w.make_batch(single.model)
        batch_path = tmp_path / "batch.pt"
        torch.save(full, batch_path)
        n_items = full["completion_mask"].sum().float()
        ref_bounds, ref_grads = w.one_update(single, [dict(full, num_items_in_batch=n_items)])
    finally:
        torch.set_num_threads(threads)

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    out = tmp_path / "scope.json"
    env = dict(child_env, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    for _attempt in range(2):  # a free port can be taken by another job before torchrun binds it
        proc = subprocess.run(
            [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
             str(Path(__file__).with_name("dist_bapo_scope_worker.py")), tiny_model_dir, str(batch_path), str(out)],
            capture_output=True, text=True, env=env, timeout=600,
        )
        if proc.returncode == 0 or "address already in use" not in proc.stderr.lower():
            break
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    (c_low, c_high, share), = ref_bounds
    assert (c_low, c_high) != (0.6, 1.2)  # the single-process search moved: the case is not vacuous
    update = [mb for rank in result["update"]["bounds"] for mb in rank]
    for lo, hi, sh in update:  # every micro-batch of every rank: the whole batch's bounds and share
        assert (lo, hi) == pytest.approx((c_low, c_high), abs=1e-6) and sh == pytest.approx(share, abs=1e-6)
    grads = torch.load(str(out) + ".update.grads.pt", weights_only=True)
    assert grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        # measured: max |diff| 6e-8 on gradients up to 0.14 (float32 sums in another order)
        torch.testing.assert_close(grads[name], g, rtol=1e-6, atol=1e-7, msg=name)
    # per micro-batch searches (verl) pick other bounds somewhere, so the update scope is what aligns them
    micro = [tuple(mb[:2]) for rank in result["micro_batch"]["bounds"] for mb in rank]
    assert any(m != pytest.approx((c_low, c_high)) for m in micro)
