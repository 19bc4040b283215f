"""A real ``AdaClipGRPOTrainer.train()`` (rollout, rewards, loss, optimizer steps): under
``accelerate launch`` with DeepSpeed ZeRO on 2 CPU ranks (``use_cpu: false``, ``ddp_backend: gloo``,
``DS_ACCELERATOR=cpu``), or in one plain process; test_scale_ds_trainer.py compares the two.

    python scale_ds_trainer_worker.py MODEL_DIR OUT LOSSES {zero|ddp|single} [CLIP [SAVE_STEPS [RESUME]]]

(``ddp``: under ``accelerate launch`` with configs/accelerate/cpu_2proc.yaml, ``use_cpu: true``;
``RESUME``: a checkpoint folder, ``{loss}`` replaced by the loss, for ``resume_from_checkpoint``.)

Making the two runs comparable: the rollout samples, so each completion token is drawn by a
Gumbel-max draw seeded by (the row's prompt tokens, the row's rank among equal prompts in its
``generate`` call, the position) instead of the global RNG, whose stream depends on the world size.
TRL's ``RepeatSampler`` puts each group of ``num_generations`` rows on one rank (per-rank generation
batch 4 = one group), so both runs draw the same completions from the same policy; every prompt
has the same length (no padding difference). Everything else is the trainer's own code.
``optim: sgd`` (Adam turns rounding noise on near-zero gradients into lr-sized steps), float32,
``grad_clip: fixed`` with ``max_grad_norm`` 1, below most pre-clip norms, so that the clip acts
(DeepSpeed's engine clips under ZeRO; the Trainer's ``clip_grad_norm_`` in one process); ``CLIP``
other than ``fixed`` (``ddp`` / ``single`` only) uses :func:`hash_reward`.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import transformers
from scale_util import save_on_rank0  # this folder (the worker runs as a script)
from transformers import LogitsProcessor, LogitsProcessorList

from adaclip_rl import AdaClipGRPOConfig, AdaClipGRPOTrainer

STEPS = 4  # two generations, each used for two updates (num_iterations 2): the 2nd and 4th are off-policy
LR = 2.0  # large, so that the policy moves and the off-policy ratios leave BAPO's start bounds
MAX_GRAD_NORM = 1.0  # below the measured pre-clip norms (about 3.6, 2.9, 1.0, 2.4): the fixed clip acts


class RowSeededSampler(LogitsProcessor):
    """Leaves one token per row: argmax(scores + Gumbel noise seeded by (prompt, occurrence, position))."""

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        seen: dict[tuple[int, ...], int] = {}
        self.keys = []
        for row, mask in zip(input_ids.tolist(), (attention_mask if attention_mask is not None
                                                  else torch.ones_like(input_ids)).tolist(), strict=True):
            prompt = tuple(t for t, m in zip(row, mask, strict=True) if m)
            k = seen.get(prompt, 0)
            seen[prompt] = k + 1
            self.keys.append((sum((i + 1) * 1009 * t for i, t in enumerate(prompt)) + 7919 * k) % (2**31))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        pos = input_ids.size(1)
        out = torch.full_like(scores, float("-inf"))
        for r, key in enumerate(self.keys):
            gen = torch.Generator().manual_seed(key * 131 + pos)
            u = torch.rand(scores.size(1), generator=gen).clamp_(1e-12, 1 - 1e-12)
            pick = int(torch.argmax(scores[r].float() - torch.log(-torch.log(u))))
            out[r, pick] = 0.0
        return out


_generate = transformers.GenerationMixin.generate


def _seeded_generate(self, *args, **kwargs):
    kwargs["logits_processor"] = LogitsProcessorList(
        [RowSeededSampler(kwargs["input_ids"], kwargs.get("attention_mask"))])
    return _generate(self, *args, **kwargs)


transformers.GenerationMixin.generate = _seeded_generate


def reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


def hash_reward(completions, **kwargs):
    """A reward the policy cannot saturate in a few steps (an adaptive clipper lets lr 2 push every
    completion to full length, and ``reward`` then has no spread left)."""
    return [float(sum(map(ord, c)) % 5) for c in completions]


def dataset():
    from datasets import Dataset

    from adaclip_rl.tasks import ArithmeticTask

    rows = [r for r in ArithmeticTask().sample(200, "train") if len(r["prompt"]) == 6][:16]  # "dd+dd=": no padding
    return Dataset.from_list(rows)


def make_args(out_dir: str, loss: str, per_device: int, zero: bool, save_steps: int = 0,
              clip: str = "fixed") -> AdaClipGRPOConfig:
    extra = {"bapo_scope": "update"} if loss == "bapo" else {}
    if clip == "zclip":  # out of warm-up after one step, a low z threshold: the restored EMAs decide clips
        extra.update(zclip_warmup_steps=1, zclip_z_thresh=0.5)
    if loss == "archer":
        extra.update(archer_low_kl=0.05, archer_high_kl=0.01)  # a KL term: the reference model is used
    saving = {"save_strategy": "steps", "save_steps": save_steps} if save_steps else {"save_strategy": "no"}
    return AdaClipGRPOConfig(
        output_dir=out_dir, policy_loss=loss, grad_clip=clip, max_grad_norm=MAX_GRAD_NORM,
        use_cpu=not zero, ddp_backend="gloo" if zero else None, bf16=False, optim="sgd", learning_rate=LR,
        lr_scheduler_type="constant", per_device_train_batch_size=per_device, num_generations=4,
        gradient_accumulation_steps=2, steps_per_generation=2, num_iterations=2, max_completion_length=6, max_steps=STEPS,
        report_to="none", logging_steps=1, gradient_checkpointing=False, loss_type="grpo", seed=0,
        dataloader_num_workers=0, **saving, **extra)


def full_params(model) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    if any(hasattr(p, "ds_id") for p in params.values()):  # ZeRO-3: gather the partitions
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params.values())):
            return {n: p.detach().clone() for n, p in params.items()}
    return {n: p.detach().clone() for n, p in params.items()}


def run(model_dir: str, out: str, loss: str, mode: str, clip: str = "fixed", save_steps: int = 0,
        resume: str | None = None) -> dict:
    """Train STEPS updates; what both runs must agree on (rank-local: this rank's completions)."""
    args = make_args(f"{out}-{loss}", loss, 4 if mode == "single" else 2, mode == "zero", save_steps, clip)
    trainer = AdaClipGRPOTrainer(model=model_dir, reward_funcs=[reward if clip == "fixed" else hash_reward], args=args,
                                 train_dataset=dataset())
    record: dict = {"bounds": [], "completions": []}
    compute_loss, generate = trainer._compute_loss, trainer._generate_and_score_completions

    def _compute_loss(model, inputs):
        res = compute_loss(model, inputs)
        m = trainer._metrics["train"]
        if "bapo/clip_low" in m:
            record["bounds"].append((trainer.state.global_step, m["bapo/clip_low"][-1], m["bapo/clip_high"][-1]))
        return res

    def _generate(inputs):
        batch = generate(inputs)
        ids = batch["completion_ids"] * batch["completion_mask"]
        record["completions"].append(sorted(map(tuple, ids.tolist())))
        return batch

    trainer._compute_loss, trainer._generate_and_score_completions = _compute_loss, _generate
    trainer.train(resume_from_checkpoint=resume)
    acc = trainer.accelerator
    info = {
        "world": acc.num_processes, "distributed_type": str(acc.distributed_type),
        "engine": type(trainer.model_wrapped).__name__,
        "ref_engine": type(trainer.ref_model).__name__ if trainer.ref_model is not None else None,
        "zero_stage": acc.state.deepspeed_plugin.zero_stage if acc.state.deepspeed_plugin else None,
        "grad_norms": [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h],
        "logged_steps": [h["step"] for h in trainer.state.log_history if "grad_norm" in h],
        "adaclip_state": trainer.adaclip_state_dict(),
        "bounds": record["bounds"], "completions": record["completions"],
        "global_step": trainer.state.global_step,
    }
    everyone = [info]
    if acc.num_processes > 1:
        everyone = [None] * acc.num_processes
        dist.all_gather_object(everyone, info)
    return {"ranks": everyone, "params": full_params(trainer.model)}


def main() -> None:
    model_dir, out, losses, mode = sys.argv[1:5]
    clip = sys.argv[5] if len(sys.argv) > 5 else "fixed"
    save_steps = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    resume = sys.argv[7] if len(sys.argv) > 7 else None
    torch.set_num_threads(1)
    results = {loss: run(model_dir, out, loss, mode, clip, save_steps, resume and resume.format(loss=loss))
               for loss in losses.split(",")}
    save_on_rank0(results, out)


if __name__ == "__main__":
    main()
