"""Stand-ins for the async trainer's two outside parts (the rollout worker and the weight transfer),
for tests that feed the trainer packed batches by hand: no vLLM server, no weights pushed."""

from __future__ import annotations

import queue


def zero_reward(completions, **kwargs):
    return [0.0 for _ in completions]


class StubWorker:
    """A rollout worker that produces nothing (the test packs the batches itself)."""

    def __init__(self) -> None:
        self.rollout_buffer: queue.Queue = queue.Queue()
        self.metrics_queue: queue.Queue = queue.Queue()

    def start(self): ...
    def stop(self): ...
    def update_model_version(self, v): ...
    def check_health(self, s): ...


class NoTransfer:
    """A weight transfer that sends nothing."""

    def init_weight_transfer(self): ...
    def pause(self): ...
    def send_weights(self, it): ...
    def resume(self): ...
    def destroy(self): ...
