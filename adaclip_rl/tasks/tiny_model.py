"""Tiny offline models for tests and the CPU demo.

Nothing can be downloaded from the Hugging Face Hub on our CI machines, so tests and the demo
build their own tokenizer and model:

* a **byte-level BPE** tokenizer trained on the task's own text (digits are split individually so
  arithmetic stays learnable), wrapped in ``PreTrainedTokenizerFast`` with pad/eos tokens and a
  chat template;
* a **Qwen2** causal LM with ``head_dim = hidden_size / num_attention_heads = 64``, the smallest
  head size vLLM's CPU attention kernel accepts.

Both are saved with ``save_pretrained`` into one directory, so TRL (reference model re-loaded by
path when ``beta > 0``), vLLM and ``AutoModelForCausalLM.from_pretrained`` can load them by path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|bos|>"

# A minimal chat template: "user: ...\nassistant: " so conversational prompts work too.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the tiny Qwen2 model. Defaults give about 0.4 M parameters, head_dim 64."""

    hidden_size: int = 128
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    num_hidden_layers: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 512
    vocab_size: int = 320  # 256 byte symbols + specials + a few merges
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.hidden_size // self.num_attention_heads < 64:
            raise ValueError(
                "head_dim = hidden_size / num_attention_heads must be >= 64 (vLLM CPU attention); "
                f"got {self.hidden_size // self.num_attention_heads}"
            )
        if self.vocab_size < 260:
            raise ValueError(f"vocab_size must be >= 260 (byte alphabet + specials); got {self.vocab_size}")


def build_tokenizer(texts: Iterable[str], vocab_size: int = 320):
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for transformers.

    Digits are pre-split one per token so that numbers are spelled digit by digit.
    Returns a ``PreTrainedTokenizerFast`` with left padding (what GRPO expects for prompts).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, EOS_TOKEN, BOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str],
    spec: TinyModelSpec | None = None,
) -> Path:
    """Build tokenizer + randomly initialised Qwen2 and save both to ``out_dir``.

    Args:
        out_dir: directory to write (created); loadable afterwards with ``from_pretrained(out_dir)``.
        texts: the task's own text used to train the tokenizer.
        spec: model shape; :class:`TinyModelSpec` defaults if omitted.

    Returns:
        ``Path(out_dir)``.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    spec = spec or TinyModelSpec()
    model_dir = Path(out_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts, vocab_size=spec.vocab_size)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        num_hidden_layers=spec.num_hidden_layers,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (model_dir / "adaclip_tiny_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return model_dir
