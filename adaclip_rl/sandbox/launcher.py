"""Sandbox launcher: the trusted process that runs *inside* the sandbox boundary.

Started by :mod:`adaclip_rl.sandbox` as ``python -I -S launcher.py SPEC_FD
RESULT_FD [JUDGE_FD]``, normally as PID 1 of fresh PID, network, mount, IPC and UTS namespaces
(``unshare --fork --pid --kill-child --mount-proc --net --ipc --uts``), still root (without root:
uid 0 of a fresh user namespace, ``--user --map-root-user``; the children then drop every
capability instead of the uid). It

1. reads the run specification (JSON) from ``SPEC_FD``;
2. in namespace mode, builds a minimal root on a private size-limited tmpfs (read-only binds of
   the system directories and of the interpreter's prefix, device nodes, a fresh ``/proc``,
   ``/tmp/work`` owned by the sandbox uid) and ``chroot``s into it, so the host's files outside
   the system directories (home directories, the repository, datasets, the host ``/tmp``) do
   not exist for the program;
3. forks the **candidate** process, which joins the run's cgroups (memory, pids, CPU: opened by
   the launcher before ``chroot``), sets resource limits, closes every other fd, joins a fresh
   anonymous session keyring, drops to the run's unprivileged uid/gid (no supplementary groups,
   ``no_new_privs``), installs the seccomp filter compiled by the trainer
   (:mod:`adaclip_rl.sandbox.seccomp`), and executes the untrusted source in a fresh
   ``__main__`` namespace;
4. in judge mode, reads the *tests* only after the candidate has been forked (so the candidate
   never has them in memory), and forks the **judge** process under a second unprivileged uid, in
   its own cgroups, under the same seccomp filter. The judge runs the trusted prompt and test
   code; its ``candidate`` is a stub that calls the candidate's function over a pipe with
   plain-data (tagged JSON) arguments and results. The candidate cannot reach the judge's verdict
   channel, its memory or its uid; an exception from the candidate reaches the tests only as one
   of a few ordinary builtin types (anything else, ``StopIteration`` included, is a
   :class:`CandidateError` and a sticky failure);
5. waits (enforcing the wall-clock limit itself), writes one JSON result to ``RESULT_FD`` and
   exits. As PID 1 its exit makes the kernel kill every process left in the namespace; in
   fallback mode (no namespaces) it is a child subreaper and kills every process of the sandbox
   uids (``kill(-1, SIGKILL)`` from a helper running as that uid).

Only the standard library is used; nothing here may import third-party code.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import os
import resource
import signal
import struct
import sys
import time
import traceback
import types

_LIBC = ctypes.CDLL(None, use_errno=True)

MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# SECBIT_NOROOT, SECBIT_NO_SETUID_FIXUP, SECBIT_NO_CAP_AMBIENT_RAISE, each with its lock bit, and
# SECBIT_KEEP_CAPS_LOCKED: uid 0 of the user namespace never regains a capability
SECUREBITS_LOCKED_DOWN = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80
SECCOMP_MODE_FILTER = 2

MAX_FRAME = 64 << 20  # judge -> candidate (trusted arguments); replies: the spec's judge_frame_max
SYS_MOUNT_SETATTR = 442  # same number on x86_64 and arm64 (Linux 5.12+)
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4


class _WallTimeout(Exception):
    pass


# --------------------------------------------------------------------------------------------
# small OS helpers
# --------------------------------------------------------------------------------------------


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    rc = _LIBC.mount(
        src.encode() if src else None,
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _prctl(option: int, arg2: int = 0) -> int:
    return _LIBC.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            break
        chunks.append(b)
    os.close(fd)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# --------------------------------------------------------------------------------------------
# seccomp: load the filter the trainer compiled (adaclip_rl.sandbox.seccomp)
# --------------------------------------------------------------------------------------------


def _load_seccomp(raw: bytes) -> None:
    """Install the seccomp-BPF program ``raw`` (``struct sock_filter`` array); raises on failure."""
    if not raw or len(raw) % 8:
        raise ValueError("malformed seccomp filter")
    buf = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(raw) // 8, ctypes.addressof(buf))
    if _prctl(PR_SET_NO_NEW_PRIVS, 1) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"PR_SET_NO_NEW_PRIVS: {os.strerror(err)}")
    rc = _LIBC.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), 0, 0)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter could not be installed: {os.strerror(err)}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_all_capabilities() -> None:
    """User-namespace mode: the sandboxed process is uid 0 of its own user namespace (the caller's
    uid outside), with every capability *in that namespace*. Drop them all, for good: the
    bounding and ambient sets are emptied, the securebits locked so that uid 0 regains nothing
    on ``execve``, then the effective, permitted and inheritable sets cleared. Raises unless
    ``/proc/self/status`` then shows no capability at all."""
    for cap in range(64):
        if _prctl(PR_CAPBSET_DROP, cap) != 0:
            if ctypes.get_errno() == 22:  # EINVAL: past the last capability of this kernel
                break
            err = ctypes.get_errno()
            raise OSError(err, f"PR_CAPBSET_DROP {cap}: {os.strerror(err)}")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    if _prctl(PR_SET_SECUREBITS, SECUREBITS_LOCKED_DOWN) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"PR_SET_SECUREBITS: {os.strerror(err)}")
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if _LIBC.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
    with open("/proc/self/status") as f:
        caps = {k: v.strip() for k, _, v in (line.partition(":") for line in f) if k.startswith("Cap")}
    if any(int(v, 16) for v in caps.values()):
        raise RuntimeError(f"capabilities left after dropping them: {caps}")


def _join_fresh_session_keyring(keyctl_nr: int | None) -> None:
    """``keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)``: a new anonymous keyring that dies with the
    run, instead of the uid's persistent ``_uid_ses`` keyring (before seccomp denies keyctl)."""
    if keyctl_nr is None:
        return
    _LIBC.syscall(ctypes.c_long(keyctl_nr), ctypes.c_long(1), ctypes.c_void_p(None))


# --------------------------------------------------------------------------------------------
# plain-data codec for the candidate <-> judge calls (decoder builds only exact builtin types)
# --------------------------------------------------------------------------------------------


def _enc(x: object, depth: int = 0) -> object:
    if depth > 200:
        raise ValueError("value nested too deeply")
    if x is None:
        return ["n"]
    if isinstance(x, bool):
        return ["b", bool(x)]
    if isinstance(x, int):
        return ["i", hex(int(x))]
    if isinstance(x, float):
        return ["f", float.hex(float(x))]
    if isinstance(x, complex):
        c = complex(x)
        return ["c", float.hex(c.real), float.hex(c.imag)]
    if isinstance(x, str):
        return ["s", str.__str__(x)]
    if isinstance(x, (bytes, bytearray)):
        return ["y", bytes(x).hex()]
    if isinstance(x, list):
        return ["l", [_enc(v, depth + 1) for v in list.__iter__(x)]]
    if isinstance(x, tuple):
        return ["t", [_enc(v, depth + 1) for v in tuple.__iter__(x)]]
    if isinstance(x, dict):
        return ["d", [[_enc(k, depth + 1), _enc(v, depth + 1)] for k, v in dict.items(x)]]
    if isinstance(x, frozenset):
        return ["F", [_enc(v, depth + 1) for v in frozenset.__iter__(x)]]
    if isinstance(x, set):
        return ["S", [_enc(v, depth + 1) for v in set.__iter__(x)]]
    raise TypeError(f"unsupported value of type {type(x).__name__!r} (only plain data crosses the sandbox)")


def _dec(x: object, depth: int = 0) -> object:
    if depth > 200 or type(x) is not list or not x or type(x[0]) is not str:
        raise ValueError("malformed value")
    tag = x[0]
    if tag == "n":
        return None
    if tag == "b" and type(x[1]) is bool:
        return x[1]
    if tag == "i" and type(x[1]) is str:
        return int(x[1], 16)
    if tag == "f" and type(x[1]) is str:
        return float.fromhex(x[1])
    if tag == "c" and type(x[1]) is str and type(x[2]) is str:
        return complex(float.fromhex(x[1]), float.fromhex(x[2]))
    if tag == "s" and type(x[1]) is str:
        return x[1]
    if tag == "y" and type(x[1]) is str:
        return bytes.fromhex(x[1])
    if tag in ("l", "t", "F", "S") and type(x[1]) is list:
        items = [_dec(v, depth + 1) for v in x[1]]
        return {"l": list, "t": tuple, "F": frozenset, "S": set}[tag](items)
    if tag == "d" and type(x[1]) is list:
        decoded = {}
        for kv in x[1]:
            if type(kv) is not list or len(kv) != 2:
                raise ValueError("malformed dict item")
            decoded[_dec(kv[0], depth + 1)] = _dec(kv[1], depth + 1)
        return decoded
    raise ValueError(f"malformed value tag {tag!r}")


def _send_frame(fd: int, obj: object) -> None:
    data = json.dumps(obj).encode()
    head = struct.pack("<I", len(data))
    sent = os.writev(fd, [head, data])  # no concatenated copy of the frame
    if sent < len(head):
        _write_all(fd, head[sent:])
        sent = len(head)
    _write_all(fd, memoryview(data)[sent - len(head) :])


def _recv_exact(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        b = os.read(fd, n - len(buf))
        if not b:
            return None
        buf += b
    return bytes(buf)


def _recv_frame(fd: int, limit: int = MAX_FRAME) -> object | None:
    """One length-prefixed JSON frame; ``ValueError`` for a frame over ``limit`` bytes.

    The body is read straight into one buffer of its announced size (no chunk list, no
    joined copy) and freed as soon as it is decoded to text, so a frame of ``n`` bytes costs at
    most about ``2n`` before parsing; the judge's ``limit`` is a fraction of its memory budget
    (see ``judge_frame_max`` in the spec) that leaves room for the parsed objects too.
    """
    head = _recv_exact(fd, 4)
    if head is None:
        return None
    (n,) = struct.unpack("<I", head)
    if n > limit:
        raise ValueError(f"frame of {n} bytes over the limit of {limit}")
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if not k:
            return None
        got += k
    view.release()
    text = buf.decode("utf-8")
    del buf, view
    return json.loads(text)


# --------------------------------------------------------------------------------------------
# the sandboxed processes
# --------------------------------------------------------------------------------------------


def _confine(
    spec: dict,
    uid: int | None,
    gid: int | None,
    keep_fds: tuple[int, ...],
    workdir: str,
    cgroup_fds: list[int] | None = None,
) -> None:
    """cgroups, limits, fds, keyring, credentials, seccomp, environment: everything before
    untrusted/judge code runs (in this order)."""
    os.setpgid(0, 0)
    for fd in cgroup_fds or ():
        os.write(fd, b"0")  # join the run's group (still root; moving back out needs root)
        os.close(fd)
    lim = spec["limits"]
    mb = 1 << 20
    cpu = int(lim["cpu_time_s"])
    pairs = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_AS, (lim["memory_mb"] * mb, lim["memory_mb"] * mb)),
        (resource.RLIMIT_FSIZE, (lim["file_size_mb"] * mb, lim["file_size_mb"] * mb)),
        (resource.RLIMIT_NOFILE, (lim["max_open_files"], lim["max_open_files"])),
        (resource.RLIMIT_CORE, (0, 0)),
        # never inherited from the trainer: a raised RTPRIO would let the run take SCHED_FIFO
        # and starve the machine; NICE 0 forbids raising the priority at all
        (resource.RLIMIT_NICE, (0, 0)),
        (resource.RLIMIT_RTPRIO, (0, 0)),
        (resource.RLIMIT_RTTIME, (0, 0)),
    ]
    if uid is not None or spec.get("userns"):
        # NPROC counts per real uid: meaningful only for a dedicated uid, or for uid 0 of a user
        # namespace made for this run (counted per namespace)
        nproc = int(lim.get("nproc", lim["max_processes"]))
        pairs.append((resource.RLIMIT_NPROC, (nproc, nproc)))
    # POSIX message queues: none. Without an IPC namespace they would persist; in a user
    # namespace their bytes count against the caller's own uid (a pool shared with the user)
    pairs.append((resource.RLIMIT_MSGQUEUE, (0, 0)))
    for which, val in pairs:
        resource.setrlimit(which, val)
    if lim.get("nice"):
        os.nice(int(lim["nice"]))  # yield the CPU to the launcher, the parent and the trainer
    path_fds = _expose_hidden_paths() if spec.get("expose_paths") and uid is not None else []
    # file descriptors: 0/1/2 plus the pipes this role needs
    keep = {0, 1, 2, *keep_fds, *path_fds}
    for fd in _open_fds():
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    _join_fresh_session_keyring(spec.get("keyctl_nr"))
    if uid is not None and gid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise RuntimeError("failed to drop privileges")
    elif spec.get("userns"):
        _drop_all_capabilities()
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if spec.get("seccomp"):
        _load_seccomp(bytes.fromhex(spec["seccomp"]))
    os.umask(0o077)
    os.chdir(workdir)
    env = dict(spec["env"])
    env["HOME"] = env["TMPDIR"] = workdir
    os.environ.clear()
    os.environ.update(env)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM, signal.SIGPIPE, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, 0)


def _open_fds() -> list[int]:
    try:
        return [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3, 1024))


def _expose_hidden_paths() -> list[int]:
    """Fallback mode: keep the interpreter's import path usable after the uid drop.

    When the standard library sits under a directory the sandbox uid cannot traverse (e.g. a
    pyenv under ``/root``), each such ``sys.path`` directory is opened now, as root, and
    replaced by ``/proc/self/fd/N``: the kernel resolves that link to the open directory without
    checking the path above it, so imports work while the rest of the hidden tree stays closed.
    Imported packages' ``__path__`` are rewritten the same way. Returns the fds to keep open.
    """
    fds: list[int] = []
    mapping: dict[str, str] = {}
    for entry in list(sys.path):
        real = os.path.realpath(entry) if entry else ""
        if not real or not os.path.isdir(real) or not _hidden(real):
            continue
        fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY)
        fds.append(fd)
        mapping[real] = f"/proc/self/fd/{fd}"
    if not mapping:
        return fds

    def remap(path: str) -> str:
        real = os.path.realpath(path)
        for src in sorted(mapping, key=len, reverse=True):
            if real == src or real.startswith(src + "/"):
                return mapping[src] + real[len(src) :]
        return path

    sys.path[:] = [remap(p) if p else p for p in sys.path]
    for mod in list(sys.modules.values()):
        paths = getattr(mod, "__path__", None)
        if isinstance(paths, list):
            paths[:] = [remap(p) for p in paths]
    sys.path_importer_cache.clear()
    return fds


def _hidden(path: str) -> bool:
    """True if a uid other than the owner cannot traverse to ``path``."""
    while True:
        try:
            if not os.stat(path).st_mode & 0o001:
                return True
        except OSError:
            return True
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent


def _fresh_main(filename: str) -> dict:
    mod = types.ModuleType("__main__")
    mod.__file__ = filename
    mod.__builtins__ = builtins  # type: ignore[attr-defined]
    sys.modules["__main__"] = mod
    sys.argv = [filename]
    return mod.__dict__


def _finish(code: int) -> None:
    """Normal interpreter shutdown for the child: threads, atexit, flush, then _exit."""
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()  # type: ignore[attr-defined]
    except BaseException:  # noqa: BLE001
        pass
    try:
        import atexit

        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass
    os._exit(code)


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except BaseException:  # noqa: BLE001
        pass
    return 1


def _run_source(source: str, filename: str) -> int:
    ns = _fresh_main(filename)
    try:
        path = os.path.join(os.getcwd(), filename)
        with open(path, "w") as f:
            f.write(source)
    except OSError:
        path = filename
    try:
        code = compile(source, path, "exec")
        exec(code, ns)
    except SystemExit as exc:
        return _exit_code(exc)
    except BaseException:  # noqa: BLE001 - report like the interpreter does
        traceback.print_exc()
        return 1
    return 0


def _candidate_main(
    spec: dict, uid: int | None, gid: int | None, rpc: tuple[int, int] | None, cgroup_fds: list[int]
) -> None:
    """Child: confine, run the untrusted program; in judge mode then serve calls."""
    code = 1
    try:
        _confine(spec, uid, gid, rpc or (), spec["workdir"], cgroup_fds)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        os._exit(121)
    try:
        code = _run_source(spec["source"], "solution.py")
        if rpc is not None:
            if code != 0:
                _finish(code)
            _serve(sys.modules["__main__"].__dict__, spec["entry_point"], rpc)
            code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 1
    _finish(code)


def _serve(ns: dict, entry_point: str, rpc: tuple[int, int]) -> None:
    req_r, resp_w = rpc
    while True:
        msg = _recv_frame(req_r)
        if msg is None:
            return
        try:
            fn = ns.get(entry_point)
            if fn is None or not callable(fn):
                raise NameError(f"name {entry_point!r} is not defined")
            args = _dec(msg["a"])
            kwargs = _dec(msg["k"])
            value = fn(*args, **kwargs)  # type: ignore[misc]
            reply: object = {"ok": _enc(value)}
        except SystemExit as exc:
            reply = {"err": ["SystemExit", str(exc.code)]}
        except BaseException as exc:  # noqa: BLE001 - forwarded to the judge
            try:
                reply = {"err": [type(exc).__name__, str(exc)[:2000]]}
            except BaseException:  # noqa: BLE001
                reply = {"err": ["Exception", "unprintable exception"]}
        _send_frame(resp_w, reply)


class CandidateError(Exception):
    """Raised in the judge when the candidate failed, died or returned non-plain data.

    It subclasses none of the exception types a test may expect and catch (see
    :data:`RERAISED`), and it is not ``StopIteration``: iterator-protocol code in the tests
    (``all(map(candidate, ...))``, ``list(map(...))``, a ``__next__``) cannot mistake it for
    "exhausted"."""


# exception types of the candidate that reach the tests as the real builtin type (a test may
# legitimately expect e.g. ``ValueError``); every other name, including StopIteration,
# StopAsyncIteration, GeneratorExit, SystemExit, KeyboardInterrupt, warnings and names the
# candidate made up, becomes a CandidateError and fails the run even if the test swallows it
RERAISED: dict[str, type[BaseException]] = {
    t.__name__: t
    for t in (
        ValueError, TypeError, KeyError, IndexError, LookupError, ZeroDivisionError, ArithmeticError,
        OverflowError, AttributeError, NameError, AssertionError, RuntimeError, RecursionError,
        NotImplementedError, UnicodeError, OSError,
    )
}  # fmt: skip


def _judge_main(
    spec: dict,
    judge: dict,
    uid: int | None,
    gid: int | None,
    rpc: tuple[int, int],
    verdict_w: int,
    cgroup_fds: list[int],
) -> None:
    """Child: confine, run the trusted prompt + tests against the stub candidate.

    The verdict is a pass only if ``check`` returned normally, at least one call to the
    candidate completed, and no sticky failure was recorded: a dead candidate, a garbage,
    oversized or undecodable frame, non-plain data, or an exception outside :data:`RERAISED`.
    """
    state = {"calls": 0, "sticky": None}
    frame_max = int(spec.get("judge_frame_max") or MAX_FRAME)
    try:
        _confine(spec, uid, gid, (*rpc, verdict_w), spec["judge_workdir"], cgroup_fds)
        _prctl(PR_SET_DUMPABLE, 0)  # the candidate must not ptrace or read the judge
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        req_w, resp_r = rpc

        def fail(why: str) -> CandidateError:
            if state["sticky"] is None:
                state["sticky"] = why
            return CandidateError(why)

        def candidate(*args: object, **kwargs: object) -> object:
            if state["sticky"] is not None:
                raise CandidateError(state["sticky"])
            try:
                _send_frame(req_w, {"a": _enc(list(args)), "k": _enc(dict(kwargs))})
                reply = _recv_frame(resp_r, frame_max)
            except (OSError, ValueError, TypeError, RecursionError, MemoryError) as exc:
                raise fail(f"candidate transport failed: {type(exc).__name__}: {str(exc)[:200]}") from None
            if not isinstance(reply, dict):
                raise fail("candidate process exited or sent garbage")
            if "ok" in reply:
                try:
                    value = _dec(reply["ok"])
                except (ValueError, TypeError, KeyError, IndexError, RecursionError, OverflowError):
                    raise fail("candidate returned an undecodable value") from None
                state["calls"] += 1
                return value
            err = reply.get("err")
            ok_shape = isinstance(err, list) and len(err) == 2 and all(type(e) is str for e in err)
            name, text = (err[0], err[1]) if ok_shape else ("?", "malformed error")
            state["calls"] += 1
            exc_type = RERAISED.get(name)
            if exc_type is None:
                raise fail(f"candidate raised {name[:100]}")
            raise exc_type(text[:2000])

        ns: dict = {"__name__": "__judge__", "__builtins__": builtins}
        exec(compile(judge.get("prompt") or "", "prompt.py", "exec"), ns)
        # tests may call the function under test by name (HumanEval/33 does): bind it to the stub
        ns[judge["entry_point"]] = candidate
        exec(compile(judge["test"], "test.py", "exec"), ns)
        check = ns.get(judge.get("check_name") or "check")
        if not callable(check):
            raise CandidateError("test code defines no check function")
        check(candidate)
        if state["sticky"] is not None:
            verdict = {"passed": False, "error": f"CandidateError: {state['sticky']}"}
        elif not state["calls"]:
            verdict = {"passed": False, "error": "the tests never called the candidate"}
        else:
            verdict = {"passed": True}
    except BaseException as exc:  # noqa: BLE001 - any failure is a fail verdict
        verdict = {"passed": False, "error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    try:
        _write_all(verdict_w, json.dumps(verdict).encode())
    finally:
        os._exit(0)


# --------------------------------------------------------------------------------------------
# launcher main
# --------------------------------------------------------------------------------------------


SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
DEVICES = ("null", "zero", "full", "random", "urandom")


def _bind_ro(src: str, dst: str, *, devices: bool = False) -> None:
    """Bind ``src`` at ``dst`` read-only and nosuid (nodev unless ``devices``); dst is created.

    The bind is recursive (``MS_REC``), so the submounts under ``src`` come along; a plain
    ``MS_REMOUNT|MS_RDONLY`` would make only the top mount read-only and leave every submount
    (a writable ``/usr/local`` or ``/etc/hosts`` bind on the host) writable inside. The flags
    are therefore applied to the whole tree with ``mount_setattr(AT_RECURSIVE)`` (Linux 5.12+),
    or, on an older kernel, to each submount in turn (:func:`_remount_tree_ro`).
    """
    if os.path.isdir(src):
        os.makedirs(dst, 0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), 0o755, exist_ok=True)
        with open(dst, "a"):
            pass
    _mount(src, dst, None, MS_BIND | MS_REC, None)
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | (0 if devices else MS_NODEV)
    _mount(None, dst, None, flags, None)
    attrs = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | (0 if devices else MOUNT_ATTR_NODEV)
    if not _mount_setattr_recursive(dst, attrs):
        _remount_tree_ro(dst, flags)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _mount_setattr_recursive(path: str, attrs: int) -> bool:
    """``mount_setattr(path, AT_RECURSIVE, attr_set=attrs)``; False if the kernel lacks it."""
    if os.uname().machine not in ("x86_64", "aarch64"):
        return False
    attr = _MountAttr(attrs, 0, 0, 0)
    rc = _LIBC.syscall(
        ctypes.c_long(SYS_MOUNT_SETATTR),
        ctypes.c_int(AT_FDCWD),
        path.encode(),
        ctypes.c_uint(AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (38, 22):  # ENOSYS (before 5.12), EINVAL (unknown flags): remount one by one
        return False
    raise OSError(err, f"mount_setattr {path}: {os.strerror(err)}")


def _mount_points_under(path: str) -> list[str]:
    """Mount points strictly below ``path`` (from ``/proc/self/mountinfo``), outermost first."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            point = point.replace("\\134", "\\")
            if point.startswith(path.rstrip("/") + "/"):
                out.append(point)
    return sorted(out, key=len)


def _remount_tree_ro(path: str, flags: int) -> None:
    for point in _mount_points_under(path):
        _mount(None, point, None, flags, None)


def _mounts() -> dict[str, tuple[str, list[str]]]:
    """Mount id -> (mount point, mount options) from ``/proc/self/mountinfo``."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            out[fields[0]] = (fields[4], fields[5].split(","))
    return out


def _writable_new_mounts(before: dict, allowed: set[str]) -> list[str]:
    """Mounts made since ``before`` that are writable, except the ``allowed`` points: the
    fail-closed check that every bind of the host ended up read-only, submounts included."""
    return sorted(
        point
        for mid, (point, opts) in _mounts().items()
        if mid not in before and "ro" not in opts and point not in allowed
    )


def _build_root(spec: dict) -> None:
    """Namespace mode: build a minimal root on a private tmpfs and ``chroot`` into it.

    The new root holds read-only binds of the system directories (``/usr``, ``/lib*``, ``/bin``,
    ``/etc``...) and of the interpreter's prefix (at its own path, e.g. under ``/root``, whose
    other contents stay invisible), a few device nodes, a fresh ``/proc`` of the new PID
    namespace, a small ``/dev/shm``, and ``/tmp/work`` / ``/tmp/judge`` owned by the sandbox uids.
    Nothing else of the host (home directories, ``/work``, datasets, ``/sys``, the host's
    ``/tmp``) exists inside; the whole writable space is the tmpfs, capped at ``disk_mb``.
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    host_mounts = _mounts()
    root = "/tmp"  # private in this mount namespace: the host's /tmp is untouched
    disk = int(spec["limits"]["disk_mb"])
    inodes = int(spec["limits"]["max_inodes"])  # an inode flood costs ~1 KiB of slab per file
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"size={disk}m,nr_inodes={inodes},mode=0755")
    bound: list[str] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            os.symlink(os.readlink(d), root + d)
        elif os.path.isdir(d):
            _bind_ro(d, root + d)
            bound.append(d)
    for prefix in {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}:
        if not any(prefix == b or prefix.startswith(b + "/") for b in bound):
            _bind_ro(prefix, root + prefix)
            bound.append(prefix)
    os.makedirs(root + "/dev", 0o755)
    for dev in DEVICES:
        if os.path.exists("/dev/" + dev):
            _bind_ro("/dev/" + dev, f"{root}/dev/{dev}", devices=True)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"{root}/dev/{name}")
    os.makedirs(root + "/dev/shm")
    _mount(
        "tmpfs",
        root + "/dev/shm",
        "tmpfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "size=8m,nr_inodes=128,mode=1777",
    )
    os.makedirs(root + "/proc")
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    for masked in ("keys", "key-users"):  # other uids' keyrings and key quotas
        if os.path.exists(f"{root}/proc/{masked}"):
            _mount("/dev/null", f"{root}/proc/{masked}", None, MS_BIND, None)
    writable = _writable_new_mounts(
        host_mounts, {root, root + "/dev/shm", root + "/proc", root + "/proc/keys", root + "/proc/key-users"}
    )
    if writable:  # fail closed: never run a program with a writable host mount inside
        raise OSError(f"host mounts still writable inside the sandbox root: {writable}")
    os.makedirs(root + "/tmp", 0o755)
    for wd, owner in ((spec["workdir"], spec["uid"]), (spec["judge_workdir"], spec["judge_uid"])):
        os.mkdir(root + wd, 0o700)
        if owner is not None:
            os.chown(root + wd, owner, owner)
    os.chroot(root)
    os.chdir("/")


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (one kill(-1) from a helper running as that uid)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        except BaseException:  # noqa: BLE001
            pass
        os._exit(0)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _reap_all_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            # live children remain (fallback without uid): kill what we can see
            for child in _children_of(os.getpid()):
                try:
                    os.kill(child, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.005)


def _children_of(ppid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            fields = stat[stat.rindex(b")") + 2 :].split()
            if int(fields[1]) == ppid:
                out.append(int(name))
        except (OSError, ValueError):
            pass
    return out


def main(argv: list[str]) -> int:
    """Launcher entry point (see the module docstring)."""
    spec_fd, result_fd = int(argv[1]), int(argv[2])
    judge_fd = int(argv[3]) if len(argv) > 3 else None
    result: dict = {"returncode": None, "signal": None, "timed_out": False, "passed": None}
    t0 = time.monotonic()
    cand_pid = judge_pid = None
    t_run: float | None = None
    spec: dict = {}
    # not dumpable: a sandboxed process of the same uid (non-root fallback) can neither ptrace
    # the launcher nor open its /proc/<pid>/fd and memory (where the judge spec passes)
    _prctl(PR_SET_DUMPABLE, 0)
    try:
        spec = json.loads(_read_all(spec_fd))
        namespaces = spec["namespaces"]
        # the run's cgroups: opened here, before chroot hides /sys; each child joins them
        cand_cg = [os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in spec.get("cgroup_procs") or ()]
        judge_cg = [os.open(p, os.O_WRONLY | os.O_CLOEXEC) for p in spec.get("judge_cgroup_procs") or ()]
        if namespaces:
            _build_root(spec)
        else:
            _prctl(PR_SET_CHILD_SUBREAPER, 1)
        judge_mode = judge_fd is not None
        rpc_cand = rpc_judge = None
        if judge_mode:
            req_r, req_w = os.pipe()
            resp_r, resp_w = os.pipe()
            rpc_cand, rpc_judge = (req_r, resp_w), (req_w, resp_r)
        sys.stdout.flush()
        sys.stderr.flush()
        t_run = time.monotonic()
        cand_pid = os.fork()
        if cand_pid == 0:
            _candidate_main(spec, spec["uid"], spec["gid"], rpc_cand, cand_cg)
        for fd in cand_cg:
            os.close(fd)
        verdict_r = None
        if judge_mode:
            assert judge_fd is not None and rpc_judge is not None and rpc_cand is not None
            judge = json.loads(_read_all(judge_fd))  # read only after the candidate is forked
            verdict_r, verdict_w = os.pipe()
            judge_pid = os.fork()
            if judge_pid == 0:
                os.close(verdict_r)
                _judge_main(spec, judge, spec["judge_uid"], spec["judge_gid"], rpc_judge, verdict_w, judge_cg)
            os.close(verdict_w)
            for fd in (*rpc_cand, *rpc_judge):
                os.close(fd)

        def on_alarm(signum: int, frame: object) -> None:
            raise _WallTimeout

        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(
            signal.ITIMER_REAL, max(0.01, float(spec["limits"]["wall_time_s"]) - (time.monotonic() - t0))
        )
        for fd in judge_cg:
            os.close(fd)
        waiting_for = judge_pid if judge_mode else cand_pid
        try:
            while True:
                pid, status = os.waitpid(-1, 0)
                if pid == cand_pid:
                    if os.WIFSIGNALED(status):
                        result["signal"] = os.WTERMSIG(status)
                        result["returncode"] = -os.WTERMSIG(status)
                    else:
                        result["returncode"] = os.WEXITSTATUS(status)
                if pid == waiting_for:
                    break
        except _WallTimeout:
            result["timed_out"] = True
        signal.setitimer(signal.ITIMER_REAL, 0)
        if verdict_r is not None and not result["timed_out"]:
            try:
                verdict = json.loads(_read_all(verdict_r) or b"{}")
            except ValueError:
                verdict = {}
            result["passed"] = bool(verdict.get("passed", False))
            if verdict.get("error"):
                result["judge_error"] = verdict["error"]
        elif judge_mode:
            result["passed"] = False
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        result["setup_error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-4000:]
    result["wall_s"] = time.monotonic() - t0
    if t_run is not None:
        result["run_s"] = time.monotonic() - t_run
    if not spec.get("namespaces", True):
        for uid in (spec.get("uid"), spec.get("judge_uid")):
            if uid is not None:
                _kill_uid(uid)
        for pid in (cand_pid, judge_pid):
            if pid:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
        _reap_all_children()
    try:
        _write_all(result_fd, json.dumps(result).encode())
    except OSError:
        pass
    # As PID 1 of the namespace, our exit kills everything left in it.
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
