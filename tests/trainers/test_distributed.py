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
