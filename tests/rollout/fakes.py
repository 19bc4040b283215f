"""A deterministic stand-in for the vLLM engine (pure python), for partial-rollout logic tests."""

from __future__ import annotations

from collections.abc import Sequence

from adaclip_rl.rollout.engine import GenerationOutput, GenerationRequest, SamplingSettings


class FakeEngine:
    """Emits token ``7`` repeatedly; a sequence whose *full* length (prompt + completion) reaches
    ``stop_total[prompt[0]]`` ends with ``eos`` (finish_reason "stop"). Log-prob of each token is
    ``-(version + 1) / 10`` so tests can tell which version produced it."""

    def __init__(self, stop_total: dict[int, int], eos: int = 0, max_model_len: int | None = None) -> None:
        self.stop_total = stop_total
        self.eos = eos
        self.version = 0
        self.max_model_len = max_model_len
        self.calls: list[list[GenerationRequest]] = []

    def generate_requests(
        self, requests: Sequence[GenerationRequest], sampling: SamplingSettings
    ) -> list[GenerationOutput]:
        self.calls.append(list(requests))
        outs = []
        for r in requests:
            full = len(r.prompt_token_ids)
            target = self.stop_total.get(r.prompt_token_ids[0], 10**9)
            toks: list[int] = []
            reason = "length"
            while len(toks) < r.max_tokens:
                if full + len(toks) + 1 >= target and not sampling.ignore_eos:
                    toks.append(self.eos)
                    reason = "stop"
                    break
                toks.append(7)
            lp = -(self.version + 1) / 10
            outs.append(GenerationOutput(toks, [lp] * len(toks), reason, self.version))
        return outs
