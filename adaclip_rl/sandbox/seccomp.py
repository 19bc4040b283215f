"""The sandbox's seccomp-BPF filter, compiled here (stdlib only) and loaded by the launcher.

A **denylist** with default *allow*, plus argument rules: the syscalls a test program never
needs and that widen the kernel attack surface, reach a machine-wide pool or leak state between
runs get an error (``EPERM``, or ``ENOSYS`` / ``EACCES`` where noted); every other syscall runs
as usual. Why a denylist, and what it does not promise, is in ``docs/sandbox.md`` ("Threat
model, class by class").

Denied (``EPERM``):

* kernel keyrings: ``keyctl``, ``add_key``, ``request_key`` (keys of a uid outlive the run);
* attack surface: ``io_uring_*``, ``userfaultfd``, ``bpf``, ``perf_event_open``, ``memfd_secret``;
* machine-wide pools: Linux AIO (``io_setup`` & co: ``fs.aio-max-nr`` is one pool for the
  whole machine), user namespaces (below), inotify instances (per-uid), keys (above);
* file watches (host activity through read-only binds, per-uid quotas): ``inotify_*``,
  ``fanotify_*``, and ``fcntl`` with ``F_NOTIFY`` (dnotify) or ``F_SETLEASE``;
* the page cache of host files, as a window on the host and a channel between runs: the
  residency probes ``mincore``, ``cachestat`` and ``preadv2``/``pwritev2`` with ``RWF_NOWAIT``
  (or any flag but ``HIPRI``, ``DSYNC``, ``SYNC``, ``APPEND``, ``NOAPPEND``); the evictions
  ``posix_fadvise(DONTNEED | NOREUSE)`` and ``madvise(MADV_PAGEOUT | MADV_COLD |
  MADV_COLLAPSE)``; KSM (``MADV_MERGEABLE``, ``prctl(PR_SET_MEMORY_MERGE)``) and memory poisoning;
* huge pages from the machine's hugetlb pool, which the memory cgroup does not charge:
  ``mmap(MAP_HUGETLB)``, ``memfd_create(MFD_HUGETLB)``, ``shmget(SHM_HUGETLB)``;
* mounts and namespaces: ``mount``, ``umount2``, the new mount API, ``pivot_root``, ``chroot``,
  ``unshare``, ``setns``, and ``clone`` with any ``CLONE_NEW*`` flag;
* other processes: ``ptrace``, ``process_vm_readv/writev``, ``process_madvise``,
  ``pidfd_getfd``, ``kcmp``;
* kernel code and system state: module and kexec loading, ``reboot``, swap, ``acct``,
  ``syslog``, quotas, clocks, host/domain names, I/O ports, ``modify_ldt``, ``uselib``,
  file handles (``open_by_handle_at``), NUMA policy, ``ioctl(TIOCSTI/TIOCLINUX)``;
* ``personality`` with any persona but ``0`` (query) and ``0xffffffff``.

Special errors: ``clone3`` gets ``ENOSYS`` (its flags live in memory a filter cannot read; glibc
falls back to ``clone``, which is checked); ``socket`` and ``socketpair`` for any family but
``AF_UNIX`` get ``EACCES`` (no network, no netlink, no TIPC or other module-loaded family); a
foreign ABI (i386 ``int 0x80``, x32) gets ``ENOSYS`` for every call. In the fallback mode (no IPC
namespace) every System V IPC and POSIX message-queue call is denied too, so neither the
objects a run would leave nor the host's own objects are reachable. The filter never kills: a
denied call is an ``OSError`` for the program.

Why not libseccomp (``pyseccomp``)? The launcher runs ``python -I -S`` inside the sandbox and
must not import third-party code, so the filter is compiled in the trainer either way; a ~250
instruction denylist with a dozen argument rules is small enough to compile and review here,
and needs no extra dependency. The tests check it against the system's syscall headers and run
every denied call under it as root.
"""

from __future__ import annotations

import errno
import os
import struct

__all__ = ["SECCOMP_ARCHES", "build_filter", "denied_syscalls"]

# BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h)
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JSET_K = 0x45
_JGE_K = 0x35
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000

# offsets in struct seccomp_data
_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARG0_LO = 16  # little-endian: the low 32 bits of args[0]


def _arg_lo(i: int) -> int:
    """Offset of the low 32 bits of ``args[i]`` in ``struct seccomp_data`` (little-endian)."""
    return 16 + 8 * i


_X32_BIT = 0x40000000
_AF_UNIX = 1
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C
# every CLONE_NEW* flag valid in clone(2) (CLONE_NEWTIME, 0x80, is only valid for clone3/unshare:
# in clone(2) those bits are the exit signal)
_CLONE_NEW_MASK = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
_F_SETLEASE = 1024  # fcntl: a lease breaks (signals) when another process opens the file
_F_NOTIFY = 1026  # fcntl: dnotify, a signal per access in a watched directory
_POSIX_FADV_DONTNEED = 4  # and above (NOREUSE): drop or demote the file's page cache
_MADV_DENIED = (
    12,  # MADV_MERGEABLE: KSM merges equal pages across processes (a cross-run channel)
    20,  # MADV_COLD
    21,  # MADV_PAGEOUT: evict pages of a mapped file
    25,  # MADV_COLLAPSE
    100,  # MADV_HWPOISON
    101,  # MADV_SOFT_OFFLINE
)
# preadv2/pwritev2 flags allowed: RWF_HIPRI, RWF_DSYNC, RWF_SYNC, RWF_APPEND, RWF_NOAPPEND; denied:
# RWF_NOWAIT (a residency probe: EAGAIN unless cached), RWF_DONTCACHE (drops pages), anything newer
_RWF_ALLOWED = 0x01 | 0x02 | 0x04 | 0x10 | 0x20
_MAP_HUGETLB = 0x40000  # huge pages come from the machine's hugetlb pool, outside the memory cgroup
_MFD_HUGETLB = 0x4
_SHM_HUGETLB = 0x800
_PR_SET_MEMORY_MERGE = 67  # KSM for the whole process

_DENY_EPERM = (
    "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd", "bpf",
    "perf_event_open", "memfd_secret",
    "inotify_init", "inotify_init1", "inotify_add_watch", "fanotify_init", "fanotify_mark",
    "mount", "umount2", "mount_setattr", "move_mount", "open_tree", "open_tree_attr", "fsopen",
    "fsconfig", "fsmount", "fspick", "pivot_root", "chroot", "unshare", "setns", "statmount",
    "listmount",
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd", "kcmp",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "name_to_handle_at",
    "reboot", "swapon", "swapoff", "acct", "syslog", "quotactl", "quotactl_fd", "settimeofday",
    "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname", "iopl", "ioperm",
    "modify_ldt", "uselib", "vhangup", "lookup_dcookie", "_sysctl", "ustat", "sysfs",
    "create_module", "nfsservctl",
    "mbind", "set_mempolicy", "set_mempolicy_home_node", "migrate_pages", "move_pages",
    # machine-wide pools: fs.aio-max-nr counts every AIO context of the machine
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
    # page-cache residency probes (a window on the host's file reads, a channel across runs)
    "mincore", "cachestat",
)  # fmt: skip
# fallback mode only: no IPC namespace, so System V IPC objects and message queues would outlive
# the run, and the host's own objects (a 0666 segment, a queue) would be reachable by id
_DENY_FALLBACK = (
    "shmget", "msgget", "semget", "mq_open",
    "shmat", "shmctl", "shmdt", "semop", "semctl", "semtimedop", "msgsnd", "msgrcv", "msgctl",
    "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
)  # fmt: skip

_X86_64 = {
    "keyctl": 250, "add_key": 248, "request_key": 249, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "userfaultfd": 323, "bpf": 321,
    "perf_event_open": 298, "memfd_secret": 447, "inotify_init": 253, "inotify_init1": 294,
    "inotify_add_watch": 254, "fanotify_init": 300, "fanotify_mark": 301, "mount": 165,
    "umount2": 166, "mount_setattr": 442, "move_mount": 429, "open_tree": 428,
    "open_tree_attr": 467, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308, "statmount": 457,
    "listmount": 458, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
    "process_madvise": 440, "pidfd_getfd": 438, "kcmp": 312, "kexec_load": 246,
    "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176,
    "open_by_handle_at": 304, "name_to_handle_at": 303, "reboot": 169, "swapon": 167,
    "swapoff": 168, "acct": 163, "syslog": 103, "quotactl": 179, "quotactl_fd": 443,
    "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159,
    "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173, "modify_ldt": 154,
    "uselib": 134, "vhangup": 153, "lookup_dcookie": 212, "_sysctl": 156, "ustat": 136,
    "sysfs": 139, "create_module": 174, "nfsservctl": 180, "mbind": 237, "set_mempolicy": 238,
    "set_mempolicy_home_node": 450, "migrate_pages": 256, "move_pages": 279,
    "shmget": 29, "msgget": 68, "semget": 64, "mq_open": 240,
    "shmat": 30, "shmctl": 31, "shmdt": 67, "semop": 65, "semctl": 66, "semtimedop": 220,
    "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "mq_unlink": 241, "mq_timedsend": 242,
    "mq_timedreceive": 243, "mq_notify": 244, "mq_getsetattr": 245,
    "io_setup": 206, "io_destroy": 207, "io_getevents": 208, "io_submit": 209, "io_cancel": 210,
    "io_pgetevents": 333, "mincore": 27, "cachestat": 451,
    "socket": 41, "clone": 56, "clone3": 435, "personality": 135, "ioctl": 16,
    "socketpair": 53, "fcntl": 72, "fadvise64": 221, "madvise": 28, "preadv2": 327,
    "pwritev2": 328, "mmap": 9, "memfd_create": 319, "prctl": 157,
}  # fmt: skip
# asm-generic numbering (no inotify_init, iopl, ioperm, modify_ldt, uselib, _sysctl, ustat, sysfs,
# create_module, nfsservctl on arm64)
_AARCH64 = {
    "keyctl": 219, "add_key": 217, "request_key": 218, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "userfaultfd": 282, "bpf": 280,
    "perf_event_open": 241, "memfd_secret": 447, "inotify_init1": 26, "inotify_add_watch": 27,
    "fanotify_init": 262, "fanotify_mark": 263, "mount": 40, "umount2": 39, "mount_setattr": 442,
    "move_mount": 429, "open_tree": 428, "open_tree_attr": 467, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "pivot_root": 41, "chroot": 51, "unshare": 97, "setns": 268,
    "statmount": 457, "listmount": 458, "ptrace": 117, "process_vm_readv": 270,
    "process_vm_writev": 271, "process_madvise": 440, "pidfd_getfd": 438, "kcmp": 272,
    "kexec_load": 104, "kexec_file_load": 294, "init_module": 105, "finit_module": 273,
    "delete_module": 106, "open_by_handle_at": 265, "name_to_handle_at": 264, "reboot": 142,
    "swapon": 224, "swapoff": 225, "acct": 89, "syslog": 116, "quotactl": 60, "quotactl_fd": 443,
    "settimeofday": 170, "clock_settime": 112, "clock_adjtime": 266, "adjtimex": 171,
    "sethostname": 161, "setdomainname": 162, "vhangup": 58, "lookup_dcookie": 18, "mbind": 235,
    "set_mempolicy": 237, "set_mempolicy_home_node": 450, "migrate_pages": 238, "move_pages": 239,
    "shmget": 194, "msgget": 186, "semget": 190, "mq_open": 180,
    "shmat": 196, "shmctl": 195, "shmdt": 197, "semop": 193, "semctl": 191, "semtimedop": 192,
    "msgsnd": 189, "msgrcv": 188, "msgctl": 187, "mq_unlink": 181, "mq_timedsend": 182,
    "mq_timedreceive": 183, "mq_notify": 184, "mq_getsetattr": 185,
    "io_setup": 0, "io_destroy": 1, "io_submit": 2, "io_cancel": 3, "io_getevents": 4,
    "io_pgetevents": 292, "mincore": 232, "cachestat": 451,
    "socket": 198, "clone": 220, "clone3": 435, "personality": 92, "ioctl": 29,
    "socketpair": 199, "fcntl": 25, "fadvise64": 223, "madvise": 233, "preadv2": 286,
    "pwritev2": 287, "mmap": 222, "memfd_create": 279, "prctl": 167,
}  # fmt: skip

# machine -> (AUDIT_ARCH_*, syscall table, whether the x32 bit must be refused)
SECCOMP_ARCHES: dict[str, tuple[int, dict[str, int], bool]] = {
    "x86_64": (0xC000003E, _X86_64, True),
    "aarch64": (0xC00000B7, _AARCH64, False),
}


def denied_syscalls(machine: str | None = None, *, fallback: bool = False) -> dict[str, int]:
    """Name -> number of every syscall the filter answers with ``EPERM`` on ``machine``."""
    _, table, _ = SECCOMP_ARCHES[machine or os.uname().machine]
    names = _DENY_EPERM + (_DENY_FALLBACK if fallback else ())
    return {n: table[n] for n in names if n in table}


def build_filter(machine: str | None = None, *, fallback: bool = False) -> bytes:
    """The filter as raw ``struct sock_filter`` instructions (for ``PR_SET_SECCOMP``).

    Args:
        machine: ``os.uname().machine`` of the target (default: this machine).
        fallback: also deny System V IPC and POSIX message queues (no IPC namespace there).

    Raises:
        ValueError: for an architecture without a syscall table here.
    """
    machine = machine or os.uname().machine
    if machine not in SECCOMP_ARCHES:
        raise ValueError(f"no seccomp syscall table for {machine!r} (have: {sorted(SECCOMP_ARCHES)})")
    audit_arch, table, x32 = SECCOMP_ARCHES[machine]
    eperm = _RET_ERRNO | errno.EPERM
    enosys = _RET_ERRNO | errno.ENOSYS
    eacces = _RET_ERRNO | errno.EACCES
    prog: list[tuple[int, int, int, int]] = [
        (_LD_W_ABS, 0, 0, _OFF_ARCH),
        (_JEQ_K, 1, 0, audit_arch),  # native ABI: go on
        (_RET_K, 0, 0, enosys),  # a foreign ABI (i386 int 0x80): nothing
        (_LD_W_ABS, 0, 0, _OFF_NR),
    ]
    if x32:
        prog += [(_JSET_K, 0, 1, _X32_BIT), (_RET_K, 0, 0, enosys)]
    # every block below starts and ends with A = syscall number; a block is skipped when the
    # number does not match (jf = block length), so no jump exceeds the 8-bit offset range
    for nr in sorted(denied_syscalls(machine, fallback=fallback).values()):
        prog += [(_JEQ_K, 0, 1, nr), (_RET_K, 0, 0, eperm)]
    prog += [(_JEQ_K, 0, 1, table["clone3"]), (_RET_K, 0, 0, enosys)]

    def arg_block(nr: int, body: list[tuple[int, int, int, int]]) -> None:
        prog.append((_JEQ_K, 0, len(body), nr))
        prog.extend(body)

    def deny_values(name: str, arg: int, values: tuple[int, ...], ret: int = eperm) -> None:
        # LD arg; JEQ v_i -> the deny RET; RET ALLOW; RET deny
        body = [(_LD_W_ABS, 0, 0, _arg_lo(arg))]
        body += [(_JEQ_K, len(values) - i, 0, v) for i, v in enumerate(values)]
        arg_block(table[name], [*body, (_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, ret)])

    def deny_bits(name: str, arg: int, mask: int, ret: int = eperm) -> None:
        arg_block(
            table[name],
            [(_LD_W_ABS, 0, 0, _arg_lo(arg)), (_JSET_K, 0, 1, mask), (_RET_K, 0, 0, ret),
             (_RET_K, 0, 0, _RET_ALLOW)],
        )  # fmt: skip

    # socket(domain, ...) and socketpair(domain, ...): AF_UNIX only (no network, no netlink, no
    # TIPC or other families a kernel with module autoload would load on demand)
    for name in ("socket", "socketpair"):
        arg_block(
            table[name],
            [(_LD_W_ABS, 0, 0, _OFF_ARG0_LO), (_JEQ_K, 1, 0, _AF_UNIX), (_RET_K, 0, 0, eacces),
             (_RET_K, 0, 0, _RET_ALLOW)],
        )  # fmt: skip
    # clone(flags, ...): no new namespaces (flags are args[0] on x86_64 and arm64)
    deny_bits("clone", 0, _CLONE_NEW_MASK)
    # personality(persona): query (0xffffffff) or the default persona only
    arg_block(
        table["personality"],
        [(_LD_W_ABS, 0, 0, _OFF_ARG0_LO), (_JEQ_K, 2, 0, 0), (_JEQ_K, 1, 0, 0xFFFFFFFF),
         (_RET_K, 0, 0, eperm), (_RET_K, 0, 0, _RET_ALLOW)],
    )  # fmt: skip
    # ioctl(fd, TIOCSTI | TIOCLINUX, ...): no typing into a terminal
    deny_values("ioctl", 1, (_TIOCSTI, _TIOCLINUX))
    # fcntl(fd, F_NOTIFY | F_SETLEASE, ...): no signal when the host touches a file
    deny_values("fcntl", 1, (_F_NOTIFY, _F_SETLEASE))
    # fadvise64(fd, off, len, advice): no page-cache eviction (DONTNEED, NOREUSE)
    arg_block(
        table["fadvise64"],
        [(_LD_W_ABS, 0, 0, _arg_lo(3)), (_JGE_K, 1, 0, _POSIX_FADV_DONTNEED), (_RET_K, 0, 0, _RET_ALLOW),
         (_RET_K, 0, 0, eperm)],
    )  # fmt: skip
    # madvise(addr, len, advice): no pageout/cold/collapse of file pages, no KSM, no poisoning
    deny_values("madvise", 2, _MADV_DENIED)
    # preadv2/pwritev2(fd, iov, cnt, pos_l, pos_h, flags): no RWF_NOWAIT residency probe
    for name in ("preadv2", "pwritev2"):
        deny_bits(name, 5, 0xFFFFFFFF & ~_RWF_ALLOWED)
    # huge pages: the hugetlb pool is machine-wide and not charged to the memory cgroup
    deny_bits("mmap", 3, _MAP_HUGETLB)
    deny_bits("memfd_create", 1, _MFD_HUGETLB)
    if not fallback:  # (the fallback denies shmget altogether)
        deny_bits("shmget", 2, _SHM_HUGETLB)
    # prctl(PR_SET_MEMORY_MERGE): KSM for the whole process
    deny_values("prctl", 0, (_PR_SET_MEMORY_MERGE,))
    prog.append((_RET_K, 0, 0, _RET_ALLOW))
    if len(prog) > 4096:  # BPF_MAXINSNS
        raise ValueError("seccomp filter too long")
    return b"".join(struct.pack("HBBI", code, jt, jf, k) for code, jt, jf, k in prog)
