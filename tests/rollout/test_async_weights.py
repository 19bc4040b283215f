"""The shared-file weight transfer and the server helper never touch a user's files, clean up after
themselves (normal run, failed push, dead server, killed trainer) and never leave a server paused.

The HTTP side is a small in-process stand-in for vLLM's dev-mode endpoints (it can fail on demand or
be shut down); the files, folders, processes and signals are real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock

import pytest
import torch

from adaclip_rl.rollout import async_weights
from adaclip_rl.rollout.async_weights import (
    WEIGHTS_PREFIX,
    ServerUnavailableError,
    SharedFileWeightTransfer,
    VLLMServer,
    free_port,
)


class _FakeVLLM:
    """``/health``, ``/pause``, ``/resume``, ``/update_weight_version`` and ``/collective_rpc`` (which
    answers 500 while ``fail_reload`` is set), recording every call."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail_reload = False
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._reply(200 if self.path == "/health" else 404, {})

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                path = self.path.split("?")[0]
                owner.calls.append(path)
                if path == "/collective_rpc" and owner.fail_reload:
                    self._reply(500, {"error": "reload failed"})
                else:
                    self._reply(200, {"results": [None]} if path == "/collective_rpc" else {})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_server():
    srv = _FakeVLLM()
    yield srv
    srv.shutdown()


def _weights():
    return iter([("a.weight", torch.ones(4, 4)), ("b.bias", torch.zeros(4))])


def _push(transfer: SharedFileWeightTransfer) -> None:
    """TRL's order: pause, send, resume (resume only after a successful send)."""
    transfer.pause()
    transfer.send_weights(_weights())
    transfer.resume()


def _user_folder(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "my_checkpoints"
    folder.mkdir()
    precious = folder / "notes.txt"
    precious.write_text("the user's file")
    return folder, precious


def _ours(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.startswith(f"{WEIGHTS_PREFIX}{os.getpid()}-"))


def test_user_folder_survives_training_failed_push_and_dead_server(fake_server, tmp_path):
    folder, precious = _user_folder(tmp_path)
    transfer = SharedFileWeightTransfer(fake_server.url, weights_dir=folder, timeout=5, ready_timeout=5)
    transfer.init_weight_transfer()
    private = transfer.weights_dir
    assert private.parent == folder and private.name.startswith(WEIGHTS_PREFIX)
    _push(transfer)
    _push(transfer)
    assert (private / "model.safetensors").exists() and transfer.syncs == 2
    # a failed push: the server is resumed before the error propagates
    fake_server.fail_reload = True
    fake_server.calls.clear()
    transfer.pause()
    with pytest.raises(RuntimeError, match="collective_rpc returned 500"):
        transfer.send_weights(_weights())
    assert fake_server.calls == ["/pause", "/collective_rpc", "/resume"]
    # a dead server: the push fails naming the server, the resume attempt fails quietly
    transfer.pause()
    fake_server.shutdown()
    with pytest.raises(ServerUnavailableError):
        transfer.send_weights(_weights())
    transfer.destroy()  # what TRL calls on every exit
    assert precious.read_text() == "the user's file"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    fake_server.httpd = mock.Mock()  # already shut down


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this host")
def test_nothing_left_in_dev_shm_after_normal_or_failed_run(fake_server):
    shm = Path("/dev/shm")
    before = _ours(shm)
    for fail in (False, True):
        fake_server.fail_reload = fail
        transfer = SharedFileWeightTransfer(fake_server.url, timeout=5, ready_timeout=5)  # default: /dev/shm
        transfer.init_weight_transfer()
        assert transfer.weights_dir.parent == shm
        try:
            _push(transfer)
        except RuntimeError:
            assert fail
        finally:
            transfer.destroy()
        assert _ours(shm) == before


def test_free_space_is_checked_before_writing(fake_server, tmp_path):
    folder, _ = _user_folder(tmp_path)
    transfer = SharedFileWeightTransfer(fake_server.url, weights_dir=folder, timeout=5, ready_timeout=5)
    transfer.init_weight_transfer()
    tiny_shm = mock.Mock(free=2 << 20)  # a 2 MiB filesystem (Docker's /dev/shm is 64 MiB)
    fake_server.calls.clear()
    with mock.patch.object(async_weights.shutil, "disk_usage", return_value=tiny_shm):
        transfer.pause()
        with pytest.raises(OSError, match=r"needs 4 MiB .*weight_transfer_dir="):
            transfer.send_weights(iter([("big", torch.zeros(1 << 20))]))
    assert fake_server.calls == ["/pause", "/resume"]  # nothing reloaded, server not left paused
    assert list(transfer.weights_dir.iterdir()) == []
    transfer.destroy()


def test_folders_of_dead_trainers_are_swept_and_nothing_else(fake_server, tmp_path):
    root = tmp_path / "shm"
    root.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = root / f"{WEIGHTS_PREFIX}{dead.pid}-abc"
    gone.mkdir()
    (gone / "model.safetensors").write_bytes(b"x")
    mixed = root / f"{WEIGHTS_PREFIX}{dead.pid}-def"  # someone put their own file in it: kept
    mixed.mkdir()
    (mixed / "model.safetensors").write_bytes(b"x")
    (mixed / "mine.txt").write_text("keep")
    alive = root / f"{WEIGHTS_PREFIX}{os.getppid()}-ghi"  # a running trainer's
    alive.mkdir()
    (alive / "model.safetensors").write_bytes(b"x")
    other = root / "not-ours"
    other.mkdir()
    transfer = SharedFileWeightTransfer(fake_server.url, weights_dir=root, timeout=5, ready_timeout=5)
    transfer.init_weight_transfer()
    assert not gone.exists()
    assert sorted(p.name for p in mixed.iterdir()) == ["mine.txt"]
    assert (alive / "model.safetensors").exists() and other.exists()
    transfer.destroy()


_FAKE_SERVER_CMD = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers()\n"
    "    def log_message(self, *a): print('request', flush=True)\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


def _guarded_killpg(server: VLLMServer):
    """``os.killpg`` that fails the test when the group's leader has already been reaped (its pid, the
    group id, may then belong to an unrelated process)."""
    real = os.killpg

    def killpg(pgid, sig):
        assert server.process is not None and server.process.returncode is None, "killpg of a reaped leader's group"
        return real(pgid, sig)

    return mock.patch.object(async_weights.os, "killpg", side_effect=killpg)


@pytest.mark.parametrize("how", ["stop", "kill_then_stop", "dies_at_start"])
def test_server_helper_leaves_no_log_and_never_signals_a_reaped_group(how):
    port = free_port()
    server = VLLMServer("m", port=port)
    code = "import sys; sys.exit(3)" if how == "dies_at_start" else _FAKE_SERVER_CMD
    server.command = [sys.executable, "-c", code, str(port)]
    log = server.log_path
    assert log.exists()
    with _guarded_killpg(server):
        if how == "dies_at_start":
            with pytest.raises(ServerUnavailableError, match="exited with code 3"):
                server.start(timeout=30)
        else:
            server.start(timeout=30)
            assert server.is_alive()
            pid = server.process.pid
            if how == "kill_then_stop":
                server.kill()
                assert not server.is_alive()
            server.stop(grace=5)
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    assert server.process is None and not log.exists()
