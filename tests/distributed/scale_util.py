"""Launch helpers for the scale-out tests: a free port and a retry when another job took it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_tool(name: str) -> str:
    return shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name) or name


def child_env(base: dict[str, str]) -> dict[str, str]:
    return dict(base, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def run_with_port(make_cmd, env: dict[str, str], timeout: int = 240) -> subprocess.CompletedProcess:
    """Run ``make_cmd(port)``; once more on a new port if the first was taken meanwhile."""
    for _attempt in range(2):
        proc = subprocess.run(make_cmd(free_port()), capture_output=True, text=True, env=env, timeout=timeout)
        if proc.returncode == 0 or "address already in use" not in proc.stderr.lower():
            break
    return proc


def save_on_rank0(results, out) -> None:
    """A worker's ending: rank 0 (or a plain process) writes ``results`` to ``out`` (``torch.save``),
    then every rank waits for it."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save(results, out)
    if dist.is_initialized():
        dist.barrier()
