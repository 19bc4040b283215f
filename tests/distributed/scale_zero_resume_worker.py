"""DeepSpeed ZeRO checkpoint and resume with the adaptive clipper's state (issue 24, item 4), run
under torchrun with ``DS_ACCELERATOR=cpu``; the path of ``scale_zero_worker.py`` (the engine clips at
``clipper.lagged_threshold()``, the clipper learns from ``engine.get_global_grad_norm()``).

``save STAGE`` (2 ranks): 3 steps uninterrupted, saving after step 2 with ``engine.save_checkpoint``
(the clipper's ``state_dict()`` travels in DeepSpeed's ``client_state``); then a fresh engine and a
fresh clipper load that checkpoint (``engine.load_checkpoint``, ``clipper.load_state_dict``) and run
step 3. ``load STAGE`` (any world size): a fresh engine on the whole batch loads the checkpoint and
runs step 3, or records DeepSpeed's refusal. The optimizer is SGD with momentum, so the resumed step
depends on the (ZeRO-partitioned) optimizer state as well as on the weights and the clipper.
"""

from __future__ import annotations

import sys

import torch
from scale_zero_worker import ADV_SCALE, CAP, LR, STEPS, clipper, load_model

CLIP = "zclip"
MOMENTUM = 0.9
TAG = "step2"


def engine_for(model_dir: str, stage: int, micro: int):
    import deepspeed

    model = load_model(model_dir)
    config = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": stage}, "gradient_clipping": CAP,
              "zero_allow_untested_optimizer": True, "wall_clock_breakdown": False}
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    return engine


def one_step(engine, clip, ids: torch.Tensor, step: int) -> dict:
    thr = min(clip.lagged_threshold(), CAP)
    engine.optimizer.clip_grad = thr
    engine.backward(engine(input_ids=ids, labels=ids).loss * ADV_SCALE[step])
    engine.step()
    norm = float(engine.get_global_grad_norm())
    clip.step(norm)
    return {"threshold": thr, "norm": norm}


def params(engine, stage: int) -> dict:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=stage == 3):
        return {n: p.detach().clone() for n, p in engine.module.named_parameters()}


def main() -> None:
    mode, model_dir, batch_path, ckpt, out_path, stage = *sys.argv[1:6], int(sys.argv[6])
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = torch.load(batch_path, weights_only=True).chunk(world)[rank]
    result: dict = {"world": world}
    if mode == "save":
        engine, clip = engine_for(model_dir, stage, mine.shape[0]), clipper(CLIP)
        steps = []
        for step in range(STEPS):
            if step == STEPS - 1:
                engine.save_checkpoint(ckpt, tag=TAG, client_state={"clipper": clip.state_dict()})
                result["state_at_save"] = clip.state_dict()
            steps.append(one_step(engine, clip, mine, step))
        result["uninterrupted"] = {"steps": steps, "params": params(engine, stage), "state": clip.state_dict()}
        del engine
    engine, clip = engine_for(model_dir, stage, mine.shape[0]), clipper(CLIP)
    try:
        _, client = engine.load_checkpoint(ckpt, tag=TAG)
    except Exception as exc:  # noqa: BLE001 - the refusal is the result
        result["refused"] = f"{type(exc).__name__}: {exc}"
    else:
        clip.load_state_dict(client["clipper"])
        step = one_step(engine, clip, mine, STEPS - 1)
        result["resumed"] = {"steps": [step], "params": params(engine, stage), "state": clip.state_dict()}
    everyone = [None] * world
    dist.all_gather_object(everyone, {k: v for k, v in result.items() if k in ("resumed", "refused")}
                           if "resumed" not in result else [result["resumed"]["steps"], result["resumed"]["state"]])
    result["all_ranks"] = everyone
    if rank == 0:
        torch.save(result, out_path)
    dist.barrier()


if __name__ == "__main__":
    main()
