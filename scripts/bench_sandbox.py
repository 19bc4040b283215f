"""Throughput of the reward verifiers: the code sandbox and the Math-Verify worker pool.

Measures, on this machine:

* ``sandbox_trivial``: ``run_python("pass")`` runs per second (launch + namespaces + teardown);
* ``humaneval_canonical``: HumanEval canonical solutions judged per second (two sandboxed
  processes each: candidate and judge), all expected to pass;
* ``humaneval_empty``: the same problems with ``pass`` bodies (all expected to fail);
* per-run peak memory of the HumanEval runs (candidate and judge), from the per-run cgroups;
* ``math_verify``: MATH-500 answers verified per second (boxed gold vs itself and a perturbed
  answer), after the worker pool has started.

Prints a table and writes JSON (``--out``, default ``results/bench_sandbox.json``)::

    python scripts/bench_sandbox.py --workers 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adaclip_rl.data import BENCHMARK_DIR  # noqa: E402
from adaclip_rl.rewards.code import build_humaneval_program  # noqa: E402
from adaclip_rl.rewards.math import verify_math_answers  # noqa: E402
from adaclip_rl.sandbox import (  # noqa: E402
    SandboxLimits,
    configure_sandbox,
    run_python,
    run_python_function_tests,
    sandbox_info,
)


def _load(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


_CPU: dict[int, float] = {}  # id(result list) -> CPU seconds it cost


def _parallel(fn: Callable[[Any], Any], items: list, workers: int) -> tuple[list, float]:
    """Map ``fn`` over ``items`` on ``workers`` threads; returns (results, wall seconds).

    The CPU time the work cost (this process plus every reaped child: launchers, candidates,
    judges) is recorded too: on a machine shared with other jobs it is a steadier measure of
    the sandbox's cost than the wall time.
    """
    c0 = os.times()
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        out = list(pool.map(fn, items))
    dt = time.perf_counter() - t0
    c1 = os.times()
    _CPU[id(out)] = sum(c1[i] - c0[i] for i in range(4))  # user, system, children user/system
    return out, dt


def bench_sandbox(rows: list[dict], workers: int, repeats: int) -> dict[str, dict]:
    """Sandbox throughput rows of the result table."""
    res: dict[str, dict] = {}
    trivial, dt = _parallel(lambda _: run_python("pass").ok, list(range(50 * repeats)), workers)
    res["sandbox_trivial"] = {
        "n": len(trivial),
        "ok": sum(trivial),
        "seconds": dt,
        "per_s": len(trivial) / dt,
        "cpu_ms_per_run": 1e3 * _CPU[id(trivial)] / len(trivial),
    }
    for name, body in (("humaneval_canonical", None), ("humaneval_empty", "    pass\n")):
        items = rows * repeats

        def judge(r: dict, b: str | None = body) -> Any:
            program = build_humaneval_program(
                b if b is not None else r["canonical_solution"], r["prompt"], r["entry_point"]
            )
            return run_python_function_tests(
                program, entry_point=r["entry_point"], test=r["test"], prompt=r["prompt"]
            )

        results, dt = _parallel(judge, items, workers)
        res[name] = {
            "n": len(items),
            "passed": sum(bool(x.passed) for x in results),
            "seconds": dt,
            "per_s": len(items) / dt,
            "cpu_ms_per_run": 1e3 * _CPU[id(results)] / len(items),
            **_peaks(results),
        }
    return res


def _peaks(results: list) -> dict[str, float | None]:
    """Largest and median per-run peak memory (MiB) of candidates and judges."""

    def stats(values: list[float]) -> tuple[float | None, float | None]:
        if not values:
            return None, None
        values = sorted(values)
        return values[-1], values[len(values) // 2]

    cand = [r.memory_peak_mb for r in results if getattr(r, "memory_peak_mb", None) is not None]
    judge = [r.judge_memory_peak_mb for r in results if getattr(r, "judge_memory_peak_mb", None) is not None]
    (c_max, c_med), (j_max, j_med) = stats(cand), stats(judge)
    return {
        "candidate_peak_mb_max": c_max,
        "candidate_peak_mb_median": c_med,
        "judge_peak_mb_max": j_max,
        "judge_peak_mb_median": j_med,
    }


def bench_math(rows: list[dict], workers: int) -> dict:
    """Math-Verify throughput (items/s) with a warm pool."""
    golds = [r["answer"] for r in rows]
    verify_math_answers([r"\boxed{1}"], ["1"], max_workers=workers)  # start the pool
    preds = [f"so the answer is $\\boxed{{{g}}}$" for g in golds] + [r"$\boxed{-12345}$"] * len(golds)
    t0 = time.perf_counter()
    scores = verify_math_answers(preds, golds + golds, max_workers=workers)
    dt = time.perf_counter() - t0
    n = len(golds)
    return {
        "n": 2 * n,
        "correct_self": int(sum(s or 0 for s in scores[:n])),
        "accepted_wrong": int(sum(s or 0 for s in scores[n:])),
        "seconds": dt,
        "per_s": 2 * n / dt,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="parallel sandboxes / math workers"
    )
    ap.add_argument("--repeats", type=int, default=1, help="passes over HumanEval")
    ap.add_argument(
        "--data-dir", type=Path, default=BENCHMARK_DIR, help="benchmark JSON-lines dir (default: bundled)"
    )
    ap.add_argument("--out", type=Path, default=REPO / "results" / "bench_sandbox.json")
    ap.add_argument("--skip-math", action="store_true")
    ap.add_argument("--label", default="", help="free text stored in the report (e.g. 'before')")
    args = ap.parse_args(argv)

    configure_sandbox(max_parallel=args.workers)
    info = sandbox_info()
    results = bench_sandbox(_load(args.data_dir / "humaneval.jsonl"), args.workers, args.repeats)
    if not args.skip_math:
        results["math_verify"] = bench_math(_load(args.data_dir / "math500.jsonl"), args.workers)

    print(f"isolation: {info['isolation_mode']}  workers: {args.workers}  cpus: {os.cpu_count()}")
    print(f"{'benchmark':<22}{'n':>6}{'ok/passed':>11}{'seconds':>10}{'per second':>12}{'CPU ms/run':>12}")
    for name, r in results.items():
        ok = r.get("ok", r.get("passed", r.get("correct_self")))
        cpu = r.get("cpu_ms_per_run")
        cpu_text = f"{cpu:>12.1f}" if cpu is not None else f"{'':>12}"
        print(f"{name:<22}{r['n']:>6}{ok:>11}{r['seconds']:>10.2f}{r['per_s']:>12.1f}{cpu_text}")
    limits = SandboxLimits()
    report: dict[str, Any] = {
        "label": args.label,
        "isolation_mode": info["isolation_mode"],
        "limits": {
            "memory_mb": limits.memory_mb,
            "max_processes": limits.max_processes,
            "cpu_cores": getattr(limits, "cpu_cores", None),
            "cpu_time_s": limits.cpu_time_s,
            "wall_time_s": limits.wall_time_s,
            "disk_mb": limits.disk_mb,
            "max_inodes": getattr(limits, "max_inodes", None),
        },
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "load_avg_1m": os.getloadavg()[0],
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
