"""Per-run control groups for the sandbox: a memory, pids and CPU budget for the whole run.

Process-level rlimits do not bound a run: ``RLIMIT_AS`` is per process (N children hold N times
the budget) and does not see memory held in memfd, shared-memory or tmpfs files, or kernel memory
(inodes, dentries, pipe buffers). A memory cgroup charges all of it to the run (cgroup v1 since
Linux 4.6 charges kernel memory to ``memory.usage_in_bytes``; v2's ``memory.max`` covers
everything), so one run can never take more than its budget, and the OOM killer picks inside the
run, not the trainer.

Layout: ``<mount>/<trainer's own cgroup>/adaclip-sbx/<trainer pid>-<n>[j]`` in each hierarchy
(``j``: the judge's sibling group). The trainer creates, reads and removes the groups; the
launcher opens their ``cgroup.procs`` before it ``chroot``s, and each sandboxed child writes
``0`` into them (joining) while still root, before it drops privileges. Creating the groups
under the trainer's own cgroup keeps every outer limit in force.

Per controller the unified (v2) hierarchy is used when the trainer's v2 cgroup offers that
controller, else the v1 hierarchy mounting it (hybrid machines have both).

The references for the mechanisms: the kernel's ``Documentation/admin-guide/cgroup-v1/memory.rst``
and ``cgroup-v2.rst``; nsjail's ``cgroup_mem_max``/``cgroup_pids_max``/``cgroup_cpu_ms_per_sec``
do the same per jailed process.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import signal
import threading
import time
from dataclasses import dataclass, field

__all__ = ["CgroupLimits", "CgroupStats", "CgroupSupport", "RunCgroup", "detect_cgroups"]

CONTROLLERS = ("memory", "pids", "cpu")  # required by ``resource_control="require"``
OPTIONAL = ("cpuacct",)  # v1 only: the run's total CPU time
SUBDIR = "adaclip-sbx"
_CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class CgroupLimits:
    """Limits of one run's group."""

    memory_bytes: int
    pids: int
    cpu_cores: float


@dataclass
class CgroupStats:
    """What one run's group recorded (``None``: not available in this hierarchy)."""

    memory_peak_bytes: int | None = None
    oom_kills: int = 0
    pids_limit_hits: int = 0
    cpu_s: float | None = None


@dataclass(frozen=True)
class _Hier:
    controller: str
    version: int  # 1 or 2
    base: str  # directory that holds the per-run groups (``.../adaclip-sbx``)


@dataclass
class RunCgroup:
    """One run's groups (one directory per hierarchy); see :meth:`CgroupSupport.create`."""

    dirs: dict[str, tuple[int, str]] = field(default_factory=dict)  # controller -> (version, dir)

    @property
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes ``0`` into to join every group."""
        return sorted({os.path.join(d, "cgroup.procs") for _, d in self.dirs.values()})

    def stats(self) -> CgroupStats:
        """Peak memory (shmem and kernel memory included), OOM kills, pids-limit hits, CPU."""
        st = CgroupStats()
        if "memory" in self.dirs:
            version, d = self.dirs["memory"]
            if version == 1:
                st.memory_peak_bytes = _read_int(os.path.join(d, "memory.max_usage_in_bytes"))
                st.oom_kills = _read_key(os.path.join(d, "memory.oom_control"), "oom_kill") or 0
            else:
                st.memory_peak_bytes = _read_int(os.path.join(d, "memory.peak"))
                st.oom_kills = _read_key(os.path.join(d, "memory.events"), "oom_kill") or 0
        if "pids" in self.dirs:
            st.pids_limit_hits = _read_key(os.path.join(self.dirs["pids"][1], "pids.events"), "max") or 0
        if "cpuacct" in self.dirs:
            ns = _read_int(os.path.join(self.dirs["cpuacct"][1], "cpuacct.usage"))
            st.cpu_s = ns / 1e9 if ns is not None else None
        elif "cpu" in self.dirs and self.dirs["cpu"][0] == 2:
            us = _read_key(os.path.join(self.dirs["cpu"][1], "cpu.stat"), "usage_usec")
            st.cpu_s = us / 1e6 if us is not None else None
        return st

    def remove(self, timeout_s: float = 5.0) -> bool:
        """Kill whatever is left in the groups, then remove them (retrying while busy).

        Returns False if a group could not be removed within ``timeout_s`` (it is left for the
        next :func:`detect_cgroups` sweep).
        """
        ok = True
        end = time.monotonic() + timeout_s
        for version, d in {v for v in self.dirs.values()}:
            if version == 2:
                with contextlib.suppress(OSError):
                    _write(os.path.join(d, "cgroup.kill"), "1")
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > end:
                        ok = False
                        break
                    _kill_procs(d)
                    time.sleep(0.002)
        return ok


class CgroupSupport:
    """The hierarchies this process can create per-run groups in (see :func:`detect_cgroups`)."""

    def __init__(self, hiers: dict[str, _Hier], kmem_accounted: bool = True) -> None:
        self.hiers = hiers
        self.kmem_accounted = kmem_accounted
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def describe(self) -> str:
        """E.g. ``cgroup-v1(memory,pids,cpu,cpuacct)``; ``no-cgroup`` when empty."""
        parts = []
        for version in (2, 1):
            names = [
                c if c != "memory" or self.kmem_accounted else "memory(no-kmem)"
                for c, h in self.hiers.items()
                if h.version == version
            ]
            if names:
                parts.append(f"cgroup-v{version}({','.join(names)})")
        return "+".join(parts) or "no-cgroup"

    def create(self, limits: CgroupLimits, suffix: str = "") -> RunCgroup:
        """Create one run's groups with ``limits``; on failure nothing is left behind."""
        with self._lock:
            name = f"{os.getpid()}-{next(self._seq)}{suffix}"
        run = RunCgroup()
        made: dict[tuple[int, str], bool] = {}
        try:
            for controller, h in self.hiers.items():
                d = os.path.join(h.base, name)
                if (h.version, d) not in made:
                    os.mkdir(d, 0o700)
                    made[(h.version, d)] = True
                run.dirs[controller] = (h.version, d)
                _set_limits(controller, h.version, d, limits)
        except BaseException:
            run.remove(timeout_s=1.0)
            raise
        return run


def _set_limits(controller: str, version: int, d: str, lim: CgroupLimits) -> None:
    quota = max(1000, int(lim.cpu_cores * _CPU_PERIOD_US))
    if version == 1:
        if controller == "memory":
            _write(os.path.join(d, "memory.limit_in_bytes"), str(lim.memory_bytes))
            with contextlib.suppress(OSError):  # absent without swap accounting; memsw >= limit
                _write(os.path.join(d, "memory.memsw.limit_in_bytes"), str(lim.memory_bytes))
        elif controller == "pids":
            _write(os.path.join(d, "pids.max"), str(lim.pids))
        elif controller == "cpu":
            _write(os.path.join(d, "cpu.cfs_period_us"), str(_CPU_PERIOD_US))
            _write(os.path.join(d, "cpu.cfs_quota_us"), str(quota))
        return
    if controller == "memory":
        _write(os.path.join(d, "memory.max"), str(lim.memory_bytes))
        for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            with contextlib.suppress(OSError):
                _write(os.path.join(d, name), value)
    elif controller == "pids":
        _write(os.path.join(d, "pids.max"), str(lim.pids))
    elif controller == "cpu":
        _write(os.path.join(d, "cpu.max"), f"{quota} {_CPU_PERIOD_US}")


# --------------------------------------------------------------------------------------------
# detection
# --------------------------------------------------------------------------------------------


def _mounts(mountinfo: str) -> tuple[dict[str, tuple[str, str]], tuple[str, str] | None]:
    """v1 controller -> (mount point, mount root), and the v2 (mount point, mount root)."""
    v1: dict[str, tuple[str, str]] = {}
    v2 = None
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        f, p = pre.split(), post.split()
        if len(f) < 5 or len(p) < 3:
            continue
        root, point = _unescape(f[3]), _unescape(f[4])
        if p[0] == "cgroup2" and v2 is None:
            v2 = (point, root)
        elif p[0] == "cgroup":
            for opt in p[2].split(","):
                if opt in CONTROLLERS + OPTIONAL and opt not in v1:
                    v1[opt] = (point, root)
    return v1, v2


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _own_paths(proc_cgroup: str) -> tuple[dict[str, str], str | None]:
    v1: dict[str, str] = {}
    v2 = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        if ctrls == "":
            v2 = path
            continue
        for c in ctrls.split(","):
            v1[c] = path
    return v1, v2


def _join(point: str, mount_root: str, own: str) -> str:
    rel = own
    if mount_root != "/" and (own == mount_root or own.startswith(mount_root + "/")):
        rel = own[len(mount_root) :]
    return os.path.join(point, rel.lstrip("/"))


def kmem_accounted(cmdline: str) -> bool:
    """False when the kernel command line turns off kernel-memory accounting in memory cgroups
    (``cgroup.memory=nokmem``): then inodes, dentries, pipe buffers and page tables a run
    allocates are charged to nobody, and its memory budget no longer bounds them."""
    for word in cmdline.split():
        if word.startswith("cgroup.memory=") and "nokmem" in word.split("=", 1)[1].split(","):
            return False
    return True


def detect_cgroups(
    proc: str = "/proc/self", controllers: tuple[str, ...] = CONTROLLERS, cmdline: str = "/proc/cmdline"
) -> tuple[CgroupSupport, dict[str, str]]:
    """Find, per controller, a hierarchy where this process can create and limit groups.

    Each candidate is probed (``mkdir``, a limit write, ``rmdir``) under the process's own
    cgroup. Stale groups of dead trainers are swept on the way. A memory controller on a kernel
    booted with ``cgroup.memory=nokmem`` is used (``describe`` says ``memory(no-kmem)``) but
    reported as missing, so ``resource_control="require"`` refuses it: the run's kernel memory
    would be outside its budget.

    Returns:
        The usable hierarchies, and for each required controller that is *not* usable the
        reason (e.g. ``"not mounted"``, ``"EROFS: read-only cgroupfs (a container?)"``).
    """
    try:
        with open(os.path.join(proc, "mountinfo")) as f:
            v1_mounts, v2_mount = _mounts(f.read())
        with open(os.path.join(proc, "cgroup")) as f:
            v1_own, v2_own = _own_paths(f.read())
    except OSError as exc:
        return CgroupSupport({}), {c: f"cannot read /proc: {exc}" for c in controllers}
    hiers: dict[str, _Hier] = {}
    reasons: dict[str, str] = {}
    v2_dir = _join(*v2_mount, v2_own) if v2_mount and v2_own is not None else None
    v2_avail: set[str] = set()
    if v2_dir is not None:
        with contextlib.suppress(OSError), open(os.path.join(v2_dir, "cgroup.controllers")) as f:
            v2_avail = set(f.read().split())
    for c in (*controllers, *OPTIONAL):
        tried = []
        if c in v2_avail and v2_dir is not None:
            why = _probe_v2(v2_dir, c)
            if why is None:
                hiers[c] = _Hier(c, 2, os.path.join(v2_dir, SUBDIR))
                continue
            tried.append(f"v2: {why}")
        if c in v1_mounts and c in v1_own:
            d = _join(*v1_mounts[c], v1_own[c])
            why = _probe_v1(d, c)
            if why is None:
                hiers[c] = _Hier(c, 1, os.path.join(d, SUBDIR))
                continue
            tried.append(f"v1 {d}: {why}")
        if c in controllers:
            reasons[c] = (
                "; ".join(tried) or "not mounted (neither a cgroup v1 hierarchy nor cgroup2 offers it)"
            )
    if "cpuacct" in hiers and any(h.version == 2 for h in hiers.values()):
        del hiers["cpuacct"]
    for h in hiers.values():
        _sweep(h.base)
    kmem = True
    with contextlib.suppress(OSError), open(cmdline) as f:
        kmem = kmem_accounted(f.read())
    if "memory" in hiers and not kmem:
        reasons["memory"] = (
            "kernel memory is not accounted (cgroup.memory=nokmem on the kernel command line): "
            "inodes, pipe buffers and page tables of a run would escape its budget; boot without "
            "nokmem, or accept it with resource_control='auto'"
        )
    return CgroupSupport(hiers, kmem_accounted=kmem), reasons


def _errtext(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "error")
    hint = {
        "EROFS": "read-only cgroupfs (a container without a delegated cgroup?)",
        "EACCES": "no permission (needs root or a delegated subtree)",
        "EPERM": "no permission (needs root or a delegated subtree)",
        "EBUSY": "the trainer's cgroup has processes, so controllers cannot be enabled for "
        "children (move the trainer into a leaf cgroup of a delegated subtree, e.g. systemd "
        "Delegate=yes)",
        "ENOENT": "cgroup directory missing",
    }.get(name, exc.strerror or "")
    return f"{name}: {hint}"


def _probe_v1(d: str, controller: str) -> str | None:
    base = os.path.join(d, SUBDIR)
    probe = os.path.join(base, f"probe-{os.getpid()}-{threading.get_ident()}")
    try:
        os.makedirs(base, 0o755, exist_ok=True)
        os.mkdir(probe)
        try:
            if controller in CONTROLLERS:
                _set_limits(controller, 1, probe, CgroupLimits(64 << 20, 8, 1.0))
        finally:
            os.rmdir(probe)
    except OSError as exc:
        return _errtext(exc)
    return None


def _probe_v2(d: str, controller: str) -> str | None:
    base = os.path.join(d, SUBDIR)
    try:
        # the trainer's own cgroup is not reconfigured: its children must already get the
        # controller (a delegated subtree with the trainer in a leaf, e.g. systemd Delegate=yes)
        with open(os.path.join(d, "cgroup.subtree_control")) as f:
            if controller not in f.read().split():
                return (
                    f"not enabled for the children of {d} (cgroup.subtree_control); delegate the "
                    "subtree and run the trainer in a leaf cgroup of it"
                )
        os.makedirs(base, 0o755, exist_ok=True)
        with open(os.path.join(base, "cgroup.subtree_control")) as f:
            if controller not in f.read().split():
                _write(os.path.join(base, "cgroup.subtree_control"), f"+{controller}")
        probe = os.path.join(base, f"probe-{os.getpid()}-{threading.get_ident()}")
        os.mkdir(probe)
        try:
            _set_limits(controller, 2, probe, CgroupLimits(64 << 20, 8, 1.0))
        finally:
            os.rmdir(probe)
    except OSError as exc:
        return _errtext(exc)
    return None


def _sweep(base: str) -> None:
    """Remove groups left by trainers that died (named ``<pid>-<n>``; empty ones only).

    Nothing is killed here: a group whose pid is not alive in this PID namespace may belong to
    a trainer in another one."""
    try:
        entries = os.listdir(base)
    except OSError:
        return
    for name in entries:
        head = name.split("-", 1)[0]
        if not head.isdigit() or _alive(int(head)):
            continue
        with contextlib.suppress(OSError):  # EBUSY while processes remain: never kill from here
            os.rmdir(os.path.join(base, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_procs(d: str) -> None:
    try:
        with open(os.path.join(d, "cgroup.procs")) as f:
            pids = [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# small file helpers
# --------------------------------------------------------------------------------------------


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _read_key(path: str, key: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0] == key:
                    return int(parts[1])
    except (OSError, ValueError):
        return None
    return None
