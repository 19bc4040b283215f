"""Name -> optimizer, for trainer configs (``optimizer: adamw | spam | stable_spam``).

Each optimizer's settings are a frozen config dataclass (default and help written once); a trainer
config exposes each field under the optimizer's prefix (``stable_spam_gamma1`` for
``StableSPAMConfig.gamma1``), and takes ``lr``, ``betas``, ``eps`` and ``weight_decay`` from the
fields it already has (``learning_rate``, ``adam_beta1``/``adam_beta2``, ``adam_epsilon``,
``weight_decay``). ``adamw`` is no optimizer of ours: the Trainer builds the one named by TRL's
``optim``. The config defaults are the constructors' (a test checks it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from ..checks import FieldValueError, check_choice
from .spam import SPAM
from .stable_spam import StableSPAM

STATE_DTYPES = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_STATE_DTYPE_HELP = ("dtype of the moments and statistics: 'float32' (e.g. with bf16 parameters; the gradient is "
                     "cast first) or None (the gradient's dtype, as the official code).")
_IN_PLACE_HELP = ("The official code writes the spike-clipped gradient into p.grad; False leaves p.grad as it was "
                  "(no effect on the update).")


@dataclass(frozen=True)
class SPAMConfig:
    """The settings of :class:`~adaclip_rl.optim.SPAM` besides lr/betas/eps/weight_decay."""

    warmup_steps: int = field(default=150, metadata={"help": "SPAM: steps of the cosine step-size warm-up after "
                                                     "each momentum reset."})
    threshold: float = field(default=5000, metadata={"help": "SPAM: spike threshold theta: entries with g^2 > "
                                                     "theta * v are clipped to sign(g) sqrt(theta v) (0: off)."})
    DeltaT: int = field(default=500, metadata={"help": "SPAM: momentum-reset interval in optimizer steps (0: "  # noqa: N815
                                               "never)."})
    grad_accu_steps: int = field(default=20, metadata={"help": "SPAM: steps after the start and after each reset "
                                                       "before spike clipping applies."})
    correct_bias: bool = field(default=True, metadata={"help": "SPAM: Adam bias correction."})
    clip_grad_in_place: bool = field(default=True, metadata={"help": "SPAM: " + _IN_PLACE_HELP})
    state_dtype: str | None = field(default=None, metadata={"help": "SPAM: " + _STATE_DTYPE_HELP})


@dataclass(frozen=True)
class StableSPAMConfig:
    """The settings of :class:`~adaclip_rl.optim.StableSPAM` besides lr/betas/eps/weight_decay."""

    amsgrad: bool = field(default=False, metadata={"help": "Stable-SPAM: AMSGrad maximum of the second moment."})
    gamma1: float = field(default=0.7, metadata={"help": "Stable-SPAM: EMA factor of the gradient-norm mean "
                                                 "(AdaGN) in [0, 1), or -1 for adam_beta1."})
    gamma2: float = field(default=0.9, metadata={"help": "Stable-SPAM: EMA factor of the squared gradient norm "
                                                 "(AdaGN) in [0, 1)."})
    gamma3: float = field(default=0.999, metadata={"help": "Stable-SPAM: EMA factor of max|g| (AdaClip threshold) "
                                                   "in [0, 1)."})
    total_T: int | None = field(default=None, metadata={"help": "Stable-SPAM: if set, beta1 and gamma1 decay "  # noqa: N815
                                                        "by a cosine to eta_min at this step (the official "
                                                        "README: the total number of updates)."})
    eta_min: float = field(default=0.5, metadata={"help": "Stable-SPAM: floor of that cosine, in [0, 1]."})
    update_proj_gap: int = field(default=1000, metadata={"help": "Stable-SPAM: momentum-reset interval in "
                                                         "optimizer steps (0: never)."})
    reset_moments_first: bool = field(default=False, metadata={
        "help": "Stable-SPAM: zero the moments before the update of a reset step (official: that update reads "
                "the old moments with the bias correction of step 1)."})
    separate_stats_step: bool = field(default=False, metadata={
        "help": "Stable-SPAM: bias-correct max|g| and the norm EMAs with their own step count (official: the "
                "Adam step that the reset sets back to 1, which switches spike clipping off after each reset)."})
    clip_grad_in_place: bool = field(default=True, metadata={"help": "Stable-SPAM: " + _IN_PLACE_HELP})
    state_dtype: str | None = field(default=None, metadata={"help": "Stable-SPAM: " + _STATE_DTYPE_HELP})


FROM_TRAINER = {"lr": "learning_rate", "eps": "adam_epsilon", "weight_decay": "weight_decay"}
"""Constructor argument -> the trainer field it is taken from (``betas``: ``adam_beta1``, ``adam_beta2``)."""


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer: ``cls`` None for ``adamw`` (the Trainer's own ``optim``)."""

    name: str
    cls: type[torch.optim.Optimizer] | None = None
    config_cls: type | None = None
    prefix: str = ""
    renamed: Mapping[str, str] = field(default_factory=dict)

    def trainer_field(self, name: str) -> str:
        """The trainer config's name for config field ``name``."""
        return self.renamed.get(name, self.prefix + name)

    def own_fields(self) -> tuple:
        return fields(self.config_cls) if self.config_cls is not None else ()

    def config_from(self, source: Any) -> Any:
        """The config from a trainer config's (or namespace's) fields."""
        return self.config_cls(**{f.name: getattr(source, self.trainer_field(f.name)) for f in self.own_fields()})

    def kwargs_from(self, source: Any) -> dict[str, Any]:
        """Constructor keyword arguments from a trainer config (TRL's fields for lr/betas/eps/weight_decay)."""
        kwargs = {a: getattr(source, f) for a, f in FROM_TRAINER.items()}
        kwargs["betas"] = (source.adam_beta1, source.adam_beta2)
        for f in self.own_fields():
            kwargs[f.name] = getattr(source, self.trainer_field(f.name))
        if "state_dtype" in kwargs:
            check_choice(self.trainer_field("state_dtype"), kwargs["state_dtype"], list(STATE_DTYPES))
            kwargs["state_dtype"] = STATE_DTYPES[kwargs["state_dtype"]]
        return kwargs

    def build_from(self, params: Iterable[Any], source: Any, **extra: Any) -> torch.optim.Optimizer | None:
        """The optimizer over ``params`` for a trainer config; a refused value raises
        :class:`~adaclip_rl.checks.FieldValueError` naming the trainer's field."""
        if self.cls is None:
            return None
        names = {f.name: self.trainer_field(f.name) for f in self.own_fields()}
        names.update(FROM_TRAINER)
        names["betas"] = "(adam_beta1, adam_beta2)"
        try:
            return self.cls(params, **self.kwargs_from(source), **extra)
        except FieldValueError as e:
            raise e.renamed(names) from None

    def check(self, source: Any) -> None:
        """Build on a dummy parameter, so that a refused value is reported at config construction."""
        if self.cls is not None:
            self.build_from([torch.nn.Parameter(torch.zeros(1))], source)


OPTIMIZER_SPECS: dict[str, OptimizerSpec] = {
    "adamw": OptimizerSpec("adamw"),
    "spam": OptimizerSpec("spam", SPAM, SPAMConfig, "spam_", renamed={"DeltaT": "spam_delta_t"}),
    "stable_spam": OptimizerSpec("stable_spam", StableSPAM, StableSPAMConfig, "stable_spam_",
                                 renamed={"total_T": "stable_spam_total_t"}),
}


def get_optimizer_spec(name: str | None) -> OptimizerSpec:
    """The :class:`OptimizerSpec` of ``name`` (``None`` means ``"adamw"``)."""
    key = "adamw" if name is None else str(name).lower()
    if key not in OPTIMIZER_SPECS:
        raise FieldValueError(f"{{0}} must be one of {sorted(OPTIMIZER_SPECS)}; got {name!r}", "optimizer")
    return OPTIMIZER_SPECS[key]
