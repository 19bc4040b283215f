"""``adaclip-rl demo``: GRPO vs BAPO vs Archer on stale data, on a tiny model, on this CPU.

The demo is the most informative slice of the staleness study (:mod:`adaclip_rl.study.staleness`,
``docs/staleness_study.md``) that fits in a few minutes on 2 cores:

1. builds a byte-level BPE tokenizer and a tiny Qwen2 (vLLM-compatible) for 3-digit addition with a
   column-by-column scratchpad (~31 completion tokens, exact final answer), and gives it a short
   supervised warm start (weak on purpose, so RL has room);
2. trains from that one warm start, with identical budgets and seeds: GRPO clip [0.8, 1.2]
   on-policy (1 optimizer step per generation batch: the reference), then GRPO, BAPO and Archer
   (paper defaults) at ``--level`` (default ``s16``: every generation batch feeds 16 optimizer
   steps, so most steps train on stale samples and the clip bounds decide what is learned);
3. evaluates every model on held-out problems (avg@k, pass@k at temperature 1, greedy);
4. writes ``results.json``, ``results.md`` (mean ± sd over seeds) and ``results.png`` (accuracy and
   entropy vs staleness; reward and entropy curves at the stale level).

The terminal shows a progress bar per run and one summary line per run (in a log file: a plain
progress line every tenth of a run instead of the bars); every run's logged
metrics are in ``<out>/train/<method>-<level>-seed<seed>/metrics.jsonl``. ``--quick`` is a
one-minute smoke run of the same stages (few steps and problems, one seed); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from .console import filter_pinned_vllm_warning, is_interactive

logger = logging.getLogger(__name__)
METHODS = ("grpo", "bapo", "archer")
REFERENCE = ("grpo", "s1")  # on-policy GRPO: what staleness costs
# --quick: every stage of the demo, in about a minute
QUICK = {"warm_steps": 40, "rl_steps": 4, "n_test": 16, "seeds": "0", "k": 2}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from .study.staleness import LEVELS

    ap = argparse.ArgumentParser(prog="adaclip-rl demo", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/demo", help="output directory (finished runs there are reused)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated: grpo, dapo, bapo, archer")
    ap.add_argument("--level", default="s16", choices=list(LEVELS),
                    help="staleness level of the compared runs: s<n> = n optimizer steps per generation batch; "
                         "replay = 50%% replayed groups (needs vLLM; the level where GRPO degrades in the study)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated RL seeds, e.g. 0,1,2")
    ap.add_argument("--warm-steps", type=int, default=400, help="supervised warm-start steps")
    ap.add_argument("--rl-steps", type=int, default=128, help="RL optimizer steps per run (same for every run)")
    ap.add_argument("--n-test", type=int, default=200, help="held-out problems")
    ap.add_argument("--k", type=int, default=4, help="samples per problem for avg@k / pass@k")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--no-plot", action="store_true", help="skip results.png")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: {QUICK['warm_steps']} warm-start steps, {QUICK['rl_steps']} RL steps, "
                         f"{QUICK['n_test']} held-out problems, seed {QUICK['seeds']} (numbers mean nothing)")
    args = ap.parse_args(argv)
    if args.quick:
        args.warm_steps, args.rl_steps, args.n_test, args.seeds, args.k = (
            QUICK["warm_steps"], QUICK["rl_steps"], QUICK["n_test"], QUICK["seeds"], QUICK["k"])
    args.methods = [m for m in args.methods.split(",") if m]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    return args


def main(argv: list[str] | None = None) -> int:
    filter_pinned_vllm_warning()
    for key, value in (("TRL_EXPERIMENTAL_SILENCE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"),
                       ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    from .study.staleness import StudyConfig, prepare, run_study

    hf_logging.set_verbosity_error()
    cells = [REFERENCE] + [(m, args.level) for m in args.methods if (m, args.level) != REFERENCE]
    try:
        cfg = StudyConfig(out=args.out, cells=cells, seeds=args.seeds, max_steps=args.rl_steps,
                          warm_steps=args.warm_steps, n_test=args.n_test, k=args.k, threads=args.threads,
                          plot=not args.no_plot)
    except ValueError as e:
        print(f"adaclip-rl demo: error: {e}")
        return 2
    t0 = time.perf_counter()
    print(f"[1/3] tiny model, tokenizer and supervised warm start ({args.warm_steps} steps) -> {args.out}/warm")
    import torch

    torch.set_num_threads(args.threads)
    bars = is_interactive()  # progress bars on a terminal; in a log file, plain lines only
    prepare(cfg, progress=bars)  # the warm start; run_study reuses it
    what = "50% replayed groups" if args.level == "replay" else f"{args.level[1:]} optimizer steps per generation batch"
    print(f"[2/3] RL from the warm start, {args.rl_steps} steps each: GRPO on-policy (s1), then "
          f"{', '.join(args.methods)} at {args.level} ({what}) x seeds {args.seeds}")
    result = run_study(cfg, stem="results", progress=bars)
    print("[3/3] results (mean ± sd over seeds)")
    print(Path(args.out, "results.md").read_text().split("\n\n**entropy")[0])
    for method, res in result["degradation"].items():
        for level, cmp in res["by_level"].items():
            acc = cmp.get("avg@k")
            if acc:
                print(f"{method}: held-out avg@{args.k} {res['from']} -> {level}: {-acc['drop']:+.3f} "
                      f"(pooled seed sd {acc['pooled_sd']:.3f})")
    out = Path(args.out)
    print(f"results: {out / 'results.json'}, {out / 'results.md'}"
          + ("" if args.no_plot else f", plot {out / 'results.png'}")
          + f"; per-step metrics: {out}/train/<run>/metrics.jsonl; wall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
