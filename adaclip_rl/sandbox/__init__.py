"""A process sandbox for untrusted, model-written Python (the code rewards and the code benchmarks use it).

A product of its own, with no dependency on the rest of adaclip-rl (and none on third-party
packages): an import-direction test keeps it a leaf.

* :mod:`~adaclip_rl.sandbox.runner`: the trainer side. :func:`run_python`,
  :func:`run_python_function_tests` (the judge protocol: a separate judge process holds the tests
  and calls the candidate over a plain-data pipe), :func:`configure_sandbox`, mode detection
  (namespaces, unprivileged user namespace, fallback), the launch spec and the cleanup.
  Its docstring lists every layer of isolation and what is not promised.
* :mod:`~adaclip_rl.sandbox.limits`: :class:`SandboxLimits`, :class:`SandboxResult`,
  :class:`SandboxUnavailable`, the judge's share of the budget.
* :mod:`~adaclip_rl.sandbox.uids`: per-run uid leases (machine-wide ``flock``) and run slots.
* :mod:`~adaclip_rl.sandbox.launcher`: the trusted launcher, run as a script (``python -I -S``)
  inside the boundary: private root, rlimits, seccomp load, uid drop, the candidate and the judge.
  Standard library only.
* :mod:`~adaclip_rl.sandbox.cgroups`: per-run memory, pids and CPU cgroups (v1 or v2 per controller).
* :mod:`~adaclip_rl.sandbox.seccomp`: the seccomp-BPF filter, compiled in the trainer.

``docs/sandbox.md`` describes the threat model and the measurements.
"""

from adaclip_rl.sandbox.runner import (
    SandboxLimits,
    SandboxResult,
    SandboxUnavailable,
    configure_sandbox,
    judge_frame_max,
    judge_memory_mb,
    max_parallel,
    run_python,
    run_python_function_tests,
    sandbox_info,
)

__all__ = [
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "configure_sandbox",
    "judge_frame_max",
    "judge_memory_mb",
    "max_parallel",
    "run_python",
    "run_python_function_tests",
    "sandbox_info",
]
