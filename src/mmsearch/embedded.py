"""A Milvus server started for the user: the store behind ``embedded:DIR`` URIs.

Why: Milvus Lite executes every search through a Python loop over all rows, so a query
takes ~100 ms at 100k items whatever the index; the C++ Milvus standalone server that
ships in the PyPI package ``milvus`` answers the same query in 4-5 ms (bench/README.md).
This module gives that server the convenience of a Lite file: name a folder, and the
first mmsearch process that needs it starts the server there; later ones attach to it.

Lifecycle:

- The server runs under a small supervisor process (``run_supervisor``),
  in its own session, so it outlives the command that started it and a Ctrl+C in that
  terminal does not kill it mid-write. A state file in DIR says where it listens.
- Every process using the server leaves a *holder* file (its pid) in DIR while connected.
  The supervisor stops the server after ``idle_timeout`` seconds with no live holder and
  no request (``mmsearch server stop`` stops it at once; 0 = never stop when idle).
- Stopping flushes every collection, then sends SIGTERM (Milvus is configured to finish in
  3 s, see ``SERVER_CONFIG``) and SIGKILL if it is still running. Flushed data survives.
- Starting is serialised by a file lock, so two commands started together share one server.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SCHEME = "embedded:"
STATE_FILE = "mmsearch-server.json"
HOLDERS_DIR = "holders"
START_TIMEOUT = 180.0
#: The embedded etcd inside Milvus 2.3 always listens on this peer port (it is not in the
#: package's config template), so one machine runs one embedded server at a time.
ETCD_PEER_PORT = 2380
#: Milvus settings for a one-user server. By default Milvus 2.3 spends up to 30 min in its
#: graceful stop (SIGTERM did not finish in 20 s, measured), and after a kill the next start
#: waits for the old etcd session to expire: 46 s until the first query. With these, SIGTERM
#: exits in 3 s and the restart answers after the usual ~10 s start (measured; data intact).
SERVER_CONFIG = {"common.gracefulStopTimeout": 3, "common.session.ttl": 15}
#: How long Milvus gets to exit after SIGTERM before it is killed (it has flushed by then).
TERM_GRACE = 15.0
POLL_SECONDS = 5.0


class EmbeddedServerError(RuntimeError):
    """The embedded server cannot be started or reached; the message says why."""


@dataclass(frozen=True)
class ServerInfo:
    """Where a running embedded server listens (the content of the state file)."""

    base_dir: str
    supervisor_pid: int
    milvus_pid: int
    port: int
    http_port: int
    started_at: float

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def base_dir_of(uri: str) -> Path:
    """The data folder of an ``embedded:DIR`` URI, absolute (``~`` expanded)."""
    raw = uri[len(SCHEME) :] if uri.startswith(SCHEME) else uri
    return Path(raw or ".").expanduser().resolve()


def available() -> bool:
    """Whether the ``milvus`` package (Linux x86_64 wheels only) is installed."""
    return importlib.util.find_spec("milvus") is not None


def _pid_alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):  # reap it if it is our exited child
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _port_free(port: int) -> bool:
    """Whether nothing listens on ``port`` (connections in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _healthy(http_port: int, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=timeout) as r:
            return b"OK" in r.read()
    except (OSError, urllib.error.URLError):
        return False


def status(base_dir: Path) -> ServerInfo | None:
    """The running server for ``base_dir``, or None (a stale state file is ignored)."""
    try:
        info = ServerInfo(**json.loads((base_dir / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not (_pid_alive(info.supervisor_pid) and _pid_alive(info.milvus_pid)):
        return None
    return info if _healthy(info.http_port) else None


@contextlib.contextmanager
def _start_lock(base_dir: Path) -> Iterator[None]:
    base_dir.mkdir(parents=True, exist_ok=True)
    with open(base_dir / ".start.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_server(
    base_dir: Path, *, idle_timeout: float = 1800.0, bin_cache: Path | None = None
) -> tuple[ServerInfo, bool]:
    """Attach to the server for ``base_dir``, starting it if none runs.

    Returns the server and whether this call started it. Starting takes ~10 s. The Milvus
    binaries (246 MB unpacked) are unpacked once into ``bin_cache`` and shared by every
    data folder, instead of once per folder as the ``milvus`` package does.
    """
    base_dir = Path(base_dir).resolve()
    info = status(base_dir)
    if info is not None:
        return info, False
    if not available():
        raise EmbeddedServerError(
            "embedded: URIs need the 'milvus' package (Milvus 2.3 standalone, wheels for "
            "Linux x86_64 only): pip install 'milvus==2.3.5'. Elsewhere use a Milvus Lite "
            "file (a path ending in .db) or a Milvus server URI (http://host:19530)"
        )
    with _start_lock(base_dir):
        info = status(base_dir)  # someone else may have started it while we waited
        if info is not None:
            return info, False
        if not _port_free(ETCD_PEER_PORT):
            # Milvus would hang until the start timeout; say why at once instead.
            raise EmbeddedServerError(
                f"cannot start a Milvus server in {base_dir}: port {ETCD_PEER_PORT} is in use, "
                "most likely by the embedded server of another data folder (Milvus 2.3's "
                "embedded etcd always uses that port, so one machine runs one embedded "
                "server). Use that folder, stop its server (`mmsearch --uri embedded:DIR "
                "server stop`), or use a Milvus Lite file or a server URI"
            )
        log.warning("starting the Milvus server in %s (takes ~10 s, once)", base_dir)
        logs = base_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / "supervisor.log", "ab") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "import sys; from mmsearch.embedded import main; sys.exit(main())",
                    "run",
                    str(base_dir),
                    "--idle-timeout",
                    str(idle_timeout),
                    *(["--bin-cache", str(bin_cache)] if bin_cache else []),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                close_fds=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            info = status(base_dir)
            if info is not None and info.supervisor_pid == proc.pid:
                return info, True
            if proc.poll() is not None:
                raise EmbeddedServerError(
                    f"the Milvus server in {base_dir} did not start (exit {proc.returncode}); "
                    f"see {logs / 'supervisor.log'} and {logs}/milvus-stderr.log"
                )
            time.sleep(0.2)
        proc.terminate()
        raise EmbeddedServerError(
            f"the Milvus server in {base_dir} did not answer within {START_TIMEOUT:.0f} s; "
            f"see {logs}"
        )


def stop_server(base_dir: Path, *, timeout: float = 120.0) -> bool:
    """Stop the server for ``base_dir`` (flushing first); returns whether one was running."""
    base_dir = Path(base_dir).resolve()
    try:
        info = ServerInfo(**json.loads((base_dir / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return False
    if not _pid_alive(info.supervisor_pid):
        (base_dir / STATE_FILE).unlink(missing_ok=True)
        return False
    os.kill(info.supervisor_pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(info.supervisor_pid):
        time.sleep(0.2)
    if _pid_alive(info.supervisor_pid):
        raise EmbeddedServerError(f"the Milvus server in {base_dir} did not stop in {timeout} s")
    return True


# -- holders: who is using the server ------------------------------------------------------


def add_holder(base_dir: Path) -> Path:
    """Mark this process as using the server, so that it is not stopped as idle."""
    holders = Path(base_dir) / HOLDERS_DIR
    holders.mkdir(parents=True, exist_ok=True)
    path = holders / str(os.getpid())
    path.touch()
    return path


def remove_holder(path: Path) -> None:
    path.unlink(missing_ok=True)


def _live_holders(base_dir: Path) -> int:
    live = 0
    for path in (base_dir / HOLDERS_DIR).glob("*"):
        try:
            pid = int(path.name)
        except ValueError:
            continue
        if _pid_alive(pid):
            live += 1
        else:
            path.unlink(missing_ok=True)
    return live


# -- the supervisor ------------------------------------------------------------------------


def _request_count(http_port: int) -> float | None:
    """Total client requests the proxy has served (Prometheus counter), to detect idleness."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
            text = r.read().decode("utf-8", "replace")
    except (OSError, urllib.error.URLError):
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("milvus_proxy_req_count{") and 'status="total"' in line:
            with contextlib.suppress(ValueError):
                total += float(line.rsplit(" ", 1)[1])
    return total


def _flush_all(port: int) -> None:
    """Seal and persist every collection, so that nothing depends on replaying the log."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=f"http://127.0.0.1:{port}", timeout=60)
    try:
        for name in client.list_collections():
            client.flush(name)
    finally:
        client.close()


def _share_binaries(base_dir: Path, bin_cache: Path) -> None:
    """Point ``base_dir/bin`` at binaries unpacked once in ``bin_cache`` (under a lock, as
    servers for several folders may start at once)."""
    import milvus

    if (base_dir / "bin").exists() or (base_dir / "bin").is_symlink():
        return  # unpacked here before, or already linked
    shared = bin_cache / f"milvus-{getattr(milvus, '__version__', 'unknown')}"
    shared.mkdir(parents=True, exist_ok=True)
    with open(shared / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        milvus._initialize_data_files(str(shared))  # unpacks into shared/bin; skips if done
    base_dir.mkdir(parents=True, exist_ok=True)
    (base_dir / "bin").symlink_to(shared / "bin", target_is_directory=True)


def _bind_reusing(self: object, port: int) -> socket.socket | None:
    """``MilvusServerConfig.try_bind_port`` with SO_REUSEADDR.

    The package probes each of Milvus's ports by binding it. Right after a restart the old
    ports still have connections in TIME_WAIT, so the probe failed and every component moved
    to other ports, while etcd still advertised the old addresses: the restarted server took
    36 s instead of 3 s to answer (measured). Milvus itself binds with SO_REUSEADDR.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None


def run_supervisor(base_dir: Path, idle_timeout: float, bin_cache: Path | None = None) -> int:
    """Start Milvus in ``base_dir``, publish where it listens, stop it when told or idle."""
    from milvus import MilvusServer, MilvusServerConfig

    MilvusServerConfig.try_bind_port = _bind_reusing  # type: ignore[method-assign]

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stopping = False

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    if bin_cache is not None:
        _share_binaries(base_dir, bin_cache)
    server = MilvusServer()
    server.set_base_dir(str(base_dir))
    for key, value in SERVER_CONFIG.items():
        server.config.set(key, value)
    server.start()  # waits for /healthz
    proc = server.server_proc
    info = ServerInfo(
        base_dir=str(base_dir),
        supervisor_pid=os.getpid(),
        milvus_pid=proc.pid,
        port=server.listen_port,
        http_port=server.webservice_port,
        started_at=time.time(),
    )
    state = base_dir / STATE_FILE
    tmp = state.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(info)))
    tmp.replace(state)
    log.info("milvus pid %d listening on %s", proc.pid, info.uri)

    last_count, last_active = _request_count(info.http_port), time.monotonic()
    exit_code = 0
    while not stopping:
        time.sleep(POLL_SECONDS)
        if proc.poll() is not None:
            log.error("milvus exited with %s; see %s/logs", proc.returncode, base_dir)
            exit_code = 1
            break
        count = _request_count(info.http_port)
        if _live_holders(base_dir) or count != last_count:
            last_count, last_active = count, time.monotonic()
        elif idle_timeout > 0 and time.monotonic() - last_active > idle_timeout:
            log.info("idle for %.0f s, stopping", idle_timeout)
            break

    with contextlib.suppress(OSError):
        if state.exists() and json.loads(state.read_text()).get("supervisor_pid") == os.getpid():
            state.unlink()
    if proc.poll() is None:
        try:
            _flush_all(info.port)
        except Exception as exc:  # a failed flush must not keep the server running
            log.warning("flush before stopping failed: %s", exc)
        proc.terminate()
        try:
            proc.wait(TERM_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
    server.server_proc = None  # already stopped; keep MilvusServer.__del__ from retrying
    log.info("stopped")
    return exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmsearch.embedded")
    parser.add_argument("command", choices=["run"])
    parser.add_argument("base_dir", type=Path)
    parser.add_argument("--idle-timeout", type=float, default=1800.0)
    parser.add_argument("--bin-cache", type=Path, default=None)
    args = parser.parse_args(argv)
    return run_supervisor(args.base_dir.resolve(), args.idle_timeout, args.bin_cache)


if __name__ == "__main__":
    sys.exit(main())
