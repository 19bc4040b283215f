"""Evaluation throughput: generated tokens/s with vLLM vs transformers on the tiny model.

Both backends get the same prompts (real benchmark problems rendered with the chat template),
the same ``n``, ``max_new_tokens``, temperature, top-p and dtype, in one run. By default
``ignore_eos`` is on so both generate exactly ``prompts x n x max_new_tokens`` tokens (a random
tiny model would otherwise stop at arbitrary points). Engine/model start-up is timed separately
and excluded from tokens/s; each backend is warmed up once, then the backends are timed in turn
``--repeats`` times (interleaved, so both see the same background load on a shared machine); the
median and the best run are reported.

Both backends get the same number of CPU threads (``--threads``, default ``$OMP_NUM_THREADS`` or
1): torch's intra-op threads for transformers, and ``VLLM_CPU_OMP_THREADS_BIND`` (cores
``0..threads-1``) for the vLLM CPU worker, whose automatic binding would otherwise pick its own
count (on a 2-core machine: one core, the other reserved).

    python scripts/bench_eval.py                      # writes results/bench_eval.json
    python scripts/bench_eval.py --num-prompts 64 --n 8 --max-new-tokens 128 --out /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adaclip_rl.data import BENCHMARK_DIR  # noqa: E402
from adaclip_rl.eval.backends import GenerationBackend, SamplingConfig, make_backend  # noqa: E402
from adaclip_rl.eval.benchmarks import get_benchmark  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "results" / "bench_eval.json"), help="JSON output path")
    p.add_argument("--data-dir", default=str(BENCHMARK_DIR), help="benchmark JSON-lines dir (default: bundled)")
    p.add_argument("--benchmark", default="math500", help="where the prompts come from")
    p.add_argument("--backends", default="transformers,vllm", help="comma-separated, run in this order")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--dtype", default="float32", help="same dtype for both backends (vLLM on CPU would pick bf16)")
    p.add_argument("--hf-batch-size", type=int, default=32, help="sequences per generate call (0 = all at once)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-ignore-eos", action="store_true", help="let samples stop at EOS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per backend (default: $OMP_NUM_THREADS, else 1)")
    return p.parse_args(argv)


def build_model(out_dir: Path, data_dir: Path) -> Path:
    """The tests' tiny model: a Qwen2 with head_dim 64 and a tokenizer trained on benchmark text."""
    from adaclip_rl.tasks.tiny_model import TinyModelSpec, build_tiny_model

    texts: list[str] = []
    for name in ("math500", "gsm8k", "humaneval"):
        bench = get_benchmark(name)
        problems, _ = bench.load(data_dir=data_dir, limit=40)
        texts += [bench.render_prompt(p).text for p in problems]
    return build_tiny_model(out_dir, texts, TinyModelSpec(vocab_size=1024, max_position_embeddings=2048))


def make(kind: str, model_dir: Path, total_seqs: int, args: argparse.Namespace) -> GenerationBackend:
    """One backend with the benchmark's settings (same dtype for both)."""
    kwargs: dict[str, Any] = {"dtype": args.dtype, "progress": False}
    if kind == "transformers":
        kwargs["batch_size"] = args.hf_batch_size or total_seqs
        kwargs["device"] = "cpu"
    else:
        kwargs["max_model_len"] = 2048
    return make_backend(kind, str(model_dir), **kwargs)


def run_interleaved(kinds: list[str], model_dir: Path, prompts: list[str], params: SamplingConfig,
                    args: argparse.Namespace) -> list[dict[str, Any]]:
    """Start and warm up every backend, then time them in turn (A, B, A, B, ...) so that both see the
    same background load on a shared machine; start-up is timed separately."""
    backends = [make(k, model_dir, len(prompts) * params.n, args) for k in kinds]
    results: list[dict[str, Any]] = []
    try:
        for kind, backend in zip(kinds, backends, strict=True):
            t0 = time.perf_counter()
            backend.start(params)
            startup = time.perf_counter() - t0
            backend.generate(prompts[:2], SamplingConfig(n=1, temperature=1.0, max_new_tokens=4))  # warm-up
            results.append({"backend": kind, "startup_s": startup, "runs": []})
        for r in range(args.repeats):
            p = SamplingConfig(**{**params.__dict__, "seed": params.seed + r})
            for res, backend in zip(results, backends, strict=True):
                print(f"[bench_eval] repeat {r + 1}/{args.repeats}: {res['backend']}", flush=True)
                t0 = time.perf_counter()
                out = backend.generate(prompts, p)
                dt = time.perf_counter() - t0
                tokens = sum(c.num_tokens for row in out for c in row)
                res["runs"].append({"seconds": dt, "generated_tokens": tokens, "tokens_per_s": tokens / dt})
        for res, backend in zip(results, backends, strict=True):
            tps = [x["tokens_per_s"] for x in res["runs"]]
            res["tokens_per_s_median"] = statistics.median(tps)
            res["tokens_per_s_best"] = max(tps)
            res["settings"] = backend.describe()
    finally:
        for backend in backends:
            backend.close()
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a table and write the JSON report."""
    args = parse_args(argv)
    threads = args.threads if args.threads is not None else int(os.environ.get("OMP_NUM_THREADS") or 1)
    if threads < 1:
        raise SystemExit(f"--threads must be >= 1; got {threads}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # vLLM's CPU worker (a spawned process) reads this when its engine starts.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{threads - 1}" if threads > 1 else "0")
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(threads)

    data_dir = Path(args.data_dir)
    params = SamplingConfig(n=args.n, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, seed=args.seed, ignore_eos=not args.no_ignore_eos)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "tiny", data_dir)
        tok = AutoTokenizer.from_pretrained(model_dir)
        bench = get_benchmark(args.benchmark)
        problems, source = bench.load(data_dir=data_dir, limit=args.num_prompts)
        prompts = [bench.render_prompt(p, tok).text for p in problems]
        prompt_tokens = [len(tok(x)["input_ids"]) for x in prompts]
        kinds = [b.strip() for b in args.backends.split(",") if b.strip()]
        results = run_interleaved(kinds, model_dir, prompts, params, args)

    report = {
        "what": "eval generation throughput, tiny Qwen2 (head_dim 64), same prompts/params for every backend",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.is_available(),
                    "vllm_cpu_omp_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
                    "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
                    "loadavg_1m_before_after": [load_before[0], os.getloadavg()[0]],
                    "loadavg_1_5_15m_after": list(os.getloadavg()),
                    "wall_s": time.perf_counter() - t_start},
        "protocol": {**params.__dict__, "num_prompts": len(prompts), "benchmark": args.benchmark,
                     "dataset_sha256": source.get("sha256"), "dtype": args.dtype, "repeats": args.repeats, "threads_per_backend": threads,
                     "prompt_tokens_mean": sum(prompt_tokens) / len(prompt_tokens)},
        "results": results,
    }
    if len(results) == 2 and results[1]["tokens_per_s_median"] and results[0]["tokens_per_s_median"]:
        report["ratio_second_over_first"] = results[1]["tokens_per_s_median"] / results[0]["tokens_per_s_median"]
        report["ratio_best_second_over_first"] = results[1]["tokens_per_s_best"] / results[0]["tokens_per_s_best"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n{len(prompts)} prompts x n={params.n} x {params.max_new_tokens} new tokens "
          f"(mean prompt {report['protocol']['prompt_tokens_mean']:.0f} tokens), dtype {args.dtype}, "
          f"{threads} thread(s) per backend on {os.cpu_count()} CPU cores, "
          f"load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"{'backend':<14}{'startup s':>10}{'gen s (median)':>16}{'tokens':>9}{'tok/s median':>14}"
          f"{'tok/s best':>12}  all runs")
    for r in results:
        secs = statistics.median(x["seconds"] for x in r["runs"])
        runs = ", ".join(f"{x['tokens_per_s']:.0f}" for x in r["runs"])
        print(f"{r['backend']:<14}{r['startup_s']:>10.1f}{secs:>16.2f}{r['runs'][0]['generated_tokens']:>9d}"
              f"{r['tokens_per_s_median']:>14.0f}{r['tokens_per_s_best']:>12.0f}  [{runs}]")
    if "ratio_second_over_first" in report:
        print(f"{results[1]['backend']} / {results[0]['backend']} (medians): {report['ratio_second_over_first']:.2f}x, "
              f"(best): {report['ratio_best_second_over_first']:.2f}x")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
