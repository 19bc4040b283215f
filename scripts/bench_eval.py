"""Evaluation throughput: generated tokens/s with vLLM vs transformers on the tiny model.

Both backends get the same prompts (real benchmark problems rendered with the chat template),
the same ``n``, ``max_new_tokens``, temperature, top-p and dtype, in one run. By default
``ignore_eos`` is on so both generate exactly ``prompts x n x max_new_tokens`` tokens (a random
tiny model would otherwise stop at arbitrary points). Engine/model start-up is timed separately
and excluded from tokens/s; each backend is warmed up once, then timed ``--repeats`` times (the
median is reported).

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

from adaclip_rl.eval.backends import SamplingConfig, make_backend  # noqa: E402
from adaclip_rl.eval.benchmarks import get_benchmark  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "results" / "bench_eval.json"), help="JSON output path")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"), help="benchmark JSON-lines dir")
    p.add_argument("--benchmark", default="math500", help="where the prompts come from")
    p.add_argument("--backends", default="transformers,vllm", help="comma-separated, run in this order")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--dtype", default="float32", help="same dtype for both backends (vLLM on CPU would pick bf16)")
    p.add_argument("--hf-batch-size", type=int, default=32, help="sequences per generate call (0 = all at once)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-ignore-eos", action="store_true", help="let samples stop at EOS")
    p.add_argument("--seed", type=int, default=0)
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


def bench_backend(kind: str, model_dir: Path, prompts: list[str], params: SamplingConfig,
                  args: argparse.Namespace) -> dict[str, Any]:
    """Start, warm up and time one backend; returns its measurements."""
    total_seqs = len(prompts) * params.n
    kwargs: dict[str, Any] = {"dtype": args.dtype, "progress": False}
    if kind == "transformers":
        kwargs["batch_size"] = args.hf_batch_size or total_seqs
        kwargs["device"] = "cpu"
    else:
        kwargs["max_model_len"] = 2048
    backend = make_backend(kind, str(model_dir), **kwargs)
    try:
        t0 = time.perf_counter()
        backend.start(params)
        startup = time.perf_counter() - t0
        backend.generate(prompts[:2], SamplingConfig(n=1, temperature=1.0, max_new_tokens=4))  # warm-up
        runs = []
        for r in range(args.repeats):
            p = SamplingConfig(**{**params.__dict__, "seed": params.seed + r})
            t0 = time.perf_counter()
            out = backend.generate(prompts, p)
            dt = time.perf_counter() - t0
            tokens = sum(c.num_tokens for row in out for c in row)
            runs.append({"seconds": dt, "generated_tokens": tokens, "tokens_per_s": tokens / dt})
        med = statistics.median(run["tokens_per_s"] for run in runs)
        return {"backend": kind, "startup_s": startup, "runs": runs, "tokens_per_s_median": med,
                "settings": backend.describe()}
    finally:
        backend.close()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a table and write the JSON report."""
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoTokenizer

    data_dir = Path(args.data_dir)
    params = SamplingConfig(n=args.n, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, seed=args.seed, ignore_eos=not args.no_ignore_eos)
    results = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "tiny", data_dir)
        tok = AutoTokenizer.from_pretrained(model_dir)
        bench = get_benchmark(args.benchmark)
        problems, source = bench.load(data_dir=data_dir, limit=args.num_prompts)
        prompts = [bench.render_prompt(p, tok).text for p in problems]
        prompt_tokens = [len(tok(x)["input_ids"]) for x in prompts]
        for kind in [b.strip() for b in args.backends.split(",") if b.strip()]:
            print(f"[bench_eval] {kind} ...", flush=True)
            results.append(bench_backend(kind, model_dir, prompts, params, args))

    report = {
        "what": "eval generation throughput, tiny Qwen2 (head_dim 64), same prompts/params for every backend",
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "gpu": torch.cuda.is_available(),
                    "loadavg_1m_before_after": [load_before[0], os.getloadavg()[0]]},
        "protocol": {**params.__dict__, "num_prompts": len(prompts), "benchmark": args.benchmark,
                     "dataset_sha256": source.get("sha256"), "dtype": args.dtype, "repeats": args.repeats,
                     "prompt_tokens_mean": sum(prompt_tokens) / len(prompt_tokens)},
        "results": results,
    }
    if len(results) == 2 and results[1]["tokens_per_s_median"] and results[0]["tokens_per_s_median"]:
        report["ratio_second_over_first"] = results[1]["tokens_per_s_median"] / results[0]["tokens_per_s_median"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n{len(prompts)} prompts x n={params.n} x {params.max_new_tokens} new tokens "
          f"(mean prompt {report['protocol']['prompt_tokens_mean']:.0f} tokens), dtype {args.dtype}, "
          f"{os.cpu_count()} CPU cores, load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"{'backend':<14}{'startup s':>10}{'gen s (median)':>16}{'tokens':>9}{'tokens/s':>10}")
    for r in results:
        secs = statistics.median(x["seconds"] for x in r["runs"])
        print(f"{r['backend']:<14}{r['startup_s']:>10.1f}{secs:>16.2f}{r['runs'][0]['generated_tokens']:>9d}"
              f"{r['tokens_per_s_median']:>10.0f}")
    if "ratio_second_over_first" in report:
        print(f"{results[1]['backend']} / {results[0]['backend']}: {report['ratio_second_over_first']:.2f}x")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
