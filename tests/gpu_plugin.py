"""Pytest plugin: run the existing tests on another device and dtype without editing them.

Loaded from ``tests/conftest.py`` (``pytest_plugins``). Options::

    pytest tests/losses --device cuda              # every test on the GPU, fp32
    pytest tests/losses --device cuda --dtype bf16 # ... with bf16 default floats (see below)

Both default to the plain CPU run, where this plugin changes nothing. Otherwise:

* **device** (the whole session, fixtures included): tensor factories called without ``device=`` (``torch.rand``, ``zeros``, ``tensor``,
  ``arange``...) build on ``--device``, like ``torch.set_default_device``, except that a call
  with a CPU ``generator=`` draws on the CPU and then moves the result, so a seeded test draws
  the same numbers on every device (``set_default_device`` would raise there instead);
* **dtype** ``bf16``: in the pure-torch suites (``tests/losses``, ``tests/gradclip``) floating
  tensors made by those factories without an explicit ``dtype=`` are bfloat16, so the library
  code sees bf16 inputs (while each test and its function-scoped fixtures run); tests written with fp32/fp64 tolerances may then fail on their
  assertions, which ``scripts/gpu_check.py`` reports apart from errors raised by the code;
* **trainer tests**: every ``transformers.TrainingArguments`` (so ``GRPOConfig`` and
  ``AdaClipGRPOConfig``) gets ``use_cpu=False`` on a non-CPU device (and no pinned memory) and,
  with ``--dtype bf16``, ``bf16=True`` (mixed precision, as real GPU runs train).

Tests can ask for the ``device`` (a ``torch.device``) and ``dtype`` (a ``torch.dtype``) fixtures.
Child processes (CLI, torchrun tests) are not affected.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
PURE_TORCH_SUITES: tuple[str, ...] = ("losses", "gradclip")  # where --dtype bf16 casts factory floats


@functools.lru_cache(1)
def _factories() -> frozenset[Callable[..., Any]]:
    """Tensor constructors that take ``device=`` (the ones ``torch.set_default_device`` moves)."""
    return frozenset({
        torch.empty, torch.empty_strided, torch.ones, torch.zeros, torch.full, torch.arange, torch.linspace,
        torch.logspace, torch.eye, torch.rand, torch.randn, torch.randint, torch.randperm, torch.tensor,
        torch.as_tensor, torch.asarray, torch.scalar_tensor, torch.tril_indices, torch.triu_indices,
    })


class DeviceDtypeMode(TorchFunctionMode):
    """Build factory tensors on ``device``; optionally make default-dtype floats ``float_dtype``.

    Args:
        device: where tensors made without ``device=`` go.
        float_dtype: if given, floating results of calls without ``dtype=`` that came out in the
            default dtype (float32) are cast to it.
    """

    def __init__(self, device: torch.device | str, float_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.float_dtype = float_dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = dict(kwargs or {})
        if func not in _factories() or kwargs.get("device") is not None:
            return func(*args, **kwargs)
        gen = kwargs.get("generator")
        # requires_grad is set after the move/cast, so the result stays a leaf
        requires_grad = bool(kwargs.pop("requires_grad", False))
        if gen is not None and gen.device.type != self.device.type:
            out = func(*args, **kwargs).to(self.device)  # same random stream as a run on the generator's device
        else:
            out = func(*args, **{**kwargs, "device": self.device})
        if (self.float_dtype is not None and kwargs.get("dtype") is None and isinstance(out, torch.Tensor)
                and out.dtype == torch.get_default_dtype()):
            out = out.to(self.float_dtype)
        return out.requires_grad_() if requires_grad else out


_SESSION_MODE = pytest.StashKey[DeviceDtypeMode]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--device`` and ``--dtype``."""
    group = parser.getgroup("adaclip-device", "device and dtype for the tests (scripts/gpu_check.py)")
    group.addoption("--device", default="cpu", help="torch device for tensors the tests build (default: cpu)")
    group.addoption("--dtype", default="fp32", choices=sorted(DTYPES),
                    help="bf16: bf16 factory floats in tests/losses and tests/gradclip, bf16=True in trainers")


def _active(config: pytest.Config) -> bool:
    return config.getoption("--device") != "cpu" or config.getoption("--dtype") != "fp32"


def _patch_training_arguments(device: str, dtype: str) -> None:
    """Make every ``TrainingArguments`` train on ``device`` (and in bf16 for ``--dtype bf16``)."""
    from transformers import TrainingArguments

    original = TrainingArguments.__post_init__
    if getattr(original, "_adaclip_gpu_plugin", False):
        return

    @functools.wraps(original)
    def post_init(self: TrainingArguments) -> None:
        if device != "cpu":
            self.use_cpu = False
            self.dataloader_pin_memory = False
        if dtype == "bf16":
            self.bf16, self.fp16 = True, False
        original(self)

    post_init._adaclip_gpu_plugin = True  # type: ignore[attr-defined]
    TrainingArguments.__post_init__ = post_init


def pytest_configure(config: pytest.Config) -> None:
    """Check the device exists and patch the trainer arguments when not on the plain CPU run."""
    if not _active(config):
        return
    device = torch.device(config.getoption("--device"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda given but torch sees no CUDA device")
    _patch_training_arguments(device.type, config.getoption("--dtype"))
    if device.type != "cpu":  # session-wide, like torch.set_default_device: fixtures of any scope too
        mode = DeviceDtypeMode(device)
        mode.__enter__()
        config.stash[_SESSION_MODE] = mode


def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave the session-wide device mode."""
    mode = config.stash.get(_SESSION_MODE, None)
    if mode is not None:
        mode.__exit__(None, None, None)
        del config.stash[_SESSION_MODE]


def pytest_report_header(config: pytest.Config) -> str | None:
    """One header line naming the device and dtype when they are not the defaults."""
    if not _active(config):
        return None
    return f"adaclip device: {config.getoption('--device')}, dtype: {config.getoption('--dtype')}"


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> torch.device:
    """The ``--device`` the tests run on."""
    return torch.device(pytestconfig.getoption("--device"))


@pytest.fixture(scope="session")
def dtype(pytestconfig: pytest.Config) -> torch.dtype:
    """The ``--dtype`` the tests run in."""
    return DTYPES[pytestconfig.getoption("--dtype")]


def _in_pure_torch_suite(path: Path) -> bool:
    return any(part in PURE_TORCH_SUITES for part in path.parts)


@pytest.fixture(autouse=True)
def _adaclip_bf16_mode(request: pytest.FixtureRequest) -> Iterator[None]:
    """With ``--dtype bf16``, bf16 factory floats while a pure-torch suite's test runs."""
    config = request.config
    if config.getoption("--dtype") != "bf16" or not _in_pure_torch_suite(Path(str(request.node.path))):
        yield
        return
    with DeviceDtypeMode(config.getoption("--device"), torch.bfloat16):
        yield
