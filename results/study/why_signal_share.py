"""Issue 28b (regime search, docs/staleness_study.md): how much of the clip fraction's denominator can be clipped.

Reruns GRPO seed-0 search runs (the study's one-run code without the held-out evaluation) to read TRL's
``frac_reward_zero_std``: the share of a generation batch's groups whose 8 rewards are all equal (advantage 0
on every token, nothing for the clip to act on), next to the clip fraction over the last quarter. Each rerun
is checked against the stored run's clip fractions (deterministic on CPU: equal to the last digit).

Usage, from the repository root, after the search runs exist (``why_search.json``, "commands")::

    python results/study/why_signal_share.py runs/why-warm350:350:s8-mu8 runs/why-warm375:375:s8-mu8 \\
        runs/why:400:s8-mu8 runs/why-warm425:425:s8-mu8 runs/why-warm450:450:s8-mu8 runs/why-warm500:500:s8-mu8

Writes ``runs/zero_std.json`` (copied into ``why_search.json``'s "signal_share").
"""

from __future__ import annotations

import json
import sys
import time

import torch

from adaclip_rl.study.config import LEVELS, METHODS, StudyConfig
from adaclip_rl.study.runner import prepare
from adaclip_rl.trainers.build import build_trainer, make_parser


def signal_share(out: str, warm_steps: int, level: str) -> dict:
    cfg = StudyConfig(out=out, warm_steps=warm_steps, methods=["grpo"], levels=[level], seeds=[0])
    prep = prepare(cfg, progress=False)
    lv, task = LEVELS[level], prep["task"]
    max_len = task.max_completion_tokens() + 4
    argv = ["--config", cfg.recipe, *METHODS["grpo"].flags, *lv.flags(max_len), "--seed", "0",
            "--output_dir", f"/tmp/why_signal_share/{warm_steps}-{level}", "--model_name_or_path", str(prep["warm"]),
            "--dataset_name", str(prep["train_file"]), "--max_steps", str(cfg.max_steps),
            "--max_completion_length", str(max_len)]
    trainer = build_trainer(*make_parser().parse_args_and_config(argv), progress_desc=f"{warm_steps} {level}")
    trainer.log_premise = True  # as the study's runs (logging changes nothing)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    history = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    zero = [h["frac_reward_zero_std"] for h in history if "frac_reward_zero_std" in h]  # one per generation batch
    tail = history[len(history) - max(1, len(history) // 4):]
    clip = sum(h["clipfrac/high"] + h["clipfrac/low"] for h in tail) / len(tail)
    with open(f"{out}/runs/grpo-{level}-seed0.json") as f:
        stored = json.load(f)
    return {"warm_steps": warm_steps, "level": level, "frac_reward_zero_std_last_batch": zero[-1],
            "frac_reward_zero_std_per_batch": zero, "frac_reward_zero_std_all": sum(zero) / len(zero),
            "clipfrac_total_last_quarter": clip,
            "same_as_stored_run": abs(clip - stored["clipfrac_pos"] - stored["clipfrac_neg"]) < 1e-12,
            # the last quarter trains on the last generation batch
            "clipfrac_per_signal_group_last_quarter": clip / (1 - zero[-1]) if zero[-1] < 1 else None,
            "train_seconds": seconds}


def main(specs: list[str]) -> None:
    torch.set_num_threads(1)
    res = {}
    for spec in specs:
        out, warm_steps, level = spec.split(":")
        res[f"{warm_steps}-{level}"] = r = signal_share(out, int(warm_steps), level)
        print(json.dumps(r), flush=True)
    with open("runs/zero_std.json", "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
