"""No host sync in the loss code (adaclip_rl/losses), checked on CPU two ways.

1. A source scan: no ``.item()``, ``.tolist()``, ``.numpy()``, ``.cpu()``, ``new_tensor`` (a
   host-to-device copy and a stream sync on CUDA), ``float(t)``/``int(t)``/``bool(t)`` of a
   non-literal, and no ``torch.tensor``/``torch.as_tensor`` outside the cached grid tables (filled
   once per config and device).
2. A guard at run time: BAPO and Archer, forward and backward, over every option, with every
   tensor-to-host conversion (``item``, ``tolist``, ``__float__``, ``__int__``, ``__bool__``,
   ``__index__``, ``nonzero``, boolean-mask indexing, ...) and every tensor built from Python data
   raising. (``scripts/gpu_check.py``'s ``syncs`` section counts the same on CUDA.)
"""

from __future__ import annotations

import ast
import contextlib
import itertools
from pathlib import Path

import pytest
import torch

import adaclip_rl.losses as losses_pkg
from adaclip_rl.losses import ArcherConfig, BAPOConfig, get_policy_loss
from adaclip_rl.losses.registry import POLICY_LOSS_SPECS

LOSSES_DIR = Path(losses_pkg.__file__).parent
HOST_METHODS = {"item", "tolist", "numpy", "cpu", "new_tensor"}
TABLE_BUILDERS = {"_tables", "_dual_edge"}  # cached per config/dtype/device: one copy, at the first call


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            inner = scope + [child.name] if isinstance(child, ast.FunctionDef | ast.ClassDef) else scope
            if isinstance(child, ast.Call):
                f = child.func
                where = f"{path.name}:{child.lineno} in {'.'.join(scope) or '<module>'}"
                if isinstance(f, ast.Attribute) and f.attr in HOST_METHODS:
                    found.append(f"{where}: .{f.attr}()")
                if (isinstance(f, ast.Attribute) and f.attr in ("tensor", "as_tensor")
                        and isinstance(f.value, ast.Name) and f.value.id == "torch"
                        and not TABLE_BUILDERS & set(scope)):
                    found.append(f"{where}: torch.{f.attr}()")
                config_method = any(s.endswith(("Config", "Spec")) for s in scope)
                if (isinstance(f, ast.Name) and f.id in ("float", "int", "bool") and child.args
                        and not isinstance(child.args[0], ast.Constant) and not config_method):
                    found.append(f"{where}: {f.id}(...)")
            visit(child, inner)

    visit(tree, [])
    return found


def test_loss_sources_have_no_host_reads_or_copies():
    files = sorted(LOSSES_DIR.glob("*.py"))
    assert len(files) >= 6
    found = [v for p in files for v in _violations(p)]
    assert not found, "\n".join(found)


class HostSync(AssertionError):
    pass


def _raiser(name):
    def fail(*args, **kwargs):
        raise HostSync(f"host sync: {name}")
    return fail


@contextlib.contextmanager
def no_host_sync():
    """Every tensor-to-host read and every tensor built from Python data raises inside."""
    T = torch.Tensor
    saved = {}
    for name in ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__", "nonzero",
                 "new_tensor", "unique", "masked_select"):
        saved[(T, name)] = getattr(T, name)
    original_getitem = T.__getitem__

    def getitem(self, idx):
        items = idx if isinstance(idx, tuple) else (idx,)
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items):
            raise HostSync("host sync: boolean-mask indexing")
        return original_getitem(self, idx)

    def from_python(name, original):
        def build(data, *args, **kwargs):
            if not isinstance(data, torch.Tensor):
                raise HostSync(f"host copy: torch.{name} of Python data")
            return original(data, *args, **kwargs)
        return build

    modules = {(torch, "tensor"): torch.tensor, (torch, "as_tensor"): torch.as_tensor,
               (torch, "nonzero"): torch.nonzero, (torch, "unique"): torch.unique}
    try:
        for (owner, name) in saved:
            setattr(owner, name, _raiser(f"Tensor.{name}"))
        T.__getitem__ = getitem
        for (owner, name), fn in modules.items():
            setattr(owner, name, from_python(name, fn) if name in ("tensor", "as_tensor") else _raiser(name))
        yield
    finally:
        for (owner, name), fn in saved.items():
            setattr(owner, name, fn)
        T.__getitem__ = original_getitem
        for (owner, name), fn in modules.items():
            setattr(owner, name, fn)


def test_the_guard_catches_each_kind_of_sync():
    x = torch.ones(3)
    for fn in (lambda: x.sum().item(), lambda: float(x.sum()), lambda: int(x.max()), lambda: x.tolist(),
               lambda: x[x > 0], lambda: x.new_tensor(1.0), lambda: torch.tensor(2.0), lambda: bool(x.any()),
               lambda: x[: x.sum()]):
        with no_host_sync(), pytest.raises(HostSync):
            fn()
    with no_host_sync():
        assert (x + torch.as_tensor(x)).shape == (3,)  # tensors from tensors are fine


def _batch(dtype, seq: bool, adv_per_token: bool, mask_dtype):
    gen = torch.Generator().manual_seed(0)
    b, t = 6, 24
    logp = -2 * torch.rand(b, t, generator=gen, dtype=torch.float64)
    old = logp + 0.5 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    old[0, 0] = -torch.inf
    log_ratio = (logp - old).clamp(-20, 20)
    mask = torch.arange(t) < torch.randint(1, t + 1, (b, 1), generator=gen)
    mask[-1] = False  # an empty response
    if seq:
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)).unsqueeze(-1)
    adv = torch.randn(b, t if adv_per_token else 1, generator=gen, dtype=torch.float64)
    if not adv_per_token:
        adv = adv.squeeze(-1)
    ref = logp + 0.2 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    return dict(log_ratio=log_ratio.to(dtype), logp=logp.to(dtype), ref=ref.to(dtype), adv=adv.to(dtype),
                mask=mask.to(mask_dtype), entropy=3 * torch.rand(b, t, generator=gen), weights=mask * torch.rand(b, t))


def _step(name, cfg, x, search_result=None):
    logp = x["logp"].clone().requires_grad_()
    log_ratio = x["log_ratio"].clone().requires_grad_()
    fn = get_policy_loss(name)
    out = fn(torch.exp(log_ratio), x["adv"], x["mask"], config=cfg, logp=logp, ref_logp=x["ref"],
             entropy=x["entropy"], weights=x["weights"], reduce_fn=lambda v: v * 1.0, search_result=search_result)
    loss = (out.per_token_loss * x["mask"]).sum()
    if out.extra_loss is not None:
        loss = loss + out.extra_loss
    loss.backward()
    return out


_BAPO = [BAPOConfig(contribution=c, dual_clip=d, target=0.4 if c == "grad" else 1.0,
                    **({"value_weights": w} if c == "value" else {}))
         for c, d, w in itertools.product(["grad", "value"], [3.0, None], ["loss", "mask"])
         if not (c == "grad" and w == "mask")]
_BAPO += [BAPOConfig.official(), BAPOConfig.official(low_step=0.07), BAPOConfig(low_max=1.0, dual_clip=1.0003),
          BAPOConfig(scope="micro_batch"), BAPOConfig(low_step=0.0, high_step=0.0)]
_ARCHER = [ArcherConfig(kl_estimator=e, kl_aggregation=g, high_kl=h, low_kl=lk, dual_clip=d)
           for e, g, h, lk, d in itertools.product(["k1", "k2", "k3"], ["response", "token"], [0.0, 0.01],
                                                  [0.0, 0.001], [10.0, None])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_bapo_runs_without_a_host_sync_for_every_option(dtype):
    for cfg, seq, adv_tok, mask_dtype in itertools.product(_BAPO, [False, True], [False, True],
                                                          [torch.bool, torch.float32]):
        if seq and adv_tok:
            continue
        x = _batch(dtype, seq, adv_tok, mask_dtype)
        out = _step("bapo", cfg, x)  # warm-up: the grid tables are built once per config and device
        with no_host_sync():
            _step("bapo", cfg, x)
            _step("bapo", cfg, x, search_result=out.details)  # bounds from a search per update
            spec = POLICY_LOSS_SPECS["bapo"]
            stats = spec.statistics(torch.exp(x["log_ratio"]), x["adv"], x["weights"], cfg)
            spec.select(stats + stats, cfg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_archer_runs_without_a_host_sync_for_every_option(dtype):
    for cfg, adv_tok, mask_dtype in itertools.product(_ARCHER, [False, True], [torch.bool, torch.float32, torch.int64]):
        x = _batch(dtype, False, adv_tok, mask_dtype)
        with no_host_sync():
            out = _step("archer", cfg, x)
        assert torch.isfinite(out.metrics["archer/entropy_threshold"])
