"""A vLLM server for asynchronous training, and a weight transfer that needs no NCCL.

TRL's :class:`trl.experimental.async_grpo.AsyncGRPOTrainer` streams weights into a ``vllm serve``
process over NCCL. On machines without NCCL (CPU-only hosts, CI) this module provides:

* :class:`VLLMServer` - start ``python -m vllm.entrypoints.openai.api_server`` with the dev-mode
  endpoints (``VLLM_SERVER_DEV_MODE=1``), wait until ``/health`` answers, stop it cleanly (SIGTERM to
  its process group, SIGKILL after a grace period). A server that dies during start-up raises
  :class:`ServerUnavailableError` with the tail of its log instead of hanging.
* :class:`SharedFileWeightTransfer` - TRL's ``WeightTransferProtocol`` over a file: the trainer writes
  its parameters as one safetensors file (in a private folder it makes under ``/dev/shm`` when it
  exists, so no disk is touched, or under ``weight_transfer_dir``; only that folder is removed), then
  asks the server to reload them in place through the dev-mode ``POST /collective_rpc``
  (``reload_weights(weights_path=...)``, vLLM's in-place layer-wise reload). ``pause``/``resume``
  are TRL's ``/pause?mode=keep`` and ``/resume``; before resuming, ``/update_weight_version`` labels
  every token generated afterwards with the new policy version (vLLM reports the labels per token
  span on ``/inference/v1/generate``). Every HTTP call has a bounded timeout, and a server that does
  not answer raises :class:`ServerUnavailableError` naming the URL and what to do.

The server must run with ``--enforce-eager`` on CPU: the default CPU compile mode traces the model
once and may keep calling the pre-reload kernels (checked in :meth:`SharedFileWeightTransfer.init_weight_transfer`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import requests

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "ServerUnavailableError",
    "SharedFileWeightTransfer",
    "VLLMServer",
    "sweep_dead_weight_dirs",
    "free_port",
    "server_prompt_logprobs",
    "vllm_server_command",
]


class ServerUnavailableError(RuntimeError):
    """The vLLM server did not answer (dead, not started, or hung) within the stated time."""


def free_port() -> int:
    """A TCP port that is free on localhost right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def vllm_server_command(
    model: str,
    *,
    port: int,
    host: str = "127.0.0.1",
    max_model_len: int = 256,
    dtype: str = "float32",
    enforce_eager: bool = True,
    max_num_seqs: int | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The command line of a vLLM OpenAI server suitable for asynchronous training.

    ``--logprobs-mode processed_logprobs`` makes the sampled log-probs include the temperature, like
    TRL's trainer-side log-probs; ``--enable-scale-out`` opens ``/inference/v1/generate``, which
    returns the policy version of every generated token span.
    """
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", host,
        "--port", str(port), "--dtype", dtype, "--max-model-len", str(max_model_len),
        "--logprobs-mode", "processed_logprobs", "--enable-scale-out",
    ]
    if enforce_eager:
        cmd.append("--enforce-eager")
    if max_num_seqs is not None:
        cmd += ["--max-num-seqs", str(max_num_seqs)]
    return cmd + list(extra_args)


def _health(base_url: str, timeout: float = 2.0) -> bool:
    try:
        return requests.get(f"{base_url}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


class VLLMServer:
    """A ``vllm serve`` child process with a bounded start, a health check and a clean stop.

    Args:
        model: model id or directory (the same string the trainer receives: it is the served name).
        port: TCP port (a free one when None).
        log_path: file receiving the server's stdout and stderr (a temporary file when None).
        env: extra environment variables (``VLLM_SERVER_DEV_MODE=1`` is always set).
        **command_kwargs: forwarded to :func:`vllm_server_command`.

    Use as a context manager, or call :meth:`start` / :meth:`stop`.
    """

    def __init__(self, model: str, *, port: int | None = None, log_path: str | Path | None = None,
                 env: Mapping[str, str] | None = None, **command_kwargs) -> None:
        self.model = model
        self.port = port or free_port()
        self.host = command_kwargs.get("host", "127.0.0.1")
        self.command = vllm_server_command(model, port=self.port, **command_kwargs)
        self._owns_log = log_path is None  # a temporary log is removed by stop(); a named one is kept
        if log_path is None:
            fd, tmp = tempfile.mkstemp(prefix="vllm-server-", suffix=".log")
            os.close(fd)
            log_path = tmp
        self.log_path = Path(log_path)
        self.env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", **(env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def _exited(self) -> bool:
        """Has the server's leader process exited? Checked *without reaping it*: an exited, unreaped leader
        stays a zombie, so its pid - the process-group id :meth:`stop` signals - cannot be reused by an
        unrelated process group until :meth:`stop` reaps it."""
        if self.process is None or self.process.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped elsewhere
            return True
        return info is not None

    def _wait_exited(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self._exited():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _signal_group(self, sig: int) -> None:
        """Signal the server's process group, only while its leader is unreaped (see :meth:`_exited`)."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    def start(self, timeout: float = 300.0) -> VLLMServer:
        """Launch the server and wait until ``/health`` answers 200 (at most ``timeout`` seconds)."""
        if self.process is not None and not self._exited():
            return self
        if self.process is not None:  # an earlier process that exited (crash, kill): reap it and its group
            self.stop(remove_log=False)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it until it exits
        try:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        finally:
            log.close()
        self.wait_until_ready(timeout)
        return self

    def wait_until_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self._exited():
                tail = self.log_tail()
                code = self.process.poll()
                self.stop()
                raise ServerUnavailableError(
                    f"vLLM server exited with code {code} during start-up; log tail:\n{tail}")
            if _health(self.base_url, timeout=1.0):
                logger.info("vLLM server ready at %s", self.base_url)
                return
            time.sleep(0.5)
        tail = self.log_tail()
        self.stop()
        raise ServerUnavailableError(f"vLLM server at {self.base_url} not healthy after {timeout:.0f}s; log "
                                     f"tail:\n{tail}")

    def is_alive(self) -> bool:
        return self.process is not None and not self._exited() and _health(self.base_url)

    def kill(self) -> None:
        """SIGKILL the server's process group (simulates a crash); the leader is reaped by :meth:`stop`."""
        self._signal_group(signal.SIGKILL)
        self._wait_exited(30)

    def stop(self, grace: float = 30.0, remove_log: bool = True) -> None:
        """SIGTERM the server's process group; SIGKILL what is left after ``grace`` seconds; then reap the
        leader (the group is signalled only while the leader is unreaped, so its id cannot have been reused).
        A temporary log (``log_path=None``) is removed unless ``remove_log`` is False."""
        if self.process is not None:
            if not self._exited():
                self._signal_group(signal.SIGTERM)
                if not self._wait_exited(grace):
                    logger.warning("vLLM server did not stop within %.0fs; killing it", grace)
            # the engine core is in the same process group; make sure nothing of it survives
            self._signal_group(signal.SIGKILL)
            self._wait_exited(30)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)  # reap
            self.process = None
        if remove_log and self._owns_log:
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _post(base_url: str, path: str, *, timeout: float, json: dict | None = None) -> requests.Response:
    """POST with a bounded timeout; an unreachable or silent server raises :class:`ServerUnavailableError`."""
    try:
        response = requests.post(f"{base_url}{path}", json=json, timeout=(min(5.0, timeout), timeout))
    except (requests.ConnectionError, requests.Timeout) as e:
        raise ServerUnavailableError(
            f"vLLM server at {base_url} did not answer POST {path} within {timeout:.0f}s ({type(e).__name__}). "
            "Is it running? Restart it and resume training from the last checkpoint "
            "(trainer.train(resume_from_checkpoint=True))."
        ) from e
    if response.status_code != 200:
        raise RuntimeError(f"vLLM server at {base_url}: POST {path} returned {response.status_code}: "
                           f"{response.text[:500]}")
    return response


WEIGHTS_PREFIX = "adaclip-rl-weights-"
WEIGHTS_FILE = "model.safetensors"
_HEADER_SLACK = 1 << 20  # safetensors header (names, shapes, offsets): well under 1 MiB for any model


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_private_dir(folder: Path) -> None:
    """Remove the files this module writes in ``folder`` (a private ``adaclip-rl-weights-*`` folder), then
    the folder itself if nothing else is in it; anything else is left alone (and named in a warning)."""
    for name in (WEIGHTS_FILE, WEIGHTS_FILE + ".part"):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    try:
        folder.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        logger.warning("left %s in place: it holds files this trainer did not write (%s)", folder,
                       ", ".join(sorted(p.name for p in folder.iterdir())[:5]))


def sweep_dead_weight_dirs(root: str | Path) -> list[Path]:
    """Remove the private weight folders (``adaclip-rl-weights-<pid>-*``) that trainers which are no longer
    running left under ``root`` (a killed trainer never calls ``destroy``; ``/dev/shm`` is memory). Only
    those folders, and in them only the files this module writes, are touched. Returns the removed ones."""
    removed = []
    try:
        entries = list(Path(root).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(WEIGHTS_PREFIX) or not entry.is_dir() or entry.is_symlink():
            continue
        pid = entry.name[len(WEIGHTS_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            _remove_private_dir(entry)
            if not entry.exists():
                removed.append(entry)
    if removed:
        logger.info("removed %d weight folder(s) of trainers no longer running under %s", len(removed), root)
    return removed


class SharedFileWeightTransfer:
    """TRL ``WeightTransferProtocol`` through a safetensors file and vLLM's in-place reload.

    Files: the weights go to ``model.safetensors`` in a **private** folder this class creates
    (``tempfile.mkdtemp``, named ``adaclip-rl-weights-<pid>-*``) inside ``weights_dir``; :meth:`destroy`
    removes that file and that folder only, never ``weights_dir`` or anything else in it (a user may
    name ``/dev/shm`` itself or a checkpoint folder). Private folders of trainer processes that are no
    longer running are swept at :meth:`init_weight_transfer`. Before each write the free space of
    the target filesystem is checked (Docker's default ``/dev/shm`` is 64 MiB): a model that does
    not fit raises ``OSError`` naming ``weight_transfer_dir``. A push that fails resumes the server
    (it was paused for the push) before the error propagates.

    Args:
        base_url: the server's URL (``http://host:port``); the server must share a filesystem with the
            trainer (same host, or ``weights_dir`` on a shared mount).
        weights_dir: the folder in which the private folder is made; ``/dev/shm`` (else the temp
            dir) when None. The private folder stays fixed for the transfer's life: vLLM's reload points
            the model config at it.
        aliases: ``{name: source}`` tensors sent under a second name, e.g. a tied
            ``lm_head.weight`` that vLLM keeps as its own layer (without it the reload restores the
            old head: measured, log-prob error 1.06 instead of 5e-7 on a tied Qwen2).
        version_fn: returns the trainer's current policy version; the server labels tokens
            generated after the update with ``version_fn() + 1`` (TRL bumps the version after
            ``resume``). None: no labels.
        pause_mode: ``"keep"`` (TRL's default: in-flight requests are preempted and continue under
            the new weights; their tokens then carry two versions) or ``"wait"`` (drain them first:
            one version per request, the trainer waits).
        timeout: seconds for each HTTP call (the reload included).
    """

    def __init__(self, base_url: str, *, weights_dir: str | Path | None = None,
                 aliases: Mapping[str, str] | None = None, version_fn: Callable[[], int] | None = None,
                 pause_mode: str = "keep", timeout: float = 120.0, ready_timeout: float = 60.0) -> None:
        if pause_mode not in ("keep", "wait"):
            raise ValueError(f"pause_mode must be 'keep' or 'wait'; got {pause_mode!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0; got {timeout!r}")
        self.base_url = base_url.rstrip("/")
        self.user_dir = weights_dir is not None
        if weights_dir is None:
            weights_dir = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        self.root = Path(weights_dir)
        self._private: Path | None = None
        self.aliases = dict(aliases or {})
        self.version_fn = version_fn
        self.pause_mode = pause_mode
        self.timeout = timeout
        self.ready_timeout = ready_timeout
        self.bytes_sent = 0
        self.syncs = 0
        self._paused = False

    @property
    def weights_dir(self) -> Path:
        """The private folder holding ``model.safetensors`` (made on first use inside ``self.root``)."""
        if self._private is None:
            self.root.mkdir(parents=True, exist_ok=True)
            self._private = Path(tempfile.mkdtemp(prefix=f"{WEIGHTS_PREFIX}{os.getpid()}-", dir=self.root))
        return self._private

    def init_weight_transfer(self) -> None:
        """Wait for ``/health`` (bounded), refuse a server whose compiled graph would ignore a reload,
        sweep weight folders of dead trainers."""
        deadline = time.monotonic() + self.ready_timeout
        while not _health(self.base_url, timeout=1.0):
            if time.monotonic() > deadline:
                raise ServerUnavailableError(
                    f"vLLM server at {self.base_url} not healthy after {self.ready_timeout:.0f}s; start it first "
                    "(python -m adaclip_rl.rollout.async_weights --model ... or the README command)")
            time.sleep(0.5)
        try:
            info = requests.get(f"{self.base_url}/server_info", params={"config_format": "json"}, timeout=10).json()
            model_config = info["vllm_config"]["model_config"]
        except (requests.RequestException, ValueError, KeyError, TypeError):
            model_config = None  # not in dev mode, or another layout: reload errors will tell
        if model_config is not None and not model_config.get("enforce_eager", True):
            device = str(info["vllm_config"].get("device_config", {}).get("device", ""))
            if "cpu" in device:
                raise ValueError("the vLLM server runs on CPU without --enforce-eager: its traced graph may keep "
                                 "the pre-reload weights; restart it with --enforce-eager")
        sweep_dead_weight_dirs(self.root)
        _ = self.weights_dir

    def pause(self) -> None:
        _post(self.base_url, f"/pause?mode={self.pause_mode}", timeout=self.timeout)
        self._paused = True

    def _check_free_space(self, folder: Path, nbytes: int) -> None:
        """Refuse to write ``nbytes`` where the filesystem has less free (``/dev/shm`` in Docker: 64 MiB)."""
        free = shutil.disk_usage(folder).free
        if nbytes + _HEADER_SLACK > free:
            where = f"weight_transfer_dir={str(self.root)!r}" if self.user_dir else \
                f"weight_transfer_dir=None (default {str(self.root)!r})"
            raise OSError(
                f"the shared weights file needs {nbytes / 2**20:.0f} MiB but {folder} has {free / 2**20:.0f} MiB free "
                f"({where}): set weight_transfer_dir to a folder with room that the vLLM server can read, or "
                "enlarge /dev/shm (docker run --shm-size=...)")

    def send_weights(self, iterator: Iterator[tuple[str, torch.Tensor]]) -> None:
        """Write ``(name, tensor)`` pairs to ``model.safetensors`` (atomically) and reload them on the server.

        If anything fails after :meth:`pause`, the server is resumed before the error propagates (TRL
        calls ``resume`` only after a successful push; a paused server would hold every rank)."""
        try:
            self._send_weights(iterator)
        except BaseException:
            if self._paused:
                try:
                    self.resume()
                except Exception as err:  # the server may be the failure (dead): report the first error
                    logger.warning("could not resume the vLLM server after a failed weight push: %s", err)
            raise

    def _send_weights(self, iterator: Iterator[tuple[str, torch.Tensor]]) -> None:
        from safetensors.torch import save_file

        tensors = {name: t.detach().to("cpu").contiguous() for name, t in iterator}
        for name, source in self.aliases.items():
            if source in tensors and name not in tensors:
                tensors[name] = tensors[source]
        # safetensors refuses shared storage; an alias is written as its own copy
        seen: set[int] = set()
        for name, t in tensors.items():
            if t.untyped_storage().data_ptr() in seen:
                tensors[name] = t.clone()
            seen.add(tensors[name].untyped_storage().data_ptr())
        folder = self.weights_dir
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        self._check_free_space(folder, nbytes)
        part = folder / (WEIGHTS_FILE + ".part")
        try:
            save_file(tensors, str(part))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            raise
        os.replace(part, folder / WEIGHTS_FILE)
        self.bytes_sent += nbytes
        response = _post(self.base_url, "/collective_rpc", timeout=self.timeout, json={
            "method": "reload_weights", "kwargs": {"weights_path": str(folder)}, "timeout": self.timeout})
        results = response.json().get("results") if response.content else None
        if results and any(r is not None for r in results):
            raise RuntimeError(f"vLLM reload_weights returned {results!r}")
        if self.version_fn is not None:
            _post(self.base_url, "/update_weight_version", timeout=self.timeout,
                  json={"new_version": str(self.version_fn() + 1)})
        self.syncs += 1

    def resume(self) -> None:
        _post(self.base_url, "/resume", timeout=self.timeout)
        self._paused = False

    def destroy(self) -> None:
        """Remove the weights file and the private folder this transfer made; nothing else."""
        if self._private is not None:
            _remove_private_dir(self._private)
            self._private = None


def server_prompt_logprobs(base_url: str, model: str, token_ids: Sequence[int], timeout: float = 60.0) -> list[float]:
    """Log-probs the server assigns to ``token_ids[1:]`` given their prefixes (temperature 1).

    Uses ``prompt_logprobs`` of ``/v1/completions``: the served weights, with no sampling involved.
    """
    response = _post(base_url, "/v1/completions", timeout=timeout, json={
        "model": model, "prompt": list(token_ids), "max_tokens": 1, "prompt_logprobs": 0, "temperature": 1.0})
    entries = response.json()["choices"][0]["prompt_logprobs"][1:]
    return [float(e[str(t)]["logprob"]) for e, t in zip(entries, token_ids[1:], strict=True)]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m adaclip_rl.rollout.async_weights --model DIR``: start a server, wait until healthy,
    stop it cleanly on Ctrl-C / SIGTERM."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--no-enforce-eager", action="store_true", help="allow graph capture (GPU servers)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for /health")
    args, extra = p.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO)
    server = VLLMServer(args.model, port=args.port, host=args.host, max_model_len=args.max_model_len,
                        dtype=args.dtype, enforce_eager=not args.no_enforce_eager, extra_args=extra)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.start(timeout=args.timeout)
        print(f"vLLM server ready at {server.base_url} (log: {server.log_path})", flush=True)
        while server.process is not None and not server._exited():
            time.sleep(1.0)
        raise SystemExit(f"vLLM server exited with code {server.process.poll() if server.process else '?'}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
