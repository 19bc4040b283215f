"""``adaclip-rl train --help``: the command's own options and the adaclip-rl fields, without TRL.

The parser's full help (every ``trl.GRPOConfig``, ``transformers.TrainingArguments`` and
``trl.ModelConfig`` field, about 1,600 lines) stays behind ``--help-all``.
"""

from __future__ import annotations

import textwrap
from dataclasses import MISSING, Field, fields

from .build import PROG

MODEL_FIELDS = ("model_name_or_path", "model_revision", "dtype", "attn_implementation", "use_peft", "lora_r",
                "lora_alpha", "lora_target_modules", "load_in_4bit", "load_in_8bit")


def _default(f: Field) -> str:
    if f.default is not MISSING:
        return repr(f.default)
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return repr(f.default_factory())  # type: ignore[misc]
    return "required"


def _section(title: str, items: list[Field]) -> list[str]:
    lines = ["", f"{title}:"]
    for f in items:
        help_text = " ".join(str(f.metadata.get("help", "")).split())
        lines.append(f"  --{f.name} (default {_default(f)})")
        lines += textwrap.wrap(help_text, width=100, initial_indent="      ", subsequent_indent="      ")
    return lines


def short_help() -> str:
    """The help text: usage with ``--config``, the command's flags, the adaclip-rl fields."""
    from .adaclip_fields import AdaClipFields, RolloutFields
    from .build import TrainScriptArguments

    lines = [
        f"usage: {PROG} --config RECIPE.yaml [--FIELD VALUE ...] [--no-plot]",
        "",
        "Train with a YAML recipe in TRL's style: one flat mapping of field: value, the keys of `trl grpo`",
        "(reward_funcs, reward_model_name_or_path, datasets, dataset_test_split, model_revision, load_in_4bit, ...)",
        "plus the adaclip-rl fields below. A --FIELD VALUE flag overrides the recipe's value.",
        "",
        "options:",
        "  --config RECIPE.yaml  the recipe (examples: configs/recipes/, adaclip_rl/data/recipes/)",
        "  --no-plot             do not write <output_dir>/metrics.png at the end (same as plot_metrics: false)",
        "  --help-all            every field: TRL's GRPOConfig, transformers' TrainingArguments, TRL's ModelConfig",
        "  -h, --help            this text",
    ]
    lines += _section("data, rewards and run (adaclip-rl's script arguments, TRL's script keys)",
                      list(fields(TrainScriptArguments)))
    lines += _section("adaclip-rl loss and gradient-clipping fields", list(fields(AdaClipFields)))
    lines += _section("off-policy rollout fields (synchronous trainer)", list(fields(RolloutFields)))
    lines += ["", "model (TRL's ModelConfig; see --help-all): " + ", ".join(MODEL_FIELDS) + ", ..."]
    return "\n".join(lines)
