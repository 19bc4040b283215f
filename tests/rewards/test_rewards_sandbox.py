"""Sandbox basics: limits validation, I/O, environment, working directory, isolation mode."""

from __future__ import annotations

import os
import threading
import time

import pytest
from rewards_helpers import assert_no_leftovers

from adaclip_rl.rewards.sandbox import (
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


def test_isolation_mode_reported() -> None:
    info = sandbox_info()
    res = run_python("print('hi')")
    assert res.isolation_mode == info["isolation_mode"]
    if os.geteuid() == 0 and info["mode"] == "namespaces":
        assert res.isolation_mode.startswith("namespaces(pid,net,mount,ipc,uts)")
        assert "setuid" in res.isolation_mode


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
