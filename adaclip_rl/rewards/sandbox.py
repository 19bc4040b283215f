"""A process sandbox for running untrusted, model-written Python on the training machine.

Each run gets, from the outside in:

* **Namespaces** (when running as root and ``unshare`` works; ``isolation_mode`` starts with
  ``namespaces``): ``unshare --fork --pid --kill-child --mount-proc --net --ipc --uts`` starts the
  trusted launcher (:mod:`adaclip_rl.rewards._sandbox_launcher`) as PID 1 of a new PID namespace,
  with an empty network namespace (no interface is up: nothing, not even the host's
  ``127.0.0.1``, is reachable) and a private mount namespace. There the launcher builds a
  minimal root on a size-limited tmpfs (read-only binds of ``/usr``, ``/lib*``, ``/bin``,
  ``/etc`` and the interpreter's prefix; ``/dev/null`` & co; a fresh ``/proc``; a small
  ``/dev/shm``; ``/tmp/work``) and ``chroot``s into it: the repository, datasets, home
  directories and the host's ``/tmp`` do not exist for the program. When PID 1 exits, or
  ``unshare`` is killed (``--kill-child``), the kernel kills every process in the namespace,
  including double-forked daemons.
* **An unprivileged per-slot uid/gid** (``setresuid``/``setresgid``, no supplementary groups,
  ``no_new_privs``), set *after* the resource limits, so the program cannot raise its limits,
  signal other processes or read root-only files. ``RLIMIT_NPROC`` counts per uid; with a uid per
  parallel slot it bounds the process count of each run (fork bombs).
* **Resource limits**: CPU time, address space, file size, process count, open files, no core
  dumps; a wall-clock timeout enforced by the launcher and, as a backstop, by the parent
  (which kills the whole session); stdout+stderr capped at ``max_output_bytes`` (the run is
  killed when it exceeds the cap).
* **A fresh working directory** (``/tmp/work`` inside the private tmpfs, or a ``mkdtemp`` dir
  removed afterwards in fallback mode, where files the sandbox uids left in world-writable
  directories are deleted too) and a **scrubbed environment** (``PATH``, ``HOME``,
  ``LANG``, ``TMPDIR`` only: nothing from the parent's environment leaks).

Fallback (no ``unshare``/namespaces, e.g. an unprivileged container): the launcher runs in its
own session as a child subreaper; network access is refused by a seccomp-BPF filter (socket(2)
for any family but ``AF_UNIX``, io_uring and foreign-ABI syscalls get ``EACCES``); the
per-slot uid is still used when running as root and every process of that uid is killed at the
end. Without root there is no uid drop (``isolation_mode`` says so) and ``RLIMIT_NPROC`` is not
applied, because it would count the user's other processes. Fallback mode does not hide the
host's world-readable files (there is no private root), so prefer the namespace mode for
training on data whose tests sit on the same machine.

Sandboxed processes run with ``nice`` +5 by default so that a CPU-bound program cannot starve
the launcher, the trainer or the timers that stop it.

Bounded parallelism: at most ``max_parallel`` runs at a time (a slot pool; each slot owns its uids).
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

__all__ = [
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "run_python",
    "run_python_function_tests",
    "configure_sandbox",
    "sandbox_info",
]

_LAUNCHER = str(Path(__file__).resolve().with_name("_sandbox_launcher.py"))
_NS_FLAGS = ["--fork", "--pid", "--kill-child", "--mount-proc", "--net", "--ipc", "--uts"]
_BACKSTOP_GRACE_S = 5.0
_PREIMPORT = (
    "types", "math", "cmath", "re", "string", "itertools", "collections", "functools", "heapq",
    "bisect", "typing", "operator", "copy", "random", "hashlib", "fractions", "decimal",
    "statistics", "json", "datetime", "array", "textwrap", "enum", "dataclasses", "io", "time",
    "struct", "atexit", "threading",
)  # fmt: skip


class SandboxUnavailable(RuntimeError):
    """Raised when no sandbox mode can run on this machine."""


# --------------------------------------------------------------------------------------------
# limits and results
# --------------------------------------------------------------------------------------------

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
    memory_mb: int = field(default=1024, metadata={"help": "RLIMIT_AS (address space) per process, MiB."})
    file_size_mb: int = field(
        default=16, metadata={"help": "RLIMIT_FSIZE: largest file a process may write, MiB."}
    )
    max_processes: int = field(
        default=16, metadata={"help": "RLIMIT_NPROC for the run's uid (processes + threads)."}
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

    @property
    def ok(self) -> bool:
        """True when the program exited with status 0 within its limits."""
        return (
            self.returncode == 0 and not self.timed_out and not self.output_truncated and self.error is None
        )


# --------------------------------------------------------------------------------------------
# configuration, mode detection and slots
# --------------------------------------------------------------------------------------------


@dataclass
class _Config:
    mode: str = "auto"  # auto | namespaces | fallback
    max_parallel: int = 0
    uid_base: int = 0
    python: str = ""


_CFG = _Config()
_CFG_LOCK = threading.Lock()
_MODE: str | None = None
_SLOTS: _SlotPool | None = None


class _SlotPool:
    """At most ``n`` concurrent runs; each holds a slot index (which fixes its uids)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._free = list(range(n))
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def slot(self) -> Iterator[int]:
        """Hold one slot index for the duration of the ``with`` block."""
        with self._cond:
            while not self._free:
                self._cond.wait()
            s = self._free.pop()
        try:
            yield s
        finally:
            with self._cond:
                self._free.append(s)
                self._cond.notify()


def configure_sandbox(
    *,
    mode: str | None = None,
    max_parallel: int | None = None,
    uid_base: int | None = None,
    python: str | None = None,
) -> None:
    """Change sandbox-wide settings (call before concurrent use).

    Args:
        mode: ``"auto"`` (namespaces if they work, else fallback), ``"namespaces"`` or
            ``"fallback"``. Also ``$ADACLIP_SANDBOX_MODE``.
        max_parallel: concurrent runs (default ``os.cpu_count()``, or ``$ADACLIP_SANDBOX_WORKERS``).
        uid_base: first sandbox uid; slot ``s`` uses ``uid_base + 2s`` (program) and
            ``uid_base + 2s + 1`` (judge). Default ``60000 + 64 * (pid % 80)``, so concurrent
            trainer processes on one machine use distinct uids. Also ``$ADACLIP_SANDBOX_UID_BASE``.
        python: interpreter for the sandbox (default: the real path of ``sys.executable``; the
            sandbox runs it with ``-I -S``, so programs get the standard library only).
    """
    global _MODE, _SLOTS
    with _CFG_LOCK:
        if mode is not None:
            if mode not in ("auto", "namespaces", "fallback"):
                raise ValueError(f"mode must be 'auto', 'namespaces' or 'fallback', got {mode!r}")
            _CFG.mode = mode
            _MODE = None
        if max_parallel is not None:
            if not 1 <= max_parallel <= 32:
                raise ValueError(f"max_parallel must be in [1, 32], got {max_parallel}")
            _CFG.max_parallel = max_parallel
            _SLOTS = None
        if uid_base is not None:
            if not 1000 <= uid_base <= (1 << 31):
                raise ValueError(f"uid_base must be in [1000, 2**31], got {uid_base}")
            _CFG.uid_base = uid_base
        if python is not None:
            _CFG.python = python


def _cfg_mode() -> str:
    return os.environ.get("ADACLIP_SANDBOX_MODE", _CFG.mode) or "auto"


def _max_parallel() -> int:
    if _CFG.max_parallel:
        return _CFG.max_parallel
    env = os.environ.get("ADACLIP_SANDBOX_WORKERS")
    return max(1, min(32, int(env) if env else (os.cpu_count() or 1)))


def _uid_base() -> int:
    if _CFG.uid_base:
        return _CFG.uid_base
    env = os.environ.get("ADACLIP_SANDBOX_UID_BASE")
    return int(env) if env else 60000 + 64 * (os.getpid() % 80)


def _python() -> str:
    # the real interpreter, not a venv symlink: its prefix is what the sandbox root exposes
    return _CFG.python or os.path.realpath(sys.executable)


def _slots() -> _SlotPool:
    global _SLOTS
    with _CFG_LOCK:
        if _SLOTS is None:
            _SLOTS = _SlotPool(_max_parallel())
        return _SLOTS


def _is_root() -> bool:
    return os.geteuid() == 0


def _isolation_mode(mode: str) -> str:
    parts = ["namespaces(pid,net,mount,ipc,uts)"] if mode == "namespaces" else ["subreaper", "seccomp-net"]
    if _is_root():
        parts.append("setuid")
    parts.append("rlimits" if _is_root() else "rlimits(no-nproc)")
    return "+".join(parts)


def _resolve_mode() -> str:
    """Pick (once) the strongest mode that works here, by running a probe program."""
    global _MODE
    if _MODE is not None:
        return _MODE
    with _CFG_LOCK:
        if _MODE is not None:
            return _MODE
        wanted = _cfg_mode()
        candidates = [wanted] if wanted != "auto" else ["namespaces", "fallback"]
        errors = []
        for mode in candidates:
            if mode == "namespaces" and (not _is_root() or shutil.which("unshare") is None):
                errors.append("namespaces: needs root and the unshare binary")
                continue
            probe = _run(
                "import sys; print('ok'); sys.stdout.flush()",
                stdin=b"",
                limits=SandboxLimits(wall_time_s=30.0, cpu_time_s=10.0),
                judge=None,
                mode=mode,
                slot=_max_parallel(),  # an index outside the pool: never collides with live runs
            )
            if probe.stdout.strip() == "ok" and probe.returncode == 0:
                _MODE = mode
                log = logger.warning if errors else logger.info
                log(
                    "sandbox isolation mode: %s%s",
                    _isolation_mode(mode),
                    f" ({'; '.join(errors)})" if errors else "",
                )
                return mode
            errors.append(
                f"{mode} failed: rc={probe.returncode} error={probe.error} stderr={probe.stderr[-500:]!r}"
            )
        raise SandboxUnavailable("no sandbox mode works here: " + "; ".join(errors))


def sandbox_info() -> dict[str, object]:
    """The mode that runs here (probing once), its mechanisms and the parallelism."""
    mode = _resolve_mode()
    return {
        "mode": mode,
        "isolation_mode": _isolation_mode(mode),
        "max_parallel": _max_parallel(),
        "uid_base": _uid_base() if _is_root() else None,
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
    with _slots().slot() as slot:
        return _run(source, stdin=stdin.encode(), limits=limits, judge=None, mode=mode, slot=slot)


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
    with _slots().slot() as slot:
        return _run(program, stdin=b"", limits=limits, judge=judge, mode=mode, slot=slot)


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
    slot: int,
) -> SandboxResult:
    root = _is_root()
    namespaces = mode == "namespaces"
    uid = _uid_base() + 2 * slot if root else None
    judge_uid = uid + 1 if uid is not None else None
    workdir = "/tmp/work"
    host_workdir = None
    if not namespaces:
        host_workdir = tempfile.mkdtemp(prefix="adaclip_sbx_")
        workdir = host_workdir
        if uid is not None:
            os.chown(host_workdir, uid, uid)
    spec = {
        "namespaces": namespaces,
        "source": source,
        "entry_point": judge["entry_point"] if judge else None,
        "uid": uid,
        "gid": uid,
        "judge_uid": judge_uid,
        "judge_gid": judge_uid,
        "workdir": workdir,
        "judge_workdir": "/tmp/judge" if namespaces else "/",
        "preimport": list(_PREIMPORT),
        "seccomp_net": not namespaces,
        "limits": {
            "cpu_time_s": max(1, math.ceil(limits.cpu_time_s)),
            "wall_time_s": limits.wall_time_s,
            "memory_mb": int(limits.memory_mb),
            "file_size_mb": int(limits.file_size_mb),
            "max_processes": int(limits.max_processes),
            "max_open_files": int(limits.max_open_files),
            "disk_mb": int(limits.disk_mb),
            "nice": int(limits.nice),
        },
        "env": {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONHASHSEED": "0",
        },
    }
    isolation = _isolation_mode(mode)
    files = [_tempfile_with(json.dumps(spec).encode())]
    if judge is not None:
        files.append(_tempfile_with(json.dumps(judge).encode()))
    stdin_file = _tempfile_with(stdin) if stdin else None
    res_r, res_w = os.pipe()
    argv = [_python(), "-I", "-S", _LAUNCHER, str(files[0].fileno()), str(res_w)]
    if judge is not None:
        argv.append(str(files[1].fileno()))
    if namespaces:
        argv = [shutil.which("unshare") or "unshare", *_NS_FLAGS, "--", *argv]
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=stdin_file if stdin_file is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(res_w, *(f.fileno() for f in files)),
            start_new_session=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
            cwd="/",
        )
    except OSError as exc:
        os.close(res_r)
        os.close(res_w)
        for f in files:
            f.close()
        if stdin_file is not None:
            stdin_file.close()
        if host_workdir:
            shutil.rmtree(host_workdir, ignore_errors=True)
        return SandboxResult(None, "", "", False, None, 0.0, isolation, error=f"launch failed: {exc}")
    os.close(res_w)
    for f in files:
        f.close()
    if stdin_file is not None:
        stdin_file.close()

    out, err, res = bytearray(), bytearray(), bytearray()
    truncated = backstop = False
    deadline = t0 + limits.wall_time_s + _BACKSTOP_GRACE_S
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    sel.register(res_r, selectors.EVENT_READ, res)
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
                if buf is res:
                    if len(res) < (1 << 20):
                        res += chunk
                    continue
                room = limits.max_output_bytes - len(out) - len(err)
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
                while chunk := os.read(res_r, 1 << 16):
                    res += chunk
        os.close(res_r)
        if host_workdir:
            if uid is not None:
                _kill_uid(uid, judge_uid)
                _remove_files_of({u for u in (uid, judge_uid) if u is not None})
            shutil.rmtree(host_workdir, ignore_errors=True)
    wall = time.monotonic() - t0

    try:
        info = json.loads(res.decode()) if res else {}
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
    return SandboxResult(
        returncode=returncode,
        stdout=out.decode("utf-8", errors="replace"),
        stderr=err.decode("utf-8", errors="replace"),
        timed_out=timed_out,
        killed_signal=sig,
        wall_s=wall,
        isolation_mode=isolation,
        passed=passed,
        output_truncated=truncated,
        error=error,
        judge_error=info.get("judge_error"),
        run_s=info.get("run_s", wall if (truncated or backstop) else None),
    )


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
