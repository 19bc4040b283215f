"""``adaclip-rl eval``: evaluate a model on math/code benchmarks (avg@k, unbiased pass@k, maj@k).

Example::

    adaclip-rl eval --model out/checkpoint-500 --benchmarks aime24,math500 --protocol open-r1 \\
        --out results/eval/ckpt500

``--protocol`` (``r1``, ``open-r1``, ``qwen-math``, ``dapo``, ``archer``) sets the sampling, ``n``
per benchmark, the budget, stop strings, system prompt and prompt template of a published
protocol (see docs/evaluation.md); each explicit flag overrides the preset for every benchmark.

Every argument is checked (benchmark names and files, ``k <= n``, sampling values, the model
path) before any model is loaded; a bad one prints ``adaclip-rl eval: error: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from adaclip_rl.data import resolve_data_dir
from adaclip_rl.eval.backends import BACKENDS, SamplingConfig
from adaclip_rl.eval.benchmarks import BENCHMARKS, parse_benchmark_specs
from adaclip_rl.eval.protocols import PROTOCOLS, resolve_settings
from adaclip_rl.eval.runner import check_model_ref, evaluate

PROG = "adaclip-rl eval"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate a model on math/code benchmarks with avg@k, unbiased pass@k and maj@k.",
        epilog=f"benchmarks: {', '.join(sorted(BENCHMARKS))}. "
        "Use NAME=FILE.jsonl to read one benchmark from a local JSON-lines file.",
    )
    p.add_argument("--model", required=True, help="model directory (or Hub id)")
    p.add_argument("--benchmarks", required=True, help="comma-separated names, e.g. aime24,math500")
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), default=None,
                   help="preset of a published evaluation protocol (sampling, n per benchmark, budget, stop strings, "
                        "system prompt, prompt template); explicit flags override it")
    p.add_argument("--n", type=int, default=None, help="samples per problem (default: the preset's, else 1)")
    p.add_argument("--k", default=None, help="comma-separated budgets for pass@k/maj@k in the table (each <= n)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature, 0 = greedy (default: the preset's, else 0.6)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus top-p in (0, 1] (default: the preset's, else 0.95)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generation budget per sample (default: the preset's, else 4096)")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop string (repeat for several; replaces the preset's)")
    p.add_argument("--system-prompt", default=None, help="system message (replaces the preset's)")
    p.add_argument("--prompt-template", default=None, help="user-message template with a {problem} slot")
    p.add_argument("--truncated-zero", action=argparse.BooleanOptionalAction, default=None,
                   help="score samples that hit --max-new-tokens 0 (default: the preset's, else off)")
    p.add_argument("--scorer", choices=("adaclip", "lighteval"), default=None,
                   help="math answer check: adaclip (boxed-first, every box) or lighteval (its extractive match, "
                        "as open-r1 runs it); default: the preset's, else adaclip")
    p.add_argument("--code-timeout", type=float, default=None,
                   help="per-problem test time limit of code benchmarks, s (default: HumanEval's official 3)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--backend", choices=BACKENDS, default="vllm", help="generation backend (default vllm)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems of each benchmark")
    p.add_argument("--data-dir", default=None,
                   help="directory of local JSON-lines files replacing the Hub; 'bundled' = the copies shipped "
                        "with adaclip-rl (MATH-500, AIME 2024, AMC 2023, GSM8K test, HumanEval), for offline use")
    p.add_argument("--out", default=None, help="output directory (default results/eval/<model name>)")
    p.add_argument("--chat-template", choices=("auto", "on", "off"), default="auto",
                   help="apply the tokenizer's chat template (auto: when it has one)")
    p.add_argument("--batch-size", type=int, default=32, help="transformers backend: sequences per generate call")
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM context length (default: the model's)")
    p.add_argument("--dtype", default="auto", help="model dtype (auto, bfloat16, float16, float32)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM GPU memory fraction")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return p


def _parse_ks(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ValueError(f"--k must be comma-separated integers; got {text!r}") from exc
    if not ks:
        raise ValueError("--k is empty")
    return ks


def validate(args: argparse.Namespace) -> list[int] | None:
    """Check every argument without loading a model; returns the parsed ``--k`` list.

    Raises:
        ValueError / FileNotFoundError: with a message naming the argument.
    """
    specs = parse_benchmark_specs(args.benchmarks)
    ks = _parse_ks(args.k)
    if ks is not None and args.n is not None:
        bad = [k for k in ks if not 1 <= k <= args.n]
        if bad:
            raise ValueError(f"--k {','.join(map(str, bad))} exceeds --n {args.n} (need 1 <= k <= n)")
    for bench, _ in specs:
        st = resolve_settings(bench.name, args.protocol, overrides(args))
        try:
            SamplingConfig(n=st.n, temperature=st.temperature, top_p=st.top_p, max_new_tokens=st.max_new_tokens,
                           seed=args.seed, stop=st.stop)
        except ValueError as exc:
            msg = str(exc)
            for field, flag in (("max_new_tokens", "--max-new-tokens"), ("top_p", "--top-p")):
                msg = msg.replace(field, flag)
            raise ValueError(re.sub(r"^(n|temperature|seed|stop) ", r"--\1 ", msg)) from None
        if ks is not None:
            bad = [k for k in ks if not 1 <= k <= st.n]
            if bad:
                raise ValueError(f"--k {','.join(map(str, bad))} exceeds n={st.n} of {bench.name} (need 1 <= k <= n)")
    if args.prompt_template is not None and "{problem}" not in args.prompt_template:
        raise ValueError(f"--prompt-template must hold a {{problem}} slot; got {args.prompt_template!r}")
    if args.code_timeout is not None and not args.code_timeout > 0:
        raise ValueError(f"--code-timeout must be > 0; got {args.code_timeout}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1; got {args.limit}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {args.batch_size}")
    args.data_dir = resolve_data_dir(args.data_dir)
    if args.data_dir is not None:
        if not Path(args.data_dir).is_dir():
            raise FileNotFoundError(f"--data-dir {args.data_dir!r} does not exist")
        for bench, path in specs:
            if path is None:
                bench.find_local_file(args.data_dir)
    check_model_ref(args.model)
    return ks


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """The explicit sampling/prompt flags as :func:`~adaclip_rl.eval.protocols.resolve_settings`
    overrides (None = not given)."""
    return {"n": args.n, "temperature": args.temperature, "top_p": args.top_p,
            "max_new_tokens": args.max_new_tokens, "stop": args.stop, "system_prompt": args.system_prompt,
            "template": args.prompt_template, "truncated_zero": args.truncated_zero, "scorer": args.scorer}


def _default_out(model: str) -> str:
    name = re.sub(r"[^\w.-]+", "_", os.path.normpath(model).strip("/")) or "model"
    return os.path.join("results", "eval", name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``adaclip-rl eval``; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse usage errors and --help
        return int(exc.code or 0)
    try:
        ks = validate(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    backend_kwargs: dict[str, object] = {"dtype": args.dtype}
    if args.backend == "transformers":
        backend_kwargs["batch_size"] = args.batch_size
    else:
        backend_kwargs["max_model_len"] = args.max_model_len
        backend_kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization
    out = args.out or _default_out(args.model)
    summary = evaluate(
        args.model,
        args.benchmarks,
        backend=args.backend,
        protocol=args.protocol,
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        stop=args.stop,
        system_prompt=args.system_prompt,
        prompt_template=args.prompt_template,
        truncated_zero=args.truncated_zero,
        scorer=args.scorer,
        code_timeout_s=args.code_timeout,
        seed=args.seed,
        limit=args.limit,
        out_dir=out,
        data_dir=args.data_dir,
        chat_template={"auto": None, "on": True, "off": False}[args.chat_template],
        ks=ks,
        backend_kwargs=backend_kwargs,
    )
    print(summary["table"])
    print(f"records and summary written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
