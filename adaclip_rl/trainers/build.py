"""Building a trainer from a recipe, as a library: what ``adaclip-rl train`` (:mod:`.cli`), the
staleness study and the tests call.

The YAML recipe is one flat mapping, read by ``trl.TrlParser`` (:func:`make_parser`) into three
dataclasses: :class:`TrainScriptArguments` (data and rewards),
:class:`~adaclip_rl.trainers.config.OffPolicyGRPOConfig` (every TRL GRPO field, ours, and
the off-policy rollout fields) and ``trl.ModelConfig`` (model path, dtype, LoRA); with
``trainer: async``, :class:`~adaclip_rl.trainers.async_config.AdaClipAsyncGRPOConfig` and
:class:`~adaclip_rl.trainers.async_config.AsyncModelArguments`. :func:`build_trainer` builds the
trainer those select (``AdaClipGRPOTrainer``, ``OffPolicyGRPOTrainer`` with partial rollouts or
replay, ``AdaClipAsyncGRPOTrainer``) as TRL's grpo script builds a ``GRPOTrainer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    reward_funcs: list[Any] | None = field(
        default=None,
        metadata={"help": "Reward functions (TRL's key): adaclip-rl's names (math_accuracy, code_accuracy, think_format, "
                  "soft_overlong_penalty, arithmetic_exact, scratchpad_exact), TRL's names (accuracy_reward, "
                  "reasoning_accuracy_reward, think_format_reward, get_soft_overlong_punishment) or a dotted import path "
                  "of a callable with TRL's reward signature (my_pkg.rewards.my_reward). In YAML an entry may be a dict "
                  "{name, weight, kwargs, timeout_s}. Default: math_accuracy."},
    )
    rewards: list[Any] | None = field(
        default=None, metadata={"help": "Alias of reward_funcs (set one of the two)."})
    reward_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A reward model (sequence classification, one label): Hub id or local directory; "
                  "scored before the reward functions, as in TRL's grpo script."},
    )
    dataset_test_split: str = field(
        default="test", metadata={"help": "Split evaluated when eval_strategy is not 'no' (TRL's key)."})
    dataset_streaming: bool = field(default=False, metadata={"help": "Stream the dataset (datasets' streaming mode)."})
    datasets: list[dict[str, Any]] = field(
        default_factory=list,
        metadata={"help": "TRL's dataset mixture: a list of {path, name, data_dir, data_files, split, columns, "
                  "fraction} (trl.DatasetConfig); replaces dataset_name."},
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the mixture's datasets (TRL's key)."})
    test_split_size: float | None = field(
        default=None, metadata={"help": "Split the mixture into train/test with this test size (TRL's key)."})
    ignore_bias_buffers: bool = field(
        default=False, metadata={"help": "TRL's DDP debug flag; GRPO does not use it (only false is accepted)."})
    plot_metrics: bool = field(
        default=True,
        metadata={"help": "Write <output_dir>/metrics.png (adaclip-rl plot) at the end of training; needs matplotlib."},
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
        if self.datasets:
            check_dataset_mixture(self.datasets)
        sources = [name for name in ("dataset_name", "task") if getattr(self, name) is not None]
        sources += ["datasets"] if self.datasets else []
        if not sources:
            raise ValueError("set dataset_name (a Hub id or local path), datasets (TRL's mixture) or task "
                             "(e.g. 'arithmetic')")
        if len(sources) > 1:
            raise ValueError(f"set only one of {', '.join(sources)}")
        if self.ignore_bias_buffers:
            raise ValueError("ignore_bias_buffers must be false: GRPO does not use it (TRL's grpo script ignores it)")
        if self.test_split_size is not None and not (self.datasets and 0 < self.test_split_size):
            raise ValueError(f"test_split_size must be > 0 and needs datasets (TRL's mixture); got "
                             f"{self.test_split_size}")
        if self.task is not None and self.task != "arithmetic":
            raise ValueError(f"task must be 'arithmetic'; got {self.task!r}")
        if self.trainer not in ("sync", "async"):
            raise ValueError(f"trainer must be 'sync' or 'async'; got {self.trainer!r}")
        if self.task_size < 1:
            raise ValueError(f"task_size must be >= 1; got {self.task_size}")
        if self.reward_funcs is not None and self.rewards is not None:
            raise ValueError("set only one of reward_funcs and rewards (its alias)")
        chosen = self.reward_funcs if self.reward_funcs is not None else self.rewards
        if isinstance(chosen, str | dict):
            chosen = [chosen]
        if chosen is None:
            chosen = [] if self.reward_model_name_or_path else ["math_accuracy"]
        if not chosen and not self.reward_model_name_or_path:
            raise ValueError("reward_funcs is empty: list at least one reward (or set reward_model_name_or_path)")
        from ..rewards.registry import check_reward_names

        check_reward_names(chosen, field="reward_funcs" if self.reward_funcs is not None else "rewards")
        self.reward_funcs = self.rewards = list(chosen)


DATASET_CONFIG_KEYS = ("path", "name", "data_dir", "data_files", "split", "columns", "fraction")  # trl.DatasetConfig


def check_dataset_mixture(datasets: Any) -> None:
    """``datasets`` as TRL's ``DatasetMixtureConfig`` takes it: a list of mappings with ``path``."""
    if not isinstance(datasets, list):
        raise ValueError(f"datasets must be a list of {{path, ...}} mappings; got {type(datasets).__name__}")
    for i, entry in enumerate(datasets):
        if not isinstance(entry, dict) or "path" not in entry:
            raise ValueError(f"datasets[{i}] must be a mapping with 'path'; got {entry!r}")
        extra = sorted(set(entry) - set(DATASET_CONFIG_KEYS))
        if extra:
            raise ValueError(f"datasets[{i}] has unknown keys {extra}; allowed: {list(DATASET_CONFIG_KEYS)}")


def make_parser(trainer: str = "sync"):
    from trl import ModelConfig, TrlParser

    if trainer == "async":  # TRL's AsyncGRPOConfig has its own dtype: the model is only a path
        from .async_config import AdaClipAsyncGRPOConfig, AsyncModelArguments

        parser = TrlParser((TrainScriptArguments, AdaClipAsyncGRPOConfig, AsyncModelArguments), prog=PROG)
    else:
        from .config import OffPolicyGRPOConfig

        # OffPolicyGRPOConfig = AdaClipGRPOConfig + the off-policy rollout fields (all default off)
        parser = TrlParser((TrainScriptArguments, OffPolicyGRPOConfig, ModelConfig), prog=PROG)
    parser.error = _parse_error  # one line naming the field, not argparse's usage and exit
    return parser


def _parse_error(message: str) -> None:
    raise RecipeError(" ".join(message.split()))


def _load_raw(args: TrainScriptArguments, split: str):
    """One split of the recipe's data source (a local file or directory, a Hub dataset, or TRL's mixture)."""
    from datasets import Dataset, load_dataset

    if args.datasets:  # TRL's mixture, built by TRL's own get_dataset (as trl/scripts/grpo.py does)
        from trl import DatasetMixtureConfig, get_dataset

        mixture = getattr(args, "_mixture", None)
        if mixture is None:  # built once: the train and test splits come from one random split
            mixture = get_dataset(DatasetMixtureConfig(datasets=[dict(d) for d in args.datasets],
                                                       streaming=args.streaming, test_split_size=args.test_split_size))
            args._mixture = mixture
        if split not in mixture:
            raise ValueError(f"the datasets mixture has no split {split!r} (splits: {list(mixture)}); "
                             "set test_split_size to make a test split")
        return mixture[split]
    name = args.dataset_name
    path = Path(name)
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".json", ".jsonl", ".parquet", ".csv"):
        if split != args.dataset_train_split:
            raise ValueError(f"dataset_name {name!r} is a single file: it has no {split!r} split")
        kind = {"jsonl": "json"}.get(suffix[1:], suffix[1:])
        return load_dataset(kind, data_files=str(path), split="train", streaming=args.dataset_streaming)
    if path.is_dir() and (path / "dataset_info.json").exists():
        if split != args.dataset_train_split:
            raise ValueError(f"dataset_name {name!r} is a saved dataset: it has no {split!r} split")
        return Dataset.load_from_disk(str(path))
    return load_dataset(name, args.dataset_config, split=split, streaming=args.dataset_streaming)


def load_train_dataset(args: TrainScriptArguments, split: str | None = None):
    """The training dataset (or ``split``) with a ``prompt`` column (plus the columns rewards read)."""
    from datasets import Dataset

    if args.task == "arithmetic":
        from ..tasks import ArithmeticTask

        rows = ArithmeticTask(digits=args.task_digits).sample(args.task_size, split or "train", seed=args.task_seed)
        return Dataset.from_list(rows)
    ds = _load_raw(args, split or args.dataset_train_split)
    name = args.dataset_name or "datasets"
    if args.prompt_template is not None:
        template, system, conv = args.prompt_template, args.system_prompt, args.conversational

        def to_prompt(row: dict[str, Any]) -> dict[str, Any]:
            text = template.format(**row)
            if not conv:
                return {"prompt": text}
            msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
            return {"prompt": msgs}

        ds = ds.map(to_prompt)
    columns = ds.column_names  # None for some streamed datasets: TRL reports a missing prompt then
    if columns is not None and "prompt" not in columns:
        raise ValueError(f"dataset {name!r} has no 'prompt' column (columns: {columns}); set prompt_template")
    return ds


def model_init_kwargs(grpo_args, model_args) -> dict[str, Any] | None:
    """``model_init_kwargs`` as TRL's grpo script builds them: revision, attention, dtype, then the
    recipe's own ``model_init_kwargs`` on top (quantization goes to the trainer, as there)."""
    init_kwargs: dict[str, Any] = {}
    if getattr(model_args, "model_revision", None) is not None:
        init_kwargs["revision"] = model_args.model_revision
    if model_args.attn_implementation is not None:
        init_kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.dtype not in (None, "auto"):
        init_kwargs["dtype"] = model_args.dtype
    init_kwargs.update(grpo_args.model_init_kwargs or {})
    return init_kwargs or None


def check_quantization(model_args) -> None:
    """Refuse 4/8-bit loading where bitsandbytes cannot run (it needs a CUDA GPU), naming the field."""
    for name in ("load_in_4bit", "load_in_8bit"):
        if not getattr(model_args, name, False):
            continue
        import importlib.util

        import torch

        if not torch.cuda.is_available():
            raise RecipeError(f"{name}: bitsandbytes quantization needs a CUDA GPU and none is visible; "
                              f"set {name}: false")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise RecipeError(f"{name} needs the package 'bitsandbytes': pip install 'adaclip-rl[qlora]'")


def build_trainer(script_args: TrainScriptArguments, grpo_args, model_args, train_dataset=None,
                  progress_desc: str | None = None, **kwargs):
    """An :class:`AdaClipGRPOTrainer` for parsed recipe arguments, built as TRL's grpo script builds
    a ``GRPOTrainer``: the reward model first, then the reward functions; ``model_revision``,
    ``attn_implementation``, ``dtype`` and 4/8-bit quantization (QLoRA with ``use_peft``) in the
    model's init kwargs; the ``dataset_test_split`` as eval set when ``eval_strategy`` is not ``"no"``.

    Its terminal output is a progress bar (``progress_desc`` labels it), or plain lines in a log
    file; the logged metrics go to ``<output_dir>/metrics.jsonl`` and the ``report_to`` sinks.
    """
    if model_args.model_name_or_path is None:
        raise ValueError("model_name_or_path is required")
    if script_args.trainer == "async":
        from .async_grpo import build_async_trainer
        from .console_callbacks import use_console_callbacks

        if script_args.reward_model_name_or_path:
            raise ValueError("reward_model_name_or_path is not supported with trainer: async (TRL's asynchronous "
                             "GRPO takes reward functions only)")
        trainer = build_async_trainer(script_args.reward_funcs, grpo_args, model_args.model_name_or_path,
                                      train_dataset if train_dataset is not None else load_train_dataset(script_args),
                                      **kwargs)
        use_console_callbacks(trainer, desc=progress_desc)
        return trainer
    from trl import get_peft_config, get_quantization_config

    from ..rewards import build_reward_funcs
    from .grpo import AdaClipGRPOTrainer
    from .offpolicy import OffPolicyGRPOTrainer

    check_quantization(model_args)
    rollout_config = getattr(grpo_args, "rollout_config", None)  # OffPolicyGRPOConfig's rollout fields
    offpolicy = rollout_config is not None and rollout_config().off_policy
    trainer_cls = OffPolicyGRPOTrainer if offpolicy else AdaClipGRPOTrainer
    reward_funcs, weights = build_reward_funcs(script_args.reward_funcs) if script_args.reward_funcs else ([], [])
    if script_args.reward_model_name_or_path:  # first, as in trl/scripts/grpo.py
        reward_funcs, weights = [script_args.reward_model_name_or_path, *reward_funcs], [1.0, *weights]
    if grpo_args.reward_weights is None and any(w != 1.0 for w in weights):
        grpo_args.reward_weights = weights
    grpo_args.model_init_kwargs = model_init_kwargs(grpo_args, model_args)
    periodic_eval = _periodic_eval_callback(script_args)  # validates benchmarks/files before the model loads
    eval_dataset = kwargs.pop("eval_dataset", None)
    if eval_dataset is None and grpo_args.eval_strategy != "no":
        eval_dataset = load_train_dataset(script_args, split=script_args.dataset_test_split)
    trainer = trainer_cls(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=grpo_args,
        train_dataset=train_dataset if train_dataset is not None else load_train_dataset(script_args),
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
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
