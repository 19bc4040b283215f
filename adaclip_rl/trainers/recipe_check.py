"""A recipe's keys and values, checked before TRL is imported.

Importing TRL's config classes takes 3-4 s (transformers, peft, torch), so ``adaclip-rl train``
would answer a typo only after that. This module answers the common mistakes at once:

* **unknown keys**: the fields of the parser's dataclasses (``TrainScriptArguments``,
  ``OffPolicyGRPOConfig`` with its bases ``AdaClipGRPOConfig`` -> ``trl.GRPOConfig`` ->
  ``transformers.TrainingArguments``, and ``trl.ModelConfig``) are read from their *source* with
  :mod:`ast` (the installed files, so the set follows the installed versions), never imported;
  the fields derived from the registries are read the same way from the committed
  :mod:`adaclip_rl.trainers.generated_fields` (written by ``scripts/gen_fields.py``), so nothing
  is imported (not even torch);
* **invalid adaclip-rl values**: the same check functions that the config's ``__post_init__``
  runs (:mod:`adaclip_rl.trainers.field_checks`), applied to the recipe's values over the fields'
  literal defaults.

It only ever *adds* an earlier answer: whenever it cannot decide (a source it cannot read, a field
whose default is not a literal, a value whose type the parser would still convert), it stays
silent and the full parse decides. A test pins the field names and defaults read here to
``dataclasses.fields`` of the real classes.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import fields as dataclass_fields
from functools import cache
from pathlib import Path
from typing import Any

# The dataclasses that ``adaclip-rl train`` parses a recipe into (trainers.build.make_parser).
PARSER_CLASSES: tuple[tuple[str, str], ...] = (
    ("adaclip_rl.trainers.build", "TrainScriptArguments"),
    ("adaclip_rl.trainers.config", "OffPolicyGRPOConfig"),
    ("trl.trainer.model_config", "ModelConfig"),
)
# ... and with ``trainer: async``.
ASYNC_PARSER_CLASSES: tuple[tuple[str, str], ...] = (
    ("adaclip_rl.trainers.build", "TrainScriptArguments"),
    ("adaclip_rl.trainers.async_config", "AdaClipAsyncGRPOConfig"),
    ("adaclip_rl.trainers.async_config", "AsyncModelArguments"),
)
# The GRPOConfig fields the adaclip-rl checks read that TRL's AsyncGRPOConfig lacks, as
# async_config._AsyncFieldView supplies them (a test pins the two equal; that module imports TRL).
ASYNC_FIELD_DEFAULTS: dict[str, Any] = {"loss_type": "dapo", "delta": None, "steps_per_generation": None}
# Base classes imported from a package whose __init__ loads lazily: where they are defined.
DEFINED_IN = {
    "TrainingArguments": "transformers.training_args",
    "GRPOConfig": "trl.trainer.grpo_config",
    "AsyncGRPOConfig": "trl.experimental.async_grpo.async_grpo_config",
}
# Keys TrlParser takes from a recipe besides the fields.
PARSER_KEYS = frozenset({"env"})


class Undecidable(Exception):
    """The pre-check cannot tell; the full parse decides."""


class _NoLiteralDefault:
    def __repr__(self) -> str:
        return "<no literal default>"


NO_LITERAL_DEFAULT = _NoLiteralDefault()


def _module_file(module: str) -> Path:
    """The source file of ``module``, found without importing it (nor its packages)."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        raise Undecidable(f"package {top!r} not found")
    base = Path(spec.origin).parent
    path = base.joinpath(*rest)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise Undecidable(f"no source file for {module!r}")


def _resolve(module: str, imported: str, level: int) -> str:
    if level == 0:
        return imported
    package = module.split(".")[: -level]
    return ".".join([*package, imported] if imported else package)


def _literal_default(value: ast.expr | None) -> Any:
    """The field's default when it is a literal (``x: int = 3`` or ``field(default=3, ...)``)."""
    if value is None:
        return NO_LITERAL_DEFAULT  # a required field
    if isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", None)) == "field":
        value = next((kw.value for kw in value.keywords if kw.arg == "default"), None)
        if value is None:
            return NO_LITERAL_DEFAULT  # default_factory or required
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError):
        return NO_LITERAL_DEFAULT


@cache
def class_fields(module: str, name: str) -> dict[str, Any]:
    """Field name -> literal default (or :data:`NO_LITERAL_DEFAULT`) of a dataclass, bases first."""
    tree = ast.parse(_module_file(module).read_text())
    imports: dict[str, str] = {}
    classes: dict[str, ast.ClassDef] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                imports[alias.asname or alias.name] = _resolve(module, node.module or "", node.level)
        elif isinstance(node, ast.ClassDef):
            classes[node.name] = node
    if name not in classes:
        raise Undecidable(f"class {name!r} not defined in {module!r}")
    found: dict[str, Any] = {}
    for base in classes[name].bases:
        base_name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
        if base_name is None or base_name == "object":
            continue
        base_module = DEFINED_IN.get(base_name) or (module if base_name in classes else imports.get(base_name))
        if base_module is None:
            raise Undecidable(f"base {base_name!r} of {name!r} not found")
        found.update(class_fields(base_module, base_name))
    for stmt in classes[name].body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if "ClassVar" in ast.unparse(stmt.annotation):
                continue
            found[stmt.target.id] = _literal_default(stmt.value)
            _ANNOTATIONS.setdefault(stmt.target.id, ast.unparse(stmt.annotation))
    return found


# Field name -> its annotation as written in the source (the first class that declares it).
_ANNOTATIONS: dict[str, str] = {}


def parser_classes(trainer: str = "sync") -> tuple[tuple[str, str], ...]:
    """The parser's dataclasses for ``trainer`` (``"sync"`` or ``"async"``)."""
    return ASYNC_PARSER_CLASSES if trainer == "async" else PARSER_CLASSES


@cache
def recipe_fields(trainer: str = "sync") -> dict[str, Any]:
    """Every key a recipe may hold (field -> literal default), read from source."""
    merged: dict[str, Any] = {}
    for module, name in parser_classes(trainer):
        merged.update(class_fields(module, name))
    return merged


# A scalar annotation -> (the Python types a YAML value of it may have, the word for the message).
_SCALAR_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "float": ((int, float), "a number"),
    "int": ((int,), "an integer"),
    "bool": ((bool,), "true or false"),
}


def _check_types(values: Mapping[str, Any], keys: Sequence[str]) -> None:
    """A recipe value whose type certainly cannot be the field's (``learning_rate: fast``)."""
    for key in keys:
        annotation = _ANNOTATIONS.get(key, "").replace(" ", "")
        optional = annotation.endswith("|None") or annotation.startswith("Optional[")
        base = annotation.removesuffix("|None").removeprefix("Optional[").removesuffix("]") if optional else annotation
        if base not in _SCALAR_TYPES:
            continue
        value = values[key]
        types, word = _SCALAR_TYPES[base]
        if value is None and optional:
            continue
        if isinstance(value, str):  # the parser converts strings: check that it can
            try:
                {"float": float, "int": int}.get(base, lambda v: v)(value)
                if base != "bool" or value.lower() in ("true", "false", "yes", "no", "1", "0"):
                    continue
            except ValueError:
                pass
        elif isinstance(value, types) and not (base != "bool" and isinstance(value, bool)):
            continue
        raise ValueError(f"{key} must be {word}{' or null' if optional else ''}; got {value!r}")


class _Values:
    """Attribute access over the recipe's values and the fields' literal defaults."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            value = self._values[name]
        except KeyError:
            raise Undecidable(f"field {name!r} unknown") from None
        if value is NO_LITERAL_DEFAULT:
            raise Undecidable(f"field {name!r} has no literal default")
        return value


def _overrides(argv: Sequence[str]) -> dict[str, Any]:
    """``--name value`` pairs of the command line (values read as YAML scalars, as a recipe would be)."""
    import yaml

    found: dict[str, Any] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        token = args[i]
        if token.startswith("--"):
            key, eq, value = token[2:].partition("=")
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            elif not eq:
                value = "true"
            try:
                found[key] = yaml.safe_load(value)
            except yaml.YAMLError:
                found[key] = value
        i += 1
    return found


def precheck(recipe: Mapping[str, Any], argv: Sequence[str] = (), trainer: str = "sync") -> None:
    """Raise ``ValueError`` (naming the key or field) for what is certainly wrong in ``recipe``.

    ``argv`` are the command-line flags other than ``--config FILE``; they override the recipe.
    ``trainer`` (``"sync"``/``"async"``) picks the parser's dataclasses. Silent when everything it
    can decide is right, or when it cannot decide.
    """
    try:
        known = recipe_fields(trainer)
    except (Undecidable, OSError, SyntaxError):
        return
    unknown = [key for key in recipe if key not in known and key not in PARSER_KEYS]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(known), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(hints)}: not a field of "
                         f"{', '.join(name for _, name in parser_classes(trainer))}")
    overrides = {k: v for k, v in _overrides(argv).items() if k in known}
    values = {**known, **recipe, **overrides}
    _check_types(values, [k for k in {**recipe, **overrides} if k in known])
    from . import field_checks

    try:
        _check_script_arguments(values)
        if trainer == "async":  # the checks AdaClipAsyncGRPOConfig runs, over the same view of its fields
            field_checks.validate_adaclip_fields(_Values({**ASYNC_FIELD_DEFAULTS, **values}))
            return
        namespace = _Values(values)
        field_checks.validate_adaclip_fields(namespace)
        field_checks.validate_rollout_fields(namespace)
    except (Undecidable, TypeError, AttributeError):
        return


def _check_script_arguments(values: Mapping[str, Any]) -> None:
    from .build import TrainScriptArguments

    names = [f.name for f in dataclass_fields(TrainScriptArguments)]
    kwargs = {n: values[n] for n in names if values.get(n, NO_LITERAL_DEFAULT) is not NO_LITERAL_DEFAULT}
    TrainScriptArguments(**kwargs)
