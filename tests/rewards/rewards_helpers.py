"""Helpers shared by the reward tests (data paths, process scans)."""

from __future__ import annotations

import json
import os
import time
from functools import cache

from adaclip_rl.data import BENCHMARK_DIR

DATA_DIR = BENCHMARK_DIR


def load_jsonl(name: str) -> list[dict]:
    """Rows of the bundled benchmark file ``<name>.jsonl`` (``adaclip_rl/data/benchmarks``)."""
    with open(DATA_DIR / f"{name}.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


@cache
def humaneval() -> list[dict]:
    """The 164 HumanEval rows."""
    return load_jsonl("humaneval")


def status_uid(pid: str) -> int | None:
    """Real uid of process ``pid`` from /proc (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ppid(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[1])
    except (OSError, ValueError):
        return None


def sandbox_uids() -> range:
    """Every uid the sandbox may lease (the whole pool; empty when not running as root)."""
    from adaclip_rl.sandbox import sandbox_info

    span = sandbox_info()["uid_range"]
    if span is None:
        return range(0)
    lo, hi = span  # type: ignore[misc]
    return range(lo, hi)


def leftover_processes() -> list[str]:
    """Processes a sandbox run could have left: any process of a sandbox uid, and any
    launcher/unshare still hanging off this test process."""
    uids = sandbox_uids()
    me = os.getpid()
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        uid = status_uid(pid)
        cmd = _cmdline(pid)
        if uid is not None and uid in uids:
            out.append(f"pid {pid} uid {uid}: {cmd[:120]}")
        elif _ppid(pid) == me and ("sandbox/launcher.py" in cmd or cmd.startswith("unshare")):
            out.append(f"pid {pid} (child of the test): {cmd[:120]}")
    return out


def assert_no_leftovers(wait_s: float = 3.0) -> None:
    """Fail if sandbox processes remain (allowing ``wait_s`` for zombies to be reaped)."""
    end = time.monotonic() + wait_s
    while True:
        left = leftover_processes()
        if not left or time.monotonic() > end:
            break
        time.sleep(0.05)
    assert not left, f"sandbox left processes behind: {left}"
