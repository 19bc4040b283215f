"""Variants of the tiny offline model shared by tests in several folders."""

from __future__ import annotations

from pathlib import Path

import torch


def write_eos_model(tiny_model_dir: str, out: Path) -> str:
    """The tiny random model with a large random EOS embedding row, saved to ``out``: EOS then has a
    sizeable, position-dependent probability, so completion lengths vary and partial rollouts carry
    some sequences across optimizer steps (a random model otherwise almost never stops)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[tok.eos_token_id] = 0.4 * torch.randn(emb.shape[1], generator=g)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
