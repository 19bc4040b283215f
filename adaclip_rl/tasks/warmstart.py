"""Supervised warm start and held-out evaluation for the synthetic arithmetic task.

A randomly initialised model earns no reward, so the demo and the learning test first train the
tiny model supervised on ``prompt -> answer<eos>`` for a few hundred steps (loss on the answer
tokens only), stopping while accuracy is still low enough for RL to show a difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .arithmetic import ArithmeticTask, parse_answer


@dataclass(frozen=True)
class WarmStartConfig:
    steps: int = 400
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0; got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0; got {self.learning_rate}")


def _encode_batch(tokenizer, rows: list[dict[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``prompt + answer + eos`` ids, attention mask and labels (-100 outside the answer)."""
    seqs, labels = [], []
    for row in rows:
        p = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        a = tokenizer(row["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        seqs.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    lab = torch.tensor([s + [-100] * (width - len(s)) for s in labels])
    att = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    return ids, att, lab


def warm_start(model_dir: str | Path, out_dir: str | Path, task: ArithmeticTask, config: WarmStartConfig,
               progress: bool = True) -> Path:
    """Supervised fine-tuning of the model in ``model_dir`` on ``task``; saves model + tokenizer to ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    rows = task.sample(config.steps * config.batch_size, "train", seed=config.seed + 1)
    bar = tqdm(range(config.steps), desc="warm start", disable=not progress)
    for step in bar:
        ids, att, lab = _encode_batch(tokenizer, rows[step * config.batch_size : (step + 1) * config.batch_size])
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    saved_dir = Path(out_dir)
    model.save_pretrained(saved_dir)
    tokenizer.save_pretrained(saved_dir)
    return saved_dir


@torch.no_grad()
def sample_answers(model, tokenizer, prompts: list[str], *, k: int, temperature: float, max_new_tokens: int = 6,
                   seed: int = 0, batch_size: int = 256) -> list[list[str]]:
    """``k`` sampled completions per prompt (greedy when ``temperature == 0``)."""
    model.eval()
    torch.manual_seed(seed)
    samples_per_prompt: list[list[str]] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        gen = model.generate(
            **enc, do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
            top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, num_return_sequences=k,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        samples_per_prompt += [texts[j * k : (j + 1) * k] for j in range(len(chunk))]
    return samples_per_prompt


def evaluate_accuracy(model, tokenizer, problems: list[dict[str, str]], *, k: int = 4, temperature: float = 1.0,
                      seed: int = 0) -> dict[str, float]:
    """avg@k (mean per-sample accuracy), pass@k and greedy accuracy on ``problems``."""
    from ..eval.metrics import pass_at_k

    samples = sample_answers(model, tokenizer, [p["prompt"] for p in problems], k=k, temperature=temperature,
                             seed=seed)
    correct = [[parse_answer(s) == p["answer"] for s in ss] for ss, p in zip(samples, problems, strict=True)]
    greedy = sample_answers(model, tokenizer, [p["prompt"] for p in problems], k=1, temperature=0.0)
    greedy_acc = sum(parse_answer(g[0]) == p["answer"] for g, p in zip(greedy, problems, strict=True)) / len(problems)
    avg = sum(sum(c) for c in correct) / (len(problems) * k)
    pk = sum(pass_at_k(k, sum(c), k) for c in correct) / len(problems)
    return {f"avg@{k}": avg, f"pass@{k}": pk, "greedy": greedy_acc}
