"""DeepSpeed ZeRO-2 / ZeRO-3 on 2 CPU ranks (``DS_ACCELERATOR=cpu``, gloo) under torchrun, with an
adaptive clipper driving the engine's own clip through its lagged threshold; imported by the
single-process reference too (``reference``).

Under ZeRO the engine clips inside ``engine.step()`` (``optimizer.clip_grad``) and ``p.grad`` holds
no gradient, so the clipper cannot clip; it decides the *next* step's threshold instead
(:meth:`~adaclip_rl.gradclip.GradClipper.lagged_threshold`) and learns from the engine's global
norm (``engine.get_global_grad_norm()``) through :meth:`~adaclip_rl.gradclip.GradClipper.step`.
The model is the trainer's tiny Qwen2 (tied embeddings); the loss is its causal-LM loss on a fixed
batch (the policy loss is not what this path is about: the engine sees only a gradient).
"""

from __future__ import annotations

import sys

import torch

STEPS = 3
LR = 0.05
CAP = 1e6  # DeepSpeed's clip_grad must be finite and > 0 to clip at all
CLIPPERS = {
    "zclip": {"warmup_steps": 1, "z_thresh": 0.5, "alpha": 0.5},
    "quantile": {"target_quantile": 0.5, "learning_rate": 0.5, "initial_clip": 1.0},
}
ADV_SCALE = (1.0, 1.0, 6.0)  # the loss is scaled at step 3: a norm spike for ZClip to clip


def make_batch(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, 200, (4, 10), generator=gen)


def load_model(model_dir: str):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def clipper(name: str):
    from adaclip_rl.gradclip import build_grad_clipper

    return build_grad_clipper(name, **CLIPPERS[name])


def reference(model_dir: str, name: str, batch: torch.Tensor, momentum: float = 0.0) -> dict:
    """One process on the whole batch, DeepSpeed's clip rule written out: scale the gradient by
    ``1 / max(1, (norm + 1e-6) / clip_grad)`` (``stage_1_and_2.unscale_and_clip_grads``)."""
    model, clip = load_model(model_dir), clipper(name)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=momentum)
    thresholds, norms = [], []
    for step in range(STEPS):
        thr = min(clip.lagged_threshold(), CAP)
        opt.zero_grad()
        (model(input_ids=batch, labels=batch).loss * ADV_SCALE[step]).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
        scale = max(1.0, (norm + 1e-6) / thr)
        for g in grads:
            g.div_(scale)
        opt.step()
        clip.step(norm)
        thresholds.append(thr)
        norms.append(norm)
    return {"thresholds": thresholds, "norms": norms,
            "params": {n: p.detach().clone() for n, p in model.named_parameters()}, "state": clip.state_dict()}


def main() -> None:
    model_dir, batch_path, out_path, stage = *sys.argv[1:4], int(sys.argv[4])
    torch.set_num_threads(1)
    import deepspeed
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    batch = torch.load(batch_path, weights_only=True)
    mine = batch.chunk(world)[rank]
    results = {}
    for name in CLIPPERS:
        model, clip = load_model(model_dir), clipper(name)
        config = {"train_micro_batch_size_per_gpu": mine.shape[0], "gradient_accumulation_steps": 1,
                  "zero_optimization": {"stage": stage}, "gradient_clipping": CAP,
                  "zero_allow_untested_optimizer": True, "wall_clock_breakdown": False}
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
        thresholds, norms = [], []
        for step in range(STEPS):
            thr = min(clip.lagged_threshold(), CAP)
            engine.optimizer.clip_grad = thr  # the engine clips this step at the clipper's threshold
            loss = engine(input_ids=mine, labels=mine).loss * ADV_SCALE[step]
            engine.backward(loss)
            engine.step()
            norm = float(engine.get_global_grad_norm())
            clip.step(norm)
            thresholds.append(thr)
            norms.append(norm)
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=stage == 3):
            params = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
        everyone = [None] * world
        dist.all_gather_object(everyone, [thresholds, norms, clip.state_dict()])
        results[f"zero{stage}-{name}"] = {"thresholds": thresholds, "norms": norms, "params": params,
                                          "state": clip.state_dict(), "all_ranks": everyone}
        del engine
    if rank == 0:
        torch.save(results, out_path)
    dist.barrier()


if __name__ == "__main__":
    main()
