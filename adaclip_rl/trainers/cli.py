"""``adaclip-rl train --config recipe.yaml``: train with a YAML recipe in TRL's style.

The YAML is one flat mapping, read by ``trl.TrlParser`` into three dataclasses:
:class:`TrainScriptArguments` (data and rewards), :class:`~adaclip_rl.trainers.offpolicy.OffPolicyGRPOConfig`
(every TRL GRPO field, ours, and the off-policy rollout fields) and ``trl.ModelConfig`` (model
path, dtype, LoRA). Partial rollouts or replay select ``OffPolicyGRPOTrainer``; otherwise
``AdaClipGRPOTrainer``. Command-line flags override the
YAML. Unknown keys and out-of-range values fail while parsing, before any model is loaded.

Under several processes::

    accelerate launch --config_file configs/accelerate/zero3.yaml -m adaclip_rl.cli train \\
        --config configs/recipes/bapo_qwen2.5_7b_math.yaml
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class TrainScriptArguments:
    """Data and rewards of a training run."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id, a local dataset directory, or a .json/.jsonl/.parquet/.csv file."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "Python format string building the prompt from a row, e.g. "
                  "'{problem}\\nPlease reason step by step, and put your final answer within \\\\boxed{{}}.'. "
                  "Without it the dataset must have a 'prompt' column."},
    )
    conversational: bool = field(
        default=True,
        metadata={"help": "Wrap templated prompts as a user message (the tokenizer's chat template applies)."},
    )
    system_prompt: str | None = field(default=None, metadata={"help": "Optional system message."})
    task: str | None = field(
        default=None,
        metadata={"help": "Synthetic verifiable task instead of a dataset: 'arithmetic' (multi-digit addition)."},
    )
    task_digits: int = field(default=2, metadata={"help": "Operand digits of the arithmetic task."})
    task_size: int = field(default=2000, metadata={"help": "Number of synthetic training problems."})
    task_seed: int = field(default=0, metadata={"help": "Seed of the synthetic problems."})
    rewards: list[str] = field(
        default_factory=lambda: ["math_accuracy"],
        metadata={"help": "Reward functions by name (adaclip_rl.rewards registry). In YAML an entry may be "
                  "a dict {name, weight, kwargs, timeout_s}."},
    )

    periodic_eval_benchmarks: str | None = field(
        default=None,
        metadata={"help": "Comma-separated benchmarks (aime24, amc23, math500, gsm8k, humaneval, or "
                  "name=file.jsonl) evaluated during training by adaclip_rl.eval.PeriodicEvalCallback; "
                  "metrics eval/<bench>/avg@n. None: off."},
    )
    periodic_eval_every: int = field(default=100, metadata={"help": "Evaluate every N optimizer steps (>= 1)."})
    periodic_eval_limit: int | None = field(
        default=32, metadata={"help": "First N problems of each benchmark (>= 1); None: all."})
    periodic_eval_n: int = field(default=1, metadata={"help": "Samples per problem (>= 1)."})
    periodic_eval_temperature: float = field(default=0.6, metadata={"help": "Sampling temperature (>= 0)."})
    periodic_eval_max_new_tokens: int = field(default=512, metadata={"help": "Max new tokens per sample (>= 1)."})
    periodic_eval_data_dir: str | None = field(
        default=None, metadata={"help": "Directory of local JSON-lines benchmark files replacing the Hub."})

    def __post_init__(self) -> None:
        for name in ("periodic_eval_every", "periodic_eval_n", "periodic_eval_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.periodic_eval_limit is not None and self.periodic_eval_limit < 1:
            raise ValueError(f"periodic_eval_limit must be >= 1 or None; got {self.periodic_eval_limit}")
        if not self.periodic_eval_temperature >= 0:
            raise ValueError(f"periodic_eval_temperature must be >= 0; got {self.periodic_eval_temperature}")
        if self.dataset_name is None and self.task is None:
            raise ValueError("set dataset_name (a Hub id or local path) or task (e.g. 'arithmetic')")
        if self.dataset_name is not None and self.task is not None:
            raise ValueError(f"set only one of dataset_name ({self.dataset_name!r}) and task ({self.task!r})")
        if self.task is not None and self.task != "arithmetic":
            raise ValueError(f"task must be 'arithmetic'; got {self.task!r}")
        if self.task_size < 1:
            raise ValueError(f"task_size must be >= 1; got {self.task_size}")
        if isinstance(self.rewards, str):
            self.rewards = [self.rewards]


def make_parser():
    from trl import ModelConfig, TrlParser

    from .offpolicy_config import OffPolicyGRPOConfig

    # OffPolicyGRPOConfig = AdaClipGRPOConfig + the off-policy rollout fields (all default off)
    return TrlParser((TrainScriptArguments, OffPolicyGRPOConfig, ModelConfig))


def load_train_dataset(args: TrainScriptArguments):
    """The training dataset with a ``prompt`` column (plus the columns rewards read)."""
    from datasets import Dataset, load_dataset

    if args.task == "arithmetic":
        from ..tasks import ArithmeticTask

        rows = ArithmeticTask(digits=args.task_digits).sample(args.task_size, "train", seed=args.task_seed)
        return Dataset.from_list(rows)
    name = args.dataset_name
    path = Path(name)
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".json", ".jsonl", ".parquet", ".csv"):
        kind = {"jsonl": "json"}.get(suffix[1:], suffix[1:])
        ds = load_dataset(kind, data_files=str(path), split="train")
    elif path.is_dir() and (path / "dataset_info.json").exists():
        ds = Dataset.load_from_disk(str(path))
    else:
        ds = load_dataset(name, args.dataset_config, split=args.dataset_train_split)
    if args.prompt_template is not None:
        template, system, conv = args.prompt_template, args.system_prompt, args.conversational

        def to_prompt(row: dict[str, Any]) -> dict[str, Any]:
            text = template.format(**row)
            if not conv:
                return {"prompt": text}
            msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
            return {"prompt": msgs}

        ds = ds.map(to_prompt)
    if "prompt" not in ds.column_names:
        raise ValueError(f"dataset {name!r} has no 'prompt' column (columns: {ds.column_names}); set prompt_template")
    return ds


def build_trainer(script_args: TrainScriptArguments, grpo_args, model_args, train_dataset=None, **kwargs):
    """An :class:`AdaClipGRPOTrainer` for parsed recipe arguments."""
    from trl import get_peft_config

    from .. import tasks  # noqa: F401  (registers the synthetic tasks' rewards)
    from ..rewards import build_reward_funcs
    from .grpo import AdaClipGRPOTrainer
    from .offpolicy import OffPolicyGRPOTrainer

    offpolicy = getattr(grpo_args, "partial_rollouts", False) or getattr(grpo_args, "replay_ratio", 0.0) > 0
    trainer_cls = OffPolicyGRPOTrainer if offpolicy else AdaClipGRPOTrainer
    reward_funcs, weights = build_reward_funcs(script_args.rewards)
    if grpo_args.reward_weights is None and any(w != 1.0 for w in weights):
        grpo_args.reward_weights = weights
    if model_args.model_name_or_path is None:
        raise ValueError("model_name_or_path is required")
    init_kwargs = dict(grpo_args.model_init_kwargs or {})
    if model_args.dtype not in (None, "auto"):
        init_kwargs.setdefault("dtype", model_args.dtype)
    if model_args.attn_implementation is not None:
        init_kwargs.setdefault("attn_implementation", model_args.attn_implementation)
    grpo_args.model_init_kwargs = init_kwargs or None
    periodic_eval = _periodic_eval_callback(script_args)  # validates benchmarks/files before the model loads
    trainer = trainer_cls(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=grpo_args,
        train_dataset=train_dataset if train_dataset is not None else load_train_dataset(script_args),
        peft_config=get_peft_config(model_args),
        **kwargs,
    )
    if periodic_eval is not None:
        periodic_eval.attach(trainer)
    return trainer


def _periodic_eval_callback(args: TrainScriptArguments):
    if not args.periodic_eval_benchmarks:
        return None
    from ..eval.callback import PeriodicEvalCallback

    return PeriodicEvalCallback(
        args.periodic_eval_benchmarks, eval_every=args.periodic_eval_every, limit=args.periodic_eval_limit,
        n=args.periodic_eval_n, temperature=args.periodic_eval_temperature,
        max_new_tokens=args.periodic_eval_max_new_tokens, data_dir=args.periodic_eval_data_dir,
    )


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    script_args, grpo_args, model_args = make_parser().parse_args_and_config(argv)
    trainer = build_trainer(script_args, grpo_args, model_args)
    trainer.train(resume_from_checkpoint=grpo_args.resume_from_checkpoint)
    trainer.save_model(grpo_args.output_dir)
    return 0
