"""``AdaClipGRPOTrainer.train()`` under ``accelerate launch`` + DeepSpeed ZeRO-2 / ZeRO-3 on 2 CPU
ranks equals the same run in one process (issue 24, item 2).

Launch: TRL's ``zero2.yaml`` / ``zero3.yaml`` with ``num_processes: 2`` and ``mixed_precision: 'no'``
(float32; bf16 autocast would make the comparison meaningless), ``DS_ACCELERATOR=cpu``; the trainer
with ``use_cpu: false`` and ``ddp_backend: gloo`` (test_scale_ds_accelerate.py shows why both are
needed) and ``grad_clip: fixed`` (the adaptive clippers are refused at config time under DeepSpeed,
test_scale_configs.py). Per loss (``grpo``; ``bapo`` with ``bapo_scope: update``; ``archer``, whose
reference model TRL puts under DeepSpeed too): 4 optimizer updates of gradient accumulation 2, two
generations each reused for 2 updates (``num_iterations: 2``, so updates 1 and 3 are off-policy and
BAPO's bounds move), SGD lr 2, ``max_grad_norm`` 1 (the clip acts at every update whose norm is above 1:
DeepSpeed's engine clips under ZeRO, transformers' ``clip_grad_norm_`` in one process).
scale_ds_trainer_worker.py explains how the rollout is made independent of the world size.

Invariants (one process = 4 sequences per micro-batch; ZeRO = 2 ranks x 2):
* both runs drew the same completions (a precondition, exact);
* BAPO's bounds at every micro-step are exactly equal, on both ranks (one all-reduced search);
* pre-clip gradient norms agree within rel 1e-4 (measured up to 1.9e-5 at a norm of 42);
* parameters after 4 updates agree within atol 2e-5 (measured, grpo / bapo / archer: ZeRO-2 1.6e-6 /
  3.9e-6 / 1.1e-6, ZeRO-3 1.0e-6 / 3.1e-6 / 1.0e-6, against parameter moves of 0.21-0.38). The difference is float32 summation order: gradients summed over 4
  rows in one process, over 2 rows per rank then all-reduced under ZeRO (relative rounding ~1e-7 per
  reduction), then amplified by 4 updates at lr 2 and by clipping a norm of ~40 down to 1.
Both stages run every loss and save checkpoint-2 through the Trainer; each stage's bapo run is then
resumed on 2 ranks (exactly equal) and refused in one process without DeepSpeed.
Measured on the 2-core CPU (this file alone: 193 s): the one-process reference (3 losses) and the ZeRO-2
launch 94 s, the ZeRO-3 launch 25 s, each resume + refusal 30-34 s, the recipe test 10 s.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scale_trainer_runs import clean_env, initial_params, launch, max_diff, single_results, zero_config  # noqa: E402
from scale_util import child_env as _env  # noqa: E402
from scale_util import free_port  # noqa: E402

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="needs the deepspeed extra (pip install 'adaclip-rl[deepspeed]')")

LOSSES = ("grpo", "bapo", "archer")
PARAM_ATOL = 2e-5
NORM_REL = 1e-4
# every loss under both stages (archer's reference model partitioned too under ZeRO-3)
STAGE_LOSSES = {2: LOSSES, 3: LOSSES}


def assert_zero_equals_single(zero: dict, single: dict, initial: dict, stage: int) -> dict[str, float]:
    diffs = {}
    for loss, got in zero.items():
        ref = single[loss]
        (one,), (r0, r1) = ref["ranks"], got["ranks"]
        for r in (r0, r1):
            assert (r["world"], r["engine"], r["zero_stage"]) == (2, "DeepSpeedEngine", stage), r
            assert r["distributed_type"] == "DistributedType.DEEPSPEED"
        if loss == "archer":
            assert r0["ref_engine"] == "DeepSpeedEngine"  # the reference model under DeepSpeed too
        # the same rollouts: the union of the ranks' completions is the one process's, per generation
        assert [sorted(a + b) for a, b in zip(r0["completions"], r1["completions"], strict=True)] == one["completions"]
        assert r0["bounds"] == r1["bounds"] == one["bounds"], loss  # exactly, every micro-step
        if loss == "bapo":
            assert len(one["bounds"]) == 8 and len({b[1:] for b in one["bounds"]}) > 1  # the bounds moved
        assert r0["grad_norms"] == r1["grad_norms"]
        assert len(one["grad_norms"]) == 4 and sum(n > 1.0 for n in one["grad_norms"]) >= 2  # the clip acted
        assert r0["grad_norms"] == pytest.approx(one["grad_norms"], rel=NORM_REL), loss
        moved = max((ref["params"][n] - initial[n]).abs().max().item() for n in initial)
        assert moved > 0.1, loss
        assert got["params"].keys() == ref["params"].keys() == initial.keys()
        for name, p in ref["params"].items():
            torch.testing.assert_close(got["params"][name], p, rtol=0, atol=PARAM_ATOL, msg=f"{loss} {name}")
        diffs[loss] = max_diff(got["params"], ref["params"])
    return diffs


@pytest.fixture(scope="module")
def single_run(tiny_model_dir, tmp_path_factory):
    return single_results(tiny_model_dir, tmp_path_factory.mktemp("ds_single") / "single.pt", clean_env(), LOSSES)


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def zero_run(request, tiny_model_dir, tmp_path_factory):
    """The ZeRO-2 / ZeRO-3 launch of every loss, saving a checkpoint every 2 updates (transformers'
    ``save_steps``); (stage, results, results file)."""
    stage = request.param
    folder = tmp_path_factory.mktemp(f"zero{stage}")
    out = folder / "zero.pt"
    return stage, launch(zero_config(stage, folder), "zero", tiny_model_dir, out, clean_env(DS_ACCELERATOR="cpu"),
                         STAGE_LOSSES[stage], "fixed", "2"), out


@pytest.mark.distributed
def test_trainer_under_zero_two_ranks_equals_one_process(single_run, zero_run, tiny_model_dir):
    stage, zero, _ = zero_run
    diffs = assert_zero_equals_single(zero, single_run, initial_params(tiny_model_dir), stage)
    print(f"ZeRO-{stage} max |param diff| per loss: {diffs}")


RECIPE_UNDER_DEEPSPEED = """\
model_name_or_path: {model}
dataset_name: {model}/unused.jsonl
output_dir: {out}
use_cpu: false
ddp_backend: gloo
bf16: false
grad_clip: fixed
"""

PARSE = """
import sys
from adaclip_rl.trainers.cli import parse_recipe
_, args, _ = parse_recipe(["--config", sys.argv[1], *sys.argv[2:]])
print("ARGS", args.ddp_backend, args.use_cpu, args.bf16, args.distributed_state.backend, args.world_size)
"""


@pytest.mark.distributed
def test_the_recipe_path_passes_ddp_backend_and_use_cpu_through(tiny_model_dir, tmp_path, child_env):
    """The YAML recipe (``adaclip-rl train --config``) reaches ``TrainingArguments.ddp_backend``/``use_cpu``
    unchanged and the process group is gloo (as launched rank 0 of 1: without a launcher, transformers
    refuses ``ddp_backend`` with "Default process group has not been initialized"); a command-line flag
    overrides the recipe. The DeepSpeed launch itself is the test above; the adaptive-clip refusal under
    DeepSpeed is test_scale_configs.py's."""
    import subprocess

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE_UNDER_DEEPSPEED.format(model=tiny_model_dir, out=tmp_path / "out"))
    env = dict(_env(child_env), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")

    def parse(*flags: str) -> str:
        proc = subprocess.run([sys.executable, "-c", PARSE, str(recipe), *flags], capture_output=True, text=True,
                              env=dict(env, MASTER_PORT=str(free_port())), timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    assert "ARGS gloo False False gloo 1" in parse()
    assert "ARGS gloo True False gloo 1" in parse("--use_cpu", "true")


@pytest.mark.distributed
def test_trainer_checkpoint_under_zero_resumes_equal_and_is_refused_without_deepspeed(
        zero_run, tiny_model_dir, tmp_path, child_env):
    """transformers' own checkpointing under ZeRO-2 and ZeRO-3 (``save_steps`` -> ``_save_checkpoint``: DeepSpeed's
    engine checkpoint inside the Trainer's folder; ``resume_from_checkpoint`` -> ``_load_from_checkpoint``
    / DeepSpeed's ``load_checkpoint``). 2 -> 2 from checkpoint-2 (a generation boundary: TRL regenerates
    after a resume) gives the uninterrupted run's updates 3 and 4. 2 -> 1 without DeepSpeed is refused
    (transformers would find no optimizer.pt and silently restart the optimizer); 2 -> 1 under DeepSpeed
    is refused by DeepSpeed itself (test_scale_zero_resume.py pins its message)."""
    stage, uninterrupted, out = zero_run
    template = f"{out}-{{loss}}/checkpoint-2"
    ckpt = Path(template.format(loss="bapo"))
    assert (ckpt / "latest").read_text().strip() == "global_step2" and (ckpt / "adaclip_state.json").is_file()
    assert {p.name for p in ckpt.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    env = dict(_env(child_env), DS_ACCELERATOR="cpu")
    resumed = launch(zero_config(stage, tmp_path), "zero", tiny_model_dir, tmp_path / "resumed.pt", env, ("bapo",),
                     "fixed", "0", template)["bapo"]
    ref = uninterrupted["bapo"]
    for got, want in zip(resumed["ranks"], ref["ranks"], strict=True):
        assert got["global_step"] == 4 and got["logged_steps"] == want["logged_steps"] == [1, 2, 3, 4]
        assert got["grad_norms"] == want["grad_norms"]  # 1-2 from the checkpoint's log, 3-4 recomputed: exactly
        assert min(got["grad_norms"][2:]) > 0.1  # the resumed updates had a gradient
        assert got["bounds"] == [b for b in want["bounds"] if b[0] >= 2]  # updates 3 and 4, exactly
    assert max_diff(resumed["params"], ref["params"]) <= 1e-6  # measured 0.0
    from scale_trainer_runs import run_single

    proc = run_single(tiny_model_dir, tmp_path / "one.pt", env, ("bapo",), "fixed", "0", template)
    assert proc.returncode != 0
    assert "was written under DeepSpeed (optimizer state as ZeRO shards in global_step2/, no optimizer.pt)" in proc.stderr
