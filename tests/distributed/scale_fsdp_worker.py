"""``AdaClipGRPOTrainer``'s update path with its model (and reference model) sharded by FSDP2
``fully_shard``, on 2 CPU ranks (gloo) under torchrun; imported by the single-process reference too.

accelerate 1.16 does not give FSDP on CPU (``distributed_type: FSDP`` with ``use_cpu`` becomes
``MULTI_CPU``; test_scale_launch.py shows it), so the trainer is built as under ``accelerate launch``
(``use_cpu``, gloo) and this worker applies ``fully_shard`` itself, as TRL's ``prepare_fsdp`` does
for the reference model and accelerate's FSDP2 plugin for the policy (one unit per decoder layer,
then the root). What runs is the trainer's own code for one optimizer update: ``_compute_loss`` +
backward on each micro-batch of the accumulation window (TRL's ``training_step``, with BAPO's
per-update search over ``_buffered_inputs`` and its one all-reduce), then the trainer's
``_clip_grad_norm`` (the adaptive clipper reading the sharded ``DTensor`` gradients through
``norm_reduce_fn_for``), then an optimizer step. Not run here: the rollout (generation and
rewards; the batch is given, with stale old log-probs) and transformers' training loop around it.

Rank ``r`` takes sequences ``4r .. 4r+3`` of the 8-sequence batch as two micro-batches of 2; the
single-process reference takes all 8 as two micro-batches of 4 (same loss normalisation: FSDP
averages the gradient over ranks, as DDP does).

With a 4th argument ``ddp`` the policy is instead wrapped as accelerate's MULTI_CPU ``prepare``
does (DDP); test_scale_launch.py runs that mode under ``accelerate launch --num_machines 2``.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from adaclip_rl import AdaClipGRPOConfig, AdaClipGRPOTrainer

CASES = [(loss, clip) for loss in ("grpo", "bapo", "archer") for clip in ("zclip", "adagc")]
STEPS = 3
LR = 0.05
# advantages scaled per step so that the gradient norm jumps at the last step: ZClip's z-score
# then exceeds its threshold and it clips (a falling norm would never trip it in 3 steps)
ADV_SCALE = (1.0, 1.0, 8.0)
P, C = 3, 6  # prompt and completion lengths


def reward(completions, **kwargs):
    return [float(len(c)) for c in completions]


def dataset():
    from datasets import Dataset

    from adaclip_rl.tasks import ArithmeticTask

    return Dataset.from_list(ArithmeticTask().sample(16, "train"))


def make_trainer(model_dir: str, out_dir: str, loss: str, clip: str, per_device: int) -> AdaClipGRPOTrainer:
    extra = {"bapo_scope": "update"} if loss == "bapo" else {}
    if loss == "archer":
        extra.update(archer_low_kl=0.05, archer_high_kl=0.01)  # a KL term: the reference model is used
    args = AdaClipGRPOConfig(
        output_dir=out_dir, policy_loss=loss, grad_clip=clip, use_cpu=True, bf16=False,
        per_device_train_batch_size=per_device, num_generations=4, gradient_accumulation_steps=2,
        steps_per_generation=2, max_completion_length=C, report_to="none", save_strategy="no",
        gradient_checkpointing=False, loss_type="grpo", max_grad_norm=1.0,
        zclip_warmup_steps=1, zclip_z_thresh=0.5, adagc_warmup_steps=1, adagc_lambda_rel=0.5, **extra,
    )
    return AdaClipGRPOTrainer(model=model_dir, reward_funcs=[reward], args=args, train_dataset=dataset())


def make_batch(model, seed: int = 0) -> dict[str, torch.Tensor]:
    """8 sequences with stale old log-probs (ratios well beyond the start bounds)."""
    gen = torch.Generator().manual_seed(seed)
    b = 8
    lengths = torch.tensor([6, 2, 6, 3, 6, 4, 6, 2])
    full = {
        "prompt_ids": torch.randint(3, 200, (b, P), generator=gen),
        "prompt_mask": torch.ones(b, P, dtype=torch.long),
        "completion_ids": torch.randint(3, 200, (b, C), generator=gen),
        "completion_mask": (torch.arange(C) < lengths.unsqueeze(1)).long(),
        "advantages": torch.tensor([1.2, 0.8, 1.5, -0.2, -1.1, -0.9, -1.4, 0.3]),
    }
    with torch.no_grad():
        logits = model(input_ids=torch.cat([full["prompt_ids"], full["completion_ids"]], 1)).logits
        logps = torch.log_softmax(logits[:, P - 1 : -1], -1).gather(-1, full["completion_ids"][..., None])[..., 0]
    full["old_per_token_logps"] = logps + 0.6 * torch.randn(b, C, generator=gen)
    return full


def shard(model: torch.nn.Module) -> None:
    """FSDP2: one unit per decoder layer, then the root (accelerate's TRANSFORMER_BASED_WRAP)."""
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)


def _unwrap(model):
    return getattr(model, "module", model)


def micro_batches(trainer: AdaClipGRPOTrainer, full: dict, rank: int, world: int) -> list[dict]:
    """This rank's two micro-batches, with the reference log-probs from the (sharded) reference model."""
    per_rank = 8 // world
    half = per_rank // 2
    n_items = full["completion_mask"].sum().float()
    out = []
    for k in range(2):
        sl = slice(per_rank * rank + half * k, per_rank * rank + half * (k + 1))
        mb = {key: v[sl] for key, v in full.items()}
        mb["num_items_in_batch"] = n_items
        if trainer.ref_model is not None:  # what _generate_and_score_completions computes
            ids = torch.cat([mb["prompt_ids"], mb["completion_ids"]], 1)
            mask = torch.cat([mb["prompt_mask"], mb["completion_mask"]], 1)
            with torch.no_grad():
                mb["ref_per_token_logps"] = trainer._get_per_token_logps_and_entropies(
                    trainer.ref_model, ids, mask, C, half)[0]
        out.append(mb)
    return out


def run(trainer: AdaClipGRPOTrainer, full: dict, rank: int, world: int, steps_to_run=range(STEPS)) -> dict:
    """Optimizer updates ``steps_to_run`` (of STEPS) on the same batch; per step the BAPO bounds of
    each micro-batch and the clipper's metrics; the full parameters at the end."""
    model = trainer.model
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    mbs = micro_batches(trainer, full, rank, world)
    steps = []
    for step in steps_to_run:
        model.train()
        opt.zero_grad(set_to_none=True)
        trainer.state.global_step = step
        step_mbs = [dict(mb, advantages=mb["advantages"] * ADV_SCALE[step]) for mb in mbs]
        trainer._buffered_inputs = step_mbs
        trainer.update_search.reset()
        trainer.current_gradient_accumulation_steps = 2
        bounds = []
        for k, mb in enumerate(step_mbs):
            trainer._step = 2 * step + k
            trainer._compute_loss(model, mb).backward()
            m = trainer._metrics["train"]
            if "bapo/clip_low" in m:
                bounds.append([m["bapo/clip_low"][-1], m["bapo/clip_high"][-1]])
        norm = trainer._clip_grad_norm(model)
        opt.step()
        clip = {k.removeprefix("gradclip/"): v[-1] for k, v in trainer._metrics["train"].items()
                if k.startswith("gradclip/")}
        steps.append({"bounds": bounds, "norm": float(norm), "clip": clip})
    params = {}
    for name, p in _unwrap(model).named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        params[name] = t.detach().clone()
    return {"steps": steps, "params": params, "clipper_state": trainer.grad_clipper.state_dict()}


def save_checkpoint(trainer: AdaClipGRPOTrainer, folder: str) -> None:
    """What a checkpoint of the sharded run holds for this path: the model as a sharded DCP
    checkpoint (accelerate's SHARDED_STATE_DICT format) and the adaptive state as the trainer
    writes it (``adaclip_state.json``, rank 0; SGD has no optimizer state)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from adaclip_rl.trainers.grad_clip_mixin import ADACLIP_STATE_FILE

    dcp.save(get_model_state_dict(trainer.model), checkpoint_id=os.path.join(folder, "model"))
    if dist.get_rank() == 0:
        with open(os.path.join(folder, ADACLIP_STATE_FILE), "w") as f:
            json.dump(trainer.adaclip_state_dict(), f)
    dist.barrier()


def load_checkpoint(trainer: AdaClipGRPOTrainer, folder: str) -> None:
    """Restore :func:`save_checkpoint`'s folder into ``trainer`` on any world size (1: no process group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from adaclip_rl.trainers.grad_clip_mixin import ADACLIP_STATE_FILE

    distributed = dist.is_available() and dist.is_initialized()
    state = get_model_state_dict(trainer.model) if distributed else trainer.model.state_dict()
    dcp.load(state, checkpoint_id=os.path.join(folder, "model"), no_dist=not distributed)
    if distributed:
        set_model_state_dict(trainer.model, state)
    else:
        trainer.model.load_state_dict(state)
    with open(os.path.join(folder, ADACLIP_STATE_FILE)) as f:
        trainer.load_adaclip_state_dict(json.load(f))


RESUME_CASES = [("bapo", "zclip"), ("archer", "adagc")]


def resume_main(model_dir: str, full: dict, out_path: str) -> None:
    """2 ranks: uninterrupted STEPS updates vs (STEPS - 1 updates, checkpoint, a fresh trainer that
    loads it, the last update). Rank 0 saves both final parameter sets; the checkpoint stays for the
    test's 2 -> 1 resume."""
    results = {}
    for loss, clip in RESUME_CASES:
        case = f"{loss}-{clip}"
        base = os.path.join(os.path.dirname(out_path), f"resume-{case}")
        runs = {}
        for name, steps in (("uninterrupted", range(STEPS)), ("first", range(STEPS - 1)), ("resumed", [STEPS - 1])):
            trainer = make_trainer(model_dir, f"{base}-{name}", loss, clip, per_device=2)
            rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
            trainer.model = _unwrap(trainer.model)
            shard(trainer.model)
            if trainer.ref_model is not None:
                trainer.ref_model = _unwrap(trainer.ref_model)
                shard(trainer.ref_model)
            if name == "resumed":
                load_checkpoint(trainer, f"{base}-ckpt")
            res = run(trainer, full, rank, world, steps)
            if name == "first":
                save_checkpoint(trainer, f"{base}-ckpt")
            runs[name] = {"params": res["params"], "steps": res["steps"], "clipper_state": res["clipper_state"]}
        runs["checkpoint"] = f"{base}-ckpt"
        results[case] = runs
    if dist.get_rank() == 0:
        torch.save(results, out_path)
    dist.barrier()


def main() -> None:
    model_dir, batch_path, out_path = sys.argv[1:4]
    mode = sys.argv[4] if len(sys.argv) > 4 else "fsdp"
    torch.set_num_threads(1)
    full = torch.load(batch_path, weights_only=True)
    if mode == "resume":
        resume_main(model_dir, full, out_path)
        return
    results = {}
    for loss, clip in CASES:
        trainer = make_trainer(model_dir, os.path.join(os.path.dirname(out_path), f"run-{loss}-{clip}"),
                               loss, clip, per_device=2)
        rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
        assert world == 2 and dist.get_backend() == "gloo"
        trainer.model = _unwrap(trainer.model)
        if mode == "fsdp":
            shard(trainer.model)
            if trainer.ref_model is not None:
                trainer.ref_model = _unwrap(trainer.ref_model)
                shard(trainer.ref_model)
        else:  # "ddp": what accelerate's MULTI_CPU prepare() does with the policy
            trainer.model = trainer.accelerator.prepare_model(trainer.model)
        assert (loss == "archer") == (trainer.ref_model is not None), (loss, trainer.ref_model is None)
        res = run(trainer, full, rank, world)
        grads_sharded = [type(p).__name__ for p in trainer.model.parameters()]
        res["param_types"] = sorted(set(grads_sharded))
        res["launch"] = {"distributed_type": str(trainer.accelerator.distributed_type),
                         "rank": dist.get_rank(), "local_rank": int(os.environ.get("LOCAL_RANK", -1)),
                         "model_class": type(trainer.model).__name__}
        res["ref_sharded"] = trainer.ref_model is not None and any(
            type(p).__name__ == "DTensor" for p in trainer.ref_model.parameters())
        everyone = [None] * world
        dist.all_gather_object(everyone, [res["steps"], res["clipper_state"]])
        launches = [None] * world
        dist.all_gather_object(launches, res["launch"])
        res["launches"] = launches
        res["all_ranks"] = everyone
        results[f"{loss}-{clip}"] = res
    if rank == 0:
        torch.save(results, out_path)
    dist.barrier()


if __name__ == "__main__":
    main()
