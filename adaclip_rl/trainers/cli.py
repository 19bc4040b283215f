"""``adaclip-rl train --config recipe.yaml``: train with a YAML recipe in TRL's style.

The YAML is one flat mapping, read by ``trl.TrlParser`` into three dataclasses:
:class:`TrainScriptArguments` (data and rewards), :class:`~adaclip_rl.trainers.offpolicy.OffPolicyGRPOConfig`
(every TRL GRPO field, ours, and the off-policy rollout fields) and ``trl.ModelConfig`` (model
path, dtype, LoRA). Partial rollouts or replay select ``OffPolicyGRPOTrainer``; otherwise
``AdaClipGRPOTrainer``; ``trainer: async`` selects ``AdaClipAsyncGRPOTrainer`` (generation on a separate
vLLM server, fields of ``AdaClipAsyncGRPOConfig`` instead). Command-line flags override the
YAML. A missing recipe file, malformed YAML, an unknown key or an out-of-range value ends the
command with one line naming the file or the field and exit status 2, before any model is loaded.
The terminal shows a progress bar per run and a one-line summary at the end; every logged metrics
dict goes to ``<output_dir>/metrics.jsonl`` and to the ``report_to`` sinks.

Under several processes::

    accelerate launch --config_file configs/accelerate/zero3.yaml -m adaclip_rl.cli train \\
        --config configs/recipes/bapo_qwen2.5_7b_math.yaml
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..console import METRICS_FILE, filter_pinned_vllm_warning, run_summary

logger = logging.getLogger(__name__)
PROG = "adaclip-rl train"


class RecipeError(ValueError):
    """A recipe that cannot be used; the message is one line naming the file or the field."""


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
    trainer: str = field(
        default="sync",
        metadata={"help": "'sync' (AdaClipGRPOTrainer, or OffPolicyGRPOTrainer with partial rollouts/replay) or "
                  "'async' (AdaClipAsyncGRPOTrainer: TRL's asynchronous GRPO with a separate vLLM server)."},
    )
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
        default=None, metadata={"help": "Directory of local JSON-lines benchmark files replacing the Hub; "
                                "'bundled': the offline copies shipped with adaclip-rl."})

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
        if self.trainer not in ("sync", "async"):
            raise ValueError(f"trainer must be 'sync' or 'async'; got {self.trainer!r}")
        if self.task_size < 1:
            raise ValueError(f"task_size must be >= 1; got {self.task_size}")
        if isinstance(self.rewards, str):
            self.rewards = [self.rewards]


def make_parser(trainer: str = "sync"):
    from trl import ModelConfig, TrlParser

    if trainer == "async":  # TRL's AsyncGRPOConfig has its own dtype: the model is only a path
        from .async_config import AdaClipAsyncGRPOConfig, AsyncModelArguments

        return TrlParser((TrainScriptArguments, AdaClipAsyncGRPOConfig, AsyncModelArguments), prog=PROG)
    from .offpolicy_config import OffPolicyGRPOConfig

    # OffPolicyGRPOConfig = AdaClipGRPOConfig + the off-policy rollout fields (all default off)
    return TrlParser((TrainScriptArguments, OffPolicyGRPOConfig, ModelConfig), prog=PROG)


def read_recipe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The recipe's mapping, or :class:`RecipeError` naming the file (missing, not YAML, not a mapping)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise RecipeError(f"recipe file {str(path)!r} not found")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(f"recipe file {str(path)!r} is not valid YAML{where}: {problem}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"recipe file {str(path)!r} cannot be read: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"recipe file {str(path)!r} must be a YAML mapping of field: value; "
                          f"got a {type(data).__name__}")
    return data


def parse_recipe(argv: list[str] | None = None):
    """``(TrainScriptArguments, OffPolicyGRPOConfig, ModelConfig)`` from ``--config`` plus flags.

    Raises :class:`RecipeError` (one line, naming the file or the field) for a missing recipe,
    malformed YAML, an unknown key or an invalid value. File problems, unknown keys and invalid
    adaclip-rl values are found before TRL is imported (:mod:`.recipe_check`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    path, trainer = None, "sync"
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise RecipeError("--config needs a recipe file")
        path = argv[i + 1]
        recipe = read_recipe(path)
        trainer = str(recipe.get("trainer", "sync"))
        if not {"-h", "--help"} & set(argv) and trainer != "async":  # async fields: checked by its config
            from .recipe_check import precheck

            try:
                precheck(recipe, argv[:i] + argv[i + 2 :])
            except ValueError as e:
                raise RecipeError(f"recipe {path!r}: {' '.join(str(e).split())}") from None
    try:
        return make_parser(trainer).parse_args_and_config(argv)
    except (ValueError, TypeError) as e:
        msg = " ".join(str(e).split())
        raise RecipeError(f"recipe {path!r}: {msg}" if path is not None else msg) from None


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


def build_trainer(script_args: TrainScriptArguments, grpo_args, model_args, train_dataset=None,
                  progress_desc: str | None = None, **kwargs):
    """An :class:`AdaClipGRPOTrainer` for parsed recipe arguments.

    Its terminal output is a progress bar (``progress_desc`` labels it), not a dict per step; the
    logged metrics go to ``<output_dir>/metrics.jsonl`` and the ``report_to`` sinks.
    """
    if script_args.trainer == "async":
        from .async_grpo import build_async_trainer
        from .console_callbacks import use_console_callbacks

        trainer = build_async_trainer(script_args.rewards, grpo_args, model_args.model_name_or_path,
                                      train_dataset if train_dataset is not None else load_train_dataset(script_args),
                                      **kwargs)
        use_console_callbacks(trainer, desc=progress_desc)
        return trainer
    from trl import get_peft_config

    from ..rewards import build_reward_funcs
    from .grpo import AdaClipGRPOTrainer
    from .offpolicy import OffPolicyGRPOTrainer

    rollout_config = getattr(grpo_args, "rollout_config", None)  # OffPolicyGRPOConfig's rollout fields
    offpolicy = rollout_config is not None and rollout_config().off_policy
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
    from .console_callbacks import use_console_callbacks

    use_console_callbacks(trainer, desc=progress_desc)
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
    filter_pinned_vllm_warning()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("adaclip_rl").setLevel(logging.INFO)
    try:
        script_args, grpo_args, model_args = parse_recipe(argv)
    except RecipeError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    trainer = build_trainer(script_args, grpo_args, model_args, progress_desc=f"{grpo_args.policy_loss} training")
    trainer.train(resume_from_checkpoint=grpo_args.resume_from_checkpoint)
    trainer.save_model(grpo_args.output_dir)
    if trainer.is_world_process_zero():
        print(f"{PROG}: {run_summary(trainer.state.log_history)}")
        print(f"{PROG}: model in {grpo_args.output_dir}, metrics in {Path(grpo_args.output_dir) / METRICS_FILE}")
    return 0
