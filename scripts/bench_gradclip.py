"""Benchmark the gradient clippers on the tiny model under injected gradient spikes.

Supervised training of the tiny Qwen2 model (``adaclip_rl.tasks``) on 2-digit addition
(``prompt -> answer<eos>``, cross-entropy on the answer tokens, AdamW). A few batches are
corrupted on purpose:

* **loss spikes**: the loss of the batch is multiplied by ``--spike-scale`` (default 1000) before
  backward, so the gradient is ``--spike-scale`` times larger in the same direction. Unclipped,
  AdamW's second moment absorbs ``scale^2`` and the effective step size collapses for hundreds of
  steps (``beta2 = 0.999``);
* **corrupted labels**: one batch whose answers are replaced by random numbers (a large gradient in
  a wrong direction);
* optionally (``--nonfinite-steps``) a batch whose gradient is made ``inf`` (fp16-overflow stand-in).

Every clipper trains from the same initial weights on the same batches, in lock-step (one step of
each method per iteration, in a rotating order), so timings are taken side by side under the same
machine load. Clipping goes through the real :meth:`GradClipper.clip_` API exactly as
``AdaClipGRPOTrainer._clip_grad_norm`` calls it (``named_parameters`` list of trainable params,
``norm_reduce_fn_for``, then ``metrics()``); ``fixed_torch`` is ``torch.nn.utils.clip_grad_norm_``,
what the trainer runs for ``grad_clip: fixed``. Methods (clipper arguments in ``CLIPPERS``):

    none  fixed_torch  fixed (1.0)  zclip  adagc  autoclip  quantile

Defaults are the ``AdaClipGRPOConfig`` defaults except the warm-ups, scaled down for a 200-step
run: ZClip 25 steps (its default), AdaGC 25 (default 100) with warm-up max norm 1.0
(``max_grad_norm``). Spikes at 30/50/70 % of the steps, corrupted labels at 60 %.

Reported per method: held-out cross-entropy and greedy exact-match accuracy at the end (mean ± std
over seeds), steps clipped (any coefficient < 1), the effective coefficient on the spike and
corrupted steps (post-clip / pre-clip *global* norm, so AdaGC's per-tensor clipping is comparable
with the global clippers; the smallest per-tensor coefficient is kept in the JSON), AdaGC's mean
fraction of tensors clipped, and the median time of the whole step and of the clip call (ratio to
``none``). A no-spike control: ``--spike-scale 1 --corrupt-steps ""``.

    python scripts/bench_gradclip.py [--steps 200 --seeds 3 --out results/bench_gradclip.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from adaclip_rl.gradclip import build_grad_clipper, grad_sq_norms, norm_reduce_fn_for
from adaclip_rl.tasks import ArithmeticTask, build_tiny_model
from adaclip_rl.tasks.arithmetic import parse_answer
from adaclip_rl.tasks.warmstart import _encode_batch, sample_answers

METHODS = ("none", "fixed_torch", "fixed", "zclip", "adagc", "autoclip", "quantile")


@dataclass
class BenchConfig:
    steps: int = 200
    seeds: int = 3
    methods: tuple[str, ...] = METHODS
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    digits: int = 2
    spike_scale: float = 1000.0
    spike_steps: tuple[int, ...] | None = None  # default: 30 %, 50 %, 70 % of steps
    corrupt_steps: tuple[int, ...] | None = None  # default: 60 % of steps
    nonfinite_steps: tuple[int, ...] = ()
    fixed_max_norm: float = 1.0
    zclip_warmup: int = 25
    adagc_warmup: int = 25
    adagc_warmup_max_norm: float = 1.0
    eval_problems: int = 512
    eval_every: int = 50
    threads: int = 1
    clipper_kwargs: dict = field(default_factory=dict)  # extra per-method overrides

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {METHODS}")
        if self.steps < 1 or self.seeds < 1:
            raise ValueError(f"steps and seeds must be >= 1; got {self.steps}, {self.seeds}")
        if self.spike_steps is None:
            self.spike_steps = tuple(sorted({int(self.steps * f) for f in (0.3, 0.5, 0.7)}))
        if self.corrupt_steps is None:
            self.corrupt_steps = (int(self.steps * 0.6),)
        self.spike_steps = tuple(self.spike_steps)
        self.corrupt_steps = tuple(self.corrupt_steps)
        self.nonfinite_steps = tuple(self.nonfinite_steps)

    def clipper_args(self, method: str) -> dict:
        base = {
            "fixed": {"max_norm": self.fixed_max_norm},
            "zclip": {"warmup_steps": self.zclip_warmup},
            "adagc": {"warmup_steps": self.adagc_warmup, "warmup_max_norm": self.adagc_warmup_max_norm},
            "autoclip": {},  # AdaClipGRPOConfig defaults: percentile 10, window 1000
            "quantile": {},  # defaults: target quantile 0.5, learning rate 0.05
        }.get(method, {})
        return {**base, **self.clipper_kwargs.get(method, {})}


def _eval_heldout(model, tokenizer, batch) -> float:
    ids, att, lab = batch
    model.eval()
    with torch.no_grad():
        loss = float(model(input_ids=ids, attention_mask=att, labels=lab).loss)
    model.train()
    return loss


def _greedy_accuracy(model, tokenizer, problems) -> float:
    outs = sample_answers(model, tokenizer, [p["prompt"] for p in problems], k=1, temperature=0.0)
    model.train()
    return sum(parse_answer(o[0]) == p["answer"] for o, p in zip(outs, problems, strict=True)) / len(problems)


def _corrupt(rows: list[dict[str, str]], rng: random.Random, digits: int) -> list[dict[str, str]]:
    hi = 2 * (10**digits - 1)
    return [{"prompt": r["prompt"], "answer": str(rng.randint(0, hi))} for r in rows]


class _Run:
    """One method's model, optimizer, clipper and logs."""

    def __init__(self, method: str, base_model, cfg: BenchConfig) -> None:
        self.method = method
        self.model = copy.deepcopy(base_model)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        name = None if method in ("none", "fixed_torch") else method
        self.clipper = build_grad_clipper(name, **cfg.clipper_args(method)) if name else None
        self.max_norm = cfg.fixed_max_norm
        self.step_s: list[float] = []
        self.clip_s: list[float] = []
        self.loss: list[float] = []
        self.pre_norm: list[float] = []
        self.coef: list[float] = []  # smallest coefficient (per tensor for AdaGC), as ``gradclip/coef``
        self.eff_coef: list[float] = []  # post-clip / pre-clip global norm: comparable across methods
        self.frac_tensors: list[float] = []  # AdaGC: fraction of tensors clipped (``frac_tensors_clipped``)
        self.heldout: dict[int, float] = {}
        self.diverged = False

    def clip(self) -> float:
        """The clip call, as in ``AdaClipGRPOTrainer._clip_grad_norm``; returns the pre-clip norm."""
        if self.method == "fixed_torch":
            return float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_norm))
        params = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        norm = self.clipper.clip_(params, norm_reduce_fn=norm_reduce_fn_for(self.model, params))
        self.last_metrics = self.clipper.metrics()
        return float(norm)

    def step(self, batch, scale: float, make_nonfinite: bool) -> None:
        ids, att, lab = batch
        t0 = time.perf_counter()
        loss = self.model(input_ids=ids, attention_mask=att, labels=lab).loss
        self.opt.zero_grad(set_to_none=True)
        (loss * scale).backward()
        if make_nonfinite:
            next(iter(self.model.parameters())).grad[0, 0] = math.inf
        t1 = time.perf_counter()
        norm = self.clip() if self.method != "none" else None
        t2 = time.perf_counter()
        self.opt.step()
        t3 = time.perf_counter()
        self.step_s.append(t3 - t0)
        self.clip_s.append(t2 - t1)
        self.loss.append(float(loss.detach()))
        if norm is None:  # measured outside the timed region, for the log only
            grads = list(self.model.parameters())
            norm = float(grad_sq_norms(grads).sum().sqrt()) if all(p.grad is not None for p in grads) else math.nan
            coef = eff = 1.0
        elif self.method == "fixed_torch":
            coef = eff = min(1.0, self.max_norm / (norm + 1e-6)) if math.isfinite(norm) else 0.0
        else:
            coef = float(self.last_metrics["coef"])
            post = float(self.last_metrics["post_clip_norm"])
            eff = post / norm if math.isfinite(norm) and norm > 0 and math.isfinite(post) else coef
            if "frac_tensors_clipped" in self.last_metrics:
                self.frac_tensors.append(float(self.last_metrics["frac_tensors_clipped"]))
        self.pre_norm.append(norm)
        self.coef.append(coef)
        self.eff_coef.append(eff)
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self.diverged = True


def _model_dir(task: ArithmeticTask, cache: Path | None) -> Path:
    if cache is not None and (cache / "config.json").exists():
        return cache
    out = cache if cache is not None else Path(tempfile.mkdtemp(prefix="bench_gradclip_"))
    return build_tiny_model(out, task.corpus(4000, seed=0))


def _summ(xs: list[float]) -> dict[str, float]:
    xs = [float(x) for x in xs]
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "values": xs}


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def run_benchmark(cfg: BenchConfig, model_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Train every method for ``cfg.steps`` steps on each seed; return the results dict (JSON-able)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, model_dir, progress)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: BenchConfig, model_dir: str | Path | None, progress: bool) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    task = ArithmeticTask(digits=cfg.digits)
    mdir = _model_dir(task, Path(model_dir) if model_dir is not None else None)
    tokenizer = AutoTokenizer.from_pretrained(mdir)
    mconfig = AutoConfig.from_pretrained(mdir)
    test = task.sample(cfg.eval_problems, "test", seed=12345)
    test_batch = _encode_batch(tokenizer, test)
    per_seed: list[dict] = []
    t_start = time.perf_counter()
    for seed in range(cfg.seeds):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_config(mconfig)
        runs = {m: _Run(m, base, cfg) for m in cfg.methods}
        rows = task.sample(cfg.steps * cfg.batch_size, "train", seed=1000 + seed)
        rng = random.Random(seed)
        order = list(cfg.methods)
        for step in range(1, cfg.steps + 1):
            chunk = rows[(step - 1) * cfg.batch_size : step * cfg.batch_size]
            if step in cfg.corrupt_steps:
                chunk = _corrupt(chunk, rng, cfg.digits)
            batch = _encode_batch(tokenizer, chunk)
            scale = cfg.spike_scale if step in cfg.spike_steps else 1.0
            nonfinite = step in cfg.nonfinite_steps
            order = order[1:] + order[:1]  # rotate: no method always runs first/last
            for m in order:
                if not runs[m].diverged:
                    runs[m].step(batch, scale, nonfinite)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                for r in runs.values():
                    r.heldout[step] = math.nan if r.diverged else _eval_heldout(r.model, tokenizer, test_batch)
            if progress and step % 50 == 0:
                done = (seed * cfg.steps + step) / (cfg.seeds * cfg.steps)
                print(f"seed {seed} step {step}/{cfg.steps}  ({done:.0%}, {time.perf_counter() - t_start:.0f}s)",
                      flush=True)
        seed_out = {}
        for m, r in runs.items():
            acc = math.nan if r.diverged else _greedy_accuracy(r.model, tokenizer, test)
            seed_out[m] = {
                "heldout_loss": r.heldout[cfg.steps],
                "heldout_acc": acc,
                "diverged": r.diverged,
                "heldout_curve": r.heldout,
                "clipped_steps": sum(c < 1.0 for c in r.coef),
                "spike_coef": [r.eff_coef[s - 1] for s in cfg.spike_steps if s <= len(r.eff_coef)],
                "corrupt_coef": [r.eff_coef[s - 1] for s in cfg.corrupt_steps if s <= len(r.eff_coef)],
                "spike_min_coef": [r.coef[s - 1] for s in cfg.spike_steps if s <= len(r.coef)],
                "mean_frac_tensors_clipped": statistics.fmean(r.frac_tensors) if r.frac_tensors else None,
                "pre_norm": r.pre_norm,
                "coef": r.coef,
                "eff_coef": r.eff_coef,
                "train_loss": r.loss,
                "step_s": r.step_s,
                "clip_s": r.clip_s,
                "final_state": r.clipper.state_dict() if r.clipper is not None else None,
            }
        per_seed.append(seed_out)

    summary = {}
    for m in cfg.methods:
        step_all = [t for s in per_seed for t in s[m]["step_s"]]
        clip_all = [t for s in per_seed for t in s[m]["clip_s"]]
        summary[m] = {
            "heldout_loss": _summ([s[m]["heldout_loss"] for s in per_seed]),
            "heldout_acc": _summ([s[m]["heldout_acc"] for s in per_seed]),
            "clipped_steps": _summ([s[m]["clipped_steps"] for s in per_seed]),
            "spike_coef_median": _median([c for s in per_seed for c in s[m]["spike_coef"]]),
            "corrupt_coef_median": _median([c for s in per_seed for c in s[m]["corrupt_coef"]]),
            "spike_min_coef_median": _median([c for s in per_seed for c in s[m]["spike_min_coef"]]),
            "mean_frac_tensors_clipped": (
                statistics.fmean(s[m]["mean_frac_tensors_clipped"] for s in per_seed)
                if all(s[m]["mean_frac_tensors_clipped"] is not None for s in per_seed) else None
            ),
            "diverged_seeds": sum(s[m]["diverged"] for s in per_seed),
            "step_ms_median": 1e3 * statistics.median(step_all) if step_all else math.nan,
            "clip_ms_median": 1e3 * statistics.median(clip_all) if clip_all else math.nan,
        }
    ref = summary.get("none", {}).get("step_ms_median")
    for m in cfg.methods:
        s = summary[m]
        s["step_ratio_vs_none"] = s["step_ms_median"] / ref if ref else math.nan
        s["clip_pct_of_none_step"] = 100.0 * s["clip_ms_median"] / ref if ref else math.nan
    # clean gradient norms: the first method's (``none`` by default) steps before the first injected event
    # (after it, the unclipped model is damaged and its norms are no longer typical)
    injected = cfg.corrupt_steps + cfg.nonfinite_steps + (cfg.spike_steps if cfg.spike_scale != 1.0 else ())
    first = min(injected, default=cfg.steps + 1)
    typical = [n for s in per_seed for i, n in enumerate(s[cfg.methods[0]]["pre_norm"])
               if i + 1 < first and math.isfinite(n)]
    return {
        "benchmark": "bench_gradclip",
        "config": {**asdict(cfg), "clipper_args": {m: cfg.clipper_args(m) for m in cfg.methods}},
        "task": asdict(task),
        "machine": {
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "wall_s": time.perf_counter() - t_start,
        "typical_norm_median": statistics.median(typical) if typical else math.nan,
        "summary": summary,
        "per_seed": per_seed,
    }


def format_table(result: dict) -> str:
    cfg = result["config"]
    rev = " (answers reversed)" if result["task"].get("reverse_answer") else ""
    lines = [
        f"tiny Qwen2, {cfg['digits']}-digit addition{rev}, AdamW lr {cfg['lr']}, batch {cfg['batch_size']}, "
        f"{cfg['steps']} steps x {cfg['seeds']} seeds; loss x{cfg['spike_scale']:g} at steps {list(cfg['spike_steps'])}, "
        f"corrupted labels at {list(cfg['corrupt_steps'])}"
        + (f", inf grad at {list(cfg['nonfinite_steps'])}" if cfg["nonfinite_steps"] else "")
        + f"; median clean grad norm ({cfg['methods'][0]}, before the first injection) "
        f"{result['typical_norm_median']:.3g}",
        f"{'method':<12} {'held-out CE':>15} {'greedy acc':>15} {'clipped':>8} {'spike coef':>10} {'corrupt':>8} "
        f"{'step ms':>8} {'clip ms':>8} {'step/none':>9}",
    ]
    for m, s in result["summary"].items():
        hl, ha = s["heldout_loss"], s["heldout_acc"]
        div = f"  ({s['diverged_seeds']} diverged)" if s["diverged_seeds"] else ""
        lines.append(
            f"{m:<12} {hl['mean']:>7.4f} ± {hl['std']:<5.4f} {ha['mean']:>7.3f} ± {ha['std']:<5.3f} "
            f"{s['clipped_steps']['mean']:>8.1f} {s['spike_coef_median']:>10.2e} {s['corrupt_coef_median']:>8.3f} "
            f"{s['step_ms_median']:>8.2f} "
            f"{s['clip_ms_median']:>8.3f} {s['step_ratio_vs_none']:>9.3f}{div}"
        )
    notes = [f"{m} clips {100 * s['mean_frac_tensors_clipped']:.0f}% of tensors per step on average"
             for m, s in result["summary"].items() if s.get("mean_frac_tensors_clipped") is not None]
    lines.append("clipped = steps with any coefficient < 1; spike coef / corrupt = post/pre-clip global norm"
                 " on those steps (median)" + (f"; {'; '.join(notes)}" if notes else ""))
    la = result["machine"]["loadavg"]
    la = "n/a" if la is None else " ".join(f"{x:.2f}" for x in la)
    lines.append(f"machine: {result['machine']['cpu_count']} CPUs, torch threads {result['machine']['torch_threads']}, "
                 f"load avg {la}; wall {result['wall_s']:.0f}s")
    return "\n".join(lines)


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x.strip())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--spike-scale", type=float, default=1000.0)
    ap.add_argument("--spike-steps", type=_ints, default=None, help="comma-separated 1-based steps")
    ap.add_argument("--corrupt-steps", type=_ints, default=None, help="comma-separated 1-based steps")
    ap.add_argument("--nonfinite-steps", type=_ints, default=(), help="comma-separated 1-based steps")
    ap.add_argument("--zclip-warmup", type=int, default=25)
    ap.add_argument("--adagc-warmup", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model-dir", default=None, help="reuse/cache the tiny model here (built if missing)")
    ap.add_argument("--out", default="results/bench_gradclip.json")
    a = ap.parse_args(argv)
    cfg = BenchConfig(
        steps=a.steps, seeds=a.seeds, methods=tuple(m for m in a.methods.split(",") if m), batch_size=a.batch_size,
        lr=a.lr, spike_scale=a.spike_scale, spike_steps=a.spike_steps, corrupt_steps=a.corrupt_steps,
        nonfinite_steps=a.nonfinite_steps, zclip_warmup=a.zclip_warmup, adagc_warmup=a.adagc_warmup,
        threads=a.threads,
    )
    result = run_benchmark(cfg, model_dir=a.model_dir)
    print(format_table(result))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
