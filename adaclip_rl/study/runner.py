"""The staleness study's orchestration: the shared warm start, one (method, level, seed) run, and the
resumable driver that trains what is missing and rebuilds the report from the run files."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .config import LEVELS, METHODS, StudyConfig, run_name
from .stats import (
    CURVE_KEYS,
    PREMISE_KEYS,
    SPIKE_FACTOR,
    SPIKE_WINDOW,
    degradation,
    summarize,
    summarize_history,
)
from .tables import premise_markdown, table_markdown


def prepare(cfg: StudyConfig, progress: bool = True) -> dict[str, Any]:
    """The shared warm start (built once, reused when ``<out>/warm`` exists), training data and held-out set."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..tasks import build_tiny_model
    from ..tasks.scratchpad import ScratchpadAdditionTask, evaluate_scratchpad, warm_start_scratchpad
    from ..tasks.warmstart import WarmStartConfig

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    task = ScratchpadAdditionTask(digits=cfg.digits)
    train_file = out / "train.jsonl"
    if not train_file.exists():
        rows = task.sample(4000, "train", seed=0)
        train_file.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in rows))
    warm, info_file = out / "warm", out / "warm.json"
    problems = task.sample(cfg.n_test, "test", seed=1234)
    if not info_file.exists():
        t0 = time.perf_counter()
        base = build_tiny_model(out / "base", task.corpus())
        warm_start_scratchpad(base, warm, task, WarmStartConfig(steps=cfg.warm_steps), progress=progress)
        seconds = time.perf_counter() - t0
        tok = AutoTokenizer.from_pretrained(warm)
        before = evaluate_scratchpad(AutoModelForCausalLM.from_pretrained(warm), tok, problems, k=cfg.k,
                                     max_new_tokens=task.max_completion_tokens() + 4, seed=999)
        info_file.write_text(json.dumps({"warm_steps": cfg.warm_steps, "seconds": seconds, "before": before,
                                         "digits": cfg.digits, "n_test": cfg.n_test, "k": cfg.k}, indent=2))
    info = json.loads(info_file.read_text())
    if (info["warm_steps"], info["digits"], info["n_test"], info["k"]) != (cfg.warm_steps, cfg.digits, cfg.n_test,
                                                                           cfg.k):
        raise ValueError(f"{out} holds a study with another warm start or evaluation ({info_file}); use a new --out")
    return {"task": task, "warm": warm, "train_file": train_file, "problems": problems, **info}


def train_run(cfg: StudyConfig, method: str, level: str, seed: int, prep: dict[str, Any],
              progress_desc: str | None = None) -> dict[str, Any]:
    """Train one (method, level, seed) from the warm start, evaluate it held-out, return its record."""
    import gc

    from transformers import AutoTokenizer

    from ..tasks.scratchpad import evaluate_scratchpad
    from ..trainers.build import build_trainer, make_parser

    lv, task = LEVELS[level], prep["task"]
    name = run_name(method, level, seed)
    max_len = task.max_completion_tokens() + 4
    argv = ["--config", cfg.recipe, *METHODS[method].flags, *lv.flags(max_len), "--seed", str(seed),
            "--output_dir", str(Path(cfg.out) / "train" / name), "--model_name_or_path", str(prep["warm"]),
            "--dataset_name", str(prep["train_file"]), "--max_steps", str(cfg.max_steps),
            "--max_completion_length", str(max_len)]
    if cfg.learning_rate is not None:
        argv += ["--learning_rate", str(cfg.learning_rate)]
    argv += cfg.extra_flags
    script_args, grpo_args, model_args = make_parser().parse_args_and_config(argv)
    trainer = build_trainer(script_args, grpo_args, model_args, progress_desc=progress_desc or name)
    trainer.log_premise = cfg.premise  # BAPO's premise measures per step (adaclip_rl.losses.premise)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    tok = AutoTokenizer.from_pretrained(prep["warm"])
    after = evaluate_scratchpad(trainer.model, tok, prep["problems"], k=cfg.k, max_new_tokens=max_len,
                                seed=1000 + seed)
    history = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    if lv.uses_vllm:  # free the colocated engine before the next run
        from ..rollout.vllm_engine import release_trainer_engines

        release_trainer_engines(trainer)
    del trainer
    gc.collect()
    curves = {key: [[h["step"], h[key]] for h in history if isinstance(h.get(key), int | float)]
              for key in CURVE_KEYS + PREMISE_KEYS}
    return {"method": method, "level": level, "seed": seed, "steps_per_generation": lv.steps_per_generation,
            "replay_ratio": lv.replay_ratio, "steps": len(history), "train_seconds": train_s, "after": after,
            **summarize_history(history), "curves": {k: v for k, v in curves.items() if v}}


def baseline_runs(path: str | None) -> list[dict[str, Any]]:
    """Run records of an earlier report JSON (``<stem>.json``), curves re-attached, marked ``"baseline"``."""
    if not path:
        return []
    data = json.loads(Path(path).read_text())
    curves = data.get("curves", {})
    return [{**r, "curves": curves.get(run_name(r["method"], r["level"], r["seed"]), {}), "baseline": path}
            for r in data["runs"]]


def collect(out: Path, cfg: StudyConfig) -> list[dict[str, Any]]:
    """Every finished run record of this invocation's methods, levels and seeds; a run missing from
    ``<out>/runs`` is taken from ``cfg.baseline`` (an earlier report JSON) when it is there."""
    old = {run_name(r["method"], r["level"], r["seed"]): r for r in baseline_runs(cfg.baseline)}
    runs = []
    for m, lv in cfg.grid():
        for s in cfg.seeds:
            f = out / "runs" / f"{run_name(m, lv, s)}.json"
            if f.exists():
                runs.append(json.loads(f.read_text()))
            elif run_name(m, lv, s) in old:
                runs.append(old[run_name(m, lv, s)])
    return runs


def report(cfg: StudyConfig, prep: dict[str, Any], wall_seconds: float, stem: str = "staleness") -> dict[str, Any]:
    """Rebuild ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` from the run files (and
    ``<stem>_premise.png`` when runs logged BAPO's premise measures)."""
    from .plots import plot, premise_plot

    out = Path(cfg.out)
    runs = collect(out, cfg)
    summary = summarize(runs, cfg.k)
    new = [r for r in runs if "baseline" not in r]
    result = {
        "task": f"{cfg.digits}-digit addition with a scratchpad (exact final answer)",
        "held_out_problems": cfg.n_test, "k": cfg.k, "eval_temperature": 1.0,
        "warm_start": {"steps": prep["warm_steps"], "seconds": prep["seconds"], "before": prep["before"]},
        "config": {key: v for key, v in asdict(cfg).items() if key not in ("plot", "premise", "baseline")},
        "methods": {m: asdict(METHODS[m]) for m in cfg.methods},
        "levels": {lv: asdict(LEVELS[lv]) for lv in cfg.levels},
        "spike_rule": f"grad_norm > {SPIKE_FACTOR} x median of the previous {SPIKE_WINDOW} steps",
        "summary": summary, "degradation": degradation(summary),
        "runs": [{key: v for key, v in r.items() if key != "curves"} for r in runs],
        # (a baseline run's curves stay in its own report)
        "curves": {run_name(r["method"], r["level"], r["seed"]): r["curves"] for r in runs if "baseline" not in r},
        "wall_seconds_this_invocation": wall_seconds,
        "train_seconds_total": sum(r["train_seconds"] for r in runs),
        "load_average": os.getloadavg(), "threads": cfg.threads,
    }
    if cfg.baseline:  # only then: the keys of a report without a baseline stay as they were
        result["baseline"] = cfg.baseline
        result["train_seconds_new_runs"] = sum(r["train_seconds"] for r in new)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    md = table_markdown(summary, cfg.methods, cfg.levels, cfg.k, len(cfg.seeds))
    premise = premise_markdown(summary, cfg.methods, cfg.levels, len(cfg.seeds))
    (out / f"{stem}.md").write_text(md + ("\n" + premise if premise else ""))
    if cfg.plot and runs:
        plot(runs, summary, out / f"{stem}.png", cfg.k)
        if premise:
            premise_plot(summary, cfg.methods, cfg.levels, out / f"{stem}_premise.png")
    return result


def run_study(cfg: StudyConfig, progress: bool = True, deadline_s: float | None = None,
              stem: str = "staleness") -> dict[str, Any]:
    """Train every missing run (in seed-major order, so a partial study has whole seeds), then report.

    ``deadline_s``: stop starting new runs after this many seconds (the study resumes next time).
    ``stem``: name of the JSON / markdown / PNG outputs in ``cfg.out``. Runs taken from
    ``cfg.baseline`` are not trained again."""
    import torch

    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    out = Path(cfg.out)
    prep = prepare(cfg, progress=progress)
    (out / "runs").mkdir(exist_ok=True)
    old = {run_name(r["method"], r["level"], r["seed"]) for r in baseline_runs(cfg.baseline)}
    todo = [(m, lv, s) for s in cfg.seeds for m, lv in cfg.grid()
            if not (out / "runs" / f"{run_name(m, lv, s)}.json").exists() and run_name(m, lv, s) not in old]
    total = len(cfg.seeds) * len(cfg.grid())
    print(f"warm start: held-out avg@{cfg.k} {prep['before'][f'avg@{cfg.k}']:.3f}, greedy "
          f"{prep['before']['greedy']:.3f}, {prep['before']['mean_completion_tokens']:.1f} tokens per completion; "
          f"{total - len(todo)}/{total} runs already done")
    for i, (m, lv, s) in enumerate(todo):
        if deadline_s is not None and time.perf_counter() - t_start > deadline_s:
            print(f"time limit reached: {len(todo) - i} runs left for the next invocation")
            break
        name = run_name(m, lv, s)
        rec = train_run(cfg, m, lv, s, prep, progress_desc=f"({i + 1}/{len(todo)}) {name}")
        tmp = out / "runs" / f"{name}.json.tmp"  # written whole, then renamed: a crash leaves no half file
        tmp.write_text(json.dumps(rec))
        tmp.replace(out / "runs" / f"{name}.json")
        key = f"avg@{cfg.k}"
        ent = rec["entropy_last"]
        print(f"  {name:<22} {rec['train_seconds']:5.0f} s  held-out {key} {prep['before'][key]:.3f} -> "
              f"{rec['after'][key]:.3f}  entropy {ent if ent is None else round(ent, 3)}  "
              f"grad spikes {rec['grad_spikes']}", flush=True)
    return report(cfg, prep, time.perf_counter() - t_start, stem=stem)
