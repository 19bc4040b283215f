"""The committed ``adaclip_rl/trainers/generated_fields.py`` is what ``scripts/gen_fields.py`` writes
from the registries now (the registries stay the single source of truth; the module makes every
field visible to grep, IDEs and type checkers)."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from adaclip_rl.losses import BAPOConfig
from adaclip_rl.trainers import adaclip_fields, generated_fields

ROOT = Path(__file__).resolve().parents[2]


def _gen_fields():
    spec = importlib.util.spec_from_file_location("gen_fields", ROOT / "scripts" / "gen_fields.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_module_is_current():
    """Regenerating gives the committed text (run ``python scripts/gen_fields.py`` when this fails)."""
    gen = _gen_fields()
    assert gen.render() == gen.TARGET.read_text(), "run: python scripts/gen_fields.py"
    assert gen.main(["--check"]) == 0


def test_a_changed_registry_default_makes_the_module_stale(monkeypatch):
    """The check can fail: a changed default in a loss config (the owner) changes the rendered text."""
    gen = _gen_fields()
    target = next(f for f in dataclasses.fields(BAPOConfig) if f.name == "target")
    monkeypatch.setattr(target, "default", 0.45)
    text = gen.render()
    assert text != gen.TARGET.read_text()
    assert "    bapo_target: float = field(\n        default=0.45," in text
    assert gen.main(["--check"]) == 1


@pytest.mark.parametrize(("cls", "sources"), [
    (generated_fields.AdaClipTwinFields, ("loss_twins", "clipper_twins", "optimizer_twins")),
    (generated_fields.RolloutTwinFields, ("rollout_twins",)),
])
def test_generated_fields_equal_the_derived_twins(cls, sources):
    """Name, type, default and help of every field, in order, equal the registries' twins."""
    derived = adaclip_fields.twins(*(getattr(adaclip_fields, s) for s in sources))
    written = dataclasses.fields(cls)
    # the annotations, not Field.type: transformers' HfArgumentParser rewrites ``Field.type`` in place
    # (``float | None`` -> ``float``) whenever a parser is built for a config holding these fields
    annotated = typing.get_type_hints(cls)
    assert [f.name for f in written] == [name for name, _, _ in derived]
    for f, (name, tp, twin) in zip(written, derived, strict=True):
        assert (annotated[name], f.default, f.metadata["help"]) == (tp, twin.default, twin.metadata["help"]), name
        assert type(f.default) is type(twin.default), name  # 5000 stays an int where the owner wrote one


def test_no_twin_is_also_written_by_hand_or_by_trl():
    """A twin never shadows a hand-written field (``ChoiceFields``, the async config's own) or a field
    of the TRL config it is mixed into (the rollout twins go into the GRPOConfig-based off-policy
    config only)."""
    from trl import GRPOConfig
    from trl.experimental.async_grpo import AsyncGRPOConfig

    from adaclip_rl.trainers.async_config import AdaClipAsyncGRPOConfig

    def names(cls):
        return {f.name for f in dataclasses.fields(cls)}

    adaclip, rollout = names(generated_fields.AdaClipTwinFields), names(generated_fields.RolloutTwinFields)
    assert not (adaclip | rollout) & names(adaclip_fields.ChoiceFields)
    assert not adaclip & set(AdaClipAsyncGRPOConfig.__annotations__)
    assert not adaclip & (names(GRPOConfig) | names(AsyncGRPOConfig))
    assert not rollout & names(GRPOConfig)
    assert not adaclip & rollout


def test_recipe_fields_are_read_without_importing_torch():
    """The recipe pre-check reads every field (TRL's and the generated ones) from source: no import
    of torch, so a bad key is answered before the heavy imports."""
    code = ("import sys; from adaclip_rl.trainers.recipe_check import recipe_fields; f = recipe_fields(); "
            "assert f['bapo_target'] == 0.4 and f['replay_max_age'] == 4 and 'learning_rate' in f, f; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
