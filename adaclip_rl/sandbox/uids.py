"""Per-run unprivileged uids and per-process run slots.

:class:`UidLeases` leases uids from a pool under a machine-wide ``flock``, so no two live sandboxes,
of this trainer or another, ever share one; :class:`SlotPool` bounds the runs of one process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
import threading
from collections.abc import Iterator

from adaclip_rl.sandbox.limits import SandboxUnavailable

__all__ = ["LOCK_DIRS", "UID_POOL_DEFAULT", "UID_POOL_SIZE", "SlotPool", "UidLeases", "lock_dir", "system_ids"]

UID_POOL_DEFAULT = 1_500_000_000  # far from /etc/subuid ranges, system and user accounts
UID_POOL_SIZE = 1 << 16
LOCK_DIRS = ("/run/adaclip-sandbox/uids", "/var/run/adaclip-sandbox/uids", "/tmp/adaclip-sandbox-uids")


class SlotPool:
    """At most ``n`` concurrent runs of this process."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._free = list(range(n))
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def slot(self) -> Iterator[int]:
        """Hold one slot for the duration of the ``with`` block."""
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


class UidLeases:
    """Unprivileged uids leased per run, never shared by two live sandboxes on this machine.

    A uid is held by an exclusive ``flock`` on ``<lock dir>/<uid>`` (a root-only directory);
    the kernel drops the lock when the holder exits, however it dies. A lock file is removed by
    its holder on release (while still locked); a taker checks, once it has the lock, that the
    file it locked is still the one at that path, so removal never lets two holders in. Each process walks the pool from a random offset and takes the next free uid, so
    consecutive runs get different uids (no per-uid kernel state carries over) and concurrent
    trainers never collide (unlike a pid-derived base). Uids of ``/etc/subuid``/``/etc/subgid``
    ranges and of passwd/group entries are skipped.
    """

    def __init__(self, base: int, size: int = UID_POOL_SIZE) -> None:
        self.base, self.size = base, size
        self.dir = lock_dir()
        self._excluded = system_ids(base, size)
        self._next = secrets.randbelow(size)
        self._lock = threading.Lock()

    def lease(self, n: int) -> list[tuple[int, int]]:
        """``n`` distinct (uid, lock fd) pairs; close the fds (:meth:`release`) to give them back."""
        out: list[tuple[int, int]] = []
        try:
            if n <= 0:
                return out
            for _ in range(self.size):
                with self._lock:
                    uid = self.base + self._next
                    self._next = (self._next + 1) % self.size
                if uid in self._excluded:
                    continue
                fd = os.open(
                    self._path(uid),
                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                    0o600,
                )
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    same = os.stat(self._path(uid)).st_ino == os.fstat(fd).st_ino
                except OSError:
                    same = False
                if not same:  # held by another, or removed by its last holder meanwhile
                    os.close(fd)
                    continue
                out.append((uid, fd))
                if len(out) == n:
                    return out
            raise SandboxUnavailable(f"no free sandbox uid in [{self.base}, {self.base + self.size})")
        except BaseException:
            self.release(out)
            raise

    def _path(self, uid: int) -> str:
        return os.path.join(self.dir, str(uid))

    def release(self, leases: list[tuple[int, int]]) -> None:
        """Give leased uids back (the lock file is removed while still locked)."""
        for uid, fd in leases:
            with contextlib.suppress(OSError):
                os.unlink(self._path(uid))
            with contextlib.suppress(OSError):
                os.close(fd)


def lock_dir() -> str:
    """A root-owned, root-only directory for the uid lock files (never one another user made)."""
    for d in LOCK_DIRS:
        try:
            os.makedirs(d, 0o700, exist_ok=True)
            st = os.lstat(d)
            if st.st_uid == 0 and stat.S_ISDIR(st.st_mode) and not st.st_mode & 0o077:
                return d
        except OSError:
            continue
    raise SandboxUnavailable(f"no root-only directory for the sandbox uid locks (tried {LOCK_DIRS})")


def system_ids(base: int, size: int = UID_POOL_SIZE) -> set[int]:
    """Uids/gids the sandbox must not use: passwd/group entries and subordinate id ranges within
    the pool ``[base, base + size)``."""
    ids = {65534}
    for path in ("/etc/passwd", "/etc/group"):
        with contextlib.suppress(OSError), open(path) as f:
            for line in f:
                parts = line.split(":")
                if len(parts) > 2 and parts[2].isdigit():
                    ids.add(int(parts[2]))
    for path in ("/etc/subuid", "/etc/subgid"):
        with contextlib.suppress(OSError), open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    lo, n = int(parts[1]), int(parts[2])
                    ids.update(range(max(lo, base), min(lo + n, base + size)))
    return ids
