"""Sandbox basics: limits validation, I/O, environment, working directory, isolation mode."""

from __future__ import annotations

import errno
import os
import textwrap
import threading
import time

import pytest
from rewards_helpers import assert_no_leftovers, status_uid

from adaclip_rl.sandbox import (
    SandboxLimits,
    configure_sandbox,
    run_python,
    sandbox_info,
)


def test_limits_validation_names_field_and_range() -> None:
    SandboxLimits()  # defaults are valid
    cases = {
        "cpu_time_s": 0,
        "wall_time_s": -1,
        "memory_mb": 1,
        "file_size_mb": -1,
        "max_processes": 0,
        "max_open_files": 3,
        "max_output_bytes": -5,
        "disk_mb": 0,
        "nice": 20,
        "cpu_cores": 0,
        "max_inodes": 10,
    }
    for name, bad in cases.items():
        with pytest.raises(ValueError, match=rf"SandboxLimits\.{name} must be in \["):
            SandboxLimits(**{name: bad})
    with pytest.raises(ValueError, match="integer"):
        SandboxLimits(memory_mb=100.5)
    with pytest.raises(ValueError, match="number"):
        SandboxLimits(cpu_time_s="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="number"):
        SandboxLimits(max_processes=True)


def test_configure_validation() -> None:
    with pytest.raises(ValueError, match="mode"):
        configure_sandbox(mode="docker")
    with pytest.raises(ValueError, match="max_parallel"):
        configure_sandbox(max_parallel=0)
    with pytest.raises(ValueError, match=r"resource_control must be one of \('require', 'auto', 'off'\)"):
        configure_sandbox(resource_control="maybe")
    with pytest.raises(ValueError, match=r"uid_base must be an integer in \[1000, "):
        configure_sandbox(uid_base=10)


def test_environment_settings_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from adaclip_rl.sandbox import runner as sbx

    monkeypatch.setenv("ADACLIP_SANDBOX_UID_BASE", "12ab")
    with pytest.raises(ValueError, match=r"ADACLIP_SANDBOX_UID_BASE must be an integer in \[1000, "):
        sbx._uid_base()
    monkeypatch.setenv("ADACLIP_SANDBOX_RESOURCE_CONTROL", "sometimes")
    with pytest.raises(ValueError, match=r"ADACLIP_SANDBOX_RESOURCE_CONTROL must be one of"):
        sbx._cfg_resource_control()
    monkeypatch.setenv("ADACLIP_SANDBOX_MODE", "docker")
    with pytest.raises(ValueError, match=r"ADACLIP_SANDBOX_MODE must be one of"):
        sbx._cfg_mode()


def test_isolation_mode_reported() -> None:
    info = sandbox_info()
    res = run_python("print('hi')")
    assert res.isolation_mode == info["isolation_mode"]
    if os.geteuid() == 0 and info["mode"] == "namespaces":
        assert res.isolation_mode.startswith("namespaces(pid,net,mount,ipc,uts)")
        assert "setuid" in res.isolation_mode and "+seccomp+" in res.isolation_mode
        assert "cgroup-v" in res.isolation_mode and res.memory_peak_mb is not None


def test_stdin_stdout_stderr_returncode() -> None:
    src = "import sys\nname = input()\nprint('hello', name)\nprint('warn', file=sys.stderr)\nsys.exit(3)\n"
    res = run_python(src, stdin="world\n")
    assert res.stdout == "hello world\n"
    assert res.stderr == "warn\n"
    assert res.returncode == 3 and not res.timed_out and res.killed_signal is None
    assert not res.ok
    assert run_python("print(sum(range(10)))").ok


def test_exceptions_and_main_guard() -> None:
    res = run_python("def main():\n    print('main ran')\nif __name__ == '__main__':\n    main()\n")
    assert res.stdout == "main ran\n" and res.returncode == 0
    res = run_python("raise ValueError('boom')")
    assert res.returncode == 1 and "ValueError: boom" in res.stderr
    res = run_python("import sys; sys.exit('message')")
    assert res.returncode == 1 and "message" in res.stderr


def test_runs_unprivileged_with_scrubbed_env_and_fresh_workdir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADACLIP_PARENT_ONLY", "parent-value")
    src = (
        "import os, json\n"
        "open('scratch.txt', 'w').write('x')\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'groups': os.getgroups(),"
        " 'cwd': os.getcwd(), 'files': sorted(os.listdir('.')), 'env': dict(os.environ)}))\n"
    )
    import json

    first = json.loads(run_python(src).stdout)
    second = json.loads(run_python(src).stdout)
    if os.geteuid() == 0:
        assert first["uid"] != 0 and first["gid"] != 0 and first["groups"] == []
    assert "ADACLIP_PARENT_ONLY" not in first["env"]
    assert set(first["env"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "PYTHONHASHSEED"}
    # each run starts in an empty directory (the program itself is written there as solution.py)
    assert first["files"] == second["files"] == ["scratch.txt", "solution.py"]
    assert_no_leftovers()


def test_timeout_reports_and_kills() -> None:
    lim = SandboxLimits(cpu_time_s=5, wall_time_s=1.0)
    t0 = time.monotonic()
    res = run_python("import time\nprint('start', flush=True)\ntime.sleep(60)\n", limits=lim)
    assert time.monotonic() - t0 < 1.0 + 2.0
    assert res.timed_out and res.stdout == "start\n"
    assert_no_leftovers()


def test_stdlib_imports_work_as_unprivileged_user() -> None:
    src = "import json, decimal, fractions, statistics, heapq, itertools, re, random, hashlib, collections\nprint('ok')"
    res = run_python(src)
    assert res.stdout == "ok\n", res.stderr


def test_bounded_parallelism() -> None:
    """Concurrent callers never run more than max_parallel programs at once."""
    n = sandbox_info()["max_parallel"]
    assert isinstance(n, int)
    results = []
    src = "import time\nt = time.time()\ntime.sleep(0.3)\nprint(t, time.time())"

    def go() -> None:
        results.append(run_python(src))

    threads = [threading.Thread(target=go) for _ in range(n + 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans = [tuple(map(float, r.stdout.split())) for r in results]
    assert len(spans) == n + 2
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    live = peak = 0
    for _, d in events:
        live += d
        peak = max(peak, live)
    assert peak <= n


UNPRIV_UID = 59998  # an otherwise unused uid for the unprivileged-caller test


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another user")
def test_unprivileged_caller_gets_user_namespaces() -> None:
    """Without root, where the kernel allows unprivileged user namespaces: ``auto`` runs the same
    launcher in a user namespace (the caller mapped to root there, every capability dropped in
    the sandboxed processes, the same private root, pid/net/ipc/uts namespaces and filter).
    Cgroups need a delegated subtree: without one ``require`` refuses naming each controller.
    The fallback asked for by name still runs."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    candidates = [os.path.realpath(sys.executable), "/usr/bin/python3"]
    python = next((p for p in candidates if p and _world_executable(p)), None)
    if python is None or shutil.which("unshare") is None:
        pytest.skip("no interpreter reachable by an unprivileged user")
    from adaclip_rl.sandbox.runner import _userns_problem

    if _userns_problem() is not None:
        pytest.skip(f"this kernel refuses unprivileged user namespaces: {_userns_problem()}")
    script = textwrap.dedent(
        """
        import json, time
        from adaclip_rl.rewards.code import check_humaneval
        from adaclip_rl.sandbox import (
            run_python, sandbox_info, SandboxLimits, SandboxUnavailable, configure_sandbox,
        )
        lim = SandboxLimits(cpu_time_s=1, wall_time_s=3, max_processes=8)
        out = {}
        try:
            sandbox_info()
            out["auto_require"] = "ran"
        except SandboxUnavailable as e:
            out["auto_require"] = str(e)
        configure_sandbox(resource_control="off")
        out["info"] = sandbox_info()
        probe = '''
        import ctypes, errno, json, os, socket
        out = {"root": sorted(os.listdir("/")), "work": os.path.exists("/work")}
        status = dict(l.split(":", 1) for l in open("/proc/self/status"))
        out["caps"] = [status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb")]
        out["ids"] = [os.getuid(), os.geteuid()]
        try:
            socket.create_connection(("127.0.0.1", 9), timeout=1)
            out["net"] = "connected"
        except OSError as e:
            out["net"] = e.errno
        for path in ("/usr/adaclip_probe", "/etc/adaclip_probe"):
            try:
                open(path, "w")
                out[path] = "written"
            except OSError as e:
                out[path] = e.errno
        libc = ctypes.CDLL(None, use_errno=True)
        out["unshare"] = 0 if libc.unshare(0x10000000) == 0 else ctypes.get_errno()
        out["mount"] = 0 if libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) == 0 else ctypes.get_errno()
        n = 0
        try:
            while True:
                if os.fork() == 0:
                    import time
                    time.sleep(5)
                    os._exit(0)
                n += 1
        except OSError as e:
            out["forks"] = [n, e.errno]
        print(json.dumps(out), flush=True)
        os._exit(0)
        '''
        import textwrap
        r = run_python(textwrap.dedent(probe), limits=lim)
        out["probe"] = r.stdout
        out["probe_err"] = r.stderr[-1000:]
        t = time.monotonic(); r = run_python("while True: pass", limits=lim)
        out["loop"] = [r.returncode, time.monotonic() - t]
        row = {"prompt": 'def add(a, b):\\n    \\"\\"\\"Add.\\"\\"\\"\\n',
               "test": "def check(candidate):\\n    assert candidate(2, 3) == 5\\n    assert candidate(-1, 1) == 0\\n"}
        out["judge"] = [check_humaneval("    return a + b\\n", row["prompt"], row["test"], "add"),
                        check_humaneval("    pass\\n", row["prompt"], row["test"], "add")]
        configure_sandbox(mode="fallback")
        out["fallback"] = sandbox_info()["isolation_mode"]
        r = run_python("import os, time\\nif os.fork() == 0:\\n    os.setsid()\\n    if os.fork() == 0:\\n        time.sleep(60)\\n    os._exit(0)\\nprint('done')", limits=lim)
        out["daemon"] = r.stdout
        print(json.dumps(out))
        """
    )
    proc = subprocess.run(
        [python, "-c", script],
        user=UNPRIV_UID,
        group=UNPRIV_UID,
        extra_groups=[],
        env={"PYTHONPATH": str(repo), "HOME": "/tmp", "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # no delegated cgroup on this machine: no silent downgrade, each controller's problem named
    assert out["auto_require"] == "ran" or (
        "resource_control" in out["auto_require"] and "memory:" in out["auto_require"]
    ), out["auto_require"]
    assert out["info"]["mode"] == "namespaces"
    assert out["info"]["isolation_mode"] == (
        "namespaces(user,pid,net,mount,ipc,uts)+no-caps+rlimits+seccomp+no-cgroup"
    ), out["info"]
    assert out["probe"].strip(), out["probe_err"]
    probe = json.loads(out["probe"].strip().splitlines()[-1])
    assert "work" in probe and not probe["work"] and "root" not in probe["root"], (probe, out["probe_err"])
    assert probe["caps"] == ["0000000000000000"] * 4, probe
    assert probe["net"] != "connected"
    assert probe["/usr/adaclip_probe"] == probe["/etc/adaclip_probe"] == errno.EROFS, probe
    assert probe["unshare"] == probe["mount"] == errno.EPERM, probe
    assert probe["forks"][0] < 8 and probe["forks"][1] == errno.EAGAIN, probe  # RLIMIT_NPROC per run
    assert out["loop"][0] != 0 and out["loop"][1] < 3 + 5
    assert out["judge"] == [1.0, 0.0]
    assert out["fallback"] == (
        "fallback(missing:private-root,pid-ns,net-ns,ipc-ns,uts-ns)+subreaper+rlimits(no-nproc)+seccomp+no-cgroup"
    )
    assert out["daemon"] == "done\n"
    left = [pid for pid in os.listdir("/proc") if pid.isdigit() and status_uid(pid) == UNPRIV_UID]
    assert not left, left


def test_auto_without_root_refuses_where_user_namespaces_are_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-root caller on a kernel without unprivileged user namespaces (faked: the sysctl
    check says so) gets ``SandboxUnavailable`` naming the switch and the way to the fallback."""
    from adaclip_rl.sandbox import runner as sbx

    monkeypatch.setattr(sbx, "_is_root", lambda: False)
    monkeypatch.setattr(sbx, "_userns_problem", lambda: "unprivileged user namespaces are off (user.max_user_namespaces=0)")
    monkeypatch.setattr(sbx, "_MODE", None)
    configure_sandbox(mode="auto")
    with pytest.raises(sbx.SandboxUnavailable, match=r"max_user_namespaces=0.*mode='fallback'"):
        sbx._resolve_mode()


def _world_executable(path: str) -> bool:
    import stat
    from pathlib import Path

    p = Path(path)
    if not p.exists() or not os.stat(p).st_mode & stat.S_IXOTH:
        return False
    return all(os.stat(d).st_mode & stat.S_IXOTH for d in p.parents)
