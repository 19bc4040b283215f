"""A deterministic stand-in for the vLLM engine (pure python), for partial-rollout logic tests."""

from __future__ import annotations

from collections.abc import Sequence

from adaclip_rl.rollout.engine import FinishCallback, GenerationOutput, GenerationRequest, SamplingSettings


class FakeEngine:
    """Emits token ``7`` repeatedly; a sequence whose *full* length (prompt + completion) reaches
    ``stop_total[prompt[0]]`` ends with ``eos`` (finish_reason "stop"). Log-prob of each token is
    ``-(version + 1) / 10`` so tests can tell which version produced it.

    ``generate_until`` advances every running request by one token per engine step (as a
    continuous-batching engine with room for all of them does), reports requests as they end, and
    interrupts the interruptible ones once the callback says so. ``steps`` counts engine steps and
    ``prefill_tokens`` the prompt tokens (re)processed, for cost assertions."""

    def __init__(self, stop_total: dict[int, int], eos: int = 0, max_model_len: int | None = None) -> None:
        self.stop_total = stop_total
        self.eos = eos
        self.version = 0
        self.max_model_len = max_model_len
        self.calls: list[list[GenerationRequest]] = []
        self.steps = 0
        self.prefill_tokens = 0

    def _next(self, r: GenerationRequest, toks: list[int], sampling: SamplingSettings) -> str | None:
        """Append one token; return the finish reason if the request ended."""
        target = self.stop_total.get(r.prompt_token_ids[0], 10**9)
        if len(r.prompt_token_ids) + len(toks) + 1 >= target and not sampling.ignore_eos:
            toks.append(self.eos)
            return "stop"
        toks.append(7)
        return "length" if len(toks) >= r.max_tokens else None

    def _output(self, toks: list[int], reason: str) -> GenerationOutput:
        lp = -(self.version + 1) / 10
        return GenerationOutput(list(toks), [lp] * len(toks), reason, self.version)

    def generate_until(
        self, requests: Sequence[GenerationRequest], sampling: SamplingSettings, on_finish: FinishCallback
    ) -> list[GenerationOutput]:
        self.calls.append(list(requests))
        self.prefill_tokens += sum(len(r.prompt_token_ids) for r in requests)
        toks: list[list[int]] = [[] for _ in requests]
        outs: list[GenerationOutput | None] = [None] * len(requests)
        running = [i for i, r in enumerate(requests) if r.max_tokens > 0]
        for i, r in enumerate(requests):
            if r.max_tokens <= 0:
                outs[i] = self._output([], "length")
        stop = False
        while running:
            self.steps += 1
            still = []
            for i in running:
                reason = self._next(requests[i], toks[i], sampling)
                if reason is None:
                    still.append(i)
                else:
                    outs[i] = self._output(toks[i], reason)
                    stop = on_finish(i, outs[i]) or stop
            running = still
            if stop:
                for i in [i for i in running if requests[i].interruptible]:
                    outs[i] = self._output(toks[i], "interrupted")
                running = [i for i in running if not requests[i].interruptible]
        return [o for o in outs if o is not None]
