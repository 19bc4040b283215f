"""Checkpoint and resume through the trainer's own path on 2 ranks (issue 24, item 4), with the
adaptive state: ``AdaClipGRPOTrainer.train()`` under ``accelerate launch`` with
configs/accelerate/cpu_2proc.yaml (DDP over gloo, ``use_cpu: true``; accelerate gives no FSDP on CPU,
test_scale_launch.py), ``bapo`` (``bapo_scope: update``, gradient accumulation 2) x ``zclip``, 4 updates,
``save_steps: 2`` (transformers' ``_save_checkpoint`` + our ``adaclip_state.json``), then
``resume_from_checkpoint`` (transformers' ``_load_from_checkpoint`` / ``_load_optimizer_and_scheduler``
+ our clipper state) from checkpoint-2, a generation boundary (TRL regenerates after a resume, so a
mid-generation checkpoint continues on fresh samples; tests/trainers/test_resume.py says the same for
one process).

* 2 -> 2: updates 3 and 4 equal the uninterrupted run's exactly (grad norms, BAPO bounds, the ZClip
  state - EMA mean/var and counters carried through the checkpoint - and parameters), on both ranks.
* 2 -> 1 (one process, 4 sequences per micro-batch, reading rank 0's RNG file as transformers does):
  works, and equals the uninterrupted 2-rank run within the tolerances of test_scale_ds_trainer.py
  (bounds and counters exactly; norms and EMAs rel 1e-4; parameters atol 2e-5).
scale_ds_trainer_worker.py explains how the rollout is made independent of the world size. Measured on
the busy 2-core CPU: 50-70 s per 2-rank launch, 10-30 s for the one-process resume.

Not covered here: the off-policy trainer's rollout state on 2 ranks (test_scale_offpolicy_train.py, one
vLLM engine per rank), FSDP (no FSDP through accelerate on CPU; test_scale_resume.py drives a sharded
checkpoint by hand).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scale_trainer_runs import CPU_CONFIG, launch, max_diff, single_results  # noqa: E402
from scale_util import child_env as _env  # noqa: E402

PARAM_ATOL = 2e-5
REL = 1e-4


@pytest.mark.distributed
def test_ddp_trainer_resume_two_to_two_exact_and_two_to_one_equal(tiny_model_dir, tmp_path, child_env):
    env = _env(child_env)
    out = tmp_path / "full.pt"
    full = launch(CPU_CONFIG, "ddp", tiny_model_dir, out, env, ("bapo",), "zclip", "2")["bapo"]
    template = f"{out}-{{loss}}/checkpoint-2"
    ckpt = Path(template.format(loss="bapo"))
    assert {"adaclip_state.json", "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in ckpt.iterdir()}
    r0, r1 = full["ranks"]
    assert {**r0, "completions": None} == {**r1, "completions": None}  # each rank its own rollouts, all else equal
    assert r0["world"] == 2 and r0["distributed_type"] == "DistributedType.MULTI_CPU"
    assert r0["engine"] == "DistributedDataParallel"
    state = r0["adaclip_state"]["grad_clipper"]
    assert state["num_updates"] == 4 and state["num_clipped"] >= 1  # ZClip out of warm-up and acting
    assert min(r0["grad_norms"][2:]) > 0.1  # the updates after the checkpoint have a gradient
    assert len({b[1:] for b in r0["bounds"] if b[0] >= 2}) > 1  # and BAPO's bounds move in them

    resumed = launch(CPU_CONFIG, "ddp", tiny_model_dir, tmp_path / "resumed.pt", env, ("bapo",), "zclip", "0",
                     template)["bapo"]
    for got in resumed["ranks"]:
        assert got["global_step"] == 4 and got["logged_steps"] == [1, 2, 3, 4]
        assert got["grad_norms"] == r0["grad_norms"]
        assert got["bounds"] == [b for b in r0["bounds"] if b[0] >= 2]
        assert got["adaclip_state"] == r0["adaclip_state"]  # the clipper's EMAs and counters, exactly
    assert max_diff(resumed["params"], full["params"]) == 0.0

    one = single_results(tiny_model_dir, tmp_path / "one.pt", env, ("bapo",), "zclip", "0", template)["bapo"]
    (got,) = one["ranks"]
    assert got["world"] == 1 and got["global_step"] == 4
    assert got["bounds"] == [b for b in r0["bounds"] if b[0] >= 2]
    assert got["grad_norms"] == pytest.approx(r0["grad_norms"], rel=REL)
    mine, theirs = got["adaclip_state"]["grad_clipper"], state
    assert {k: mine[k] for k in ("num_updates", "num_clipped", "initialized")} == \
        {k: theirs[k] for k in ("num_updates", "num_clipped", "initialized")}
    assert (mine["mean"], mine["var"]) == pytest.approx((theirs["mean"], theirs["var"]), rel=REL)
    diff = max_diff(one["params"], full["params"])
    print(f"2 -> 1 resume: max |param diff| {diff:.3g}")
    assert diff <= PARAM_ATOL
