"""Checkpoint and resume of the sharded (FSDP2) update path, incl. the adaptive state (issue 24, item 4).

``scale_fsdp_worker.py resume`` on 2 ranks: 3 updates uninterrupted, against 2 updates, a checkpoint
(the model as a sharded ``torch.distributed.checkpoint``, accelerate's SHARDED_STATE_DICT format;
the clipper state as the trainer's ``adaclip_state.json``), a fresh trainer that loads it, and the
3rd update. Then here, in one process (world size 2 -> 1), the same checkpoint loaded into an
unsharded trainer and the 3rd update run on the whole batch.

Invariants: the resumed runs equal the uninterrupted ones (same world size: BAPO bounds, clip
decisions and clipper state exactly, parameters atol 1e-6; 2 -> 1: bounds and clip decisions
exactly, clipper state and parameters within the tolerances of test_scale_fsdp.py).

Covered: the model shards and the adaptive state (the clipper's statistics; BAPO and Archer keep no
state across updates). Not covered: optimizer state (the SGD here has none; AdamW's moments are
resharded by the same DCP call on GPU runs, untested), the rollout state of the off-policy trainer,
and transformers' own ``_save_checkpoint``/``_load_from_checkpoint`` under accelerate's FSDP plugin
(GPU only).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import scale_fsdp_worker as w  # noqa: E402
from scale_compare import NORM_REL, PARAM_ATOL  # noqa: E402
from scale_util import child_env as _env  # noqa: E402
from scale_util import run_with_port, venv_tool  # noqa: E402


def _assert_params(got: dict, ref: dict, tag: str) -> None:
    assert got.keys() == ref.keys()
    for name, p in ref.items():
        torch.testing.assert_close(got[name], p, rtol=0, atol=PARAM_ATOL, msg=f"{tag} {name}")


def _assert_state(got: dict, ref: dict, tag: str) -> None:
    assert got.keys() == ref.keys(), tag
    for key, value in ref.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=NORM_REL, abs=1e-12), (tag, key)
        elif isinstance(value, dict):
            _assert_state(got[key], value, f"{tag}.{key}")
        else:
            assert got[key] == value, (tag, key)


@pytest.mark.distributed
def test_resume_same_world_size_and_two_to_one_equal_uninterrupted(tiny_model_dir, tmp_path, child_env):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = w.make_trainer(tiny_model_dir, str(tmp_path / "batch"), "grpo", "zclip", per_device=4)
        full = w.make_batch(first.model)
    finally:
        torch.set_num_threads(threads)
    batch_path, out = tmp_path / "batch.pt", tmp_path / "resume.pt"
    torch.save(full, batch_path)
    proc = run_with_port(lambda port: [venv_tool("torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                                       "--master_port", str(port), str(HERE / "scale_fsdp_worker.py"),
                                       tiny_model_dir, str(batch_path), str(out), "resume"], _env(child_env))
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = torch.load(out, weights_only=False)
    torch.set_num_threads(1)
    try:
        for loss, clip in w.RESUME_CASES:
            case = f"{loss}-{clip}"
            runs = got[case]
            whole, resumed = runs["uninterrupted"], runs["resumed"]
            # same world size: the last update after the resume is the uninterrupted run's last update
            assert resumed["steps"] == whole["steps"][-1:], case
            assert resumed["clipper_state"] == whole["clipper_state"], case
            _assert_params(resumed["params"], whole["params"], f"{case} 2->2")
            # 2 -> 1: the sharded checkpoint and the adaptive state, loaded into one unsharded process
            single = w.make_trainer(tiny_model_dir, str(tmp_path / f"single-{case}"), loss, clip, per_device=4)
            w.load_checkpoint(single, runs["checkpoint"])
            one = w.run(single, full, 0, 1, [w.STEPS - 1])
            step, ref_step = one["steps"][0], whole["steps"][-1]
            assert step["bounds"] == ref_step["bounds"], case  # exactly
            assert step["clip"]["clipped"] == ref_step["clip"]["clipped"], case
            assert step["norm"] == pytest.approx(ref_step["norm"], rel=NORM_REL), case
            _assert_state(one["clipper_state"], whole["clipper_state"], f"{case} 2->1")
            _assert_params(one["params"], whole["params"], f"{case} 2->1")
    finally:
        torch.set_num_threads(threads)
