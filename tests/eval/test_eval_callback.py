"""Periodic evaluation during training: a real Trainer on the tiny model, transformers backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from adaclip_rl.eval.callback import PeriodicEvalCallback


class _TextDataset(torch.utils.data.Dataset):
    def __init__(self, tok: object, texts: list[str]) -> None:
        self.items = [tok(t, truncation=True, max_length=48)["input_ids"] for t in texts]  # type: ignore[operator]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.tensor(self.items[i])
        return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


def _trainer(tiny_model_dir: Path, tmp_path: Path, max_steps: int) -> Trainer:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    texts = [f"Janet has {i} ducks and {i + 3} hens." for i in range(16)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=1, learning_rate=1e-3,
        logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
    )
    return Trainer(model=model, args=args, train_dataset=_TextDataset(tok, texts), processing_class=tok)


@pytest.mark.slow
def test_periodic_eval_logs_into_trainer(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    trainer = _trainer(tiny_model_dir, tmp_path, max_steps=5)
    cb = PeriodicEvalCallback(
        "gsm8k", eval_every=2, limit=3, n=2, temperature=1.0, max_new_tokens=8, ks=[2], data_dir=data_dir,
        batch_size=8, out_dir=tmp_path / "evals",
    ).attach(trainer)
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval/gsm8k/avg@2" in h]
    assert [h["step"] for h in evals] == [2, 4, 5]  # every 2 steps + the final step
    for h in evals:
        assert 0.0 <= h["eval/gsm8k/avg@2"] <= 1.0 and 0.0 <= h["eval/gsm8k/pass@2"] <= 1.0
        assert h["eval/gsm8k/tokens_per_s"] > 0
        # each logged metric comes with its standard error over the 3 problems, and the cut-off share
        assert h["eval/gsm8k/avg@2_se"] >= 0.0 and h["eval/gsm8k/pass@2_se"] >= 0.0
        assert 0.0 <= h["eval/gsm8k/truncated_fraction"] <= 1.0
    losses = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in losses] == [1, 2, 3, 4, 5]  # training logs untouched
    assert [h["step"] for h in cb.history] == [2, 4, 5]
    assert (tmp_path / "evals" / "step-4" / "summary.json").is_file()
    assert (tmp_path / "evals" / "step-4" / "gsm8k.records.jsonl").is_file()


def test_callback_without_attach_uses_log_history(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    trainer = _trainer(tiny_model_dir, tmp_path, max_steps=2)
    trainer.add_callback(PeriodicEvalCallback(
        "math500", eval_every=1, limit=1, n=1, temperature=0.0, max_new_tokens=4, data_dir=data_dir,
        eval_on_train_end=False,
    ))
    trainer.train()
    assert [h["step"] for h in trainer.state.log_history if "eval/math500/avg@1" in h] == [1, 2]


def test_callback_validates_at_construction(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="eval_every"):
        PeriodicEvalCallback("gsm8k", eval_every=0, data_dir=data_dir)
    with pytest.raises(ValueError, match="unknown benchmark"):
        PeriodicEvalCallback("gsm9k", data_dir=data_dir)
    with pytest.raises(ValueError, match="ks must be"):
        PeriodicEvalCallback("gsm8k", n=2, ks=[4], data_dir=data_dir)
    with pytest.raises(ValueError, match="top_p"):
        PeriodicEvalCallback("gsm8k", top_p=0.0, data_dir=data_dir)
    with pytest.raises(ValueError, match="unknown protocol"):
        PeriodicEvalCallback("gsm8k", protocol="r2", data_dir=data_dir)
    cb = PeriodicEvalCallback("gsm8k", protocol="dapo", limit=2, data_dir=data_dir)
    assert cb.sampling["protocol"] == "dapo" and cb.sampling["n"] is None  # the preset decides
    with pytest.raises(FileNotFoundError, match="aime25"):
        PeriodicEvalCallback("aime25", data_dir=data_dir)


@pytest.mark.slow
@pytest.mark.parametrize("trainer_kind", ["trl", "adaclip-bapo"])
def test_periodic_eval_with_grpo_trainer_keeps_train_metrics(tiny_model_dir: Path, data_dir: Path,
                                                             tmp_path: Path, trainer_kind: str) -> None:
    """GRPOTrainer.log flushes its metric buffer by model mode: eval logging must not eat train metrics.

    Run with TRL's own GRPOTrainer and with this project's AdaClipGRPOTrainer (BAPO loss).
    """
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from adaclip_rl.trainers.config import AdaClipGRPOConfig
    from adaclip_rl.trainers.grpo import AdaClipGRPOTrainer

    def length_reward(completions: list[str], **_: object) -> list[float]:
        return [float(len(c)) for c in completions]

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    common = dict(
        output_dir=str(tmp_path / "grpo"), max_steps=2, per_device_train_batch_size=2, num_generations=2,
        max_completion_length=4, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
        disable_tqdm=True, learning_rate=1e-4, seed=0,
    )
    ds = Dataset.from_dict({"prompt": [f"{i}+{i}=" for i in range(8)]})
    if trainer_kind == "trl":
        trainer = GRPOTrainer(model=str(tiny_model_dir), reward_funcs=[length_reward], args=GRPOConfig(**common),
                              train_dataset=ds, processing_class=tok)
    else:
        trainer = AdaClipGRPOTrainer(model=str(tiny_model_dir), reward_funcs=[length_reward],
                                     args=AdaClipGRPOConfig(policy_loss="bapo", **common), train_dataset=ds,
                                     processing_class=tok)
    PeriodicEvalCallback("amc23", eval_every=1, limit=2, n=1, max_new_tokens=4, data_dir=data_dir).attach(trainer)
    trainer.train()
    hist = trainer.state.log_history
    train_logs = [h for h in hist if "loss" in h]
    assert [h["step"] for h in train_logs] == [1, 2]
    assert all("reward" in h for h in train_logs), train_logs  # GRPO's own metrics still logged per step
    if trainer_kind == "adaclip-bapo":
        assert all(any(k.startswith("bapo/") for k in h) for h in train_logs), train_logs
    assert [h["step"] for h in hist if "eval/amc23/avg@1" in h] == [1, 2]
