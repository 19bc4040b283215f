"""Benchmark the policy losses: forward + backward time at 64 x 4096 tokens.

Plain clip, BAPO and Archer are timed side by side in one run and reported as ratios to the
plain clip: wall-clock medians, and medians of the process's CPU time (all threads), which a busy
machine disturbs far less (at one thread it is the wall time without the waits for a core). The BAPO bound search is also timed alone in two shapes: our vectorised search (one
reduction, no host sync) and a loop over candidates in the official code's shape (one
all-reduce and one ``.item()`` host sync per candidate). A 1-process gloo group makes the
all-reduces real collectives.

    python scripts/bench_losses.py [--batch 64 --tokens 4096 --repeats 20 --out results/bench_losses.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist

from adaclip_rl.losses import (
    ArcherConfig,
    BAPOConfig,
    aggregate_loss,
    aggregation_weights,
    archer_loss,
    archer_token_classes,
    bapo_loss,
    bapo_search,
    clipped_surrogate,
)


def make_inputs(b: int, t: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(t // 4, t + 1, (b,), generator=gen)
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).float()
    logp = -torch.rand(b, t, generator=gen) * 2
    old = logp + 0.3 * torch.randn(b, t, generator=gen)  # stale behaviour policy
    ref = logp + 0.1 * torch.randn(b, t, generator=gen)
    adv = torch.randn(b, generator=gen)
    entropy = torch.rand(b, t, generator=gen) * 3
    out = dict(logp=logp, old=old, ref=ref, adv=adv, mask=mask, entropy=entropy)
    return {k: v.to(device) for k, v in out.items()}


def _all_reduce(v: torch.Tensor) -> torch.Tensor:
    dist.all_reduce(v)
    return v


def step_plain(x):
    logp = x["logp"].clone().requires_grad_()
    ratio = torch.exp(logp - x["old"])
    loss = aggregate_loss(clipped_surrogate(ratio, x["adv"], 0.8, 1.2), x["mask"], "dapo")
    loss.backward()
    return loss


BAPO_CFG, ARCHER_CFG = BAPOConfig(), ArcherConfig()


def step_bapo(x, cfg=BAPO_CFG):
    logp = x["logp"].clone().requires_grad_()
    ratio = torch.exp(logp - x["old"])
    # the statistic takes the weight the aggregated loss applies (here: dapo's token mean)
    per_token, _ = bapo_loss(ratio, x["adv"], aggregation_weights(x["mask"], "dapo"), cfg, reduce_fn=_all_reduce)
    loss = aggregate_loss(per_token, x["mask"], "dapo")
    loss.backward()
    return loss


def step_archer(x, cfg=ARCHER_CFG):
    logp = x["logp"].clone().requires_grad_()
    ratio = torch.exp(logp - x["old"])
    per_token, res = archer_loss(ratio, x["adv"], x["mask"], x["entropy"], cfg, logp=logp, ref_logp=x["ref"])
    loss = aggregate_loss(per_token, x["mask"], "dapo") + res.kl_term
    loss.backward()
    return loss


ARCHER_NO_KL = ArcherConfig(low_kl=0.0)


def step_archer_no_kl(x):
    """Archer without its KL term: the clip-width part alone (breakdown row)."""
    return step_archer(x, ARCHER_NO_KL)


def archer_classes_only(x):
    """Per-response entropy quantile and token classes alone (forward, no gradient)."""
    return archer_token_classes(x["entropy"], x["mask"], ARCHER_CFG.quantile)


def search_vectorised(x, cfg=BAPO_CFG):
    ratio = torch.exp(x["logp"] - x["old"])
    return bapo_search(ratio, x["adv"], aggregation_weights(x["mask"], "dapo"), cfg, reduce_fn=_all_reduce).clip_high


def search_loop(x, cfg=BAPO_CFG):
    """The official recipe's shape: per candidate, recompute P and N, all-reduce, .item()."""
    ratio = torch.exp(x["logp"] - x["old"])
    adv = x["adv"].unsqueeze(1).expand_as(ratio)
    m = x["mask"]
    pos, neg = (adv > 0) & (m > 0), (adv < 0) & (m > 0)
    low, high = cfg.low_grid, cfg.high_grid
    for c_low, c_high in ((low[i], high[j]) for i, j in cfg.path()):
        p = (adv * ratio * (pos & (ratio < c_high))).sum()
        n = (-adv * ratio * (neg & (ratio > c_low) & (ratio < cfg.dual_clip))).sum()
        stats = _all_reduce(torch.stack([p, n]))
        p_, n_ = stats.tolist()  # host sync per candidate
        if p_ + n_ == 0 or p_ / (p_ + n_) >= cfg.target:
            break
    return c_high


CPU_TIMES: dict[object, list[float]] = {}  # fn -> process CPU seconds per call, beside the wall times


def timeit(fn, x, repeats: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        if x["logp"].is_cuda:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        fn(x)
        if x["logp"].is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        CPU_TIMES.setdefault(fn, []).append(time.process_time() - c0)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default="results/bench_losses.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29513")
    dist.init_process_group("gloo", rank=0, world_size=1)
    x = make_inputs(args.batch, args.tokens, args.device)

    # BAPO's search on these inputs (stale ratios, random advantages) runs far along the path,
    # so the loop shape pays many candidates: report how many.
    res = bapo_search(torch.exp(x["logp"] - x["old"]), x["adv"], x["mask"])
    cases = {
        "plain clip": step_plain,
        "BAPO": step_bapo,
        "Archer": step_archer,
        "  Archer without KL": step_archer_no_kl,
        "  Archer token classes only": archer_classes_only,
    }
    # interleave the three so drift in machine load hits all of them alike
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            samples[name] += timeit(fn, x, 1, warmup=1 if not samples[name] else 0)
    search = {"vectorised search": timeit(search_vectorised, x, args.repeats),
              "loop search (official shape)": timeit(search_loop, x, args.repeats)}

    med = {k: statistics.median(v) for k, v in {**samples, **search}.items()}
    cpu = {name: statistics.median(CPU_TIMES[fn]) for name, fn in cases.items()}
    base, vec = med["plain clip"], med["vectorised search"]
    rows = []
    print(f"\nPolicy losses, forward+backward, {args.batch} x {args.tokens} tokens, device={args.device}, "
          f"threads={torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"BAPO search stopped at path index {res.index.item()} (reached={bool(res.reached)})\n")
    print(f"{'case':<30}{'median ms':>12}{'ratio':>10}{'CPU ms':>10}{'ratio':>10}")
    for name in samples:
        ratio, cpu_ratio = med[name] / base, cpu[name] / cpu["plain clip"]
        rows.append({"case": name, "median_ms": med[name] * 1e3, "ratio_to_plain": ratio,
                     "cpu_median_ms": cpu[name] * 1e3, "cpu_ratio_to_plain": cpu_ratio})
        print(f"{name:<30}{med[name] * 1e3:>12.2f}{ratio:>9.2f}x{cpu[name] * 1e3:>10.2f}{cpu_ratio:>9.2f}x")
    print(f"\n{'BAPO bound search alone':<30}{'median ms':>12}{'vs vec':>10}")
    for name in search:
        rows.append({"case": name, "median_ms": med[name] * 1e3, "ratio_to_vectorised": med[name] / vec})
        print(f"{name:<30}{med[name] * 1e3:>12.2f}{med[name] / vec:>9.2f}x")
    out = {
        "batch": args.batch, "tokens": args.tokens, "repeats": args.repeats, "device": args.device,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "bapo_path_index": int(res.index), "rows": rows,
        "targets": {"BAPO": 1.1, "Archer": 1.3},
        "met": {"BAPO": med["BAPO"] / base <= 1.1, "Archer": med["Archer"] / base <= 1.3},
        "met_cpu_time": {"BAPO": cpu["BAPO"] / cpu["plain clip"] <= 1.1,
                         "Archer": cpu["Archer"] / cpu["plain clip"] <= 1.3},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")
    dist.destroy_process_group()
    assert all(math.isfinite(r["median_ms"]) for r in rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
