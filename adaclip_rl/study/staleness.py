"""``adaclip-rl study staleness``: what adaptive clipping does when the training data is stale.

One tiny model, one supervised warm start on 3-digit addition with a scratchpad
(:mod:`adaclip_rl.tasks.scratchpad`, ~31 completion tokens), then four policy losses trained from
it with the same budget (optimizer steps, samples per step, learning rate, seeds):

* ``grpo``: PPO/GRPO clip [0.8, 1.2] (TRL ``epsilon=0.2``);
* ``dapo``: DAPO clip-higher [0.8, 1.28] (``epsilon_high=0.28``, DAPO arXiv 2503.14476 Sec. 3.1);
* ``bapo``: BAPO with the paper's defaults (rho0 = 0.4, c_high 1.2..3.0, c_low 0.6..0.9; arXiv 2510.18927);
* ``archer``: Archer with the paper's defaults (80th entropy percentile per response, clip 1 +/- 0.5
  for high-entropy tokens, 1 +/- 0.2 and k3 KL 0.001 for the others; arXiv 2507.15778 Eq. 5);
* ablations (not in the default set): ``grpo_bh`` / ``dapo_bh``: GRPO / DAPO with their ratio to the
  behaviour policy, as BAPO and Archer clip there by default (``ratio_anchor``); ``bapo_narrow``:
  BAPO's search from GRPO's bounds [0.8, 1.2] ("adaptive" without "wider");

at several staleness levels: ``s<n>`` = ``n`` optimizer steps per generation batch (TRL's
``steps_per_generation``: one batch of ``64 n`` samples feeds ``n`` steps of 64, so step ``i`` of
a batch trains on data ``i`` policy versions old), ``replay`` = half of every batch's groups
from a replay buffer of groups up to 8 versions old, and ``partial`` = partial rollouts (groups
interrupted when a batch has its groups and continued by the next policy version)
(:class:`~adaclip_rl.trainers.offpolicy.OffPolicyGRPOTrainer`, vLLM on CPU). The total number of
samples and optimizer steps is the same at every level. Levels ``s32``, ``s64``, ``s128``,
``s16-lr3e-4``, ``s64-lr2e-4`` and the batch-reuse levels ``s<n>-mu<k>`` (TRL's ``num_iterations``
= k passes over each generation batch) are the candidates of the search for a regime where
clipping acts; ``--warm-steps`` sets the starting accuracy (one warm start per ``--out``).

Each (method, level, seed) run writes ``<out>/runs/<method>-<level>-seed<seed>.json`` and is
skipped when that file exists, so the study can be run in chunks and resumed after an
interruption. ``<out>/<stem>.json`` (all runs, per-cell mean and sd, the degradation check),
``<out>/<stem>.png``, ``<out>/<stem>_premise.png`` (BAPO's premise measures) and ``<out>/<stem>.md``
(the tables) are rebuilt from the run files at the end of every invocation.

The code: :mod:`.config` (methods, levels, :class:`StudyConfig`), :mod:`.runner` (warm start, one run,
the resumable driver, the report), :mod:`.stats` (per-run and per-cell statistics), :mod:`.tables`
(markdown), :mod:`.plots` (figures); this module is the command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from .config import (
    DEFAULT_LEVELS,
    DEFAULT_METHODS,
    LEVELS,
    METHODS,
    STUDY_RECIPE,
    Level,
    Method,
    StudyConfig,
    run_name,
)
from .plots import COLORS, plot, premise_plot
from .runner import collect, prepare, report, run_study, train_run
from .stats import (
    CURVE_KEYS,
    SPIKE_FACTOR,
    SPIKE_WINDOW,
    SUMMARY_METRICS,
    degradation,
    grad_spikes,
    premise_summary,
    summarize,
    summarize_history,
)
from .tables import premise_markdown, table_markdown

logger = logging.getLogger(__name__)

__all__ = [
    "COLORS", "CURVE_KEYS", "DEFAULT_LEVELS", "DEFAULT_METHODS", "LEVELS", "METHODS", "QUICK", "SPIKE_FACTOR",
    "SPIKE_WINDOW", "STUDY_RECIPE", "SUMMARY_METRICS", "Level", "Method", "StudyConfig", "collect", "degradation",
    "grad_spikes", "main", "parse_args", "plot", "premise_markdown", "premise_plot", "premise_summary", "prepare",
    "report", "run_name", "run_study", "summarize", "summarize_history", "table_markdown", "train_run",
]

# --quick: every stage on the default grid's s1 and s4, plus one partial-rollout run (vLLM) and the
# bapo_narrow ablation, so the new level and the premise measures are covered
QUICK = {"cells": [(m, lv) for lv in ("s1", "s4") for m in DEFAULT_METHODS] + [("bapo", "partial"),
                                                                             ("bapo_narrow", "s4")],
         "seeds": [0], "max_steps": 4, "warm_steps": 40, "n_test": 16, "k": 2}


def parse_args(argv: list[str] | None) -> StudyConfig:
    ap = argparse.ArgumentParser(prog="adaclip-rl study staleness", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/study", help="output directory (runs already there are skipped)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help=f"comma-separated, from {list(METHODS)} (grpo_bh, dapo_bh: behaviour-anchor ablations "
                         "for the replay level; bapo_narrow: BAPO from [0.8, 1.2])")
    ap.add_argument("--levels", default=",".join(DEFAULT_LEVELS), help=f"comma-separated, from {list(LEVELS)}")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated RL seeds")
    ap.add_argument("--max-steps", type=int, default=128, help="optimizer steps per run (same for all)")
    ap.add_argument("--warm-steps", type=int, default=400, help="supervised warm-start steps")
    ap.add_argument("--learning-rate", type=float, default=None, help="override the recipe's learning rate")
    ap.add_argument("--n-test", type=int, default=200, help="held-out problems")
    ap.add_argument("--k", type=int, default=4, help="samples per held-out problem (avg@k, pass@k)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--time-limit", type=float, default=None, help="start no new run after this many seconds")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG figures")
    ap.add_argument("--no-premise", action="store_true", help="do not log BAPO's premise measures per step")
    ap.add_argument("--baseline", default=None,
                    help="an earlier report JSON (e.g. results/study/staleness.json): its runs stand in for the "
                         "runs of this grid missing from --out (not retrained; a run file in --out wins)")
    ap.add_argument("--stem", default="staleness", help="name of the report files in --out (<stem>.json/.md/.png)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (4 methods x levels s1,s4, BAPO at partial (starts vLLM), bapo_narrow at s4; "
                         "seed 0, 4 steps, 40 warm-start steps); its numbers mean nothing")
    a = ap.parse_args(argv)
    kw: dict[str, Any] = dict(
        out=a.out, methods=[m for m in a.methods.split(",") if m], levels=[lv for lv in a.levels.split(",") if lv],
        seeds=[int(s) for s in a.seeds.split(",") if s], max_steps=a.max_steps, warm_steps=a.warm_steps,
        n_test=a.n_test, k=a.k, learning_rate=a.learning_rate, threads=a.threads, plot=not a.no_plot,
        premise=not a.no_premise, baseline=a.baseline)
    if a.quick:
        kw.update(QUICK)
    try:
        cfg = StudyConfig(**kw)
    except ValueError as e:
        ap.error(str(e))
    cfg.time_limit = a.time_limit  # type: ignore[attr-defined]
    cfg.stem = a.stem  # type: ignore[attr-defined]
    return cfg


def main(argv: list[str] | None = None) -> int:
    """``adaclip-rl study staleness [--quick] [--out DIR] ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from ..console import filter_pinned_vllm_warning

    filter_pinned_vllm_warning()
    for key, value in (("TRL_EXPERIMENTAL_SILENCE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1"),
                       ("TOKENIZERS_PARALLELISM", "false"), ("VLLM_CPU_KVCACHE_SPACE", "1")):
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cfg = parse_args(argv)
    stem = getattr(cfg, "stem", "staleness")
    t0 = time.perf_counter()
    result = run_study(cfg, deadline_s=getattr(cfg, "time_limit", None), stem=stem)
    print(Path(cfg.out, f"{stem}.md").read_text())
    for method, res in result["degradation"].items():
        acc = res.get("avg@k", {})
        if acc:
            print(f"{method}: avg@{cfg.k} {res['from']} -> {res['to']} drops {acc['drop']:+.3f} "
                  f"(pooled sd {acc['pooled_sd']:.3f}); degrades by > 2 sd: {acc['degrades']}")
    print(f"results: {Path(cfg.out) / f'{stem}.json'}, table {Path(cfg.out) / f'{stem}.md'}, plot "
          f"{Path(cfg.out) / f'{stem}.png'}; wall time {time.perf_counter() - t0:.0f} s")
    return 0
