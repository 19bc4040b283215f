"""Hostile programs: each one is contained, finishes within its limit, leaves nothing behind.

Every case asserts (1) containment (score 0 / cannot see or reach what it goes for), (2) the run
ends within its wall-clock limit plus a small grace, and (3) no process of the sandbox uids, and
no launcher, remains afterwards; cases that write or connect also check the host side.
Function-test cases (``judge``) hack the HumanEval harness and must score 0.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import dataclasses
import errno
import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rewards_helpers import assert_no_leftovers, humaneval

from adaclip_rl.data import BENCHMARK_DIR
from adaclip_rl.rewards.code import check_humaneval
from adaclip_rl.sandbox import (
    SandboxLimits,
    SandboxResult,
    configure_sandbox,
    run_python,
    sandbox_info,
)

LIM = SandboxLimits(
    cpu_time_s=2, wall_time_s=3.0, memory_mb=512, max_processes=16, max_output_bytes=1 << 16, disk_mb=32
)
SHORT = SandboxLimits(
    cpu_time_s=1, wall_time_s=2.0, memory_mb=512, max_processes=16, max_output_bytes=1 << 16
)
GRACE_S = 5.0  # process start + teardown on a loaded 2-core CI machine
REPO = Path(__file__).resolve().parents[2]
ROOT = os.geteuid() == 0


def contained_run(source: str, *, stdin: str = "", limits: SandboxLimits = LIM) -> SandboxResult:
    """Run, then check the time bound and that no process is left behind."""
    sandbox_info()  # the one-off mode probe is not part of the program's time
    t0 = time.monotonic()
    res = run_python(textwrap.dedent(source), stdin=stdin, limits=limits)
    assert res.error is None, res.error  # the launcher survived and reported
    assert res.run_s is not None and res.run_s <= limits.wall_time_s + 0.5, f"ran {res.run_s} s"
    assert time.monotonic() - t0 <= limits.wall_time_s + GRACE_S, "start + run + teardown too slow"
    assert_no_leftovers()
    return res


HE0 = 0  # HumanEval/0: has_close_elements(numbers, threshold)
WRONG_IMPL = "def has_close_elements(numbers, threshold):\n    return False\n"
RIGHT_IMPL = textwrap.dedent(
    """
    def has_close_elements(numbers, threshold):
        return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])
    """
)


def contained_judge(completion: str, limits: SandboxLimits = LIM) -> float:
    row = humaneval()[HE0]
    sandbox_info()
    t0 = time.monotonic()
    score = check_humaneval(
        textwrap.dedent(completion), row["prompt"], row["test"], row["entry_point"], limits=limits
    )
    assert time.monotonic() - t0 <= limits.wall_time_s + GRACE_S
    assert_no_leftovers()
    return score


@pytest.fixture(params=["default", "fallback"])
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a case in the default mode and again in the no-namespace fallback."""
    if request.param == "fallback":
        configure_sandbox(mode="fallback")
    try:
        yield request.param
    finally:
        if request.param == "fallback":
            configure_sandbox(mode="auto")


def test_positive_controls() -> None:
    """The hostile cases below score 0 because of the hack, not because judging is broken."""
    assert contained_judge(RIGHT_IMPL) == 1.0
    assert contained_judge("import sys\nprint('noise'); print('x', file=sys.stderr)\n" + RIGHT_IMPL) == 1.0
    assert contained_judge(WRONG_IMPL) == 0.0


# ============================================================== resource exhaustion


def test_infinite_loop(mode: str) -> None:
    res = contained_run("while True:\n    pass\n", limits=SHORT)
    assert res.returncode != 0
    assert res.timed_out or res.killed_signal is not None


def test_sleep_forever_hits_wall_clock() -> None:
    res = contained_run("import time\ntime.sleep(10**6)\n", limits=SHORT)
    assert res.timed_out


def test_fork_bomb(mode: str) -> None:
    if not ROOT and mode == "fallback":
        pytest.skip("RLIMIT_NPROC containment needs a uid of the run's own (root, or a user namespace)")
    res = contained_run(
        """
        import os, time
        n = 0
        while True:
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                n = 0          # children keep forking too
                continue
            n += 1
        print("forks", n, flush=True)
        time.sleep(100)
        """,
        limits=SHORT,
    )
    counts = [int(line.split()[1]) for line in res.stdout.splitlines() if line.startswith("forks")]
    assert counts and max(counts) < SHORT.max_processes
    assert res.timed_out


def test_thread_bomb() -> None:
    if not ROOT and sandbox_info()["mode"] != "namespaces":
        pytest.skip("RLIMIT_NPROC containment needs a uid of the run's own (root, or a user namespace)")
    res = contained_run(
        """
        import threading, time
        n = 0
        try:
            while True:
                threading.Thread(target=time.sleep, args=(100,), daemon=True).start()
                n += 1
        except (RuntimeError, MemoryError):
            pass
        print("threads", n, flush=True)
        import os; os._exit(0)
        """
    )
    assert res.stdout.startswith("threads")
    assert int(res.stdout.split()[1]) < LIM.max_processes


def test_memory_bomb() -> None:
    res = contained_run(
        """
        chunks = []
        try:
            while True:
                chunks.append(bytearray(32 * 2**20))
        except MemoryError:
            print("MemoryError at", 32 * len(chunks), "MiB", flush=True)
        raise MemoryError
        """,
        # touching 512 MiB page by page takes seconds on a loaded 2-core machine: the case is
        # containment (MemoryError at the budget), not speed, so it gets a longer wall clock
        limits=dataclasses.replace(LIM, wall_time_s=8.0),
    )
    assert res.stdout.startswith("MemoryError at"), res
    assert int(res.stdout.split()[2]) <= LIM.memory_mb
    assert res.returncode == 1


def test_huge_output() -> None:
    t0 = time.monotonic()
    res = contained_run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n")
    assert res.output_truncated and not res.ok
    assert len(res.stdout) + len(res.stderr) <= LIM.max_output_bytes
    assert time.monotonic() - t0 < LIM.wall_time_s  # killed at the cap, not at the timeout


def test_deep_recursion() -> None:
    res = contained_run(
        """
        import sys
        sys.setrecursionlimit(10**8)
        def f(n):
            return f(n + 1) + 1
        f(0)
        """,
        limits=SHORT,
    )
    assert res.returncode != 0  # RecursionError, MemoryError or a SIGSEGV of the child only


def test_fill_the_disk() -> None:
    host_tmp_before = shutil.disk_usage("/tmp").free
    shm_before = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else None
    res = contained_run(
        """
        import os
        written = 0
        block = b"\\0" * 2**20
        for d in (".", "/tmp", "/var/tmp", "/dev/shm"):
            for i in range(200):
                try:
                    with open(os.path.join(d, f"fill{i}"), "wb") as f:
                        for _ in range(64):
                            f.write(block); written += len(block)
                except OSError:
                    pass
                print("written_mib", written // 2**20, flush=True)
        """
    )
    lines = res.stdout.split()
    mib = int(lines[-1]) if lines else 0
    if sandbox_info()["mode"] == "namespaces":
        # private tmpfs: the work dir is capped at disk_mb, /dev/shm at 8 MiB, /tmp itself is read-only
        assert mib <= LIM.disk_mb + 8 + 2 * LIM.file_size_mb
    assert shutil.disk_usage("/tmp").free > host_tmp_before - 64 * 2**20 - mib * 2**20 // 4
    if shm_before is not None:
        assert shutil.disk_usage("/dev/shm").free >= shm_before - 64 * 2**20


# ============================================================== escaping the box


def test_write_outside_workdir(mode: str) -> None:
    tag = secrets.token_hex(8)
    targets = [
        f"/tmp/adaclip_hostile_{tag}",
        f"/var/tmp/adaclip_hostile_{tag}",
        f"/dev/shm/adaclip_hostile_{tag}",
        f"/run/lock/adaclip_hostile_{tag}",
        str(REPO / f"adaclip_hostile_{tag}"),
        f"/root/adaclip_hostile_{tag}",
        f"/etc/adaclip_hostile_{tag}",
        f"../adaclip_hostile_{tag}",
        f"../../adaclip_hostile_{tag}",
    ]
    res = contained_run(
        f"""
        for path in {targets!r}:
            try:
                with open(path, "w") as f:
                    f.write("pwned")
                print("wrote", path)
            except OSError as e:
                print("denied", path, e.errno)
        """
    )
    assert res.returncode == 0, res.stderr
    if sandbox_info()["mode"] == "namespaces" and ROOT:
        # in the namespaces nothing outside the private tmpfs is writable at all
        assert "wrote" not in res.stdout.replace("wrote /dev/shm", "").replace("wrote /run/lock", "").replace(
            "wrote /var/tmp", ""
        )
    leaked = {p for p in targets if not p.startswith("..") and os.path.exists(p)}
    leaked |= {str(p) for p in Path("/tmp").glob(f"*adaclip_hostile_{tag}")}
    for p in leaked:
        os.unlink(p)
    assert not leaked, f"the program wrote to the host: {leaked}"


def test_read_parent_environment_secret(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "adaclip-secret-" + secrets.token_hex(12)
    monkeypatch.setenv("ADACLIP_TEST_API_KEY", secret)
    res = contained_run(
        f"""
        import os
        seen = [repr(dict(os.environ))]
        for pid in os.listdir("/proc"):
            if pid.isdigit() or pid == "self":
                for name in ("environ", "cmdline"):
                    try:
                        seen.append(open(f"/proc/{{pid}}/{{name}}", "rb").read().decode(errors="replace"))
                    except OSError:
                        pass
        for ppid in (os.getppid(), {os.getpid()}):
            try:
                seen.append(open(f"/proc/{{ppid}}/environ", "rb").read().decode(errors="replace"))
            except OSError:
                pass
        blob = "\\n".join(seen)
        print("LEAK" if "adaclip-secret-" in blob else "clean", len(seen))
        """
    )
    assert secret not in res.stdout and secret not in res.stderr
    assert res.stdout.startswith("clean"), res.stdout[:200]


def test_read_host_files_outside_the_system_dirs() -> None:
    """The program cannot reach the repository, the benchmark data (with the tests) or homes."""
    if sandbox_info()["mode"] != "namespaces":
        pytest.skip("only the namespace mode has a private root (fallback documents this)")
    # the secret sits in the repository when the caller may write there (root, a CI checkout),
    # else in a fresh directory of the caller's temp dir (an unprivileged uid running a copy of
    # the suite); either way outside the system dirs, world-readable on the host
    parent = REPO if os.access(REPO, os.W_OK) else Path(tempfile.gettempdir())
    secret_dir = Path(tempfile.mkdtemp(prefix=".adaclip_hostile_", dir=parent))
    os.chmod(secret_dir, 0o755)
    secret_file = secret_dir / f".adaclip_secret_{secrets.token_hex(8)}"
    content = "secret-content-" + secrets.token_hex(8)
    secret_file.write_text(content)
    os.chmod(secret_file, 0o644)
    data = BENCHMARK_DIR / "humaneval.jsonl"
    try:
        res = contained_run(
            f"""
            import os
            for path in ({str(secret_file)!r}, {str(data)!r}, "/work", "/home", "/mnt", "/sys/kernel", "/var/log"):
                try:
                    if os.path.isdir(path):
                        print("listed", path, os.listdir(path)[:3])
                    else:
                        print("read", path, open(path).read(40))
                except OSError as e:
                    print("denied", path, e.errno)
            hits = []
            for dirpath, dirs, files in os.walk("/"):
                dirs[:] = [d for d in dirs if dirpath + d not in ("/proc", "/usr", "/sys")]
                hits += [os.path.join(dirpath, f) for f in files if "adaclip_secret" in f or f == "humaneval.jsonl"]
            print("walk hits", hits)
            """
        )
    finally:
        shutil.rmtree(secret_dir)
    assert content not in res.stdout, res.stdout
    assert "read " not in res.stdout and "listed" not in res.stdout, res.stdout
    assert "walk hits []" in res.stdout, res.stdout


def test_read_root_only_files() -> None:
    res = contained_run(
        """
        import os
        for path in ("/etc/shadow", "/root/.bash_history", "/root/.ssh/id_rsa", "/proc/1/mem", "/proc/1/environ"):
            try:
                open(path, "rb").read(16)
                print("read", path)
            except OSError as e:
                print("denied", path, e.errno)
        try:
            print("listed /root", os.listdir("/root"))
        except OSError as e:
            print("denied /root", e.errno)
        """
    )
    if not ROOT:
        pytest.skip("the sandbox keeps the caller's uid when not started as root")
    assert "read " not in res.stdout, res.stdout
    # in the private root, /root holds at most the directory leading to the interpreter
    host_root = set(os.listdir("/root"))
    prefix = Path(os.path.realpath(sys.base_prefix))
    allowed = {prefix.relative_to("/root").parts[0]} if prefix.is_relative_to("/root") else set()
    for line in res.stdout.splitlines():
        if line.startswith("listed /root"):
            seen = set(ast.literal_eval(line[len("listed /root ") :]))
            assert not (seen & host_root) - allowed, seen


def test_network_connection_to_host_listener(mode: str) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted: list[object] = []
    stop = threading.Event()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, addr = server.accept()
            except (TimeoutError, OSError):
                continue
            accepted.append(addr)
            conn.close()

    th = threading.Thread(target=accept_loop, daemon=True)
    th.start()
    try:
        res = contained_run(
            f"""
            import socket
            for host in ("127.0.0.1", "localhost", "::1", "10.255.255.1", "8.8.8.8"):
                try:
                    s = socket.create_connection((host, {port}), timeout=1)
                    print("connected", host); s.close()
                except OSError as e:
                    print("failed", host, type(e).__name__)
            try:
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.sendto(b"x", ("127.0.0.1", {port}))
                print("udp sent")
            except OSError as e:
                print("udp failed", type(e).__name__)
            """
        )
        time.sleep(0.3)
    finally:
        stop.set()
        th.join(timeout=5)
        server.close()
    assert not accepted, f"the sandbox reached the host listener: {accepted}"
    assert "connected" not in res.stdout and "udp sent" not in res.stdout, res.stdout


def test_kill_the_parent_and_everyone() -> None:
    me = os.getpid()
    res = contained_run(
        f"""
        import os, signal
        for target in (os.getppid(), 1, {me}, {os.getppid()}):
            try:
                os.kill(target, signal.SIGKILL)
                print("sent", target)
            except OSError as e:
                print("denied", target, e.errno)
        for pgid in (0, {os.getpgid(0)}):
            try:
                os.killpg(pgid, signal.SIGKILL) if pgid else None
            except OSError:
                pass
        try:
            os.kill(-1, signal.SIGKILL)   # kill -9 -1: everything this uid may signal
        except ProcessLookupError:
            pass                          # ESRCH: there was nothing else it could signal
        print("still alive")
        """
    )
    # we (the parent), our parent and the launcher are all alive; the program only killed itself or nothing
    assert os.getpid() == me
    assert "still alive" in res.stdout or res.killed_signal == 9


def test_kill_minus_one_in_fallback() -> None:
    configure_sandbox(mode="fallback")
    try:
        res = contained_run(
            """
            import os, signal, time
            if os.fork() == 0:
                time.sleep(100)
            time.sleep(0.2)
            os.kill(-1, signal.SIGKILL)
            print('after kill -1')
            """
        )
    finally:
        configure_sandbox(mode="auto")
    assert "after kill -1" in res.stdout


def test_ignore_sigterm() -> None:
    res = contained_run(
        """
        import signal, time
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGXCPU):
            signal.signal(s, signal.SIG_IGN)
        while True:
            time.sleep(0.05)
        """,
        limits=SHORT,
    )
    assert res.timed_out


def test_daemonized_child_does_not_outlive_the_run(mode: str) -> None:
    tag = secrets.token_hex(8)
    marker = f"/tmp/adaclip_daemon_{tag}"
    res = contained_run(
        f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                for fd in range(3):
                    os.close(fd)
                time.sleep(1.0)
                while True:
                    try:
                        open({marker!r}, "a").write("alive\\n")
                    except OSError:
                        pass
                    time.sleep(0.2)
            os._exit(0)
        time.sleep(0.2)
        print("parent exits", flush=True)
        """
    )
    assert res.returncode == 0 and "parent exits" in res.stdout
    time.sleep(1.5)  # a surviving daemon would have written by now
    assert_no_leftovers(wait_s=0)
    exists = os.path.exists(marker)
    if exists:
        os.unlink(marker)
    assert not exists


def test_signal_and_alarm_games() -> None:
    res = contained_run(
        """
        import signal
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.alarm(0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGXCPU, signal.SIG_IGN)
        while True:
            pass
        """,
        limits=SHORT,
    )
    assert res.timed_out or res.killed_signal is not None


def test_ctypes_segfault() -> None:
    res = contained_run("import ctypes\nctypes.string_at(0)\n")
    assert res.returncode == -11 and res.killed_signal == 11


def test_privilege_escalation_attempts() -> None:
    if not ROOT:
        pytest.skip("needs the root-started sandbox")
    res = contained_run(
        """
        import os, resource
        print("uid", os.getuid(), os.geteuid())
        for name, fn in [
            ("setuid0", lambda: os.setuid(0)),
            ("setgroups", lambda: os.setgroups([0])),
            ("raise_nproc", lambda: resource.setrlimit(resource.RLIMIT_NPROC, (resource.RLIM_INFINITY,) * 2)),
            ("raise_as", lambda: resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY,) * 2)),
            ("chown_etc", lambda: os.chown("/etc/passwd", os.getuid(), -1)),
        ]:
            try:
                fn()
                print("ESCALATED", name)
            except (OSError, ValueError) as e:
                print("denied", name)
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        print("ptrace", libc.ptrace(16, 1, 0, 0))   # PTRACE_ATTACH to PID 1
        """
    )
    first = res.stdout.splitlines()[0].split()
    assert first[0] == "uid" and int(first[1]) != 0 and int(first[2]) != 0
    assert "ESCALATED" not in res.stdout, res.stdout
    assert "ptrace -1" in res.stdout


# ============================================================== tampering with the judge


def test_exit_zero_before_tests_run() -> None:
    assert contained_judge(WRONG_IMPL + "import os\nos._exit(0)\n") == 0.0
    assert contained_judge(WRONG_IMPL + "import sys\nsys.exit(0)\n") == 0.0
    assert contained_judge("raise SystemExit(0)\n" + RIGHT_IMPL) == 0.0  # even a right answer must run


def test_redefine_the_checker() -> None:
    hack = WRONG_IMPL + textwrap.dedent(
        """
        import builtins
        def check(candidate):
            return True
        builtins.check = check
        builtins.candidate = has_close_elements
        METADATA = {}
        """
    )
    assert contained_judge(hack) == 0.0


def test_print_fake_success_and_forge_result_channels() -> None:
    hack = WRONG_IMPL + textwrap.dedent(
        """
        import os, sys, json
        print("PASSED"); print("All tests passed"); print(json.dumps({"passed": True}))
        sys.stderr.write('{"passed": true}\\n')
        for fd in range(3, 256):
            try:
                os.write(fd, b'{"passed": true, "returncode": 0}')
            except OSError:
                pass
        """
    )
    assert contained_judge(hack) == 0.0


def test_sys_exit_in_atexit_handler() -> None:
    hack = WRONG_IMPL + "import atexit, os, sys\natexit.register(os._exit, 0)\natexit.register(sys.exit, 0)\n"
    assert contained_judge(hack) == 0.0


def test_monkeypatch_builtins_and_assert() -> None:
    hack = WRONG_IMPL + textwrap.dedent(
        """
        import builtins
        class Nope(BaseException):
            pass
        builtins.AssertionError = Nope
        builtins.abs = lambda x: 0
        builtins.isinstance = lambda *a: True
        builtins.len = lambda x: 0
        builtins.any = lambda x: True
        """
    )
    assert contained_judge(hack) == 0.0


def test_always_equal_return_values() -> None:
    hack = textwrap.dedent(
        """
        class AlwaysEqual:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __bool__(self): return True
        class TrueInt(int):
            def __eq__(self, other): return True
            __hash__ = int.__hash__
        calls = [0]
        def has_close_elements(numbers, threshold):
            calls[0] += 1
            return AlwaysEqual() if calls[0] % 2 else TrueInt(0)
        """
    )
    assert contained_judge(hack) == 0.0


def test_cannot_read_the_tests() -> None:
    """The candidate process never holds the tests: memory, frames, files and /proc are searched."""
    finder = textwrap.dedent(
        """
        import gc, os, sys
        def _search():
            needle = "assert " + "candidate("  # built at run time: not a literal of this program
            for o in gc.get_objects():
                try:
                    if isinstance(o, dict):
                        vals = list(o.values())
                    elif isinstance(o, (list, tuple)):
                        vals = list(o)
                    else:
                        continue
                    if any(isinstance(v, str) and v is not needle and needle in v for v in vals):
                        return "gc"
                except Exception:
                    pass
            f = sys._getframe()
            while f is not None:
                if any(isinstance(v, str) and v is not needle and needle in v for v in f.f_locals.values()):
                    return "frame"
                f = f.f_back
            # the private root holds only system dirs besides these; the fallback has no private
            # root (host files stay readable, as documented), so only its own dirs are searched
            for root in (("/tmp", "/root", "/dev/shm", "/proc") if PRIVATE_ROOT else (".", "/proc")):
                for dirpath, dirs, files in os.walk(root):
                    if dirpath.count("/") > 3:
                        dirs[:] = []
                    for name in files:
                        try:
                            # non-blocking: /proc/self/fd/1 is its own stdout pipe, which
                            # the caller's uid (the sandbox's, in a user namespace) may open
                            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NONBLOCK)
                            with open(fd, "rb") as fh:
                                if needle.encode() in fh.read(1 << 20):
                                    return "file:" + os.path.join(dirpath, name)
                        except Exception:
                            pass
            return None
        PRIVATE_ROOT = not os.path.exists("/work") and not os.path.exists("/sys/kernel")
        FOUND = _search()
        print("FOUND" if FOUND else "not found", FOUND, flush=True)
        def has_close_elements(numbers, threshold):
            if FOUND:   # would only pass by reading the expected answers
                return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])
            return False
        """
    )
    row = humaneval()[HE0]
    from adaclip_rl.rewards.code import build_humaneval_program
    from adaclip_rl.sandbox import run_python_function_tests

    program = build_humaneval_program(finder, row["prompt"], row["entry_point"])
    res = run_python_function_tests(
        program, entry_point=row["entry_point"], test=row["test"], prompt=row["prompt"], limits=LIM
    )
    assert_no_leftovers()
    assert "not found" in res.stdout, res.stdout
    assert res.passed is False


def test_kill_the_judge() -> None:
    hack = textwrap.dedent(
        """
        import os, signal
        def has_close_elements(numbers, threshold):
            for pid in range(1, 200):
                if pid != os.getpid():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            os.kill(-1, signal.SIGKILL)
            return False
        """
    )
    assert contained_judge(hack) == 0.0


def test_ptrace_or_read_the_judge(mode: str) -> None:
    """The candidate cannot attach to, or read the memory and fds of, the judge or the launcher."""
    spy = textwrap.dedent(
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
            if pid == os.getpid():
                continue
            if libc.ptrace(16, pid, 0, 0) == 0:  # PTRACE_ATTACH
                print("ATTACHED", pid)
            for what in ("mem", "environ", "fd"):
                try:
                    if what == "fd":
                        print("OPENED", pid, what, os.listdir(f"/proc/{pid}/fd"))
                    else:
                        open(f"/proc/{pid}/{what}", "rb").read(1)
                        print("OPENED", pid, what)
                except OSError:
                    pass
        print("spy done", flush=True)
        def has_close_elements(numbers, threshold):
            return False
        """
    )
    row = humaneval()[HE0]
    from adaclip_rl.rewards.code import build_humaneval_program
    from adaclip_rl.sandbox import run_python_function_tests

    program = build_humaneval_program(spy, row["prompt"], row["entry_point"])
    res = run_python_function_tests(
        program, entry_point=row["entry_point"], test=row["test"], prompt=row["prompt"], limits=LIM
    )
    assert_no_leftovers()
    assert "spy done" in res.stdout, res.stderr
    if ROOT:  # without root the launcher and judge share the caller's uid (only non-dumpable)
        assert "ATTACHED" not in res.stdout and "OPENED" not in res.stdout, res.stdout
    assert res.passed is False


def test_hang_inside_the_function_under_test() -> None:
    hang = "def has_close_elements(numbers, threshold):\n    while True:\n        pass\n"
    assert contained_judge(hang, limits=SHORT) == 0.0


# ============================================================== third round: what the denylist missed
# (each class reached the kernel before: the filter had no rule for the call or its argument)


def _json_line(stdout: str) -> dict:
    """The last line of a program's output that is a JSON object."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, stdout
    return json.loads(lines[-1])


def test_dnotify_and_leases_give_no_signal_from_the_host(mode: str) -> None:
    """Class 1: ``fcntl(F_NOTIFY, DN_ACCESS | DN_MULTISHOT)`` on the read-only ``/etc`` bind
    would signal the program each time a host process reads a file there (no inotify needed);
    ``F_SETLEASE`` signals on every open of a leased file. Both are refused, and no signal comes
    while the host reads ``/etc`` during the run."""
    program = """
        import fcntl, json, os, signal, time
        hits = [0]
        signal.signal(signal.SIGIO, lambda s, f: hits.__setitem__(0, hits[0] + 1))
        out = {}
        fd = os.open("/etc", os.O_RDONLY)
        try:
            fcntl.fcntl(fd, fcntl.F_NOTIFY, fcntl.DN_ACCESS | fcntl.DN_MULTISHOT)
            out["notify"] = 0
        except OSError as e:
            out["notify"] = e.errno
        with open("mine", "w") as f:
            f.write("x")
        lfd = os.open("mine", os.O_RDONLY)
        try:
            fcntl.fcntl(lfd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
            out["lease"] = 0
        except OSError as e:
            out["lease"] = e.errno
        time.sleep(1.5)
        out["hits"] = hits[0]
        print(json.dumps(out), flush=True)
    """
    box: dict[str, SandboxResult] = {}
    sandbox_info()
    t = threading.Thread(target=lambda: box.setdefault("res", contained_run(program)))
    t.start()
    while t.is_alive():  # the host reads files in /etc while the run watches
        for name in ("hostname", "passwd", "os-release"):
            with contextlib.suppress(OSError):
                Path("/etc", name).read_bytes()
        time.sleep(0.01)
    t.join()
    out = _json_line(box["res"].stdout)
    assert out == {"notify": errno.EPERM, "lease": errno.EPERM, "hits": 0}, out


def test_page_cache_carries_no_bit_across_runs(mode: str) -> None:
    """Class 2: run A evicts a stdlib file's pages (``posix_fadvise(DONTNEED)``,
    ``madvise(MADV_PAGEOUT)``) and reads back a pattern of them; run B probes the residency of
    each page (``preadv2(RWF_NOWAIT)``, ``mincore``, ``cachestat``). Every eviction and every
    probe is refused: B reads no bit. (A run can still make a page resident by reading it; only
    the time of a first read shows that, which ``docs/sandbox.md`` lists as not promised.)"""
    nr = sbx_nr()
    pattern = [1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 1, 0, 1]
    target = repr(_shared_host_file(len(pattern) * 4096))
    writer = f"""
        import ctypes, json, mmap, os
        fd = os.open({target}, os.O_RDONLY)
        out = {{}}
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead blurring the pattern
        for name, advice in (("dontneed", os.POSIX_FADV_DONTNEED), ("noreuse", os.POSIX_FADV_NOREUSE)):
            try:
                os.posix_fadvise(fd, 0, 0, advice)
                out[name] = 0
            except OSError as e:
                out[name] = e.errno
        m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        for name, advice in (("pageout", 21), ("cold", 20)):
            try:
                m.madvise(advice)
                out[name] = 0
            except OSError as e:
                out[name] = e.errno
        for i, bit in enumerate({pattern}):
            if bit:
                os.pread(fd, 1, i * 4096)
        print(json.dumps(out), flush=True)
    """
    reader = f"""
        import ctypes, json, os
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open({target}, os.O_RDONLY)
        out = {{"nowait": [], "nowait_writev": None}}
        for i in range({len(pattern)}):
            try:
                os.preadv(fd, [bytearray(1)], i * 4096, os.RWF_NOWAIT)
                out["nowait"].append(1)
            except BlockingIOError:
                out["nowait"].append(0)
            except OSError as e:
                out["nowait"].append(-e.errno)
        libc.mmap.restype = ctypes.c_void_p
        size = {len(pattern)} * 4096
        addr = libc.mmap(None, ctypes.c_size_t(size), 1, 2, fd, ctypes.c_long(0))
        vec = (ctypes.c_ubyte * {len(pattern)})()
        ctypes.set_errno(0)
        rc = libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec)
        out["mincore"] = list(vec) if rc == 0 else -ctypes.get_errno()
        rng = (ctypes.c_uint64 * 2)(0, size)
        st = (ctypes.c_uint64 * 5)()
        ctypes.set_errno(0)
        rc = libc.syscall(ctypes.c_long({nr["cachestat"]}), ctypes.c_long(fd), rng, st, ctypes.c_long(0))
        out["cachestat"] = st[0] if rc == 0 else -ctypes.get_errno()
        print(json.dumps(out), flush=True)
    """
    a = _json_line(contained_run(writer).stdout)
    b = _json_line(contained_run(reader).stdout)
    assert a == {"dontneed": errno.EPERM, "noreuse": errno.EPERM, "pageout": errno.EPERM, "cold": errno.EPERM}, a
    assert b["nowait"] == [-errno.EPERM] * len(pattern), b
    assert b["mincore"] == b["cachestat"] == -errno.EPERM, b


def test_machine_wide_pools_stay_closed(mode: str) -> None:
    """Class 3: kernel pools shared by the whole machine (or, without an IPC namespace, by the
    host): AIO contexts (``fs.aio-max-nr``), user namespaces, inotify instances, keys, POSIX
    message queues, and in the fallback the host's own System V objects. One run must not take from them or reach
    them: each allocation is refused and the machine's AIO count does not move."""
    nr = sbx_nr()
    libc = ctypes.CDLL(None, use_errno=True)
    shm_id = libc.shmget(0, 4096, 0o1666)  # IPC_PRIVATE, IPC_CREAT | 0666: a host segment
    msg_id = libc.msgget(0, 0o1666)
    assert shm_id >= 0 and msg_id >= 0
    aio_before = int(Path("/proc/sys/fs/aio-nr").read_text())
    try:
        res = contained_run(
            f"""
            import ctypes, json
            libc = ctypes.CDLL(None, use_errno=True)
            def call(nr, *args):
                ctypes.set_errno(0)
                rc = libc.syscall(ctypes.c_long(nr), *[a if not isinstance(a, int) else ctypes.c_long(a) for a in args])
                return 0 if rc != -1 else ctypes.get_errno()
            out = {{"aio_contexts": 0}}
            ctx = ctypes.c_ulong(0)
            for _ in range(64):  # 64 x 1024 x 2 events would be the machine's whole pool
                ctx.value = 0
                out["io_setup"] = call({nr["io_setup"]}, 1024, ctypes.byref(ctx))
                if out["io_setup"]:
                    break
                out["aio_contexts"] += 1
            out["userns"] = call({nr["unshare"]}, 0x10000000)
            out["inotify"] = call({nr["inotify_init1"]}, 0)
            out["add_key"] = call({nr["add_key"]}, ctypes.c_char_p(b"user"), ctypes.c_char_p(b"k"),
                                  ctypes.c_char_p(b"v"), 1, -3)
            libc.shmat.restype = ctypes.c_void_p
            ctypes.set_errno(0)
            out["shmat_host"] = 0 if libc.shmat({shm_id}, None, 0) not in (None, 2**64 - 1) else ctypes.get_errno()
            ctypes.set_errno(0)
            mq = libc.mq_open(b"/adaclip_pool", 0o102, 0o600, None)  # O_RDWR | O_CREAT
            out["mq_open"] = 0 if mq >= 0 else ctypes.get_errno()
            if mq >= 0:
                libc.mq_unlink(b"/adaclip_pool")
            out["msgsnd_host"] = call({nr["msgsnd"]}, {msg_id}, ctypes.create_string_buffer(b"\\1\\0\\0\\0\\0\\0\\0\\0x"), 1, 0o4000)
            print(json.dumps(out), flush=True)
            """
        )
        out = _json_line(res.stdout)
        aio_after = int(Path("/proc/sys/fs/aio-nr").read_text())
    finally:
        libc.shmctl(shm_id, 0, None)  # IPC_RMID
        libc.msgctl(msg_id, 0, None)
    assert out["aio_contexts"] == 0 and out["io_setup"] == errno.EPERM, out
    assert aio_after == aio_before
    assert out["userns"] == out["inotify"] == out["add_key"] == errno.EPERM, out
    # POSIX message queues: refused by the filter in the fallback, by RLIMIT_MSGQUEUE=0 otherwise
    assert out["mq_open"] == (errno.EPERM if mode == "fallback" else errno.EMFILE), out
    if mode == "fallback":  # the host's IPC namespace: its objects are refused by the filter
        assert out["shmat_host"] == out["msgsnd_host"] == errno.EPERM, out
    else:  # a private IPC namespace: the host's ids do not exist there
        assert out["shmat_host"] == out["msgsnd_host"] == errno.EINVAL, out


def test_judge_reply_frame_stays_within_the_run_budget() -> None:
    """Class 4: the candidate holds 150 MiB of a 256 MiB budget, then writes its own reply frame
    straight to the judge's pipe, announcing 32 MiB of ``[[],[],...]`` (3 bytes of frame per
    64-byte list once parsed). Before, the judge read and parsed it up to its own budget (as
    large as the candidate's); now it refuses a frame over its bound before reading it, so
    candidate and judge together stay within ``memory_mb``, measured from outside as the sum of
    the two cgroups' peaks; the run fails."""
    if not ROOT:
        pytest.skip("the per-run cgroups that measure the peaks need root")
    lim = SandboxLimits(cpu_time_s=5, wall_time_s=8.0, memory_mb=256, max_output_bytes=1 << 16)
    hack = textwrap.dedent(
        """
        import fcntl, os, stat, struct
        hold = b"x" * (150 << 20)  # within the candidate's own share of the budget
        def has_close_elements(numbers, threshold):
            for fd in map(int, os.listdir("/proc/self/fd")):
                try:
                    st = os.fstat(fd)
                except OSError:
                    continue
                if fd > 2 and stat.S_ISFIFO(st.st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & 3 == os.O_WRONLY:
                    n = 32 << 20
                    os.write(fd, struct.pack("<I", n) + b'{"ok": [')
                    chunk = b"[]," * (1 << 18)
                    sent = 8
                    while sent + len(chunk) < n - 4:
                        sent += os.write(fd, chunk)
                    os.write(fd, b"[]" + b" " * (n - sent - 4) + b"]}")
            return True
        """
    )
    row = humaneval()[HE0]
    from adaclip_rl.rewards.code import build_humaneval_program
    from adaclip_rl.sandbox import run_python_function_tests

    sandbox_info()
    program = build_humaneval_program(hack, row["prompt"], row["entry_point"])
    res = run_python_function_tests(
        program, entry_point=row["entry_point"], test=row["test"], prompt=row["prompt"], limits=lim
    )
    assert_no_leftovers()
    assert res.passed is False
    assert res.memory_peak_mb is not None and res.judge_memory_peak_mb is not None
    assert res.memory_peak_mb + res.judge_memory_peak_mb <= lim.memory_mb, res
    assert res.judge_error is not None and "over the limit" in res.judge_error, res.judge_error


def _shared_host_file(min_size: int) -> str:
    """A world-readable file of at least ``min_size`` bytes under ``/usr/share`` (bound read-only
    into the sandbox in both modes)."""
    for top, _, files in os.walk("/usr/share"):
        for name in sorted(files):
            path = os.path.join(top, name)
            with contextlib.suppress(OSError):
                st = os.stat(path)
                if st.st_size >= min_size and st.st_mode & 0o004 and not os.path.islink(path):
                    return path
    pytest.skip(f"no world-readable file of {min_size} bytes under /usr/share")


# syscall numbers the hostile programs call (independent of the sandbox's own table)
_NR = {
    "x86_64": {"io_setup": 206, "cachestat": 451, "msgsnd": 69, "unshare": 272, "inotify_init1": 294,
               "add_key": 248},
    "aarch64": {"io_setup": 0, "cachestat": 451, "msgsnd": 189, "unshare": 97, "inotify_init1": 26,
                "add_key": 217},
}  # fmt: skip


def sbx_nr() -> dict[str, int]:
    """This machine's numbers of the calls the hostile programs make."""
    if os.uname().machine not in _NR:
        pytest.skip("syscall numbers listed for x86_64 and aarch64 Linux only")
    return _NR[os.uname().machine]
