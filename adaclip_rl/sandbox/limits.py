"""What a sandboxed run is given and what it gives back: :class:`SandboxLimits` (validated at
construction, naming the field and its range), :class:`SandboxResult`, :class:`SandboxUnavailable`,
and the judge protocol's budget split (:func:`judge_memory_mb`, :func:`judge_frame_max`)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

__all__ = ["SandboxLimits", "SandboxResult", "SandboxUnavailable", "judge_frame_max", "judge_memory_mb"]


class SandboxUnavailable(RuntimeError):
    """Raised when no sandbox mode can run on this machine."""


_RANGES: dict[str, tuple[float, float]] = {
    "cpu_time_s": (0.1, 3600.0),
    "wall_time_s": (0.1, 3600.0),
    "memory_mb": (64, 1 << 20),
    "file_size_mb": (0, 1 << 16),
    "max_processes": (1, 4096),
    "max_open_files": (16, 1 << 16),
    "max_output_bytes": (0, 1 << 30),
    "disk_mb": (1, 1 << 16),
    "nice": (0, 19),
    "cpu_cores": (0.01, 1024.0),
    "max_inodes": (64, 1 << 20),
}


@dataclass
class SandboxLimits:
    """Per-run resource limits (validated; ``ValueError`` names the field and the range)."""

    cpu_time_s: float = field(
        default=10.0, metadata={"help": "RLIMIT_CPU per process (rounded up to whole seconds)."}
    )
    wall_time_s: float = field(
        default=20.0, metadata={"help": "Wall-clock limit for the whole run; kills every process."}
    )
    memory_mb: int = field(
        default=1024,
        metadata={
            "help": "Memory budget, MiB: RLIMIT_AS per process and, with cgroups, the whole run's "
            "memory (all processes, memfd/shmem/tmpfs files, kernel memory); in function tests the "
            "judge's share (a quarter, at least 16 MiB) comes out of it."
        },
    )
    file_size_mb: int = field(
        default=16, metadata={"help": "RLIMIT_FSIZE: largest file a process may write, MiB."}
    )
    max_processes: int = field(
        default=16,
        metadata={"help": "Processes + threads of the run: RLIMIT_NPROC of its uid and pids.max."},
    )
    max_open_files: int = field(default=64, metadata={"help": "RLIMIT_NOFILE per process."})
    max_output_bytes: int = field(
        default=1 << 20, metadata={"help": "stdout+stderr cap; the run is killed past it."}
    )
    disk_mb: int = field(
        default=64, metadata={"help": "Size of the private tmpfs holding the working dir (namespace mode)."}
    )
    nice: int = field(
        default=5, metadata={"help": "Niceness added to sandboxed processes (lower CPU priority)."}
    )
    cpu_cores: float = field(
        default=1.0, metadata={"help": "CPU bandwidth of the whole run, in cores (cgroup CPU quota)."}
    )
    max_inodes: int = field(
        default=4096,
        metadata={"help": "Files + directories on the private tmpfs (nr_inodes; namespace mode)."},
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            lo, hi = _RANGES[f.name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise ValueError(f"SandboxLimits.{f.name} must be a number in [{lo}, {hi}], got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"SandboxLimits.{f.name} must be in [{lo}, {hi}], got {value!r}")
            if f.type in ("int", int) and not float(value).is_integer():
                raise ValueError(f"SandboxLimits.{f.name} must be an integer in [{lo}, {hi}], got {value!r}")


@dataclass
class SandboxResult:
    """Outcome of one sandboxed run.

    ``returncode`` is the program's exit status (negative signal number if a signal killed it,
    ``None`` if it never finished); ``killed_signal`` the signal that ended it, if any;
    ``timed_out`` whether the wall-clock limit fired; ``passed`` is the judge's verdict for
    function tests (``None`` for plain runs); ``isolation_mode`` names the mechanisms in force.
    ``wall_s`` is the whole call as seen by the caller (process start and teardown included);
    ``run_s`` the time the program itself ran, as measured inside the sandbox (the quantity the
    wall-clock limit bounds; the caller's ``wall_s`` when the parent had to kill the run for its
    output or as a backstop).

    With cgroups: ``memory_peak_mb`` is the program's peak memory (all its processes, shared
    memory and tmpfs files, kernel memory; ``judge_memory_peak_mb`` the judge's);
    ``memory_exceeded`` says the memory budget was hit (an OOM kill inside the run);
    ``pids_exceeded`` that a fork/thread was refused at ``max_processes``; ``cpu_s`` the run's
    total CPU time.
    """

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    killed_signal: int | None
    wall_s: float
    isolation_mode: str
    passed: bool | None = None
    output_truncated: bool = False
    error: str | None = None
    judge_error: str | None = None
    run_s: float | None = None
    memory_peak_mb: float | None = None
    judge_memory_peak_mb: float | None = None
    memory_exceeded: bool = False
    pids_exceeded: bool = False
    cpu_s: float | None = None

    @property
    def ok(self) -> bool:
        """True when the program exited with status 0 within its limits (none was hit)."""
        return (
            self.returncode == 0
            and not self.timed_out
            and not self.output_truncated
            and not self.memory_exceeded
            and self.error is None
        )


def judge_memory_mb(memory_mb: int) -> int:
    """The judge's share of a function-test run's memory budget, MiB (the candidate gets the rest).

    A quarter of ``memory_mb``, at least 16 MiB: the candidate's and the judge's cgroups together
    never hold more than ``memory_mb``. Measured judge peaks on HumanEval are under 4 MiB.
    """
    return max(16, int(memory_mb) // 4)


def judge_frame_max(memory_mb: int) -> int:
    """Largest reply frame (bytes) the judge accepts from the candidate: 1/64 of its budget.

    Parsing JSON can cost up to about 20 times the frame in Python objects (``[[],[],...]``: 3
    bytes of frame per 64-byte list), plus the frame and its text; 1/64 keeps the worst case
    under half the judge's budget. A longer reply is a sticky failure, never an allocation.
    """
    return max(64 << 10, (judge_memory_mb(memory_mb) << 20) // 64)
