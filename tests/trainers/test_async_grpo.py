"""AdaClipAsyncGRPOTrainer: TRL's asynchronous GRPO with our policy losses, against a real vLLM
server on CPU (one server per module; weights reach it through the shared-file transfer)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import trl.experimental.async_grpo.async_grpo_trainer as agt
from async_stubs import NoTransfer, StubWorker
from datasets import Dataset
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from adaclip_rl._trl_compat.async_grpo import peak_flops_cpu_safe
from adaclip_rl.rollout.async_versions import VersionedRolloutWorker, expand_version_spans
from adaclip_rl.rollout.async_weights import (
    ServerUnavailableError,
    SharedFileWeightTransfer,
    VLLMServer,
    free_port,
    server_prompt_logprobs,
)
from adaclip_rl.tasks import ArithmeticTask
from adaclip_rl.trainers.async_config import AdaClipAsyncGRPOConfig
from adaclip_rl.trainers.async_grpo import (
    AdaClipAsyncGRPOTrainer,
    _VersionedCollator,
)
from adaclip_rl.trainers.chat_template import set_plain_response_template
from adaclip_rl.trainers.cpu_tree_attention import cpu_tree_attention

MAX_MODEL_LEN = 64


def digit_fraction_reward(completions, **kwargs):
    """Fraction of digit characters in the completion: varies across random completions (module
    level: the rollout worker runs in a spawned process)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def _dataset(n: int = 32) -> Dataset:
    rows = ArithmeticTask().sample(n, "train", seed=0)
    return Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}]} for r in rows])


def _args(tmp_path, url: str, **kw) -> AdaClipAsyncGRPOConfig:
    base = dict(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=8, num_generations=4,
        gradient_accumulation_steps=2, max_completion_length=8, learning_rate=3e-3, logging_steps=1, report_to=[],
        bf16=False, dtype="float32", token_budget=0, vllm_server_base_url=url, max_staleness=2,
        weight_sync_timeout=60, save_strategy="no", max_inflight_tasks=16, heartbeat_stale_after_s=60,
        weight_transfer="shared_file",
    )
    base.update(kw)
    return AdaClipAsyncGRPOConfig(**base)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return set_plain_response_template(AutoTokenizer.from_pretrained(tiny_model_dir))


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    srv = VLLMServer(tiny_model_dir, port=free_port(), max_model_len=MAX_MODEL_LEN, max_num_seqs=16,
                     log_path=tmp_path_factory.mktemp("vllm") / "server.log",
                     env={"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"})
    srv.start(timeout=240)
    yield srv
    srv.stop()


def _final_logprobs(trainer, model_dir: str, ids: list[int]) -> torch.Tensor:
    """log pi(ids[1:]) under the trainer's current weights, through a standard (non-packed) forward."""
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref.load_state_dict(trainer.accelerator.unwrap_model(trainer.model).state_dict())
    with torch.no_grad():
        logits = ref(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
    return logits.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def _history(trainer, key: str) -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h and h[key] is not None]


# ---------------------------------------------------------------- no server
def test_config_refuses_invalid_values(tmp_path):
    with pytest.raises(ValueError, match="weight_transfer"):
        _args(tmp_path, "http://x", weight_transfer="ipc")
    with pytest.raises(ValueError, match="bapo_target"):
        _args(tmp_path, "http://x", policy_loss="bapo", bapo_target=1.5)
    with pytest.raises(ValueError, match="policy_loss"):
        _args(tmp_path, "http://x", policy_loss="ppo")
    with pytest.raises(ValueError, match="max_staleness"):
        _args(tmp_path, "http://x", max_staleness=-1)


def test_recipe_selects_async_trainer(tmp_path):
    from adaclip_rl.trainers.cli import RecipeError, parse_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("trainer: async\ntask: arithmetic\nmodel_name_or_path: m\npolicy_loss: bapo\n"
                      "max_staleness: 1\nweight_transfer: shared_file\nbf16: false\noutput_dir: o\nreport_to: []\n")
    script, args, _ = parse_recipe(["--config", str(recipe)])
    assert script.trainer == "async" and type(args) is AdaClipAsyncGRPOConfig
    assert args.policy_loss == "bapo" and args.max_staleness == 1
    recipe.write_text(recipe.read_text().replace("bapo\n", "bapo\nbapo_target: 3.0\n"))
    with pytest.raises(RecipeError, match="bapo_target"):
        parse_recipe(["--config", str(recipe)])
    shipped = Path(__file__).resolve().parents[2] / "configs" / "recipes" / "bapo_7b_async.yaml"
    script, args, model = parse_recipe(["--config", str(shipped), "--bf16", "false"])  # bf16: GPU recipe
    assert (script.trainer, args.policy_loss, args.weight_transfer) == ("async", "bapo", "nccl")
    assert model.model_name_or_path and args.max_staleness == 8


def test_version_spans_expand_per_token():
    spans = [{"version": "3", "start": 0, "end": 2}, {"version": "4", "start": 2, "end": 5}]
    assert expand_version_spans(spans, 5, default=0) == [3, 3, 4, 4, 4]
    assert expand_version_spans([{"version": "default", "start": 0, "end": 2}], 3, default=1) == [1, 1, 1]


def test_dead_server_is_reported_quickly():
    url = f"http://127.0.0.1:{free_port()}"
    transfer = SharedFileWeightTransfer(url, timeout=5, ready_timeout=2)
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="not healthy"):
        transfer.init_weight_transfer()
    with pytest.raises(ServerUnavailableError, match="did not answer POST /pause"):
        transfer.pause()
    worker = VersionedRolloutWorker.__new__(VersionedRolloutWorker)
    worker._loop_kwargs = {"vllm_server_url": url}
    with pytest.raises(ServerUnavailableError, match="not answering /health"):
        worker.check_health(60.0)
    assert time.monotonic() - t0 < 15


def _packed_batch(tokenizer, n: int = 6, seed: int = 0) -> dict:
    """A micro-batch packed by TRL's own TreeRow and collator (shared prompts -> a prefix tree)."""
    g = torch.Generator().manual_seed(seed)
    row = agt.TreeRow()
    for i in range(n):
        prompt = tokenizer(f"{10 + i // 2}+{20 + i // 2}=", add_special_tokens=False)["input_ids"]
        completion = torch.randint(3, 250, (5 + i % 3,), generator=g).tolist()
        ids = np.asarray(prompt + completion, dtype=np.int64)
        mask = np.asarray([0] * len(prompt) + [1] * len(completion), dtype=np.int64)
        old = np.where(mask > 0, -5.6 + 0.8 * torch.randn(len(ids), generator=g).numpy(), 0.0).astype(np.float32)
        row.add({"input_ids": ids, "completion_mask": mask, "old_log_probs": old, "advantage": float((-1) ** i) * 0.9,
                 "group_id": i // 2, "metrics": {}, "token_versions": np.where(mask > 0, 0, -1)})  # version 0: the trainer's
    return _VersionedCollator(tokenizer.pad_token_id, 1)([[row]])


def test_grpo_matches_trl_async_loss(tiny_model_dir, tokenizer, tmp_path):
    """policy_loss='grpo': the loss and every parameter gradient equal TRL's AsyncGRPOTrainer's on the
    same packed batch (clip-higher bounds, ratios on both sides of the clip)."""
    common = dict(output_dir=str(tmp_path), report_to=[], bf16=False, dtype="float32", token_budget=0,
                  epsilon=0.2, epsilon_high=0.28, gradient_accumulation_steps=2, max_steps=1)
    with mock.patch.object(agt, "get_peak_flops_per_device", peak_flops_cpu_safe):
        trl_trainer = agt.AsyncGRPOTrainer(tiny_model_dir, digit_fraction_reward, agt.AsyncGRPOConfig(**common),
                                           _dataset(8), tokenizer, rollout_worker=StubWorker(),
                                           weight_transfer=NoTransfer())
    ours = AdaClipAsyncGRPOTrainer(tiny_model_dir, digit_fraction_reward,
                                   AdaClipAsyncGRPOConfig(**common, policy_loss="grpo"), _dataset(8), tokenizer,
                                   rollout_worker=StubWorker(), weight_transfer=NoTransfer())
    AttentionInterface.register(agt.TREE_ATTENTION, cpu_tree_attention)  # TRL re-registered FA3
    batch = _packed_batch(tokenizer)
    results = []
    for trainer in (trl_trainer, ours):
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 2
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters()}))
    (loss_trl, grads_trl), (loss_ours, grads_ours) = results
    clip = trl_trainer._metrics["train"]
    assert clip["clip_ratio/low_mean"][-1] > 0 and clip["clip_ratio/high_mean"][-1] > 0  # both clips active
    torch.testing.assert_close(loss_ours, loss_trl, rtol=1e-6, atol=1e-7)
    for name, grad in grads_trl.items():
        torch.testing.assert_close(grads_ours[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    for key in ("ratio", "kl", "entropy"):
        assert ours._metrics["train"][key][-1] == pytest.approx(clip[key][-1], rel=1e-5)


# ---------------------------------------------------------------- real server
@pytest.mark.slow
@pytest.mark.parametrize("policy_loss", ["bapo", "archer"])
def test_trains_against_cpu_vllm_server(policy_loss, server, tiny_model_dir, tokenizer, tmp_path):
    """A few optimizer steps against the real server: metrics logged, staleness bounded, and the
    server's log-probs afterwards are the trainer's weights' (to 1e-3), not the initial ones."""
    ids = tokenizer("12+34=", add_special_tokens=False)["input_ids"] + [5, 6, 7, 8, 9]
    args = _args(tmp_path, server.base_url, policy_loss=policy_loss)
    trainer = AdaClipAsyncGRPOTrainer(tiny_model_dir, digit_fraction_reward, args, _dataset(), tokenizer)
    initial = _final_logprobs(trainer, tiny_model_dir, ids)
    trainer.train()
    assert trainer.state.global_step == 3

    served = torch.tensor(server_prompt_logprobs(server.base_url, tiny_model_dir, ids))
    final = _final_logprobs(trainer, tiny_model_dir, ids)
    assert (served - final).abs().max().item() < 1e-3
    assert (final - initial).abs().max().item() > 1e-2  # the weights did move

    losses = _history(trainer, "loss")
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    prefix = {"bapo": "bapo/clip_high", "archer": "archer/high_frac"}[policy_loss]
    assert len(_history(trainer, prefix)) == 3
    # TRL drops samples older than max_staleness when pulling them; a pulled sample can be trained one
    # sync later (the dispatcher fetches a micro-batch ahead)
    assert max(_history(trainer, "sample/staleness_max")) <= args.max_staleness
    assert max(_history(trainer, "staleness/token_max")) <= args.max_staleness + 1
    assert min(_history(trainer, "staleness/token_min")) >= 0
    # the first step trains version-1 samples with version-1 weights: trainer and server agree
    first = trainer.state.log_history[0]
    if first["staleness/token_max"] == 0:
        assert abs(first["ratio"] - 1) < 1e-3 and abs(first["kl"]) < 1e-4
    assert trainer.weight_transfer.syncs == 4  # cold sync + one per step


class _KillServerAt(TrainerCallback):
    def __init__(self, server: VLLMServer, step: int):
        self.server, self.step = server, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.server.kill()


@pytest.mark.slow
def test_killed_server_errors_then_resume_from_checkpoint(server, tiny_model_dir, tokenizer, tmp_path):
    """Killing the server gives ServerUnavailableError within seconds; a restarted server and a new
    trainer resume from the last checkpoint (step, policy version, adaptive state)."""
    user_dir = tmp_path / "user_files"  # a folder the user names for the weights: never removed, nor its files
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("keep")
    args = _args(tmp_path, server.base_url, policy_loss="bapo", max_steps=4, save_strategy="steps", save_steps=1,
                 grad_clip="zclip", zclip_warmup_steps=1, weight_transfer_dir=str(user_dir))
    trainer = AdaClipAsyncGRPOTrainer(tiny_model_dir, digit_fraction_reward, args, _dataset(), tokenizer,
                                      callbacks=[_KillServerAt(server, 2)])
    t0 = time.monotonic()
    with pytest.raises(ServerUnavailableError, match=server.base_url):
        trainer.train()
    assert time.monotonic() - t0 < 120
    checkpoint = tmp_path / "out" / "checkpoint-1"
    assert (checkpoint / "adaclip_state.json").exists() and (checkpoint / "rollout_state.json").exists()

    server.start(timeout=240)  # same port, fresh process
    resumed = AdaClipAsyncGRPOTrainer(tiny_model_dir, digit_fraction_reward, args, _dataset(), tokenizer)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    assert resumed.model_version > 2  # continued the version count (checkpoint at version 2, then more syncs)
    assert resumed.grad_clipper.state_dict()["num_updates"] == 4  # 1 restored + 3 after the resume
    # the user's folder survived training, the killed server and the resumed run, and holds only its own file
    assert [p.name for p in user_dir.iterdir()] == ["notes.txt"] and (user_dir / "notes.txt").read_text() == "keep"


def test_bapo_searches_once_per_update(tiny_model_dir, tokenizer, tmp_path):
    """bapo_scope='update': every micro-batch of an optimizer update uses the bounds searched on all
    of them (paper Algorithm 1); 'micro_batch' searches each one alone."""
    bounds = {}
    for scope in ("update", "micro_batch"):
        args = AdaClipAsyncGRPOConfig(output_dir=str(tmp_path / scope), report_to=[], bf16=False, dtype="float32",
                                      token_budget=0, policy_loss="bapo", bapo_scope=scope,
                                      gradient_accumulation_steps=2, max_steps=1)
        trainer = AdaClipAsyncGRPOTrainer(tiny_model_dir, digit_fraction_reward, args, _dataset(8), tokenizer,
                                          rollout_worker=StubWorker(), weight_transfer=NoTransfer())
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 2
        window = [_packed_batch(tokenizer, seed=1), _packed_batch(tokenizer, seed=7)]
        trainer.begin_update(window)
        for batch in window:
            trainer.compute_loss(trainer.model, dict(batch))
        m = trainer._metrics["train"]
        bounds[scope] = list(zip(m["bapo/clip_low"], m["bapo/clip_high"], strict=True))
    assert bounds["update"][0] == bounds["update"][1]
    assert bounds["micro_batch"][0] != bounds["micro_batch"][1]  # the two micro-batches alone disagree
