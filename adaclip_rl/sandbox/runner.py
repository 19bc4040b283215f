"""A process sandbox for running untrusted, model-written Python on the training machine.

Each run gets, from the outside in:

* **Namespaces** (when ``unshare`` works, as root or, without root, in an unprivileged user
  namespace: ``--user --map-root-user``, where the sandboxed processes drop every capability
  instead of the uid; ``isolation_mode`` starts with ``namespaces``):
  ``unshare --fork --pid --kill-child --mount-proc --net --ipc --uts`` starts the
  trusted launcher (:mod:`adaclip_rl.sandbox.launcher`) as PID 1 of a new PID namespace,
  with an empty network namespace (no interface is up: nothing, not even the host's
  ``127.0.0.1``, is reachable) and a private mount namespace. There the launcher builds a
  minimal root on a size-limited tmpfs (read-only binds of ``/usr``, ``/lib*``, ``/bin``,
  ``/etc`` and the interpreter's prefix; ``/dev/null`` & co; a fresh ``/proc``; a small
  ``/dev/shm``; ``/tmp/work``) and ``chroot``s into it: the repository, datasets, home
  directories and the host's ``/tmp`` do not exist for the program. When PID 1 exits, or
  ``unshare`` is killed (``--kill-child``), the kernel kills every process in the namespace,
  including double-forked daemons.
  The tmpfs has ``nr_inodes`` set (``max_inodes``; ``/dev/shm``: 8 MiB, 128 inodes), and
  ``/proc/keys`` and ``/proc/key-users`` are masked.
* **A per-run cgroup** (memory, pids, CPU; v1 or v2 per controller, see
  :mod:`adaclip_rl.sandbox.cgroups`): the run as a whole, all its processes, its memfd, shared
  memory and tmpfs files and its kernel memory (inodes, pipes) included, stays within
  ``memory_mb``, ``max_processes`` and ``cpu_cores``; the OOM killer picks inside the run. The
  judge has a sibling group holding its share of ``memory_mb`` (:func:`judge_memory_mb`, a
  quarter), the candidate's group the rest, so the two together never exceed ``memory_mb``; the
  judge refuses a reply frame larger than 1/64 of its share (:func:`judge_frame_max`). The
  per-run peak is reported (``memory_peak_mb``); the groups are removed after the run. Required by default (``resource_control="require"``).
* **An unprivileged uid/gid leased per run** (``setresuid``/``setresgid``, no supplementary
  groups, ``no_new_privs``), set *after* the resource limits, so the program cannot raise its
  limits, signal other processes or read root-only files. Uids come from a pool and are held by
  a machine-wide lock while the run lives, so no two live sandboxes, of this trainer or another,
  ever share one (``RLIMIT_NPROC``, per uid, is then per run); consecutive runs get different
  uids. Each sandboxed process joins a fresh anonymous session keyring.
* **A seccomp filter** (:mod:`adaclip_rl.sandbox.seccomp`): keyrings, io_uring, Linux AIO,
  userfaultfd, bpf, perf, inotify/fanotify/dnotify/leases, page-cache probes and evictions,
  huge pages, mount and namespace calls, ptrace and other cross-process calls, module/kexec
  loading and system-state calls get ``EPERM``; sockets and socket pairs other than ``AF_UNIX``
  get ``EACCES``. A denied call is an error for the program, never a kill.
* **Resource limits**: CPU time, address space, file size, process count, open files, no core
  dumps, and no real-time or raised scheduling priority (``RLIMIT_NICE``, ``RLIMIT_RTPRIO``,
  ``RLIMIT_RTTIME`` are 0, whatever the trainer has); a wall-clock timeout enforced by the
  launcher and, as a backstop, by the parent (which kills the whole session); stdout+stderr
  capped at ``max_output_bytes`` (the run is killed when it exceeds the cap).
* **A fresh working directory** (``/tmp/work`` inside the private tmpfs, or a ``mkdtemp`` dir
  removed afterwards in fallback mode, where files the sandbox uids left in world-writable
  directories are deleted too) and a **scrubbed environment** (``PATH``, ``HOME``,
  ``LANG``, ``TMPDIR`` only: nothing from the parent's environment leaks).

What a run leaves in the kernel and a later run could read: its processes, IPC objects and files
die with its namespaces, keyrings cannot be created (seccomp), its uid is not reused by the next
run, machine-wide pools (AIO, huge pages) are closed to it, and the page cache of the host's
files can neither be evicted nor probed by a call. Not closed: the *time* a first read of a
host file takes shows whether an earlier run (or the host) read it; ``docs/sandbox.md`` lists
this and the other things not promised, class by class.

Fallback (no namespaces, e.g. an unprivileged container) runs **only when asked for by name**
(``configure_sandbox(mode="fallback")``): ``auto`` refuses with :class:`SandboxUnavailable`
saying what is missing. In the fallback the launcher runs in its own session as a child
subreaper; the seccomp filter also refuses System V IPC and POSIX message queues; the leased uid
is still used when running as root (the interpreter's import path stays reachable through
directory fds opened before the uid drop, so correct programs run) and every process of that uid
is killed at the end. In the fallback without root there is no uid drop and no cgroup
(``isolation_mode`` says so) and ``RLIMIT_NPROC`` is not applied, because it would count the
user's other processes (in a user namespace it counts the run's own).
``isolation_mode`` lists what the fallback lacks (``fallback(missing:private-root,...)``): it
does not hide the host's world-readable files, so prefer the namespace mode for training on data
whose tests sit on the same machine.

Sandboxed processes run with ``nice`` +5 by default so that a CPU-bound program cannot starve
the launcher, the trainer or the timers that stop it.

Bounded parallelism: at most ``max_parallel`` runs at a time per trainer process.

What a sandbox without a VM cannot promise: safety from bugs in the syscalls still allowed on
the shared kernel, freedom from side channels and neighbours' timing noise, secrecy of ``/etc``
or the interpreter, and limits on kernel resources no cgroup accounts. Code that is hostile
beyond reward hacking needs gVisor or a microVM.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from adaclip_rl.sandbox.cgroups import CgroupLimits, CgroupSupport, RunCgroup, detect_cgroups
from adaclip_rl.sandbox.limits import (
    SandboxLimits,
    SandboxResult,
    SandboxUnavailable,
    judge_frame_max,
    judge_memory_mb,
)
from adaclip_rl.sandbox.seccomp import SECCOMP_ARCHES, build_filter
from adaclip_rl.sandbox.uids import UID_POOL_DEFAULT, UID_POOL_SIZE, SlotPool, UidLeases

logger = logging.getLogger(__name__)

__all__ = [
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "run_python",
    "run_python_function_tests",
    "configure_sandbox",
    "sandbox_info",
    "max_parallel",
    "judge_memory_mb",
    "judge_frame_max",
]

_LAUNCHER = str(Path(__file__).resolve().with_name("launcher.py"))
_NS_FLAGS = ["--fork", "--pid", "--kill-child", "--mount-proc", "--net", "--ipc", "--uts"]
_USERNS_FLAGS = ["--user", "--map-root-user"]  # without root: the caller is uid 0 of a fresh user ns
_BACKSTOP_GRACE_S = 5.0


# --------------------------------------------------------------------------------------------
# configuration, mode detection and slots
# --------------------------------------------------------------------------------------------

_MODES = ("auto", "namespaces", "fallback")
_RESOURCE_CONTROL = ("require", "auto", "off")
# what the fallback mode lacks compared with the namespace mode (listed in isolation_mode)
FALLBACK_MISSING = ("private-root", "pid-ns", "net-ns", "ipc-ns", "uts-ns")


@dataclass
class _Config:
    mode: str = "auto"  # auto (= namespaces, or refuse) | namespaces | fallback
    resource_control: str = "require"  # require | auto | off
    max_parallel: int = 0
    uid_base: int = 0
    python: str = ""


_CFG = _Config()
_CFG_LOCK = threading.RLock()
_MODE: str | None = None
_SLOTS: SlotPool | None = None
_CGROUPS: CgroupSupport | None = None
_CGROUP_REASONS: dict[str, str] = {}
_UIDS: UidLeases | None = None
_SECCOMP: dict[bool, bytes] = {}


def configure_sandbox(
    *,
    mode: str | None = None,
    resource_control: str | None = None,
    max_parallel: int | None = None,
    uid_base: int | None = None,
    python: str | None = None,
) -> None:
    """Change sandbox-wide settings (call before concurrent use).

    Args:
        mode: ``"auto"`` (the default: the namespace mode, or :class:`SandboxUnavailable` saying
            what is missing), ``"namespaces"``, or ``"fallback"``, the weaker mode without
            namespaces (no private root: the program can read the host's world-readable files),
            which runs only when asked for by name. Also ``$ADACLIP_SANDBOX_MODE``.
        resource_control: per-run cgroups. ``"require"`` (default): memory, pids and CPU groups
            must work, else :class:`SandboxUnavailable` names each controller's problem;
            ``"auto"``: use the controllers that work (a warning names the others); ``"off"``:
            rlimits only (a run may then hold memory beyond its budget in shared memory,
            children and kernel objects). Also ``$ADACLIP_SANDBOX_RESOURCE_CONTROL``.
        max_parallel: concurrent runs (default ``os.cpu_count()``, or ``$ADACLIP_SANDBOX_WORKERS``).
        uid_base: first uid of the pool of 65536 unprivileged uids leased to runs (default
            1500000000, or ``$ADACLIP_SANDBOX_UID_BASE``). Leases are machine-wide locks, so
            several trainers may share a pool.
        python: interpreter for the sandbox (default: the real path of ``sys.executable``; the
            sandbox runs it with ``-I -S``, so programs get the standard library only).

    Raises:
        ValueError: a value out of range (the message names the argument and the range).
    """
    global _MODE, _SLOTS, _CGROUPS, _UIDS
    with _CFG_LOCK:
        if mode is not None:
            if mode not in _MODES:
                raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
            _CFG.mode = mode
            _MODE = None
        if resource_control is not None:
            if resource_control not in _RESOURCE_CONTROL:
                raise ValueError(
                    f"resource_control must be one of {_RESOURCE_CONTROL}, got {resource_control!r}"
                )
            _CFG.resource_control = resource_control
            _MODE = _CGROUPS = None
        if max_parallel is not None:
            if (
                isinstance(max_parallel, bool)
                or not isinstance(max_parallel, int)
                or not 1 <= max_parallel <= 32
            ):
                raise ValueError(f"max_parallel must be an integer in [1, 32], got {max_parallel!r}")
            _CFG.max_parallel = max_parallel
            _SLOTS = None
        if uid_base is not None:
            hi = (1 << 32) - 2 - UID_POOL_SIZE
            if isinstance(uid_base, bool) or not isinstance(uid_base, int) or not 1000 <= uid_base <= hi:
                raise ValueError(f"uid_base must be an integer in [1000, {hi}], got {uid_base!r}")
            _CFG.uid_base = uid_base
            _UIDS = None
        if python is not None:
            _CFG.python = python


def _cfg_mode() -> str:
    mode = os.environ.get("ADACLIP_SANDBOX_MODE", _CFG.mode) or "auto"
    if mode not in _MODES:
        raise ValueError(f"ADACLIP_SANDBOX_MODE must be one of {_MODES}, got {mode!r}")
    return mode


def _cfg_resource_control() -> str:
    rc = os.environ.get("ADACLIP_SANDBOX_RESOURCE_CONTROL", _CFG.resource_control) or "require"
    if rc not in _RESOURCE_CONTROL:
        raise ValueError(f"ADACLIP_SANDBOX_RESOURCE_CONTROL must be one of {_RESOURCE_CONTROL}, got {rc!r}")
    return rc


def max_parallel() -> int:
    """Runs at a time per trainer process: ``configure_sandbox(max_parallel=...)``, else
    ``$ADACLIP_SANDBOX_WORKERS``, else the CPU count (1..32)."""
    if _CFG.max_parallel:
        return _CFG.max_parallel
    env = os.environ.get("ADACLIP_SANDBOX_WORKERS")
    return max(1, min(32, int(env) if env else (os.cpu_count() or 1)))


def _uid_base() -> int:
    if _CFG.uid_base:
        return _CFG.uid_base
    env = os.environ.get("ADACLIP_SANDBOX_UID_BASE")
    if not env:
        return UID_POOL_DEFAULT
    hi = (1 << 32) - 2 - UID_POOL_SIZE
    if not env.isdigit() or not 1000 <= int(env) <= hi:
        raise ValueError(f"ADACLIP_SANDBOX_UID_BASE must be an integer in [1000, {hi}], got {env!r}")
    return int(env)


def _uid_leases() -> UidLeases:
    global _UIDS
    with _CFG_LOCK:
        if _UIDS is None:
            _UIDS = UidLeases(_uid_base())
        return _UIDS


def _python() -> str:
    # the real interpreter, not a venv symlink: its prefix is what the sandbox root exposes
    return _CFG.python or os.path.realpath(sys.executable)


def _slots() -> SlotPool:
    global _SLOTS
    with _CFG_LOCK:
        if _SLOTS is None:
            _SLOTS = SlotPool(max_parallel())
        return _SLOTS


def _seccomp_filter(fallback: bool) -> bytes:
    if fallback not in _SECCOMP:
        try:
            _SECCOMP[fallback] = build_filter(fallback=fallback)
        except ValueError as exc:
            raise SandboxUnavailable(f"seccomp: {exc}") from None
    return _SECCOMP[fallback]


def _keyctl_nr() -> int | None:
    arch = SECCOMP_ARCHES.get(os.uname().machine)
    return arch[1]["keyctl"] if arch else None


def _is_root() -> bool:
    return os.geteuid() == 0


def _cgroups() -> CgroupSupport | None:
    """Per-run cgroup support as configured (probed once); None when off."""
    global _CGROUPS, _CGROUP_REASONS
    rc = _cfg_resource_control()
    if rc == "off":
        return None
    if _CGROUPS is None:
        support, reasons = detect_cgroups()
        if reasons and rc == "require":
            raise SandboxUnavailable(
                "per-run cgroups are required (resource_control='require') but not available: "
                + "; ".join(f"{c}: {why}" for c, why in reasons.items())
                + ". Fix: run as root with the cgroup controllers mounted writable, or a delegated "
                "cgroup v2 subtree (without root: start the trainer with systemd-run --user --scope -p "
                "Delegate=yes, in a leaf of it); or accept rlimit-only limits with "
                "configure_sandbox(resource_control='auto' or 'off')"
            )
        if reasons:
            logger.warning(
                "sandbox: per-run cgroups without %s (%s)",
                ", ".join(reasons),
                "; ".join(f"{c}: {why}" for c, why in reasons.items()),
            )
        _CGROUPS, _CGROUP_REASONS = support, reasons
    return _CGROUPS


def _isolation_mode(mode: str) -> str:
    if mode == "namespaces" and _is_root():
        parts = ["namespaces(pid,net,mount,ipc,uts)", "setuid"]
    elif mode == "namespaces":
        parts = ["namespaces(user,pid,net,mount,ipc,uts)", "no-caps"]
    else:
        parts = [f"fallback(missing:{','.join(FALLBACK_MISSING)})", "subreaper"]
        if _is_root():
            parts.append("setuid")
    parts.append("rlimits" if _is_root() or mode == "namespaces" else "rlimits(no-nproc)")
    parts.append("seccomp")
    cg = _CGROUPS if _cfg_resource_control() != "off" else None
    parts.append(cg.describe() if cg is not None else "no-cgroup")
    return "+".join(parts)


def _userns_problem() -> str | None:
    """Why this kernel refuses an unprivileged user namespace (None: it allows one).

    Reads the switches distributions use: ``user.max_user_namespaces`` (0: off),
    Debian's ``kernel.unprivileged_userns_clone`` (0: off) and Ubuntu's
    ``kernel.apparmor_restrict_unprivileged_userns`` (1: needs an AppArmor profile).
    """
    checks = (
        ("/proc/sys/user/max_user_namespaces", "0", "user.max_user_namespaces=0"),
        ("/proc/sys/kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone=0"),
        (
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "1",
            "kernel.apparmor_restrict_unprivileged_userns=1",
        ),
    )
    for path, bad, text in checks:
        with contextlib.suppress(OSError), open(path) as f:
            if f.read().strip() == bad:
                return f"unprivileged user namespaces are off ({text})"
    return None


def _resolve_mode() -> str:
    """Pick (once) the configured mode and check that it works here, by running a probe program.

    ``auto`` means the namespace mode or nothing: the weaker fallback runs only when configured
    by name, never silently.
    """
    global _MODE
    if _MODE is not None:
        return _MODE
    with _CFG_LOCK:
        if _MODE is not None:
            return _MODE
        wanted = _cfg_mode()
        mode = "namespaces" if wanted == "auto" else wanted
        problem = None
        if mode == "namespaces" and shutil.which("unshare") is None:
            problem = "the unshare binary (util-linux) is missing"
        elif mode == "namespaces" and not _is_root():
            problem = _userns_problem()
            problem = f"not running as root, and {problem}" if problem else None
        if problem is not None:
            why = problem
            raise SandboxUnavailable(
                f"the namespace sandbox cannot run here ({why}). To score with the weaker "
                f"fallback sandbox (missing: {', '.join(FALLBACK_MISSING)}; the program can read "
                "the host's world-readable files), opt in by name: "
                "configure_sandbox(mode='fallback') or ADACLIP_SANDBOX_MODE=fallback"
            )
        cg = _cgroups()
        probe = _run(
            "import sys; print('ok'); sys.stdout.flush()",
            stdin=b"",
            limits=SandboxLimits(wall_time_s=30.0, cpu_time_s=10.0),
            judge=None,
            mode=mode,
            cgroups=cg,
        )
        if probe.stdout.strip() != "ok" or probe.returncode != 0:
            raise SandboxUnavailable(
                f"the {mode} sandbox failed its probe: rc={probe.returncode} error={probe.error} "
                f"stderr={probe.stderr[-500:]!r}"
                + (
                    ""
                    if mode == "fallback"
                    else "; configure_sandbox(mode='fallback') opts into the weaker mode"
                )
            )
        _MODE = mode
        log = logger.warning if mode == "fallback" else logger.info
        log("sandbox isolation mode: %s", _isolation_mode(mode))
        return mode


def sandbox_info() -> dict[str, object]:
    """The mode that runs here (probing once), its mechanisms, limits machinery and parallelism."""
    mode = _resolve_mode()
    return {
        "mode": mode,
        "isolation_mode": _isolation_mode(mode),
        "resource_control": _cfg_resource_control(),
        "cgroups": _CGROUPS.describe() if _CGROUPS is not None else "no-cgroup",
        "cgroup_missing": dict(_CGROUP_REASONS),
        "max_parallel": max_parallel(),
        "uid_base": _uid_base() if _is_root() else None,
        "uid_range": (_uid_base(), _uid_base() + UID_POOL_SIZE) if _is_root() else None,
        "python": _python(),
    }


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------


def run_python(source: str, *, stdin: str = "", limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``source`` as ``__main__`` in the sandbox with ``stdin`` as standard input.

    Returns:
        A :class:`SandboxResult`; output is decoded as UTF-8 (invalid bytes replaced).

    Thread-safe; blocks while all ``max_parallel`` slots are busy.
    """
    limits = limits or SandboxLimits()
    mode = _resolve_mode()
    cgroups = _cgroups()
    with _slots().slot():
        return _run(source, stdin=stdin.encode(), limits=limits, judge=None, mode=mode, cgroups=cgroups)


def run_python_function_tests(
    program: str,
    *,
    entry_point: str,
    test: str,
    prompt: str = "",
    check_name: str = "check",
    limits: SandboxLimits | None = None,
) -> SandboxResult:
    """Judge a function with HumanEval-style tests; the verdict is ``result.passed``.

    The untrusted ``program`` runs in one sandboxed process (the candidate). The trusted
    ``prompt`` (helpers the tests may use) and ``test`` code run in a second sandboxed process
    under another uid (the judge), which calls ``check(candidate)``. ``candidate`` is a stub that
    forwards each call to ``program``'s ``entry_point`` over a pipe; arguments and return values
    cross as plain data only (None, bool, int, float, complex, str, bytes, list, tuple, dict,
    set, frozenset), rebuilt as exact builtin types on the judge side. The program therefore
    cannot see the tests, redefine ``check``, patch the judge's builtins or ``assert``, return an
    object whose ``__eq__`` always says yes, fake the verdict by printing or exiting early: the
    only way to pass is to return the right values.
    """
    limits = limits or SandboxLimits()
    mode = _resolve_mode()
    judge = {"prompt": prompt, "test": test, "check_name": check_name, "entry_point": entry_point}
    cgroups = _cgroups()
    with _slots().slot():
        return _run(program, stdin=b"", limits=limits, judge=judge, mode=mode, cgroups=cgroups)


def _tempfile_with(data: bytes) -> IO[bytes]:
    f = tempfile.TemporaryFile()
    f.write(data)
    f.flush()
    f.seek(0)
    return f


def _run(
    source: str,
    *,
    stdin: bytes,
    limits: SandboxLimits,
    judge: dict | None,
    mode: str,
    cgroups: CgroupSupport | None,
) -> SandboxResult:
    pool = _uid_leases() if _is_root() else None
    leases = pool.lease(2) if pool is not None else []
    groups: list[RunCgroup] = []
    try:
        if cgroups is not None:
            judge_mb = judge_memory_mb(limits.memory_mb) if judge is not None else 0

            def cg_limits(mb: int) -> CgroupLimits:
                return CgroupLimits(
                    memory_bytes=mb << 20, pids=int(limits.max_processes), cpu_cores=float(limits.cpu_cores)
                )

            groups.append(cgroups.create(cg_limits(int(limits.memory_mb) - judge_mb)))
            if judge is not None:
                groups.append(cgroups.create(cg_limits(judge_mb), suffix="j"))
        return _run_in(
            source, stdin=stdin, limits=limits, judge=judge, mode=mode, leases=leases, groups=groups
        )
    finally:
        for g in groups:
            if not g.remove():
                logger.warning("sandbox: could not remove cgroup %s (left for the next sweep)", g.dirs)
        if pool is not None:
            pool.release(leases)


def _run_in(
    source: str,
    *,
    stdin: bytes,
    limits: SandboxLimits,
    judge: dict | None,
    mode: str,
    leases: list[tuple[int, int]],
    groups: list[RunCgroup],
) -> SandboxResult:
    """One sandboxed run, in stages: (1) the launcher's spec (uids, work directory, limits, seccomp
    filter), (2) launch, (3) read stdout/stderr/result pipes until done, the output bound or the
    wall-time backstop, then clean up, (4) the :class:`SandboxResult` from the launcher's report
    and the cgroup statistics."""
    # 1. the spec the launcher reads
    namespaces = mode == "namespaces"
    uid = leases[0][0] if leases else None
    judge_uid = leases[1][0] if leases else None
    host_workdir = None
    if not namespaces:
        host_workdir = tempfile.mkdtemp(prefix="adaclip_sbx_")
        if uid is not None:
            os.chown(host_workdir, uid, uid)
    spec = _launch_spec(source, limits=limits, judge=judge, namespaces=namespaces, uid=uid, judge_uid=judge_uid,
                        workdir=host_workdir or "/tmp/work", groups=groups)
    # 2. launch
    isolation = _isolation_mode(mode)
    files = [_tempfile_with(json.dumps(spec).encode())]
    if judge is not None:
        files.append(_tempfile_with(json.dumps(judge).encode()))
    stdin_file = _tempfile_with(stdin) if stdin else None
    result_r, result_w = os.pipe()
    argv = [_python(), "-I", "-S", _LAUNCHER, str(files[0].fileno()), str(result_w)]
    if judge is not None:
        argv.append(str(files[1].fileno()))
    if namespaces:
        userns = _USERNS_FLAGS if not _is_root() else []
        argv = [shutil.which("unshare") or "unshare", *userns, *_NS_FLAGS, "--", *argv]
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=stdin_file if stdin_file is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(result_w, *(f.fileno() for f in files)),
            start_new_session=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
            cwd="/",
        )
    except OSError as exc:
        os.close(result_r)
        os.close(result_w)
        for f in files:
            f.close()
        if stdin_file is not None:
            stdin_file.close()
        if host_workdir:
            shutil.rmtree(host_workdir, ignore_errors=True)
        return SandboxResult(None, "", "", False, None, 0.0, isolation, error=f"launch failed: {exc}")
    os.close(result_w)
    for f in files:
        f.close()
    if stdin_file is not None:
        stdin_file.close()

    # 3. read until the launcher is done (or the output bound / wall-time backstop), then clean up
    stdout_bytes, stderr_bytes, report = bytearray(), bytearray(), bytearray()
    truncated = backstop = False
    deadline = t0 + limits.wall_time_s + _BACKSTOP_GRACE_S
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, stdout_bytes)
    sel.register(proc.stderr, selectors.EVENT_READ, stderr_bytes)
    sel.register(result_r, selectors.EVENT_READ, report)
    killed = False
    try:
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                backstop = True
                break
            for key, _ in sel.select(timeout=min(remaining, 1.0)):
                fd = key.fd
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = key.data
                if buf is report:
                    if len(report) < (1 << 20):
                        report += chunk
                    continue
                room = limits.max_output_bytes - len(stdout_bytes) - len(stderr_bytes)
                if len(chunk) > room:
                    buf += chunk[: max(0, room)]
                    truncated = True
                else:
                    buf += chunk
            if truncated:
                break
    finally:
        if truncated or backstop:
            _kill_session(proc, uid, judge_uid, namespaces)
            killed = True
        sel.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _kill_session(proc, uid, judge_uid, namespaces)
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            f.close()
        if not killed:
            # drain what is left in the result pipe (normally already read)
            with contextlib.suppress(OSError):
                while chunk := os.read(result_r, 1 << 16):
                    report += chunk
        os.close(result_r)
        if host_workdir:
            if uid is not None:
                _kill_uid(uid, judge_uid)
                _remove_files_of({u for u in (uid, judge_uid) if u is not None})
            shutil.rmtree(host_workdir, ignore_errors=True)
    wall = time.monotonic() - t0

    # 4. the result, from the launcher's report and the cgroups' statistics
    try:
        info = json.loads(report.decode()) if report else {}
    except ValueError:
        info = {}
    error = info.get("setup_error")
    if not info and not (truncated or backstop):
        error = f"launcher exited with status {proc.returncode} without a result"
    timed_out = bool(info.get("timed_out")) or backstop
    returncode = info.get("returncode")
    sig = info.get("signal")
    if truncated and returncode is None:
        sig = signal.SIGKILL
    passed = info.get("passed") if judge is not None else None
    if judge is not None and (timed_out or truncated or error):
        passed = False
    stats = [g.stats() for g in groups]
    mib = float(1 << 20)
    peaks = [st.memory_peak_bytes / mib if st.memory_peak_bytes is not None else None for st in stats]
    return SandboxResult(
        returncode=returncode,
        stdout=stdout_bytes.decode("utf-8", errors="replace"),
        stderr=stderr_bytes.decode("utf-8", errors="replace"),
        timed_out=timed_out,
        killed_signal=sig,
        wall_s=wall,
        isolation_mode=isolation,
        passed=passed,
        output_truncated=truncated,
        error=error,
        judge_error=info.get("judge_error"),
        run_s=info.get("run_s", wall if (truncated or backstop) else None),
        memory_peak_mb=peaks[0] if peaks else None,
        judge_memory_peak_mb=peaks[1] if len(peaks) > 1 else None,
        memory_exceeded=any(st.oom_kills > 0 for st in stats[:1]),
        pids_exceeded=any(st.pids_limit_hits > 0 for st in stats[:1]),
        cpu_s=sum(st.cpu_s for st in stats if st.cpu_s is not None)
        if any(st.cpu_s is not None for st in stats)
        else None,
    )



def _launch_spec(source: str, *, limits: SandboxLimits, judge: dict | None, namespaces: bool, uid: int | None,
                 judge_uid: int | None, workdir: str, groups: list[RunCgroup]) -> dict[str, object]:
    """Stage 1 of :func:`_run_in`: what the launcher needs (JSON), for one run."""
    return {
        "namespaces": namespaces,
        "source": source,
        "entry_point": judge["entry_point"] if judge else None,
        "uid": uid,
        "gid": uid,
        "judge_uid": judge_uid,
        "judge_gid": judge_uid,
        "workdir": workdir,
        "judge_workdir": "/tmp/judge" if namespaces else "/",
        "seccomp": _seccomp_filter(fallback=not namespaces).hex(),
        "judge_frame_max": judge_frame_max(limits.memory_mb),
        "keyctl_nr": _keyctl_nr(),
        "expose_paths": not namespaces,
        "userns": namespaces and not _is_root(),
        "cgroup_procs": groups[0].procs_files if groups else [],
        "judge_cgroup_procs": groups[1].procs_files if len(groups) > 1 else [],
        "limits": {
            "cpu_time_s": max(1, math.ceil(limits.cpu_time_s)),
            "wall_time_s": limits.wall_time_s,
            "memory_mb": int(limits.memory_mb),
            "file_size_mb": int(limits.file_size_mb),
            "max_processes": int(limits.max_processes),
            # with a pids cgroup, that is the limit that bites (and is reported); RLIMIT_NPROC,
            # one above, stays as the backstop
            # in a user namespace (no uid per run) the launcher, and the judge, share the run's
            # uid 0 there: they count too
            "nproc": int(limits.max_processes)
            + (1 if any("pids" in g.dirs for g in groups) else 0)
            + ((2 if judge else 1) if namespaces and not _is_root() else 0),
            "max_open_files": int(limits.max_open_files),
            "disk_mb": int(limits.disk_mb),
            "max_inodes": int(limits.max_inodes),
            "nice": int(limits.nice),
        },
        "env": {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONHASHSEED": "0",
        },
    }


_WORLD_WRITABLE = ("/tmp", "/var/tmp", "/run/lock", "/dev/shm")


def _remove_files_of(uids: set[int], dirs: tuple[str, ...] = _WORLD_WRITABLE, depth: int = 2) -> None:
    """Fallback mode: delete what the sandbox uids created in world-writable directories.

    The uids are dedicated to the sandbox, so every entry they own was made by a sandboxed
    program; such entries can only sit in directories writable by everyone (or in their own).
    """
    for d in dirs:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for entry in entries[:100_000]:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_uid in uids:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
            elif depth > 1 and entry.is_dir(follow_symlinks=False) and st.st_mode & 0o002:
                _remove_files_of(uids, (entry.path,), depth - 1)


def _kill_session(proc: subprocess.Popen, uid: int | None, judge_uid: int | None, namespaces: bool) -> None:
    """Kill the launcher's session (namespace mode: unshare's death tears the namespace down)."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    if not namespaces and uid is not None:
        _kill_uid(uid, judge_uid)


def _kill_uid(*uids: int | None) -> None:
    """SIGKILL every process of each uid: ``kill -9 -1`` run as that uid (root only)."""
    kill = shutil.which("kill") or "/bin/kill"
    for uid in uids:
        if uid is None:
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                [kill, "-9", "-1"],
                user=uid,
                group=uid,
                extra_groups=[],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=10,
                cwd="/",
                env={},
            )
