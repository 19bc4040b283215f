"""Attacks that got through the first sandbox, one test per class (issue: the sandbox, hardened).

1. memory outside RLIMIT_AS (memfd, many children each under the limit, an inode flood);
2. state across runs (a key planted in one run, looked for in the next; shared uids);
3. a judge fooled by a ``StopIteration`` raised by the candidate under ``all(map(...))``;
4. code extraction that backtracks on a long unterminated fence;
5. syscalls that reach the kernel without need (io_uring, userfaultfd, keyctl, inotify, ...);
6. a silent fallback to the weaker mode, which then could not run correct programs.

Each test asserts behaviour of a hostile program run through the public API, and that nothing
is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from rewards_helpers import assert_no_leftovers, humaneval

from adaclip_rl.rewards.code import check_humaneval, code_accuracy, extract_code
from adaclip_rl.sandbox import (
    SandboxLimits,
    SandboxUnavailable,
    configure_sandbox,
    run_python,
    run_python_function_tests,
    sandbox_info,
)
from adaclip_rl.sandbox import runner as sbx
from adaclip_rl.sandbox.uids import UidLeases

ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parents[2]
GRACE_S = 5.0
needs_root = pytest.mark.skipif(not ROOT, reason="uid drop, cgroups and namespaces need root")


def _run(source: str, limits: SandboxLimits) -> sbx.SandboxResult:
    sandbox_info()
    t0 = time.monotonic()
    res = run_python(textwrap.dedent(source), limits=limits)
    assert res.error is None, res.error
    assert time.monotonic() - t0 <= limits.wall_time_s + GRACE_S
    assert_no_leftovers()
    return res


def _numbers(stdout: str, tag: str) -> list[int]:
    return [int(line.split()[1]) for line in stdout.splitlines() if line.startswith(tag + " ")]


# ============================================================== 1. memory outside RLIMIT_AS

MEM = SandboxLimits(
    memory_mb=128,
    file_size_mb=16,
    max_open_files=256,
    wall_time_s=6.0,
    cpu_time_s=5,
    max_output_bytes=1 << 16,
)


@needs_root
def test_memfd_beyond_the_memory_budget() -> None:
    """memfd pages are in nobody's address space: RLIMIT_AS does not see them, the cgroup does."""
    res = _run(
        """
        import os
        block = b"x" * (1 << 20)
        fds = []
        for i in range(48):                  # 48 x 16 MiB = 768 MiB, six times the budget
            fd = os.memfd_create(f"m{i}")
            for _ in range(16):              # 16 MiB per file: under RLIMIT_FSIZE
                os.write(fd, block)
            fds.append(fd)
            print("held", 16 * len(fds), flush=True)
        print("survived", flush=True)
        """,
        MEM,
    )
    held = max(_numbers(res.stdout, "held") or [0])
    assert held <= MEM.memory_mb, f"the program held {held} MiB in memfds with a {MEM.memory_mb} MiB budget"
    assert "survived" not in res.stdout
    assert res.memory_exceeded and res.killed_signal == 9
    assert res.memory_peak_mb is not None and res.memory_peak_mb <= MEM.memory_mb


@needs_root
def test_many_children_each_under_rlimit_as() -> None:
    """Eight children holding 96 MiB each: every one is under RLIMIT_AS, the run is not."""
    lim = SandboxLimits(
        memory_mb=256, max_processes=16, wall_time_s=6.0, cpu_time_s=5, max_output_bytes=1 << 16
    )
    res = _run(
        """
        import os, time
        kids = []
        for i in range(8):
            pid = os.fork()
            if pid == 0:
                data = b"y" * (96 << 20)      # touched: resident, 96 MiB < RLIMIT_AS (256 MiB)
                open(f"allocated_{os.getpid()}", "w").close()
                time.sleep(4)
                os._exit(0)
            kids.append(pid)
        time.sleep(2.5)                       # on a loaded machine some children may still be allocating
        # count only children that finished allocating and are still alive (an allocating child holds less)
        alive = sum(1 for pid in kids
                    if os.waitpid(pid, os.WNOHANG)[0] == 0 and os.path.exists(f"allocated_{pid}"))
        print("holding", 96 * alive, flush=True)
        """,
        lim,
    )
    held = max(_numbers(res.stdout, "holding") or [0])
    assert held <= lim.memory_mb, f"children held {held} MiB together with a {lim.memory_mb} MiB budget"
    assert res.memory_exceeded
    assert res.memory_peak_mb is not None and res.memory_peak_mb <= lim.memory_mb


@needs_root
def test_inode_flood_is_bounded() -> None:
    """Empty directories cost no disk blocks but ~1 KiB of kernel memory each: capped."""
    lim = SandboxLimits(wall_time_s=8.0, cpu_time_s=6, max_inodes=2048, max_output_bytes=1 << 16)
    res = _run(
        """
        import os, time
        def flood(where, limit):
            n, why = 0, "limit"
            t0 = time.monotonic()
            while n < limit and time.monotonic() - t0 < 2.5:
                try:
                    os.mkdir(os.path.join(where, f"d{n}"))
                except OSError as e:
                    why = e.errno
                    break
                n += 1
            return n, why
        n, why = flood(".", 200_000)
        print("work", n, why, flush=True)
        n, why = flood("/dev/shm", 200_000)
        print("shm", n, why, flush=True)
        """,
        lim,
    )
    work = _numbers(res.stdout, "work")
    shm = _numbers(res.stdout, "shm")
    assert work and work[0] < lim.max_inodes, res.stdout
    assert shm and shm[0] <= 128, res.stdout
    assert f"work {work[0]} {errno.ENOSPC}" in res.stdout
    assert res.memory_peak_mb is not None and res.memory_peak_mb <= lim.memory_mb


# ============================================================== 2. no state across runs

_KEYS = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
NR = {nr}
def call(*args):
    r = libc.syscall(*[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return r, ctypes.get_errno() if r < 0 else 0
"""


@needs_root
def test_key_planted_in_one_run_is_not_seen_by_the_next() -> None:
    nr = sbx.SECCOMP_ARCHES[os.uname().machine][1]
    prelude = _KEYS.format(nr=json.dumps({k: nr[k] for k in ("add_key", "keyctl", "request_key")}))
    plant = prelude + textwrap.dedent(
        """
        for ring in (-3, -4, -5):   # session, user, user-session keyrings
            r, e = call(NR["add_key"], b"user", b"adaclip-plant", b"the-answer", ctypes.c_long(10), ring)
            print("add_key", ring, r, e)
        """
    )
    look = prelude + textwrap.dedent(
        """
        found = []
        for ring in (-3, -4, -5):
            r, e = call(NR["keyctl"], 10, ring, b"user", b"adaclip-plant", 0)   # KEYCTL_SEARCH
            print("search", ring, r, e)
            if r >= 0:
                found.append(ring)
        r, e = call(NR["request_key"], b"user", b"adaclip-plant", None, 0)
        print("request_key", r, e)
        if r >= 0:
            found.append("request_key")
        try:
            text = open("/proc/keys").read()
        except OSError:
            text = ""
        print("FOUND" if found or "adaclip-plant" in text else "nothing", found)
        """
    )
    lim = SandboxLimits(wall_time_s=5.0)
    first = _run(plant, lim)
    second = _run(look, lim)
    assert "nothing" in second.stdout, second.stdout
    # the keyring syscalls are refused outright (EPERM), so nothing could be planted at all
    for ring in (-3, -4, -5):
        assert f"add_key {ring} -1 {errno.EPERM}" in first.stdout, first.stdout


@needs_root
def test_uids_are_leased_not_derived() -> None:
    """Two trainers configured with the same uid pool never run sandboxes under the same uid
    (the old default derived the uids from ``pid % 80``, so two trainers could share them)."""
    script = textwrap.dedent(
        """
        import json, sys, time
        from adaclip_rl.sandbox import run_python, SandboxLimits
        lim = SandboxLimits(wall_time_s=5.0)
        uids = set()
        t_end = time.monotonic() + float(sys.argv[1])
        while time.monotonic() < t_end:
            r = run_python("import os, time; print(os.getuid()); time.sleep(0.2)", limits=lim)
            uids.add(int(r.stdout))
        print(json.dumps(sorted(uids)))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADACLIP_SANDBOX")}
    env.update(
        {"PYTHONPATH": str(REPO), "ADACLIP_SANDBOX_UID_BASE": "1400000000", "ADACLIP_SANDBOX_WORKERS": "1"}
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, "2.0"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    a, b = (set(json.loads(out.strip().splitlines()[-1])) for out, _ in outs)
    assert a and b and not a & b, f"two concurrent trainers shared uids {sorted(a & b)}"


@needs_root
def test_uid_lease_skips_locked_uids(tmp_path: Path) -> None:
    """A uid whose lock another process holds is never handed out; the pool runs dry loudly."""
    leases = UidLeases(1_400_100_000, size=4)
    leases.dir = str(tmp_path)
    held = []
    for uid in (1_400_100_000, 1_400_100_002):
        fd = os.open(tmp_path / str(uid), os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        held.append(fd)
    got = leases.lease(2)
    try:
        assert sorted(u for u, _ in got) == [1_400_100_001, 1_400_100_003]
        with pytest.raises(SandboxUnavailable, match="no free sandbox uid"):
            leases.lease(1)
    finally:
        leases.release(got)
        for fd in held:
            os.close(fd)
    again = leases.lease(1)
    leases.release(again)
    assert again
    # released lock files are removed (the test's own two stay unless the last lease took one)
    left = set(os.listdir(tmp_path))
    assert left <= {"1400100000", "1400100002"} and str(again[0][0]) not in left, left


# ============================================================== 3. the judge cannot be fooled

MAP_TEST = textwrap.dedent(
    """
    def check(candidate):
        cases = [((1,), 2), ((2,), 3), ((40,), 41)]
        assert all(map(lambda c: candidate(*c[0]) == c[1], cases))
    """
)


@pytest.mark.parametrize(
    "raise_line",
    [
        "raise StopIteration",
        "raise StopAsyncIteration",
        "raise GeneratorExit",
        "raise SystemExit(0)",
        "raise KeyboardInterrupt",
        "raise Warning('w')",
        "class StopIteration(Exception): pass\n    raise StopIteration()",  # a name, not the type
    ],
)
def test_candidate_exceptions_cannot_leak_through_test_scaffolding(raise_line: str) -> None:
    program = f"def inc(x):\n    {raise_line}\n"
    res = run_python_function_tests(
        program, entry_point="inc", test=MAP_TEST, limits=SandboxLimits(wall_time_s=5)
    )
    assert_no_leftovers()
    assert res.passed is False, (raise_line, res.judge_error)
    assert res.judge_error and "CandidateError" in res.judge_error, res.judge_error


def test_judge_positive_controls() -> None:
    """The same harness passes a right answer, and a test may still expect ordinary errors."""
    lim = SandboxLimits(wall_time_s=5)
    assert run_python_function_tests(
        "def inc(x):\n    return x + 1\n", entry_point="inc", test=MAP_TEST, limits=lim
    ).passed
    expects = "def check(candidate):\n    try:\n        candidate(-1)\n    except ValueError:\n        return\n    assert False\n"
    prog = "def inc(x):\n    if x < 0:\n        raise ValueError('neg')\n    return x + 1\n"
    assert run_python_function_tests(prog, entry_point="inc", test=expects, limits=lim).passed
    # a swallowed StopIteration is still a failure (sticky), and so is a test that never calls
    swallow = "def check(candidate):\n    try:\n        candidate(1)\n    except Exception:\n        pass\n"
    res = run_python_function_tests(
        "def inc(x):\n    raise StopIteration\n", entry_point="inc", test=swallow, limits=lim
    )
    assert res.passed is False
    assert not run_python_function_tests(
        prog, entry_point="inc", test="def check(c):\n    pass\n", limits=lim
    ).passed


# ============================================================== 4. linear-time extraction


def test_unterminated_fence_is_scored_fast() -> None:
    row = humaneval()[0]
    sandbox_info()
    for completion in (
        "```" + " " * 150_000,
        "```python\n" + " " * 150_000 + "x",
        "x ```" + "`" * 150_000,
        "```a```b" * 20_000,
    ):
        assert len(completion) >= 150_000
        t0 = time.monotonic()
        extract_code(completion, row["entry_point"])
        assert time.monotonic() - t0 < 1.0
        t0 = time.monotonic()
        score = check_humaneval(completion, row["prompt"], row["test"], row["entry_point"])
        elapsed = time.monotonic() - t0
        assert score == 0.0
        assert elapsed < 1.0 + 2.0, elapsed  # extraction < 1 s; the rest is one sandboxed run
    t0 = time.monotonic()
    extract_code("```\n" + " \t" * 800_000)  # 1.6 MB
    assert time.monotonic() - t0 < 1.0


def test_fences_still_extracted() -> None:
    assert extract_code("Here: ```python\nx = 1\n```\nbye") == "x = 1\n"
    assert extract_code("~~~py\nx = 2\n~~~") == "x = 2\n"
    assert extract_code("````python\na = '```'\n````") == "a = '```'\n"
    assert extract_code("  ```python\n  y = 3\n  ```  \n") == "  y = 3\n"
    # a closing run inside a code line no longer closes the block
    assert extract_code("```python\ns = 1 ```\nt = 2\n```") == "s = 1 ```\nt = 2\n"


# ============================================================== 5. seccomp


def _denied_calls_program() -> str:
    nr = sbx.SECCOMP_ARCHES[os.uname().machine][1]
    names = [
        "io_uring_setup", "userfaultfd", "keyctl", "add_key", "request_key", "inotify_init1",
        "fanotify_init", "bpf", "perf_event_open", "unshare", "setns", "mount", "umount2",
        "ptrace", "process_vm_readv", "kcmp", "pidfd_getfd", "open_by_handle_at", "init_module",
        "kexec_load", "reboot", "swapon", "syslog", "mbind", "set_mempolicy",
    ]  # fmt: skip
    table = {n: nr[n] for n in names if n in nr}
    return textwrap.dedent(
        f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(4096)
        for name, nr in {table!r}.items():
            ctypes.set_errno(0)
            # harmless arguments: a buffer where a pointer is expected, otherwise zeros
            r = libc.syscall(ctypes.c_long(nr), ctypes.c_long(0), buf, ctypes.c_long(0), ctypes.c_long(0))
            print(name, r, ctypes.get_errno() if r < 0 else 0, flush=True)
            if r >= 0 and name in ("io_uring_setup", "userfaultfd", "inotify_init1", "fanotify_init"):
                os.close(r)
        print("still running", flush=True)
        """
    )


@needs_root
def test_denied_syscalls_are_errors_for_the_program() -> None:
    res = _run(_denied_calls_program(), SandboxLimits(wall_time_s=5.0))
    assert "still running" in res.stdout and res.returncode == 0, res.stderr
    rows = [line.split() for line in res.stdout.splitlines() if len(line.split()) == 3]
    assert len(rows) >= 20
    bad = [r for r in rows if r[1] != "-1" or int(r[2]) != errno.EPERM]
    assert not bad, f"reached the kernel (not EPERM): {bad}"


def test_filter_applied_to_a_root_process() -> None:
    """The filter itself (not the uid drop) refuses: loaded in a forked root child here."""
    if sys.platform != "linux" or os.uname().machine not in sbx.SECCOMP_ARCHES:
        pytest.skip("seccomp tables exist for x86_64 and aarch64 Linux only")
    nr = sbx.SECCOMP_ARCHES[os.uname().machine][1]
    out = _filter_answers(f"nr = {dict(nr)!r}\n" + """
out.update({
    "unshare_net": call(nr["unshare"], 0x40000000),
    "clone_newpid": call(nr["clone"], 0x20000000 | 17, 0, 0, 0, 0),
    "clone3": call(nr["clone3"], 0, 0),
    "keyctl": call(nr["keyctl"], 0, -3),
    "bpf": call(nr["bpf"], 0, 0, 0),
    "inotify_init1": call(nr["inotify_init1"], 0),
    "personality_bad": call(nr["personality"], 0x0400000),
    "personality_query": call(nr["personality"], 0xFFFFFFFF),
    "socket_inet": call(nr["socket"], 2, 1, 0),
    "socket_netlink": call(nr["socket"], 16, 3, 0),
})
import socket
import threading

a, b = socket.socketpair()  # AF_UNIX still works
a.close()
b.close()
t = threading.Thread(target=lambda: None)
t.start()
t.join()
child = os.fork()  # plain fork still works
if child == 0:
    os._exit(7)
out["fork"] = os.WEXITSTATUS(os.waitpid(child, 0)[1])
""")
    assert out["unshare_net"] == errno.EPERM and out["clone_newpid"] == errno.EPERM
    assert out["clone3"] == errno.ENOSYS
    assert out["keyctl"] == out["bpf"] == out["inotify_init1"] == out["personality_bad"] == errno.EPERM
    assert out["personality_query"] == 0
    assert out["socket_inet"] == out["socket_netlink"] == errno.EACCES
    assert out["fork"] == 7


def test_syscall_table_matches_the_system_headers() -> None:
    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    if os.uname().machine != "x86_64" or not header.exists():
        pytest.skip("needs x86_64 and the kernel headers (linux-libc-dev) to cross-check")
    defined = {}
    for line in header.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "#define" and parts[1].startswith("__NR_"):
            defined[parts[1][5:]] = int(parts[2])
    table = sbx.SECCOMP_ARCHES["x86_64"][1]
    wrong = {n: (v, defined[n]) for n, v in table.items() if n in defined and defined[n] != v}
    assert not wrong
    newest = max(defined.values())
    missing = {n: v for n, v in table.items() if n not in defined}
    assert all(v > newest for v in missing.values()), missing  # only calls newer than the headers


# ============================================================== 6. fallback only by name


def test_auto_refuses_instead_of_falling_back(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = sbx.shutil.which
    monkeypatch.setattr(sbx.shutil, "which", lambda name: None if name == "unshare" else real_which(name))
    configure_sandbox(mode="auto")
    try:
        with pytest.raises(SandboxUnavailable, match=r"configure_sandbox\(mode='fallback'\)") as info:
            run_python("print(1)")
        assert "private-root" in str(info.value)
    finally:
        monkeypatch.undo()
        configure_sandbox(mode="auto")
    assert run_python("print(1)").stdout == "1\n"


def test_missing_cgroups_refused_naming_the_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {"memory": "EROFS: read-only cgroupfs", "pids": "not mounted"}
    # the environment variable outranks configure_sandbox (an unprivileged run of this suite
    # sets it to "off"): the refusal is tested with the setting as configured here
    monkeypatch.delenv("ADACLIP_SANDBOX_RESOURCE_CONTROL", raising=False)
    monkeypatch.setattr(sbx, "detect_cgroups", lambda: (sbx.CgroupSupport({}), dict(fake)))
    configure_sandbox(resource_control="require")
    try:
        with pytest.raises(
            SandboxUnavailable, match=r"memory: EROFS.*pids: not mounted.*resource_control='auto'"
        ):
            run_python("print(1)")
    finally:
        monkeypatch.undo()
        configure_sandbox(resource_control="require")
    assert run_python("print(1)").ok


@needs_root
def test_fallback_by_name_runs_correct_programs() -> None:
    """The weaker mode still imports the whole standard library after the uid drop (the
    interpreter may sit under a directory the sandbox uid cannot traverse, e.g. /root)."""
    configure_sandbox(mode="fallback")
    try:
        info = sandbox_info()
        assert info["isolation_mode"].startswith("fallback(missing:private-root"), info
        res = _run(
            """
            import difflib, csv, zlib, bz2, email.mime.text, xml.etree.ElementTree, importlib.resources
            import decimal, fractions, statistics, sqlite3, unittest, concurrent.futures, ctypes
            print("imports ok", difflib.SequenceMatcher(None, "abc", "abd").ratio() > 0.5)
            """,
            SandboxLimits(wall_time_s=10.0, cpu_time_s=8),
        )
        assert res.stdout.startswith("imports ok True"), res.stderr[-2000:]
        # no IPC namespace here: System V IPC and message queues would outlive the run
        nr = sbx.SECCOMP_ARCHES[os.uname().machine][1]
        ipc = _run(
            f"""
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            for name, nr, args in (("shmget", {nr["shmget"]}, (0, 4096, 0o1600)),
                                   ("msgget", {nr["msgget"]}, (0, 0o1600, 0)),
                                   ("semget", {nr["semget"]}, (0, 1, 0o1600))):
                r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
                print(name, r, ctypes.get_errno() if r < 0 else 0)
            """,
            SandboxLimits(wall_time_s=5.0),
        )
        for name in ("shmget", "msgget", "semget"):
            assert f"{name} -1 {errno.EPERM}" in ipc.stdout, ipc.stdout
        rows = humaneval()
        for i in (0, 10, 32, 120, 162):  # incl. helpers in the prompt and hashlib
            r = rows[i]
            assert (
                check_humaneval(r["canonical_solution"], r["prompt"], r["test"], r["entry_point"]) == 1.0
            ), i
            assert check_humaneval("    pass\n", r["prompt"], r["test"], r["entry_point"]) == 0.0, i
    finally:
        configure_sandbox(mode="auto")


# ============================================================== metrics


@needs_root
def test_reward_logs_mode_limits_and_peak() -> None:
    row = humaneval()[0]
    logged: dict[str, list[float]] = {}
    extra: dict[str, list] = {}
    scores = code_accuracy(
        [row["prompt"] + row["canonical_solution"], "def has_close_elements(a, b):\n    return 1\n"],
        test=[row["test"]] * 2,
        entry_point=[row["entry_point"]] * 2,
        prompts=["", ""],
        log_metric=lambda name, value: logged.setdefault(name, []).append(value),
        log_extra=lambda name, values: extra.setdefault(name, []).extend(values),
    )
    assert scores == [1.0, 0.0]
    assert 0 < logged["sandbox/memory_peak_mb"][0] <= SandboxLimits().memory_mb
    assert logged["sandbox/memory_limit_mb"] == [SandboxLimits().memory_mb]
    assert logged["sandbox/memory_exceeded"] == [0.0]
    assert extra["sandbox_mode"][0].startswith("namespaces(")


@needs_root
def test_run_cgroups_are_removed() -> None:
    """Every run's groups are gone once the call returns (judge groups included)."""
    row = humaneval()[0]
    check_humaneval(row["canonical_solution"], row["prompt"], row["test"], row["entry_point"])
    run_python("print(1)")
    support = sbx._cgroups()
    assert support is not None and support.hiers
    mine = f"{os.getpid()}-"
    for h in support.hiers.values():
        left = [n for n in os.listdir(h.base) if n.startswith(mine)]
        assert not left, (h.base, left)


def test_cgroup_detection_parsing(tmp_path: Path) -> None:
    """Hierarchy discovery from /proc text: v1 per controller, v2, container mount roots; and a
    machine with no cgroup mounted names each controller as missing."""
    from adaclip_rl.sandbox import cgroups as _cgroup

    mountinfo = (
        "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "35 31 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "36 31 0:32 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "37 31 0:33 /docker/abc /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
        "40 31 0:36 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    )
    v1, v2 = _cgroup._mounts(mountinfo)
    assert v1["memory"] == ("/sys/fs/cgroup/memory", "/")
    assert v1["cpu"] == v1["cpuacct"] == ("/sys/fs/cgroup/cpu,cpuacct", "/")
    assert v2 == ("/sys/fs/cgroup/unified", "/")
    own1, own2 = _cgroup._own_paths("4:memory:/a/b\n3:cpu,cpuacct:/\n2:pids:/docker/abc/x\n0::/user.slice\n")
    assert (
        own1 == {"memory": "/a/b", "cpu": "/", "cpuacct": "/", "pids": "/docker/abc/x"}
        and own2 == "/user.slice"
    )
    assert _cgroup._join(*v1["memory"], own1["memory"]) == "/sys/fs/cgroup/memory/a/b"
    assert _cgroup._join(*v1["pids"], own1["pids"]) == "/sys/fs/cgroup/pids/x"  # mount root stripped
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n")
    (proc / "cgroup").write_text("0::/\n")
    support, reasons = _cgroup.detect_cgroups(str(proc))
    assert support.describe() == "no-cgroup" and set(reasons) == {"memory", "pids", "cpu"}
    assert all("not mounted" in why for why in reasons.values())
    busy = OSError(errno.EBUSY, "busy")
    assert "delegated" in _cgroup._errtext(busy) and _cgroup._errtext(busy).startswith("EBUSY")
    assert _cgroup._errtext(OSError(errno.EROFS, "ro")).startswith("EROFS: read-only")


def test_cgroup_v2_readers_and_probe(tmp_path: Path) -> None:
    """The v2 paths that this v1 machine cannot exercise for real: what a run's group reports
    (``memory.peak``, ``oom_kill`` in ``memory.events``, ``pids.events``, ``cpu.stat``), and a
    probe that refuses to reconfigure the trainer's own cgroup."""
    from adaclip_rl.sandbox import cgroups as _cgroup

    run = tmp_path / "r1"
    run.mkdir()
    (run / "memory.peak").write_text("52428800\n")
    (run / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    (run / "pids.events").write_text("max 3\n")
    (run / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\n")
    group = _cgroup.RunCgroup({c: (2, str(run)) for c in ("memory", "pids", "cpu")})
    st = group.stats()
    assert (st.memory_peak_bytes, st.oom_kills, st.pids_limit_hits, st.cpu_s) == (52428800, 1, 3, 1.5)
    assert group.procs_files == [str(run / "cgroup.procs")]
    own = tmp_path / "own"
    own.mkdir()
    (own / "cgroup.subtree_control").write_text("cpu pids\n")
    why = _cgroup._probe_v2(str(own), "memory")
    assert why is not None and "not enabled" in why and "delegate" in why
    assert (own / "cgroup.subtree_control").read_text() == "cpu pids\n"  # left as it was


@needs_root
def test_cpu_and_pids_budgets_of_the_whole_run() -> None:
    """Three busy processes get ``cpu_cores`` together (RLIMIT_CPU is per process); a thread
    bomb stops at ``max_processes`` and the run says so."""
    lim = SandboxLimits(cpu_cores=0.1, wall_time_s=2.0, cpu_time_s=5, max_output_bytes=1 << 16)
    res = _run(
        """
        import os
        for _ in range(2):
            if os.fork() == 0:
                break
        while True:
            pass
        """,
        lim,
    )
    assert res.timed_out and res.cpu_s is not None
    assert res.cpu_s <= 0.1 * lim.wall_time_s * 1.5 + 0.15, f"{res.cpu_s:.2f} CPU s in {lim.wall_time_s} s"
    bomb = _run(
        """
        import threading, time
        n = 0
        try:
            while True:
                threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
                n += 1
        except (RuntimeError, MemoryError):
            pass
        print("threads", n, flush=True)
        import os; os._exit(0)
        """,
        SandboxLimits(max_processes=12, wall_time_s=5.0),
    )
    assert _numbers(bomb.stdout, "threads")[0] < 12
    assert bomb.pids_exceeded


# ============================================================== 7. hardening that held only because of this machine


def _filter_answers(calls: str) -> dict:
    """Run ``calls`` (Python defining ``out``, with ``call(nr, *args)`` returning 0 or the
    errno) in a forked root child under the filter, so the filter's answer is seen, not the
    uid drop's or this kernel's."""
    from adaclip_rl.sandbox import launcher as launcher
    from adaclip_rl.sandbox.seccomp import build_filter

    raw = build_filter()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            libc = ctypes.CDLL(None, use_errno=True)
            launcher._load_seccomp(raw)

            def call(*args: object) -> int:
                ctypes.set_errno(0)
                res = libc.syscall(*[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
                return 0 if res != -1 else ctypes.get_errno()

            ns: dict = {"call": call, "libc": libc, "ctypes": ctypes, "os": os, "out": {}}
            exec(textwrap.dedent(calls), ns)
            os.write(w, json.dumps(ns["out"]).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)


# syscall numbers (x86_64), independent of the sandbox's table (checked against the headers above)
_NR64 = {"socketpair": 53, "mmap": 9, "memfd_create": 319, "shmget": 29, "fcntl": 72, "fadvise64": 221,
         "madvise": 28, "preadv2": 327, "prctl": 157, "mincore": 27, "munmap": 11, "close": 3}  # fmt: skip
needs_x86_64 = pytest.mark.skipif(
    sys.platform != "linux" or os.uname().machine != "x86_64", reason="syscall numbers listed for x86_64"
)


@needs_x86_64
def test_socketpair_family_rule_and_huge_pages_in_the_filter() -> None:
    """Class 5: ``socketpair`` had no family rule (TIPC, absent here, would be a way out on a
    kernel that loads it on demand), and huge pages (``MAP_HUGETLB``, ``MFD_HUGETLB``,
    ``SHM_HUGETLB``) come from the machine-wide hugetlb pool, outside the memory cgroup (this
    host has no pool, so the kernel alone would answer ENOMEM or succeed). The filter answers
    before the kernel: the errno is the filter's whatever the host has."""
    out = _filter_answers(
        f"""
        nr = {_NR64}
        out["socketpair_tipc"] = call(nr["socketpair"], 30, 5, 0, ctypes.byref((ctypes.c_int * 2)()))
        out["socketpair_inet"] = call(nr["socketpair"], 2, 1, 0, ctypes.byref((ctypes.c_int * 2)()))
        out["socketpair_unix"] = call(nr["socketpair"], 1, 1, 0, ctypes.byref((ctypes.c_int * 2)()))
        out["mmap_hugetlb"] = call(nr["mmap"], 0, 2 << 20, 3, 0x22 | 0x40000, -1, 0)
        out["memfd_hugetlb"] = call(nr["memfd_create"], ctypes.c_char_p(b"h"), 4)
        out["shm_hugetlb"] = call(nr["shmget"], 0, 2 << 20, 0o1600 | 0o4000)
        libc.mmap.restype = ctypes.c_void_p
        out["mmap_plain"] = 0 if libc.mmap(None, 1 << 20, 3, 0x22, -1, 0) not in (None, 2**64 - 1) else -1
        fd = libc.syscall(ctypes.c_long(nr["memfd_create"]), ctypes.c_char_p(b"m"), ctypes.c_long(0))
        out["memfd_plain"] = 0 if fd >= 0 else -1
        """
    )
    assert out["socketpair_tipc"] == out["socketpair_inet"] == errno.EACCES, out
    assert out["mmap_hugetlb"] == out["memfd_hugetlb"] == out["shm_hugetlb"] == errno.EPERM, out
    assert out["socketpair_unix"] == out["mmap_plain"] == out["memfd_plain"] == 0, out


@needs_x86_64
def test_page_cache_and_notify_argument_rules_keep_ordinary_uses() -> None:
    """The argument rules of classes 1 and 2 refuse exactly the hostile arguments: ``F_NOTIFY``
    / ``F_SETLEASE``, ``POSIX_FADV_DONTNEED`` / ``NOREUSE``, ``MADV_PAGEOUT`` / ``COLD`` /
    ``MERGEABLE``, ``RWF_NOWAIT``, ``PR_SET_MEMORY_MERGE``; the ordinary ones (``F_GETFL``,
    ``POSIX_FADV_SEQUENTIAL``, ``MADV_DONTNEED`` on the heap, which glibc's allocator uses,
    ``preadv2`` without flags) still work."""
    out = _filter_answers(
        f"""
        nr = {_NR64}
        fd = os.open("/etc/passwd", os.O_RDONLY)
        out["F_NOTIFY"] = call(nr["fcntl"], os.open("/etc", os.O_RDONLY), 1026, 0x80000001)
        out["F_SETLEASE"] = call(nr["fcntl"], fd, 1024, 0)
        out["F_GETFL"] = call(nr["fcntl"], fd, 3, 0)
        out["DONTNEED"] = call(nr["fadvise64"], fd, 0, 0, 4)
        out["NOREUSE"] = call(nr["fadvise64"], fd, 0, 0, 5)
        out["SEQUENTIAL"] = call(nr["fadvise64"], fd, 0, 0, 2)
        libc.mmap.restype = ctypes.c_void_p
        anon = libc.mmap(None, 1 << 16, 3, 0x22, -1, 0)
        for name, advice in (("PAGEOUT", 21), ("COLD", 20), ("MERGEABLE", 12), ("MADV_DONTNEED", 4)):
            out[name] = call(nr["madvise"], ctypes.c_void_p(anon), 1 << 16, advice)
        iov = (ctypes.c_uint64 * 2)(ctypes.addressof(ctypes.create_string_buffer(8)), 8)
        out["RWF_NOWAIT"] = call(nr["preadv2"], fd, iov, 1, 0, 0, 8)
        out["preadv2_plain"] = call(nr["preadv2"], fd, iov, 1, 0, 0, 0)
        out["MEMORY_MERGE"] = call(nr["prctl"], 67, 1, 0, 0, 0)
        """
    )
    denied = ("F_NOTIFY", "F_SETLEASE", "DONTNEED", "NOREUSE", "PAGEOUT", "COLD", "MERGEABLE",
              "RWF_NOWAIT", "MEMORY_MERGE")  # fmt: skip
    assert {k: out[k] for k in denied} == dict.fromkeys(denied, errno.EPERM), out
    assert out["F_GETFL"] == out["SEQUENTIAL"] == out["MADV_DONTNEED"] == out["preadv2_plain"] == 0, out


@needs_root
def test_realtime_and_nice_limits_are_not_inherited() -> None:
    """Class 5: a trainer whose RLIMIT_RTPRIO / RLIMIT_NICE / RLIMIT_RTTIME were raised (here:
    raised by the test where it may, as a cluster's limits.conf might; RLIMIT_RTTIME is
    unlimited by default) passed them on, and the run could take ``SCHED_FIFO`` and starve the
    machine. The run gets 0 for all three."""
    import resource

    names = ("RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME")
    saved = {n: resource.getrlimit(getattr(resource, n)) for n in names}
    try:
        for name, value in (("RLIMIT_RTPRIO", 50), ("RLIMIT_NICE", 30)):
            # raising a hard limit needs CAP_SYS_RESOURCE, which a container's root may lack;
            # RLIMIT_RTTIME is unlimited by default, so that one is inherited in any case
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(getattr(resource, name), (value, value))
        res = _run(
            """
            import json, os, resource
            out = {n: list(resource.getrlimit(getattr(resource, n)))
                   for n in ("RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME")}
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
                out["fifo"] = 0
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            except OSError as e:
                out["fifo"] = e.errno
            print(json.dumps(out), flush=True)
            """,
            SandboxLimits(wall_time_s=5.0),
        )
    finally:
        for n, v in saved.items():
            resource.setrlimit(getattr(resource, n), v)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"RLIMIT_NICE": [0, 0], "RLIMIT_RTPRIO": [0, 0], "RLIMIT_RTTIME": [0, 0], "fifo": errno.EPERM}


@needs_root
@pytest.mark.parametrize("how", ["mount_setattr", "remount-each"])
def test_read_only_bind_covers_submounts(tmp_path: Path, how: str) -> None:
    """Class 5: ``MS_BIND|MS_REC`` then a remount read-only covered only the top mount: a
    writable submount of a bound host directory (faked here: a tmpfs mounted inside a directory
    of the test's own) stayed writable in the sandbox. Run in a private mount namespace, both the
    ``mount_setattr(AT_RECURSIVE)`` path and the one-by-one path for older kernels."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    code = textwrap.dedent(
        f"""
        import json, os
        from adaclip_rl.sandbox import launcher as L
        if {how!r} == "remount-each":
            L._mount_setattr_recursive = lambda path, attrs: False
        L._mount(None, "/", None, L.MS_REC | L.MS_PRIVATE, None)
        L._mount("tmpfs", {str(src / "sub")!r}, "tmpfs", 0, "size=1m")
        L._bind_ro({str(src)!r}, {str(dst)!r})
        out = {{}}
        for rel in ("top", "sub/f"):
            try:
                open(os.path.join({str(dst)!r}, rel), "w").close()
                out[rel] = 0
            except OSError as e:
                out[rel] = e.errno
        print(json.dumps(out))
        """
    )
    proc = subprocess.run(
        ["unshare", "--mount", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"top": errno.EROFS, "sub/f": errno.EROFS}


@needs_root
def test_memory_cgroup_without_kernel_memory_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Class 5: on a host booted with ``cgroup.memory=nokmem`` (faked: a command line file),
    inodes, pipe buffers and page tables escape the memory cgroup; nothing checked that. Now
    ``require`` refuses naming the cause, and ``auto`` reports ``memory(no-kmem)``."""
    from adaclip_rl.sandbox import cgroups as _cgroup

    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyS0 cgroup.memory=nosocket,nokmem quiet\n")
    real = _cgroup.detect_cgroups
    monkeypatch.setattr(sbx, "detect_cgroups", lambda: real(cmdline=str(cmdline)))
    monkeypatch.setattr(sbx, "_CGROUPS", None)
    monkeypatch.setattr(sbx, "_CGROUP_REASONS", {})
    with pytest.raises(SandboxUnavailable, match="nokmem"):
        sbx._cgroups()
    monkeypatch.setenv("ADACLIP_SANDBOX_RESOURCE_CONTROL", "auto")
    assert "memory(no-kmem)" in sbx._cgroups().describe()
    assert _cgroup.kmem_accounted("cgroup.memory=nosocket quiet") and _cgroup.kmem_accounted("")
    real_support, real_reasons = real()  # this host accounts kernel memory
    assert "memory" not in real_reasons and "no-kmem" not in real_support.describe()
