"""The TRL seam (:mod:`adaclip_rl._trl_compat`): tripwires on every TRL/transformers function it
mirrors, overrides or patches; the version check; the global swap; and the rule that no other module
of the package names a private TRL/transformers attribute."""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import sys
import textwrap
import types
from functools import cache
from pathlib import Path

import pytest

from adaclip_rl import _trl_compat
from adaclip_rl._trl_compat import MIRRORED, check_versions, swapped_globals, version_problems

PACKAGE = Path(_trl_compat.__file__).resolve().parents[1]  # adaclip_rl/
SEAM = PACKAGE / "_trl_compat"
PRIVATE_OWNERS = ("trl", "transformers")

# --------------------------------------------------------------------------- tripwires
# sha256 of inspect.getsource(<function>) under TRL 1.16.0 / transformers 5.19.0
# (constraints/cpu-x86_64.txt), and what to re-check in adaclip-rl when the source changes.
TRIPWIRES: dict[str, tuple[str, str]] = {
    "trl.trainer.grpo_trainer.GRPOTrainer.__init__": (
        "18f01b7a46c9544b23d74e822bafa4cb087426c6285d549ebe7c1f58aa088801",
        "it builds VLLMGeneration by its module name (swapped by _trl_compat.grpo.vllm_engine_sized, with "
        "max_num_seqs as a keyword) and sets the private state GRPOTrainerSeam exposes (_step, _buffered_inputs, "
        "_entropy_bonus_enabled, _last_world_entropy, _entropy_window_stats, _last_loaded_step, _metrics); "
        "run tests/trainers/test_offpolicy_units.py and test_parity.py"),
    "trl.trainer.grpo_trainer.GRPOTrainer._compute_loss": (
        "80295546bbdbf6f711acce7f6e69b0100ab40aa8f23ed8052cc564ff024e3e40",
        "AdaClipGRPOTrainer.compute_policy_loss and _loss_inputs mirror it step by step: re-check the order of the "
        "entropy mask, off-policy mask, importance-sampling level, KL (bias correction), per-loss_type aggregation "
        "and accumulation scaling, vLLM IS correction, entropy bonus and adaptive controller (_add_entropy_bonus), "
        "aux loss and metrics; extend test_parity.py to any new branch and run it"),
    "trl.trainer.grpo_trainer.GRPOTrainer._generate_and_score_completions": (
        "1fa48922792dcd5c72da155cfe99db477771a7c61cde15519fe8c86d0cdc0b65",
        "OffPolicyGRPOTrainer._behaviour_as_old_logps (GRPOTrainerSeam.first_logps_call_returns) relies on the "
        "old-log-prob forward being its FIRST _get_per_token_logps_and_entropies call, and on the batch keys "
        "old_per_token_logps / sampling_per_token_logps / importance_sampling_ratio / ref_per_token_logps and the "
        "sampling/* metric names; AdaClipGRPOTrainer switches beta to get ref log-probs; run test_offpolicy.py"),
    "trl.trainer.grpo_trainer.GRPOTrainer._get_per_token_logps_and_entropies": (
        "ea73c3909275851d0cd664b1e7694905fdcd9c285e848ae923d7402234f2edce",
        "its signature and the (logps, entropies, aux_loss) return that the trainers and the off-policy "
        "stand-in (behaviour_logps) reproduce"),
    "trl.trainer.grpo_trainer.GRPOTrainer._calculate_rewards": (
        "736ae29b083840b5da2638b55ad1258659c644589991fe6a494131354952efef",
        "OffPolicyGRPOTrainer.calculate_rewards keeps its (rows x reward functions) result, gathered over ranks, "
        "for the replay buffer (rows of this rank sliced by process_index)"),
    "trl.trainer.grpo_trainer.GRPOTrainer._tokenize_prompts": (
        "d2d27f7c9bfda85f1c3225785fa2f09466c428803be6afa8a6c46290f7171a15",
        "OffPolicyGRPOTrainer reads prompt ids as the first of its three results"),
    "trl.trainer.grpo_trainer.GRPOTrainer._generate": (
        "2a27fdf8f5e6f3562508eec3efb9e9dade2e0bf810de5031cdfab429d0a048f2",
        "TRL pushes weights into vLLM when global_step != _last_loaded_step and calls rollout_func; the "
        "off-policy trainer pushes itself and sets _last_loaded_step (mark_weights_synced) so TRL skips its push"),
    "trl.generation.vllm_generation.VLLMGeneration.__init__": (
        "3b2cda6d35bb97b43f07fe868439c52d34c0ce214b921deb8a1b417440c89771",
        "vllm_engine_sized subclasses it and passes max_num_seqs as a keyword"),
    "trl.generation.vllm_generation.VLLMGeneration._init_vllm": (
        "0e584002e0f6a9c006aaec0e91ecc996ae8c0d3b2ff8491fbf08b484a57d20ce",
        "it builds vllm.LLM by its module name (swapped by vllm_engine_sized to drop chunked prefill on CPU; "
        "needed for per-request seeds, rollout/vllm_engine.py) with max_num_seqs"),
    "trl.generation.vllm_generation.VLLMGeneration._iter_named_params": (
        "baab615d5c7bc3e126cec1430f29213c984b275285b08a269cbfbf0adc2617b8",
        "the off-policy weight push streams these (name, tensor) pairs into vLLM's layerwise reload; the names "
        "must stay vLLM's (test_offpolicy.py weight-sync tests)"),
    "trl.experimental.async_grpo.async_grpo_trainer.AsyncGRPOTrainer.__init__": (
        "8ef1227654a229e7256648687eea5373bf1f77adcfd1195d81117c32f244616f",
        "it reads get_peak_flops_per_device and AsyncRolloutWorker by module name (swapped in "
        "AsyncGRPOTrainerSeam.__init__), registers TREE_ATTENTION, and initialises the _step_* accounting "
        "account_forward adds to; run test_async_grpo.py"),
    "trl.experimental.async_grpo.async_grpo_trainer.AsyncGRPOTrainer.compute_loss": (
        "5c0c485d130acb071e3c9a4d2fbceff8781b0f03fc26508f1a2597bb90cc8dff",
        "AdaClipAsyncGRPOTrainer._forward_packed mirrors its unpacking and forward, compute_loss its aggregation "
        "(token sum / tokens per rank / accumulation), and AsyncGRPOTrainerSeam.account_forward its per-step "
        "accounting; run test_async_grpo.py::test_grpo_matches_trl_async_loss"),
    "trl.experimental.async_grpo.async_grpo_trainer.AsyncGRPOTrainer.get_train_dataloader": (
        "2950938428f1c1830673de850c9964f0ba84ad688344e9dc4b65b906665598c4",
        "it builds RolloutQueueDataset and DataCollatorForRollout by module name (swapped by "
        "AsyncGRPOTrainerSeam.get_train_dataloader for the token-version subclasses) with these arguments"),
    "trl.experimental.async_grpo.async_grpo_trainer.AsyncGRPOTrainer._set_signature_columns_if_needed": (
        "b8f1abd784851c839ccd15632eebb8ff95571b6202535ed2be208c350473a7ed",
        "the seam appends extra_signature_columns (token_versions) to the list it sets"),
    "trl.experimental.async_grpo.async_grpo_trainer.AsyncGRPOTrainer._log_step_metrics": (
        "6880db067d12921e39e53785b1a8586620acd98d17f8ab8170f7ac5933ca0260",
        "it reads and resets the _step_* counters account_forward fills"),
    "trl.experimental.async_grpo.async_grpo_trainer.AsyncGRPOTrainer._sync_weight": (
        "38e9a8cb3b240a068f98e82587775f8ae012a67d919d02ce72015b0f01ce0569",
        "the seam calls after_weight_sync after it; TRL bumps model_version on the main process only, and "
        "AdaClipAsyncGRPOTrainer broadcasts it to every rank there (tests/distributed/test_scale_async.py)"),
    "trl.experimental.async_grpo.async_grpo_trainer.RolloutQueueDataset.__iter__": (
        "d92a084c61a3511c7d225682121fa89a3a2e72ded84f2b39d0945a690b76ef88",
        "_VersionedQueueDataset wraps the queue and reads the sample it handed out last (one get per item)"),
    "trl.experimental.async_grpo.async_grpo_trainer.DataCollatorForRollout.torch_call": (
        "fc1ce59367d57b6f21845093f2ad939b581e7a7288edf71ca2562a786bda09aa",
        "_VersionedCollator lays token_versions out in TreeRow.pack's order of loss terms"),
    "trl.experimental.async_grpo.async_rollout_worker._AsyncRolloutLoop._generate_one_turn": (
        "3bb24a643860d38e8a4fb2b84cd65bef612d95194acfb25f37bc2d0fd7267fef",
        "VersionedRolloutLoop.generate_one_turn replaces it with a /inference/v1/generate request: re-check the "
        "sampling parameters it sends and its (ids, logprobs) result"),
    "trl.experimental.async_grpo.async_rollout_worker._AsyncRolloutLoop._generate_one": (
        "a412fb0898da0d9555e22335551383101cd38f09a9ec9362bb5d1ef8c8caafc9",
        "VersionedRolloutLoop.generate_one maps each turn's versions onto the TrainingSequence rows (result[2])"),
    "trl.experimental.async_grpo.async_rollout_worker._AsyncRolloutLoop._score_group": (
        "d032308d2e87d9713561cada152d68d5150b0a169e3a01d1f3be57fd03b16f54",
        "VersionedRolloutLoop.score_group assumes one sample per TrainingSequence row, in row order"),
    "trl.experimental.async_grpo.async_rollout_worker._AsyncRolloutLoop._retry": (
        "6fb5ab3a5656aae0cd66353208f7b1f5ba3853245aa7c3aa3beec329be591173",
        "RolloutLoopSeam.post_with_retry calls it with max_attempts and label"),
    "trl.experimental.async_grpo.async_rollout_worker._AsyncRolloutLoop._post": (
        "659870d543738df854ca57817498875b4a65e53ec05224527f4b82271be29390",
        "RolloutLoopSeam.post_with_retry calls it with (path, payload, timeout)"),
    "trl.experimental.async_grpo.async_rollout_worker.AsyncRolloutWorker.__init__": (
        "4421bac6f1128f93a5a20f8353565b902ce5bcc963190c639984501de683c0c8",
        "RolloutWorkerSeam reads _loop_kwargs (vllm_server_url) and _process / _stop_event_mp in stop"),
    "trl.experimental.async_grpo.async_rollout_worker.AsyncRolloutWorker.start": (
        "32344ffaef4ab4849986b398b8a8278519960ca4abf05b32422eff63a7b78e7f",
        "it spawns the child with the class attribute _loop_cls (RolloutWorkerSeam.loop_cls sets it)"),
    "trl.experimental.async_grpo.async_rollout_worker.AsyncRolloutWorker.stop": (
        "e53629230ba4d6ebf7555dc04aa48eb072c2de99b2b94799c67ce61d888bf63c",
        "RolloutWorkerSeam.stop mirrors it with a stop_timeout_s join"),
    "trl.experimental.async_grpo.packing.tree_attention": (
        "558ae72eccb3310e9a4f0a35e4f16a865351183a41fd824af9eb250e552af1cb",
        "trainers/cpu_tree_attention.py reproduces its semantics (segments, bottom-right causal alignment, "
        "sliding window, softcap) on CPU; run test_async_grpo.py's attention tests"),
    "transformers.trainer.Trainer._clip_grad_norm": (
        "ebfa9dc91d3088aba72171b63dad101b1d91d8470b871394b027302e472487a4",
        "TrainerSeam maps it to clip_gradients; AdaptiveGradClipMixin returns the pre-clip norm as it does "
        "(and unscales first); run tests/gradclip and test_train.py"),
    "transformers.trainer.Trainer._save_checkpoint": (
        "a9111e30faa9933986e022e56b5af81fd990356db64d727b4c320c852283bf3b",
        "TrainerSeam writes the extras after it into <output_dir>/checkpoint-<global_step>; run test_resume.py"),
    "transformers.trainer.Trainer._load_optimizer_and_scheduler": (
        "741032f57d6fb80211506bf521f67bdd0ff876ad39cc50e700c9c2bab2efb251",
        "TrainerSeam restores the extras after it, on resume only; run test_resume.py"),
    "transformers.trainer.Trainer._get_output_dir": (
        "97172085342ac46c33cb3d63ab5160c33eb66d24e3a0e5c339c5bbb8b3862980",
        "TrainerSeam derives the checkpoint folder from it as _save_checkpoint does"),
}


def _resolve(qualified: str):
    """The function named ``package.module.Class.member`` (or ``package.module.function``)."""
    parts = qualified.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = obj.__dict__[name] if isinstance(obj, type) else getattr(obj, name)
        return obj.fget if isinstance(obj, property) else obj
    raise ImportError(qualified)


def source_sha256(qualified: str) -> str:
    return hashlib.sha256(inspect.getsource(_resolve(qualified)).encode()).hexdigest()


def test_every_mirrored_function_has_a_tripwire():
    assert set(TRIPWIRES) == set(MIRRORED)


@pytest.mark.parametrize("qualified", sorted(TRIPWIRES))
def test_tripwire(qualified):
    """Fails when TRL or transformers changes a function the seam mirrors, overrides or patches."""
    import transformers
    import trl

    pinned, recheck = TRIPWIRES[qualified]
    digest = source_sha256(qualified)
    assert digest == pinned, (
        f"TRL {trl.__version__} / transformers {transformers.__version__} changed {qualified}. Re-check: {recheck}. "
        f"Then pin the new hash {digest} in tests/trainers/test_trl_seam.py.")


def test_tripwire_sees_a_changed_source(monkeypatch):
    """The hash is of the source text: one changed character changes it (so a tripwire can fail)."""
    qualified = "transformers.trainer.Trainer._get_output_dir"
    real = inspect.getsource

    def edited(obj):
        return real(obj).replace("return", "return ", 1) if obj is _resolve(qualified) else real(obj)

    monkeypatch.setattr(inspect, "getsource", edited)
    assert source_sha256(qualified) != TRIPWIRES[qualified][0]


# --------------------------------------------------------------------------- versions
def test_installed_versions_are_supported():
    import transformers
    import trl

    assert version_problems(trl.__version__, transformers.__version__) == []


@pytest.mark.parametrize(("trl_version", "transformers_version", "bad"), [
    ("1.15.2", "5.19.0", "trl"), ("1.17.0", "5.19.0", "trl"), ("1.16.0", "5.16.0", "transformers"),
    ("1.16.0", "5.20.0", "transformers"), ("2.0.0", "6.0.0", "trl"),
])
def test_version_check_refuses_untested_versions(trl_version, transformers_version, bad, monkeypatch):
    monkeypatch.delenv(_trl_compat.ALLOW_UNTESTED_ENV, raising=False)
    with pytest.raises(ImportError, match=rf"{bad} \S+ is installed; adaclip-rl supports {bad}>="):
        check_versions(trl_version, transformers_version)
    monkeypatch.setenv(_trl_compat.ALLOW_UNTESTED_ENV, "1")
    with pytest.warns(UserWarning, match="is installed; adaclip-rl supports"):
        check_versions(trl_version, transformers_version)


def test_version_range_matches_pyproject_and_constraints():
    """pyproject.toml's transformers/trl bounds and the pinned stack lie in the seam's range."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    root = PACKAGE.parent
    import tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    deps = {r.name: r for r in map(Requirement, project["dependencies"])}
    low, high = _trl_compat.TRANSFORMERS_RANGE
    assert Version(low) in deps["transformers"].specifier and Version(high) not in deps["transformers"].specifier
    assert str(deps["transformers"].specifier) == f"<{high},>={low}"
    pins = dict(line.split("==") for line in (root / "constraints" / "cpu-x86_64.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert version_problems(pins["trl"], pins["transformers"]) == []


# --------------------------------------------------------------------------- global swaps
def test_swapped_globals_restores_on_error():
    module = types.ModuleType("m")
    module.a, module.b = 1, 2
    with pytest.raises(RuntimeError), swapped_globals(module, a=10, b=20):
        assert (module.a, module.b) == (10, 20)
        raise RuntimeError
    assert (module.a, module.b) == (1, 2)
    with pytest.raises(AttributeError, match="has no"), swapped_globals(module, c=3):
        pass


# --------------------------------------------------------------------------- the private-name rule
def _library_modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if SEAM in path.parents:
            continue
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.append((".".join(parts), path))
    return found


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _owner(module_name: str | None) -> bool:
    return bool(module_name) and module_name.split(".")[0] in PRIVATE_OWNERS


@cache
def _private_members(cls: type) -> frozenset[str]:
    """Private names a TRL/transformers class defines: its private class attributes (methods,
    properties, constants) and the ``self._x`` it assigns in its source."""
    names = {n for n in vars(cls) if _is_private(n)}
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return frozenset(names)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name)
                and node.value.id == "self" and _is_private(node.attr)):
            names.add(node.attr)
    return frozenset(names)


def _owner_mro_private(cls: type) -> frozenset[str]:
    found: set[str] = set()
    for base in cls.__mro__:
        if _owner(base.__module__):
            found |= _private_members(base)
    return frozenset(found)


def _own_private_names(trees: list[ast.AST]) -> set[str]:
    """Private names adaclip-rl itself defines (functions, classes, ``x._y = ...`` assignments)."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and _is_private(node.name):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _is_private(node.attr):
                names.add(node.attr)
            elif isinstance(node, ast.AnnAssign | ast.Assign):
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                    if isinstance(target, ast.Name) and _is_private(target.id):
                        names.add(target.id)
    return names


def _is_self_like(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id in ("self", "cls")
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"


def _foreign_private_names(classes: list[type]) -> set[str]:
    """Private members of every class defined in a loaded ``trl`` module, and of the
    ``transformers`` classes in the MROs of ``classes``."""
    found: set[str] = set()
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").split(".")[0] != "trl":
            continue
        for obj in list(vars(module).values()):
            if isinstance(obj, type) and obj.__module__ == module.__name__:
                found |= _private_members(obj)
    for cls in classes:
        found |= _owner_mro_private(cls)
    return found


def private_name_violations(modules: list[tuple[str, Path]] | None = None) -> list[str]:
    """Every place outside ``adaclip_rl/_trl_compat/`` that names a private TRL/transformers attribute.

    A name is *private* when it starts with ``_`` and is not a dunder. A module outside the seam
    violates the rule where it

    1. imports a private name or module from ``trl``/``transformers``
       (``from trl.x import _y``, ``import trl._x``, ``from trl._x import y``);
    2. reads or writes ``N._y`` or ``N.a.b._y`` where ``N`` is a name the module bound by importing
       from ``trl``/``transformers`` (a module alias such as ``agt`` or an imported class);
    3. inside a class whose MRO (the imported class) contains a ``trl``/``transformers`` class, or
       a mixin of the package that such a class combines with TRL's (the grad-clip mixin):
       defines (``def _y`` / ``_y = ...`` in the class body: an override) or accesses
       (``self._y``, ``cls._y``, ``super()._y``) a private name that one of those classes defines
       (a private class attribute or a ``self._y = ...`` in its source);
    4. accesses ``expr._y`` on any other object where ``_y`` is a private member of a class defined in
       a loaded ``trl`` module or of a ``transformers`` class in an MRO of rule 3 or of the seam,
       and adaclip-rl itself defines no ``_y`` (``self.vllm_generation._iter_named_params()`` is
       caught; ``self._rows`` or ``engine._version``, our own, are not).

    Private names of other libraries (vLLM, multiprocessing) and strings/docstrings are not covered.
    """
    modules = _library_modules() if modules is None else modules
    trees = {name: ast.parse(path.read_text()) for name, path in modules}
    own = _own_private_names(list(trees.values()))
    from adaclip_rl._trl_compat import async_grpo as seam_async
    from adaclip_rl._trl_compat import grpo as seam_grpo

    classes = [obj for m in (_trl_compat, seam_grpo, seam_async) for obj in vars(m).values()
               if isinstance(obj, type) and obj.__module__.startswith("adaclip_rl._trl_compat")]
    problems: list[str] = []
    nodes = {(name, node.name): node for name, tree in trees.items() for node in tree.body
             if isinstance(node, ast.ClassDef)}
    class_rules: dict[tuple[str, str], set[str]] = {}
    for name, cls_name in nodes:
        cls = getattr(importlib.import_module(name), cls_name, None)
        if not isinstance(cls, type):
            continue
        classes.append(cls)
        private = _owner_mro_private(cls)
        if not private:
            continue
        for ours in cls.__mro__:  # the class and the mixins of ours it combines with TRL's
            key = (ours.__module__, ours.__name__)
            if key in nodes:
                class_rules.setdefault(key, set()).update(private)
    foreign = _foreign_private_names(classes) - own
    for name, tree in trees.items():
        bound: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if _owner(alias.name):
                        if any(_is_private(p) for p in alias.name.split(".")):
                            problems.append(f"{name}:{node.lineno} import {alias.name}")
                        bound.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and _owner(node.module):
                if any(_is_private(p) for p in node.module.split(".")):
                    problems.append(f"{name}:{node.lineno} from {node.module} import ...")
                for alias in node.names:
                    if _is_private(alias.name):
                        problems.append(f"{name}:{node.lineno} from {node.module} import {alias.name}")
                    bound.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in bound:
                    problems.append(f"{name}:{node.lineno} {ast.unparse(node)}")
                elif not _is_self_like(node.value) and node.attr in foreign:
                    problems.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    for (name, cls_name), private in class_rules.items():
        cls_node = nodes[(name, cls_name)]
        for stmt in cls_node.body:
            defined = []
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                defined = [stmt.name]
            elif isinstance(stmt, ast.Assign | ast.AnnAssign):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                defined = [t.id for t in targets if isinstance(t, ast.Name)]
            problems += [f"{name}:{stmt.lineno} {cls_node.name} overrides {d}" for d in defined if d in private]
        for node in ast.walk(cls_node):
            if isinstance(node, ast.Attribute) and node.attr in private and _is_self_like(node.value):
                problems.append(f"{name}:{node.lineno} {cls_node.name}: {ast.unparse(node)}")
    return sorted(set(problems))


def test_no_private_trl_names_outside_the_seam():
    """The package's modules outside the seam name no private TRL/transformers attribute. See :func:`private_name_violations` for the rule; the seam (``adaclip_rl/_trl_compat/``) is exempt."""
    problems = private_name_violations()
    assert not problems, "private TRL/transformers names outside adaclip_rl/_trl_compat/:\n" + "\n".join(problems)


BROKEN = {  # one module per clause of the rule, each written to break it
    "imports": "from trl.experimental.async_grpo.async_rollout_worker import _AsyncRolloutLoop\n",
    "alias": "import trl.trainer.grpo_trainer as g\n\nx = g.GRPOTrainer._compute_loss\n",
    "other_object": "def f(trainer):\n    return trainer.vllm_generation._iter_named_params()\n",
    "mixin": ("from trl import GRPOTrainer\n\n\nclass M:\n    def _clip_grad_norm(self, model):\n"
              "        return super()._clip_grad_norm(model)\n\n\nclass T2(M, GRPOTrainer):\n    pass\n"),
    "subclass": ("from trl import GRPOTrainer\n\n\nclass T(GRPOTrainer):\n    def _compute_loss(self, model, inputs):\n"
                 "        self._metrics['train']['x'].append(1.0)\n        return super()._compute_loss(model, inputs)\n"),
}


def test_the_rule_catches_each_kind(tmp_path, monkeypatch):
    """Each clause of the rule flags a module written to break it (so the test above can fail)."""
    for stem, text in BROKEN.items():
        (tmp_path / f"broken_{stem}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = private_name_violations([(f"broken_{stem}", tmp_path / f"broken_{stem}.py") for stem in BROKEN])
    text = "\n".join(found)
    assert "broken_imports:1 from trl.experimental.async_grpo.async_rollout_worker import _AsyncRolloutLoop" in text
    assert "broken_alias:3 g.GRPOTrainer._compute_loss" in text, text
    assert "broken_other_object:2 trainer.vllm_generation._iter_named_params" in text, text
    assert "broken_subclass:5 T overrides _compute_loss" in text, text
    assert "broken_subclass:6 T: self._metrics" in text, text
    assert "broken_subclass:7 T: super()._compute_loss" in text, text
    assert "broken_mixin:5 M overrides _clip_grad_norm" in text, text


def test_no_mock_patch_in_library_code():
    """``unittest.mock`` is for tests: library code swaps a TRL global only through the seam's
    :func:`~adaclip_rl._trl_compat.swapped_globals`."""
    users = [name for name, path in _library_modules() if "unittest" in path.read_text()
             and any(isinstance(n, ast.Import | ast.ImportFrom) and "unittest" in ast.unparse(n)
                     for n in ast.walk(ast.parse(path.read_text())))]
    assert users == []
