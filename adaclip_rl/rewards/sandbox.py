"""Moved to :mod:`adaclip_rl.sandbox` (its own package); this path, which earlier docs named, keeps
the public names importable. New code imports from :mod:`adaclip_rl.sandbox`."""

from adaclip_rl.sandbox import (
    SandboxLimits,
    SandboxResult,
    SandboxUnavailable,
    configure_sandbox,
    run_python,
    run_python_function_tests,
    sandbox_info,
)

__all__ = [
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "configure_sandbox",
    "run_python",
    "run_python_function_tests",
    "sandbox_info",
]
