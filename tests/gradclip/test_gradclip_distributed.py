"""Two CPU processes (gloo): coefficients identical on both ranks and equal to a single-process reference.

Semantics tested (see ``adaclip_rl/gradclip/distributed.py``):

- sharded / DTensor: each rank holds different shards; the statistic is the norm of the *full*
  gradient, i.e. per-tensor squared norms summed over ranks (replicated DTensors counted once).
- data parallel: after DDP's gradient all-reduce the gradients are identical; no norm reduction.

Non-finite: an inf present in one rank's shard only is seen by both ranks after the reduction, so
both skip the step (grads set to None) and neither updates its statistics.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

WORKER = Path(__file__).with_name("dist_gradclip_worker.py")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(WORKER.parent))
from dist_gradclip_worker import CONFIGS, NONFINITE_STEP, SHAPES, STEPS  # noqa: E402

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("gradclip_dist")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def _close(a, b, rtol=2e-6):
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=rtol, atol=1e-9)


def _shard_slices(shape, rank):
    idx = np.array_split(np.arange(shape[0]), 2)[rank]
    return idx


@pytest.mark.parametrize("setup", ["sharded", "dtensor", "data_parallel"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_coefficients_identical_across_ranks_and_equal_to_reference(ranks, setup, name):
    r0, r1 = ranks[0][setup][name], ranks[1][setup][name]
    # bit-identical decisions and state on both ranks
    assert r0["coefs"] == r1["coefs"]
    assert r0["norms"] == r1["norms"]
    assert r0["state"] == r1["state"]
    ref = ranks[0]["reference"][name]["dp" if setup == "data_parallel" else "full"]
    assert ranks[1]["reference"][name]["full"]["coefs"] == ranks[0]["reference"][name]["full"]["coefs"]
    for t in range(STEPS):
        _close(r0["coefs"][t], ref["coefs"][t])
        if math.isfinite(ref["norms"][t]):
            _close(r0["norms"][t], ref["norms"][t])
        else:
            assert not math.isfinite(r0["norms"][t])
    # the clipper did clip on some steps, and it is not trivially all-ones
    assert any(min(np.atleast_1d(c)) < 1.0 for c in r0["coefs"])
    if name == "adagc":
        assert len(r0["coefs"][-1]) == len(SHAPES)
        assert set(r0["state"]["gamma"]) == {"blocks.0.w", "blocks.0.b", "head.w", "conv.k", "scale"}
        for k, v in r0["state"]["gamma"].items():
            assert v == pytest.approx(ref["state"]["gamma"][k], rel=2e-6)


@pytest.mark.parametrize("setup", ["sharded", "dtensor"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_nonfinite_in_one_shard_is_skipped_on_every_rank(ranks, setup, name):
    for r in ranks:
        res = r[setup][name]
        assert not math.isfinite(res["norms"][NONFINITE_STEP])
        assert all(g is None for g in res["grads"][NONFINITE_STEP])  # "skip": grads dropped
        assert res["state"]["num_nonfinite"] == 1
        assert res["state"]["num_updates"] == STEPS - 1
        assert np.all(np.asarray(res["coefs"][NONFINITE_STEP]) == 0.0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_clipped_gradients_match_reference(ranks, name):
    ref = ranks[0]["reference"][name]["full"]["grads"]
    for t in range(STEPS):
        if t == NONFINITE_STEP:
            continue
        for i, shape in enumerate(SHAPES):
            full = np.asarray(ref[t][i]).reshape(shape)
            # DTensor: full tensors gathered on each rank
            for r in ranks:
                _close(np.asarray(r["dtensor"][name]["grads"][t][i]).reshape(shape), full, rtol=5e-6)
            # sharded: each rank's shard equals its slice of the reference
            for rank, r in enumerate(ranks):
                mine = np.asarray(r["sharded"][name]["grads"][t][i])
                expected = full[_shard_slices(shape, rank)].reshape(-1)
                _close(mine, expected, rtol=5e-6)


def test_torch_shard_split_matches_numpy_split():
    """The test's shard bookkeeping: ``torch.tensor_split`` == ``np.array_split`` (uneven, empty)."""
    for shape in SHAPES:
        for rank in range(2):
            got = torch.tensor_split(torch.arange(shape[0]), 2)[rank].tolist()
            assert got == _shard_slices(shape, rank).tolist()
