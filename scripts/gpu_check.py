"""The GPU check: one command that runs the library's GPU path and writes every figure to one JSON.

On a CUDA machine (``bash scripts/gpu_check.sh`` sets up the environment and calls this):

1. ``pytest``: the loss, gradclip and trainer tests on CUDA in fp32, the loss and gradclip tests
   in bf16 (``--device cuda --dtype fp32|bf16``, the options of ``tests/gpu_plugin.py``);
   failures are split into assertion failures (tolerances written for fp32) and errors raised
   by the code;
2. ``bf16``: BAPO and Archer in bf16 against fp32 on the same values (the fp32 inputs are the bf16
   ones upcast) on 100 random batches: BAPO's bounds and Archer's token classes identical, loss
   and gradient within :data:`LOSS_RTOL` / :data:`GRAD_RTOL`; ``determinism``: every loss twice
   under ``torch.use_deterministic_algorithms(True)``, bitwise equal; ``compile``: graph breaks
   of each loss step (``torch._dynamo.explain``) and ``torch.compile`` against eager;
3. ``syncs``: host syncs in one forward+backward of each policy loss
   (``torch.cuda.set_sync_debug_mode``), with where each comes from; the target is zero inside
   ``adaclip_rl/losses``;
4. ``bench_losses``: forward+backward at 256 x 8192 tokens, plain clip vs BAPO vs Archer, fp32 and
   bf16, with peak memory; ``bench_trainer``: a randomly initialised model of Qwen2.5-0.5B's shape
   (built here, nothing downloaded), bf16, transformers generation: full training steps and
   loss+backward steps of ``AdaClipGRPOTrainer`` (grpo, bapo, archer) against stock TRL
   ``GRPOTrainer``, and the host syncs of each trainer's loss step;
5. everything, with the device name and versions, in ``results/gpu/gpu_check.json`` (rewritten
   after every section, so a run cut short still leaves its figures).

The vLLM GPU path is skipped with a message (its CUDA wheel is too large to carry to a machine
without network access). Without CUDA the script prints that it needs a GPU and exits 0 having run nothing;
``--device cpu`` runs the CUDA-independent sections on the CPU (what ``tests/test_gpu_check.py``
does with ``--quick``).

    python scripts/gpu_check.py [--quick] [--only bf16,compile,...] [--budget-s 480] [--copy-to DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; before CUDA starts
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import adaclip_rl  # noqa: E402
from adaclip_rl.losses import (  # noqa: E402
    ArcherConfig,
    BAPOConfig,
    GRPOClipConfig,
    aggregate_loss,
    clipped_surrogate,
    get_policy_loss,
)

PKG_DIR = Path(adaclip_rl.__file__).resolve().parent
NEEDS_CUDA_MESSAGE = (
    "gpu_check: this check needs a CUDA GPU and torch sees none here, so nothing was run. "
    "Run `bash scripts/gpu_check.sh` on a machine with an NVIDIA GPU (README, 'GPU check'); "
    "`--device cpu --quick` runs its CUDA-independent parts on the CPU."
)
VLLM_SKIP_MESSAGE = (
    "vLLM GPU path skipped: this check installs no vLLM for CUDA (its wheel is too large to carry to a "
    "machine without network access); run `pytest -m vllm tests/eval tests/rollout` where it is installed."
)
SECTIONS: tuple[str, ...] = (
    "env", "bf16", "determinism", "compile", "syncs", "bench_losses", "pytest_fp32", "bench_trainer",
    "pytest_bf16", "vllm",
)
LOSS_RTOL = 1e-2  # |loss_bf16 - loss_fp32| <= LOSS_RTOL * (mean |per-token loss| + |KL term|) + 1e-6
GRAD_RTOL = 2e-2  # ||grad_bf16 - grad_fp32|| <= GRAD_RTOL * ||grad_fp32|| + 1e-8
GATED_BF16: tuple[str, ...] = ("bapo", "archer")
COMPILE_RTOL = 1e-4  # compiled against eager, fp32
LOSS_CONFIGS: dict[str, Any] = {"grpo": GRPOClipConfig(), "bapo": BAPOConfig(), "archer": ArcherConfig()}
TEST_PATHS: tuple[str, ...] = ("tests/losses", "tests/gradclip", "tests/trainers")
# bf16 runs the pure-torch suites; the bf16 trainer path is what bench_trainer trains with
BF16_TEST_PATHS: tuple[str, ...] = ("tests/losses", "tests/gradclip")
QWEN25_05B: dict[str, Any] = dict(  # Qwen/Qwen2.5-0.5B's config.json, less its weights
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
TINY_SHAPE: dict[str, Any] = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
    max_position_embeddings=512, tie_word_embeddings=True,
)


# ------------------------------------------------------------------------------------------ report
class Report:
    """The check's JSON: one entry per section, rewritten to disk after every section.

    Args:
        path: where the JSON goes.
        copy_to: a second folder that gets a copy of the JSON and of every log (e.g. ``$OUT``).
        budget_s: wall-clock budget; sections that need more than is left are skipped.
    """

    def __init__(self, path: Path, copy_to: Path | None = None, budget_s: float = math.inf) -> None:
        self.path, self.copy_to = Path(path), Path(copy_to) if copy_to else None
        self.start = time.monotonic()
        self.budget_s = budget_s
        self.data: dict[str, Any] = {"script": "scripts/gpu_check.py", "started_utc": _utc_now(), "sections": {}}

    def remaining(self) -> float:
        """Seconds left of the budget."""
        return self.budget_s - (time.monotonic() - self.start)

    @contextlib.contextmanager
    def section(self, name: str, min_s: float = 0.0) -> Iterator[dict[str, Any] | None]:
        """Record one section: yields a dict to fill (None if skipped for time); errors are caught
        and recorded with the end of their traceback, so one failing section never stops the rest."""
        entry: dict[str, Any] = {}
        if self.remaining() < min_s:
            entry.update(status="skipped", reason=f"time budget: {self.remaining():.0f} s left, needs {min_s:.0f} s")
            self.data["sections"][name] = entry
            self.write()
            print(f"[gpu_check] {name}: skipped ({entry['reason']})", flush=True)
            yield None
            return
        print(f"[gpu_check] {name} ...", flush=True)
        t0 = time.monotonic()
        try:
            yield entry
            entry.setdefault("status", "ok")
        except Exception as exc:  # recorded, the run goes on
            entry["status"] = "error"
            entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            entry["traceback"] = traceback.format_exc()[-4000:]
        entry["seconds"] = round(time.monotonic() - t0, 2)
        self.data["sections"][name] = entry
        self.write()
        print(f"[gpu_check] {name}: {entry['status']} in {entry['seconds']} s", flush=True)

    def add_file(self, path: Path) -> None:
        """Copy a log next to the JSON in ``copy_to`` (if any)."""
        if self.copy_to and Path(path).exists() and Path(path).parent.resolve() != self.copy_to.resolve():
            self.copy_to.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, self.copy_to / Path(path).name)

    def write(self) -> None:
        """Write the JSON (and its copy)."""
        self.data["elapsed_s"] = round(time.monotonic() - self.start, 2)
        write_json(self.path, self.data)
        if self.copy_to:
            write_json(self.copy_to / self.path.name, self.data)


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # JSON has no inf/nan
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    return str(x)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as strict JSON (tensors as lists, inf/nan as strings), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Device name, memory, and the versions of everything the figures depend on."""
    env: dict[str, Any] = {
        "device": str(device), "python": platform.python_version(), "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "packages": {d: _version(d) for d in ("transformers", "trl", "accelerate", "datasets", "peft", "math-verify",
                                              "tokenizers", "pyarrow", "vllm", "triton")},
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                   cudnn=torch.backends.cudnn.version())
        with contextlib.suppress(Exception):
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
    else:
        env["device_name"] = platform.processor() or platform.machine()
    env["git_commit"] = os.environ.get("GPU_CHECK_COMMIT")  # set by the caller where the tree has no .git
    with contextlib.suppress(Exception):
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                           timeout=10).stdout.strip() or env["git_commit"]
    return env


# ------------------------------------------------------------------------------------------ inputs
def make_inputs(b: int, t: int, device: torch.device | str, seed: int = 0, spread: float = 0.3) -> dict[str, torch.Tensor]:
    """A random policy-loss batch (fp32): ratios of a stale policy, advantages per response, padding.

    Keys: ``ratio``, ``logp``, ``ref``, ``adv``, ``mask`` (float), ``entropy``.
    """
    gen = torch.Generator(device=device).manual_seed(seed)
    lengths = torch.randint(max(1, t // 4), t + 1, (b,), generator=gen, device=device)
    mask = (torch.arange(t, device=device).unsqueeze(0) < lengths.unsqueeze(1)).float()
    logp = -torch.rand(b, t, generator=gen, device=device) * 2
    old = logp + spread * torch.randn(b, t, generator=gen, device=device)
    ref = logp + 0.1 * torch.randn(b, t, generator=gen, device=device)
    adv = torch.randn(b, generator=gen, device=device)
    entropy = torch.rand(b, t, generator=gen, device=device) * 3
    return dict(ratio=torch.exp(logp - old), logp=logp, ref=ref, adv=adv, mask=mask, entropy=entropy)


def cast_inputs(x: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every floating input in ``dtype`` (the mask too, as a trainer's float mask)."""
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in x.items()}


@dataclass
class StepResult:
    """One forward+backward of a policy loss: the loss, its gradients and what the loss chose."""

    loss: torch.Tensor
    per_token: torch.Tensor
    extra: torch.Tensor | None
    grad_ratio: torch.Tensor
    grad_logp: torch.Tensor | None
    details: Any
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def loss_forward(name: str, ratio: torch.Tensor, x: dict[str, torch.Tensor], config: Any = None,
                 mode: str = "dapo") -> tuple[torch.Tensor, Any]:
    """The loss a trainer minimises for one micro-batch: registry policy loss, aggregation, extra term.

    ``ratio`` is passed separately so a caller can make it a leaf; ``x["logp"]`` feeds Archer's KL.
    Returns ``(scalar loss, PolicyLossOutput)``.
    """
    fn = get_policy_loss(name)
    out = fn(ratio, x["adv"], x["mask"], config=config or LOSS_CONFIGS[name], logp=x["logp"], ref_logp=x["ref"],
             entropy=x["entropy"])
    loss = aggregate_loss(out.per_token_loss, x["mask"], mode)
    if out.extra_loss is not None:
        loss = loss + out.extra_loss
    return loss, out


def loss_step(name: str, x: dict[str, torch.Tensor], config: Any = None,
              forward: Callable[..., tuple[torch.Tensor, Any]] | None = None) -> StepResult:
    """Forward + backward of :func:`loss_forward` with ``ratio`` and ``logp`` as leaves."""
    ratio = x["ratio"].detach().clone().requires_grad_()
    logp = x["logp"].detach().clone().requires_grad_()
    loss, out = (forward or loss_forward)(name, ratio, {**x, "logp": logp}, config)
    loss.backward()
    return StepResult(loss.detach(), out.per_token_loss.detach(),
                      None if out.extra_loss is None else out.extra_loss.detach(), ratio.grad,
                      logp.grad, out.details, out.metrics)


# ------------------------------------------------------------------------------------------ 2. checks
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64 (0 when both are zero)."""
    a, b = a.double(), b.double()
    den = float(b.norm())
    num = float((a - b).norm())
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def random_shapes(n: int, seed: int, max_b: int = 32, max_t: int = 512) -> list[tuple[int, int, float]]:
    """``n`` (batch, tokens, ratio spread) triples, from a seeded host RNG (no device randomness)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        b = int(torch.randint(1, max_b + 1, (1,), generator=g))
        t = int(torch.randint(1, max_t + 1, (1,), generator=g))
        spread = float(torch.empty(1).uniform_(0.01, 0.8, generator=g))
        out.append((b, t, spread))
    return out


def _bounds(name: str, r: StepResult) -> list[float]:
    """The ratio bounds a loss applied (both ends of every clip range, and the dual-clip cap)."""
    cfg = LOSS_CONFIGS[name]
    if name == "grpo":
        out = [1 - cfg.epsilon_low, 1 + cfg.epsilon_high]
    elif name == "bapo":
        out = [float(r.details.clip_low), float(r.details.clip_high)]
    else:
        out = [1 - cfg.high_clip, 1 + cfg.high_clip, 1 - cfg.low_clip, 1 + cfg.low_clip]
    return out + ([cfg.dual_clip] if cfg.dual_clip is not None else [])


def grad_agreement(name: str, ratio: torch.Tensor, r16: StepResult, r32: StepResult) -> tuple[float, int, int]:
    """Ratio-gradient error of bf16 against fp32, apart from "clip flips".

    A bound applied in bf16 is the bound rounded to bf16, so a token whose ratio lies within a
    bf16 step of a bound may be clipped in one run and not in the other (its gradient is zero in
    one). Returns ``(relative error over the other tokens, flips, flips farther than one bf16
    step, 2^-7 relative, from every bound)``; the last must be 0.
    """
    g16, g32 = r16.grad_ratio.float(), r32.grad_ratio.float()
    flip = (g16 == 0) != (g32 == 0)
    r = ratio.float()
    near = torch.zeros_like(flip)
    for b in _bounds(name, r32):
        near |= (r - b).abs() <= abs(b) * 2.0**-7
    keep = ~flip
    err = _rel(g16[keep], g32[keep]) if float(g32[keep].norm()) > 1e-8 else 0.0
    return err, int(flip.sum()), int((flip & ~near).sum())


def compare_bf16_fp32(device: torch.device | str, n_batches: int = 100, seed: int = 0, max_b: int = 32,
                      max_t: int = 512) -> dict[str, Any]:
    """BAPO and Archer (and the plain clip, for scale) in bf16 against fp32 on the same values.

    Each batch is drawn in fp32, rounded to bf16, and the fp32 run gets the bf16 values upcast,
    so both runs see identical numbers. Gated (``ok``), for BAPO and Archer:

    * BAPO's bounds and search index, Archer's token classes and thresholds: identical;
    * the loss: ``|L_bf16 - L_fp32| <= LOSS_RTOL * (mean |per-token loss| + |extra term|) + 1e-6``;
    * the ratio gradient: relative error <= :data:`GRAD_RTOL` over the tokens whose clip decision
      agrees, and every token whose decision differs lies within a bf16 step of a bound.

    Reported, not gated: the gradient of Archer's KL in ``logp`` and its per-class KL value
    (``kl_low``), whose bf16 error comes from ``exp(d) - d - 1`` and ``1 - exp(d)`` for small
    ``d = ref - logp`` (cancellation when computed in bf16).
    """
    per_loss: dict[str, dict[str, Any]] = {
        k: {"bounds_identical": 0, "loss_within_tol": 0, "grad_within_tol": 0, "max_loss_err": 0.0,
            "max_grad_rel_err": 0.0, "clip_flips": 0, "flips_off_bound": 0, "mismatches": []} for k in LOSS_CONFIGS}
    per_loss["archer"].update(max_kl_grad_rel_err=0.0, max_kl_low_rel_err=0.0)
    for i, (b, t, spread) in enumerate(random_shapes(n_batches, seed, max_b, max_t)):
        x16 = cast_inputs(make_inputs(b, t, device, seed=seed * 100_003 + i, spread=spread), torch.bfloat16)
        x32 = cast_inputs(x16, torch.float32)
        for name, acc in per_loss.items():
            r16, r32 = loss_step(name, x16), loss_step(name, x32)
            same = _same_choice(name, r16, r32)
            n_tok = float(x32["mask"].sum().clamp(min=1))
            scale = float((r32.per_token.abs() * x32["mask"]).sum()) / n_tok
            scale += 0.0 if r32.extra is None else abs(float(r32.extra))
            loss_err = abs(float(r16.loss) - float(r32.loss))
            grad_err, flips, off = grad_agreement(name, x32["ratio"], r16, r32)
            loss_ok = loss_err <= LOSS_RTOL * scale + 1e-6
            grad_ok = grad_err <= GRAD_RTOL and off == 0
            acc["bounds_identical"] += int(same)
            acc["loss_within_tol"] += int(loss_ok)
            acc["grad_within_tol"] += int(grad_ok)
            acc["max_loss_err"] = max(acc["max_loss_err"], loss_err / (scale + 1e-12))
            acc["max_grad_rel_err"] = max(acc["max_grad_rel_err"], grad_err)
            acc["clip_flips"] += flips
            acc["flips_off_bound"] += off
            if name == "archer" and r32.grad_logp is not None and float(r32.grad_logp.norm()) > 0:
                acc["max_kl_grad_rel_err"] = max(acc["max_kl_grad_rel_err"], _rel(r16.grad_logp, r32.grad_logp))
                kl32 = float(r32.details.kl_low)
                if kl32 > 0:
                    acc["max_kl_low_rel_err"] = max(acc["max_kl_low_rel_err"],
                                                    abs(float(r16.details.kl_low) - kl32) / kl32)
            if not (same and loss_ok and grad_ok) and len(acc["mismatches"]) < 5:
                acc["mismatches"].append({"batch": i, "shape": [b, t], "bounds_identical": same,
                                          "loss_err": loss_err, "scale": scale, "grad_rel_err": grad_err,
                                          "flips_off_bound": off})
    ok = all(per_loss[k]["bounds_identical"] == per_loss[k]["loss_within_tol"] == per_loss[k]["grad_within_tol"]
             == n_batches for k in GATED_BF16)
    return {"batches": n_batches, "max_shape": [max_b, max_t], "device": str(device), "loss_rtol": LOSS_RTOL,
            "grad_rtol": GRAD_RTOL, "max_loss_err_is": "|loss_bf16 - loss_fp32| / scale", "gated": list(GATED_BF16),
            "losses": per_loss, "ok": ok,
            "note": "grpo (TRL's float-bound form) is shown for scale, not gated: after bf16 rounding r*A and "
                    "clip(r)*A can tie just past a bound, and min() then sends half the gradient through"}


def _same_choice(name: str, a: StepResult, b: StepResult) -> bool:
    """BAPO: identical bounds and path index; Archer: identical classes and thresholds; grpo: fixed."""
    if name == "bapo":
        return all(torch.equal(getattr(a.details, f), getattr(b.details, f))
                   for f in ("clip_low", "clip_high", "index", "reached"))
    if name == "archer":
        return (torch.equal(a.details.high, b.details.high) and torch.equal(a.details.low, b.details.low)
                and torch.equal(a.details.tau_mean.float(), b.details.tau_mean.float()))
    return True


def determinism_check(device: torch.device | str, dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16),
                      n_batches: int = 3, b: int = 32, t: int = 1024) -> dict[str, Any]:
    """Every loss twice under ``torch.use_deterministic_algorithms(True)``: bitwise-equal loss,
    gradients and choices; an op without a deterministic kernel is recorded with its message."""
    results: dict[str, Any] = {}
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        for dtype in dtypes:
            for name in LOSS_CONFIGS:
                key = f"{name}/{str(dtype).removeprefix('torch.')}"
                try:
                    equal = True
                    for i in range(n_batches):
                        x = cast_inputs(make_inputs(b, t, device, seed=1000 + i), dtype)
                        r1, r2 = loss_step(name, x), loss_step(name, x)
                        equal &= (torch.equal(r1.loss, r2.loss) and torch.equal(r1.grad_ratio, r2.grad_ratio)
                                  and _same_choice(name, r1, r2)
                                  and (r1.grad_logp is None or torch.equal(r1.grad_logp, r2.grad_logp)))
                    results[key] = {"bitwise_equal": bool(equal)}
                except RuntimeError as exc:
                    results[key] = {"bitwise_equal": False, "error": str(exc).splitlines()[0][:500]}
    finally:
        torch.use_deterministic_algorithms(prev)
    return {"batches": n_batches, "shape": [b, t], "cases": results,
            "ok": all(v["bitwise_equal"] for v in results.values())}


def compile_check(device: torch.device | str, backend: str = "inductor", b: int = 16, t: int = 256,
                  run_compiled: bool = True) -> dict[str, Any]:
    """Graph breaks of each loss step (``torch._dynamo.explain``) and ``torch.compile`` vs eager.

    Each case is the forward a trainer runs (registry loss, aggregation, extra term); the compiled
    one is then run forward+backward and compared with eager (fp32, :data:`COMPILE_RTOL`).
    """
    import torch._dynamo as dynamo

    cases: dict[str, Any] = {}
    x = make_inputs(b, t, device, seed=7)
    for name in LOSS_CONFIGS:
        entry: dict[str, Any] = {}
        cases[name] = entry
        dynamo.reset()

        def fwd(ratio: torch.Tensor, logp: torch.Tensor, ref: torch.Tensor, adv: torch.Tensor,
                mask: torch.Tensor, entropy: torch.Tensor, _name: str = name) -> torch.Tensor:
            return loss_forward(_name, ratio, dict(logp=logp, ref=ref, adv=adv, mask=mask, entropy=entropy))[0]

        args = (x["ratio"].clone().requires_grad_(), x["logp"].clone().requires_grad_(), x["ref"], x["adv"],
                x["mask"], x["entropy"])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                explained = dynamo.explain(fwd)(*args)
            entry.update(graphs=explained.graph_count, graph_breaks=explained.graph_break_count,
                         break_reasons=[_break_reason(r) for r in explained.break_reasons][:10])
        except Exception as exc:
            entry["explain_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        dynamo.reset()
        if not run_compiled:
            continue
        try:
            compiled = torch.compile(fwd, backend=backend)
            want, got = _fwd_bwd(fwd, args), _fwd_bwd(compiled, args)
            entry["loss_rel_err"] = abs(float(got[0]) - float(want[0])) / max(abs(float(want[0])), 1e-12)
            entry["grad_rel_err"] = max(_rel(g, w) for g, w in zip(got[1:], want[1:], strict=True))
            entry["matches_eager"] = entry["loss_rel_err"] <= COMPILE_RTOL and entry["grad_rel_err"] <= COMPILE_RTOL
        except Exception as exc:
            entry["compile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            entry["matches_eager"] = False
    dynamo.reset()
    return {"backend": backend, "shape": [b, t], "cases": cases,
            "ok": all(c.get("graph_breaks") == 0 and c.get("matches_eager") for c in cases.values())}


def _fwd_bwd(fn: Callable[..., torch.Tensor], args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``fn(ratio, logp, *rest)`` forward and backward on fresh leaves: (loss, d/dratio, d/dlogp)."""
    ratio, logp = (a.detach().clone().requires_grad_() for a in args[:2])
    loss = fn(ratio, logp, *args[2:])
    loss.backward()
    return loss.detach(), ratio.grad, logp.grad if logp.grad is not None else torch.zeros_like(logp)


def _break_reason(reason: Any) -> dict[str, Any]:
    frames = [f for f in (reason.user_stack or [])]
    where = next((f for f in reversed(frames) if in_package(f.filename)), frames[-1] if frames else None)
    return {"reason": str(reason.reason).splitlines()[0][:200],
            "at": None if where is None else f"{_short(where.filename)}:{where.lineno}"}


def in_package(filename: str, sub: str = "") -> bool:
    """Whether ``filename`` lies in the installed ``adaclip_rl`` package (``sub``: a subfolder)."""
    root = PKG_DIR / sub if sub else PKG_DIR
    return os.path.realpath(filename).startswith(str(root) + os.sep)


def _short(filename: str) -> str:
    """A package file as ``adaclip_rl/...``; anything else unchanged."""
    return os.path.relpath(os.path.realpath(filename), PKG_DIR.parent) if in_package(filename) else filename


# ------------------------------------------------------------------------------------------ 3. syncs
@dataclass
class SyncCount:
    """Host syncs seen while a function ran, and where each came from."""

    total: int = 0
    in_losses: int = 0  # with a frame in adaclip_rl/losses
    in_adaclip: int = 0  # with a frame anywhere in adaclip_rl
    sites: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON form, sites de-duplicated with counts."""
        counts: dict[str, int] = {}
        for s in self.sites:
            counts[s] = counts.get(s, 0) + 1
        return {"total": self.total, "in_adaclip_rl_losses": self.in_losses, "in_adaclip_rl": self.in_adaclip,
                "sites": counts}


def count_syncs(fn: Callable[[], Any], set_mode: Callable[[str | int], None] | None = None) -> SyncCount:
    """Run ``fn`` with CUDA's sync debug mode on "warn" and count the synchronizing-call warnings.

    Each warning is attributed to the innermost stack frame in ``adaclip_rl`` (else the innermost
    frame). ``set_mode`` defaults to ``torch.cuda.set_sync_debug_mode`` (tests pass a stand-in).
    """
    import traceback as tb

    set_mode = set_mode or torch.cuda.set_sync_debug_mode
    count = SyncCount()

    def hook(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if "synchroniz" not in str(message):
            return
        stack = [f for f in tb.extract_stack()[:-1] if not f.filename.endswith("warnings.py")]
        ours = [f for f in stack if in_package(f.filename)]
        count.total += 1
        count.in_losses += any(in_package(f.filename, "losses") for f in ours)
        count.in_adaclip += bool(ours)
        where = ours[-1] if ours else (stack[-1] if stack else None)
        count.sites.append(f"{_short(where.filename)}:{where.lineno}" if where else f"{filename}:{lineno}")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = hook
        set_mode("warn")
        try:
            fn()
        finally:
            set_mode(0)
    return count


def loss_syncs(name: str, x: dict[str, torch.Tensor], config: Any = None) -> dict[str, Any]:
    """Host syncs of one loss forward (attributed by stack frame) and of its backward.

    The backward graph is the loss's alone (from the ratio and log-prob leaves), so every sync
    there belongs to our loss code; autograd replays backward warnings at ``.backward()``, so
    they cannot be attributed to a line.
    """
    ratio = x["ratio"].detach().clone().requires_grad_()
    logp = x["logp"].detach().clone().requires_grad_()
    held: dict[str, torch.Tensor] = {}

    def forward() -> None:
        held["loss"] = loss_forward(name, ratio, {**x, "logp": logp}, config)[0]

    fwd = count_syncs(forward)
    bwd = count_syncs(lambda: held["loss"].backward())
    return {"forward": fwd.as_dict(), "backward": bwd.as_dict(),
            "in_loss_code": fwd.in_losses + bwd.total}


def sync_check(device: torch.device, b: int = 16, t: int = 1024) -> dict[str, Any]:
    """Host syncs in one forward+backward of each policy loss (after a warm-up step that fills
    the loss's caches), in "warn" mode with sites, and whether "error" mode lets it through."""
    cases: dict[str, Any] = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = cast_inputs(make_inputs(b, t, device, seed=3), dtype)
        for name in LOSS_CONFIGS:
            loss_step(name, x)  # warm-up: BAPO's grid tables are copied to the device once
            torch.cuda.synchronize()
            entry = loss_syncs(name, x)
            torch.cuda.synchronize()
            try:
                torch.cuda.set_sync_debug_mode("error")
                loss_step(name, x)
                entry["error_mode"] = "ran without a sync"
            except RuntimeError as exc:
                entry["error_mode"] = str(exc).splitlines()[0][:300]
            finally:
                torch.cuda.set_sync_debug_mode(0)
            cases[f"{name}/{str(dtype).removeprefix('torch.')}"] = entry
    return {"shape": [b, t], "cases": cases, "ok": all(c["in_loss_code"] == 0 for c in cases.values()),
            "target": "0 syncs inside adaclip_rl/losses (forward) and in the loss's backward"}


# ------------------------------------------------------------------------------------------ 4. benches
def _timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append(time.perf_counter() - t0)
    return out


def _plain_forward(name: str, ratio: torch.Tensor, x: dict[str, torch.Tensor], config: Any = None):
    """The plain clip with Python-float bounds [0.8, 1.2] (TRL's own form): the baseline."""
    from adaclip_rl.losses import PolicyLossOutput

    out = PolicyLossOutput(clipped_surrogate(ratio, x["adv"], 0.8, 1.2))
    return aggregate_loss(out.per_token_loss, x["mask"], "dapo"), out


def bench_losses(device: torch.device, b: int = 256, t: int = 8192, repeats: int = 20,
                 dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)) -> dict[str, Any]:
    """Forward+backward time and peak memory of each loss at ``b x t`` tokens, vs the plain clip."""
    cases: dict[str, tuple[str, Any, Callable[..., Any] | None]] = {
        "plain clip": ("grpo", None, _plain_forward),
        "BAPO": ("bapo", None, None),
        "Archer": ("archer", None, None),
        "Archer without KL": ("archer", ArcherConfig(low_kl=0.0), None),
    }
    rows = []
    for dtype in dtypes:
        x = cast_inputs(make_inputs(b, t, device, seed=11), dtype)
        samples: dict[str, list[float]] = {k: [] for k in cases}
        peak: dict[str, float] = {}
        for k, (name, cfg, fwd) in cases.items():  # warm-up + peak memory, one case at a time
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            loss_step(name, x, cfg, fwd)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                peak[k] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        for _ in range(repeats):  # interleaved, so drift hits every case alike
            for k, (name, cfg, fwd) in cases.items():
                samples[k] += _timed(lambda n=name, c=cfg, f=fwd, xx=x: loss_step(n, xx, c, f), device, 1, warmup=0)
        base_ms = statistics.median(samples["plain clip"]) * 1e3
        for k in cases:
            ms = statistics.median(samples[k]) * 1e3
            rows.append({"case": k, "dtype": str(dtype).removeprefix("torch."), "median_ms": ms,
                         "ratio_to_plain": ms / base_ms, "peak_extra_mib": peak.get(k)})
        del x
    return {"batch": b, "tokens": t, "repeats": repeats, "rows": rows}


def build_model_dir(out: Path, shape: str, dtype: torch.dtype, device: torch.device) -> Path:
    """Tokenizer (built locally, like ``adaclip_rl.tasks.tiny_model``) and a randomly initialised
    Qwen2 of ``shape`` ("qwen2.5-0.5b" or "tiny"), saved in ``dtype``; nothing is downloaded."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from adaclip_rl.tasks import ArithmeticTask
    from adaclip_rl.tasks.tiny_model import build_tokenizer

    tok = build_tokenizer(ArithmeticTask().corpus())
    dims = dict(QWEN25_05B) if shape == "qwen2.5-0.5b" else dict(TINY_SHAPE, vocab_size=len(tok))
    config = Qwen2Config(**dims, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    with torch.device(device):  # initialising 0.5 B parameters is much faster on the GPU
        model = Qwen2ForCausalLM(config)
    model = model.to(dtype)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                               bos_token_id=tok.bos_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    (out / "gpu_check_shape.json").write_text(json.dumps({"shape": shape, "parameters": n_params, **dims}))
    return out


def _loss_batch(model: Any, b: int, c: int, seed: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A pre-built GRPO batch (as ``scripts/bench_trainer.py``): random ids, the model's own
    log-probs as the stale behaviour policy plus noise, reference log-probs, advantages."""
    gen = torch.Generator().manual_seed(seed)
    p = 8
    prompt_ids = torch.randint(3, 250, (b, p), generator=gen)
    completion_ids = torch.randint(3, 250, (b, c), generator=gen)
    lengths = torch.randint(c // 4, c + 1, (b,), generator=gen)
    completion_mask = (torch.arange(c).unsqueeze(0) < lengths.unsqueeze(1)).long()
    batch = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones(b, p, dtype=torch.long),
             "completion_ids": completion_ids, "completion_mask": completion_mask,
             "advantages": torch.randn(b, generator=gen)}
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad():  # one row at a time: a 150k vocabulary makes full-batch fp32 logits large
        rows = []
        for i in range(b):
            ids = torch.cat([batch["prompt_ids"][i: i + 1], batch["completion_ids"][i: i + 1]], 1)
            logits = model(input_ids=ids).logits[:, p - 1: -1].float()
            rows.append(torch.log_softmax(logits, -1).gather(-1, batch["completion_ids"][i: i + 1, :, None])[..., 0])
        logps = torch.cat(rows)
    noise = torch.randn(b, c, generator=gen).to(device)
    batch.update(old_per_token_logps=logps + 0.3 * noise, ref_per_token_logps=logps + 0.1 * noise.flip(0),
                 num_items_in_batch=completion_mask.sum().float().to(device))
    return batch


def token_parity_reward(completions: list, completion_ids: list[list[int]] | None = None, **_: Any) -> list[float]:
    """Share of even token ids: a reward that varies between random completions (so advantages are
    non-zero), also when the model samples ids beyond the small tokenizer's vocabulary (which
    decode to nothing)."""
    ids = completion_ids or [[] for _ in completions]
    return [sum(1 for i in row if i % 2 == 0) / max(len(row), 1) for row in ids]


@dataclass
class TrainerBenchConfig:
    """Sizes of the trainer benchmark (defaults: one H100 call; ``quick()`` for a CPU smoke run)."""

    shape: str = "qwen2.5-0.5b"
    batch: int = 16  # completions per optimizer step (per_device_train_batch_size)
    num_generations: int = 8
    completion: int = 256  # max_completion_length of the full training steps
    train_steps: int = 3  # measured full steps per trainer, after one warm-up step
    loss_batch: int = 8  # the loss+backward measurement: batch x loss_tokens completion tokens
    loss_tokens: int = 1024
    loss_rounds: int = 5

    @classmethod
    def quick(cls) -> TrainerBenchConfig:
        """Tiny sizes for a CPU run of the code path."""
        return cls(shape="tiny", batch=8, num_generations=4, completion=8, train_steps=1, loss_batch=8,
                   loss_tokens=16, loss_rounds=1)


def bench_trainer(device: torch.device, cfg: TrainerBenchConfig, tmp: Path) -> dict[str, Any]:
    """Stock ``GRPOTrainer`` vs ``AdaClipGRPOTrainer`` (grpo, bapo, archer): host syncs and time of
    one loss+backward on a pre-built batch, then full training steps (transformers generation,
    reward, loss, backward, clip, optimizer), round-robin so drift hits all alike."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from adaclip_rl import AdaClipGRPOConfig, AdaClipGRPOTrainer
    from adaclip_rl.tasks import ArithmeticTask

    on_cuda = device.type == "cuda"
    dtype = torch.bfloat16 if on_cuda else torch.float32
    model_dir = build_model_dir(tmp / "model", cfg.shape, dtype, device)
    ds = Dataset.from_list(ArithmeticTask().sample(512, "train", seed=0))

    def common(out: str) -> dict[str, Any]:
        return dict(output_dir=out, use_cpu=not on_cuda, bf16=on_cuda, per_device_train_batch_size=cfg.batch,
                    num_generations=cfg.num_generations, max_completion_length=cfg.completion,
                    steps_per_generation=1, report_to="none", save_strategy="no", logging_steps=1,
                    learning_rate=1e-6, max_steps=1000, disable_tqdm=True, seed=0, dataloader_pin_memory=False)

    trainers: dict[str, Any] = {
        "TRL GRPOTrainer": GRPOTrainer(model=str(model_dir), reward_funcs=[token_parity_reward], train_dataset=ds,
                                       args=GRPOConfig(**common(str(tmp / "stock"))))}
    for name in ("grpo", "bapo", "archer"):
        trainers[f"AdaClip {name}"] = AdaClipGRPOTrainer(
            model=str(model_dir), reward_funcs=[token_parity_reward], train_dataset=ds,
            args=AdaClipGRPOConfig(policy_loss=name, **common(str(tmp / name))))
    first = next(iter(trainers.values()))
    batches = [_loss_batch(first.model, cfg.loss_batch, cfg.loss_tokens, s, device) for s in range(2)]
    for t in trainers.values():
        t.model.train()
        t.current_gradient_accumulation_steps = 1

    def loss_and_backward(t: Any, inputs: dict[str, torch.Tensor]) -> None:
        t.model.zero_grad(set_to_none=True)
        t._compute_loss(t.model, inputs).backward()
        t._metrics["train"].clear()

    syncs: dict[str, Any] = {}
    loss_ms: dict[str, list[float]] = {k: [] for k in trainers}
    for name, t in trainers.items():
        for batch in batches:  # warm-up
            loss_and_backward(t, batch)
        if on_cuda:
            torch.cuda.synchronize(device)
            syncs[name] = count_syncs(lambda tt=t: loss_and_backward(tt, batches[1])).as_dict()
    for r in range(cfg.loss_rounds):
        for name, t in trainers.items():
            loss_ms[name] += _timed(lambda tt=t, rr=r: loss_and_backward(tt, batches[rr % 2]), device, 1, warmup=0)

    step_ms: dict[str, list[float]] = {k: [] for k in trainers}
    peak_gib: dict[str, float] = {}
    iters = {name: iter(t.get_train_dataloader()) for name, t in trainers.items()}
    for t in trainers.values():
        t.create_optimizer()
    for step in range(1 + cfg.train_steps):  # the first round is warm-up
        for name, t in trainers.items():
            batch = next(iters[name])
            if on_cuda:
                torch.cuda.reset_peak_memory_stats(device)

            def full_step(tt: Any = t, bb: Any = batch) -> None:
                tt.training_step(tt.model, bb, None)
                tt._clip_grad_norm(tt.model)
                tt.optimizer.step()
                tt.optimizer.zero_grad(set_to_none=True)
                tt._metrics["train"].clear()

            dt = _timed(full_step, device, 1, warmup=0)[0]
            if step:
                step_ms[name].append(dt * 1e3)
            if on_cuda:
                peak_gib[name] = max(peak_gib.get(name, 0.0), torch.cuda.max_memory_allocated(device) / 2**30)
    rows = []
    base_loss = statistics.median(loss_ms["TRL GRPOTrainer"])
    base_step = statistics.median(step_ms["TRL GRPOTrainer"])
    for name in trainers:
        lm, sm = statistics.median(loss_ms[name]), statistics.median(step_ms[name])
        rows.append({"trainer": name, "loss_backward_ms": lm * 1e3, "loss_vs_trl": lm / base_loss,
                     "train_step_ms": sm, "train_vs_trl": sm / base_step, "train_step_samples_ms": step_ms[name],
                     "peak_gib_during_step": peak_gib.get(name)})
    shape = json.loads((model_dir / "gpu_check_shape.json").read_text())
    for t in list(trainers):
        del trainers[t]
    if on_cuda:
        torch.cuda.empty_cache()
    return {"model": shape, "weights_dtype": str(dtype).removeprefix("torch."), "bf16": on_cuda,
            "config": cfg.__dict__, "generation": "transformers", "rows": rows, "loss_step_syncs": syncs,
            "note": "peak memory includes every trainer's resident weights and optimizer state"}


# ------------------------------------------------------------------------------------------ 1. pytest
def run_pytest(dtype: str, paths: tuple[str, ...], timeout_s: float, log_dir: Path, device: str = "cuda",
               extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """The tests on ``device`` in ``dtype`` (``tests/gpu_plugin.py``), in a child process with a
    timeout; returns counts and each failure, split into assertion failures and errors."""
    junit = Path(tempfile.mkdtemp(prefix="gpu_check_")) / f"pytest_{dtype}.xml"
    log = log_dir / f"pytest_{dtype}.log"
    cmd = [sys.executable, "-m", "pytest", *paths, "--device", device, "--dtype", dtype, "-m",
           "not vllm and not distributed", "-v", "-p", "no:cacheprovider", f"--junitxml={junit}", *extra]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd += ["--timeout", "120"]  # one hung test must not take the whole budget
    t0 = time.monotonic()
    timed_out = False
    with open(log, "w") as fh:
        try:
            rc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
    out = {"command": " ".join(cmd[1:]), "returncode": rc, "timed_out": timed_out,
           "seconds": round(time.monotonic() - t0, 1), "log": log.name}
    out.update(parse_junit(junit) if junit.exists() and not timed_out else parse_verbose_log(log))
    return out


def parse_verbose_log(path: Path) -> dict[str, Any]:
    """Counts from a ``pytest -v`` log cut short (no JUnit file then): one outcome per test line."""
    counts = {"tests": 0, "passed": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    key = {"PASSED": "passed", "FAILED": "failures", "ERROR": "errors", "SKIPPED": "skipped", "XFAIL": "skipped",
           "XPASS": "passed"}
    for line in Path(path).read_text(errors="replace").splitlines():
        parts = line.split(" ")
        if len(parts) >= 2 and "::" in parts[0] and parts[1] in key:
            counts["tests"] += 1
            counts[key[parts[1]]] += 1
            if parts[1] in ("FAILED", "ERROR"):
                failed.append({"test": parts[0], "kind": "unknown (cut short)", "message": ""})
    return {**counts, "partial": True, "failed": failed[:50]}


def _crash_site(text: str) -> str | None:
    """The innermost ``path:line`` of a pytest traceback, skipping the device plugin's own frame
    (every torch call passes through it)."""
    sites = [m.group(1) for m in re.finditer(r"^(\S+\.py:\d+):", text, re.MULTILINE)
             if not m.group(1).split(":")[0].endswith("gpu_plugin.py")]
    return sites[-1] if sites else None


def parse_junit(path: Path) -> dict[str, Any]:
    """Counts and failures from a JUnit XML file, each failure classified by kind:
    "assertion" (a tolerance or expected value), "exception in adaclip_rl" (raised while running
    library code: a defect) or "exception elsewhere" (in the test itself or a dependency)."""
    root = ET.parse(path).getroot()
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for case in root.iter("testcase"):
        counts["tests"] += 1
        for tag, key in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
            el = case.find(tag)
            if el is None:
                continue
            counts[key] += 1
            if tag == "skipped":
                continue
            msg, text = (el.get("message") or "").strip(), el.text or ""
            site = _crash_site(text)
            if tag == "failure" and (msg.startswith("assert") or "AssertionError" in msg or "AssertionError" in text):
                kind = "assertion"
            elif "adaclip_rl/" in text and site and "adaclip_rl/" in site:
                kind = "exception in adaclip_rl"
            else:
                kind = "exception elsewhere"
            failed.append({"test": f"{case.get('classname')}::{case.get('name')}", "kind": kind, "at": site,
                           "message": msg.splitlines()[0][:300] if msg else ""})
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    by_kind = {k: sum(f["kind"] == k for f in failed)
               for k in ("assertion", "exception in adaclip_rl", "exception elsewhere")}
    return {**counts, "failed_by_kind": by_kind, "failed": failed[:60]}


# ------------------------------------------------------------------------------------------ summary
def summary_lines(data: dict[str, Any]) -> list[str]:
    """A short Markdown summary of the JSON (what a README's GPU column needs), for the log."""
    env = data.get("environment", {})
    sec = data.get("sections", {})
    out = [f"## GPU check: {env.get('device_name', data.get('device'))}, torch {env.get('torch')}, "
           f"CUDA {env.get('cuda')}, transformers {env.get('packages', {}).get('transformers')}, "
           f"trl {env.get('packages', {}).get('trl')}", "", "| section | status | figures |", "|---|---|---|"]
    for name, e in sec.items():
        figs = ""
        if name == "bf16" and "losses" in e:
            figs = "; ".join(f"{k}: bounds {v['bounds_identical']}/{e['batches']}, loss {v['loss_within_tol']}, "
                             f"grad {v['grad_within_tol']}, max loss err {v['max_loss_err']:.2g}"
                             for k, v in e["losses"].items())
        elif name == "determinism" and "cases" in e:
            figs = ", ".join(f"{k} {'equal' if v['bitwise_equal'] else v.get('error', 'differs')}"
                             for k, v in e["cases"].items())
        elif name == "compile" and "cases" in e:
            figs = ", ".join(f"{k}: {v.get('graph_breaks')} breaks, matches eager {v.get('matches_eager')}"
                             for k, v in e["cases"].items())
        elif name == "syncs" and "cases" in e:
            figs = ", ".join(f"{k}: {v['in_loss_code']}" for k, v in e["cases"].items()) + " (syncs in loss code)"
        elif name == "bench_losses" and "rows" in e:
            figs = ", ".join(f"{r['case']} {r['dtype']} {r['median_ms']:.2f} ms ({r['ratio_to_plain']:.2f}x)"
                             for r in e["rows"])
        elif name == "bench_trainer" and "rows" in e:
            figs = ", ".join(f"{r['trainer']}: step {r['train_step_ms']:.0f} ms ({r['train_vs_trl']:.3f}x), "
                             f"loss+bwd {r['loss_backward_ms']:.1f} ms ({r['loss_vs_trl']:.3f}x)" for r in e["rows"])
        elif name.startswith("pytest") and "tests" in e:
            figs = (f"{e['passed']}/{e['tests']} passed, {e['skipped']} skipped, failed by kind "
                    f"{e.get('failed_by_kind', e.get('failed'))}")
        elif e.get("reason") or e.get("error"):
            figs = str(e.get("reason") or e.get("error"))[:160]
        out.append(f"| {name} | {e.get('status')} | {figs} |")
    return out


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    """Run the sections (all, or ``--only``) and write the JSON; without CUDA print why and exit 0."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (the CUDA-independent sections)")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run of every code path)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--out-dir", default=str(REPO / "results" / "gpu"))
    ap.add_argument("--copy-to", default=os.environ.get("OUT") or None,
                    help="also copy the JSON and logs here (default: $OUT, the device tool's folder)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget; later sections skip")
    ap.add_argument("--compile-backend", default=None, help="default: inductor on cuda, aot_eager on cpu")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(NEEDS_CUDA_MESSAGE)
        return 0
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    wanted = [s for s in SECTIONS if not only or s in only]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "gpu_check.json" if device.type == "cuda" else f"gpu_check_{device.type}.json"
    report = Report(out_dir / name, Path(args.copy_to) if args.copy_to else None, args.budget_s)
    q = args.quick
    report.data.update(quick=q, sections_requested=wanted, device=str(device))
    backend = args.compile_backend or ("inductor" if device.type == "cuda" else "aot_eager")
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.cuda.set_device(device)

    for sec in wanted:
        if sec == "env":
            with report.section("env") as e:
                report.data["environment"] = environment(device)
                e["device_name"] = report.data["environment"].get("device_name")
        elif sec == "bf16":
            with report.section("bf16", min_s=10) as e:
                if e is not None:
                    e.update(compare_bf16_fp32(device, n_batches=5 if q else 100, max_b=4 if q else 32,
                                               max_t=64 if q else 512))
                    e["status"] = "ok" if e["ok"] else "fail"
        elif sec == "determinism":
            with report.section("determinism", min_s=10) as e:
                if e is not None:
                    e.update(determinism_check(device, n_batches=1 if q else 3, b=4 if q else 32, t=64 if q else 1024))
                    e["status"] = "ok" if e["ok"] else "fail"
        elif sec == "compile":
            with report.section("compile", min_s=30) as e:
                if e is not None:
                    e.update(compile_check(device, backend, b=4 if q else 16, t=32 if q else 256))
                    e["status"] = "ok" if e["ok"] else "fail"
        elif sec == "syncs":
            with report.section("syncs", min_s=10) as e:
                if e is not None:
                    if not on_cuda:
                        e.update(status="skipped", reason="torch.cuda.set_sync_debug_mode needs CUDA")
                    else:
                        e.update(sync_check(device, b=16, t=1024))
                        e["status"] = "ok" if e["ok"] else "fail"
        elif sec == "bench_losses":
            with report.section("bench_losses", min_s=20) as e:
                if e is not None:
                    e.update(bench_losses(device, b=4 if q else 256, t=256 if q else 8192, repeats=3 if q else 20))
        elif sec in ("pytest_fp32", "pytest_bf16"):
            dt = sec.split("_")[1]
            reserve = 200 if sec == "pytest_fp32" and "bench_trainer" in wanted else 15
            with report.section(sec, min_s=60) as e:
                if e is not None:
                    if not on_cuda:
                        e.update(status="skipped", reason="the CPU run of the tests is `bash scripts/test.sh`")
                    else:
                        limit = min(240.0 if dt == "fp32" else 180.0, report.remaining() - reserve)
                        paths = TEST_PATHS if dt == "fp32" else BF16_TEST_PATHS
                        e.update(run_pytest(dt, paths, max(limit, 30.0), out_dir, args.device))
                        report.add_file(out_dir / e["log"])
                        e["status"] = "ok" if e.get("returncode") == 0 else "fail"
        elif sec == "bench_trainer":
            with report.section("bench_trainer", min_s=150 if on_cuda and not q else 0) as e:
                if e is not None:
                    with tempfile.TemporaryDirectory() as tmp:
                        e.update(bench_trainer(device, TrainerBenchConfig.quick() if q else TrainerBenchConfig(),
                                               Path(tmp)))
                    gc.collect()
                    if on_cuda:
                        torch.cuda.empty_cache()  # for the pytest run after it
        elif sec == "vllm":
            with report.section("vllm") as e:
                e.update(status="skipped", reason=VLLM_SKIP_MESSAGE, vllm=_version("vllm"))
                print(VLLM_SKIP_MESSAGE, flush=True)
    report.data["finished_utc"] = _utc_now()
    report.write()
    summary = {k: v.get("status") for k, v in report.data["sections"].items()}
    print("\n".join(["", *summary_lines(report.data), ""]))
    print(f"[gpu_check] wrote {report.path}: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
