"""A Milvus server started for the user: the store behind ``embedded:DIR`` URIs.

Why: Milvus Lite executes every search through a Python loop over all rows, so a query
takes ~100 ms at 100k items whatever the index; the C++ Milvus standalone server that
ships in the PyPI package ``milvus`` answers the same query in 4-5 ms (bench/README.md).
This module gives that server the convenience of a Lite file: name a folder, and the
first mmsearch process that needs it starts the server there; later ones attach to it.

Lifecycle:

- The server runs under a small supervisor process (``run_supervisor``), in its own
  session, so it outlives the command that started it and a Ctrl+C in that terminal does
  not kill it mid-write. A state file in DIR says where it listens and whether it is ready.
- Every process using the server leaves a *holder* file (its pid) in DIR while connected.
  The supervisor stops the server after ``idle_timeout`` seconds with no live holder and
  no request (``mmsearch server stop`` stops it at once; 0 = never stop when idle).
- Stopping flushes every collection, ends Milvus's etcd sessions (else the next start
  waits for them to expire), then sends SIGTERM (Milvus is configured to finish in 3 s,
  see ``SERVER_CONFIG``) and SIGKILL if it is still running. Flushed data survives.
- If Milvus dies, the supervisor starts it again on the same data behind the same address;
  clients wait (their connections are held) instead of seeing a half-loaded store.
- If DIR (or its state file) is deleted, the supervisor stops Milvus and exits.
- Starting is serialised by a file lock per folder; each folder has its own server.

Modules: this one is what clients call (start, attach, stop); ``state`` the files processes
share through DIR; ``supervisor`` the supervisor process, with ``server`` (Milvus's
configuration, process and the calls made to it), ``isolation`` (the network namespace)
and ``forwarder`` (the one way in). The supervisor runs as its own process from this
package alone (``_BOOT``), without the rest of mmsearch.

Security: Milvus 2.3 listens on every interface with ports it cannot bind to loopback, and
its authorization can be bypassed (a ``sourceid`` request header skips the password check,
its internal ports answer without any, its management port runs ``/expr`` code). So where
Linux allows it the supervisor and Milvus run in a private network namespace (nothing of
Milvus is reachable from outside), and the one way in is the supervisor's forwarder on
127.0.0.1, which refuses requests carrying ``sourceid``. The management port is never
started. Authorization is on, with a generated root password kept in DIR (mode 0600,
``client_token``). Without namespaces (``isolation: off``) the forwarder is still the
published address and etcd is on 127.0.0.1, but Milvus's gRPC ports stay reachable from
the network; a warning says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .state import (
    ISOLATION_ENV,
    PASSWORD_FILE,
    POLL_SECONDS,
    START_TIMEOUT,
    STATE_FILE,
    EmbeddedServerError,
    ServerInfo,
    add_holder,
    client_token,
    pid_alive,
    read_raw,
    read_state,
    remove_holder,
    status,
    supervisor_alive,
)

log = logging.getLogger(__name__)

__all__ = [
    "ISOLATION_ENV",
    "PASSWORD_FILE",
    "POLL_SECONDS",
    "SCHEME",
    "STATE_FILE",
    "EmbeddedServerError",
    "ServerInfo",
    "add_holder",
    "available",
    "base_dir_of",
    "client_token",
    "ensure_server",
    "pid_alive",
    "read_state",
    "remove_holder",
    "status",
    "stop_server",
]

SCHEME = "embedded:"


def base_dir_of(uri: str) -> Path:
    """The data folder of an ``embedded:DIR`` URI, absolute (``~`` expanded)."""
    raw = uri[len(SCHEME) :] if uri.startswith(SCHEME) else uri
    return Path(raw or ".").expanduser().resolve()


def available() -> bool:
    """Whether the ``milvus`` package (Linux x86_64 wheels only) is installed."""
    return importlib.util.find_spec("milvus") is not None


@contextlib.contextmanager
def _start_lock(base_dir: Path) -> Iterator[None]:
    base_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # new folders: owner only
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

    Returns the server and whether this call started it. Starting takes ~2-10 s; a server
    restarting after a crash is waited for. The Milvus binaries (246 MB unpacked) are
    unpacked once into ``bin_cache`` and shared by every data folder, instead of once per
    folder as the ``milvus`` package does.
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
        info = _attach(base_dir)  # someone may have started it while we waited
        if info is not None:
            return info, False
        _stop_older_version(base_dir)
        _refuse_if_used(base_dir)
        log.warning("starting the Milvus server in %s (takes ~2-10 s, once)", base_dir)
        proc = _launch_supervisor(base_dir, idle_timeout, bin_cache)
        info = _wait_ready(base_dir, proc)
    if info.isolation == "off":
        log.warning(
            "the Milvus server in %s runs without network isolation (%s=off, or no network "
            "namespaces here): its ports are reachable from other machines; see the README, "
            "Security",
            base_dir,
            ISOLATION_ENV,
        )
    return info, True


def _isolation_setting() -> str:
    value = os.environ.get(ISOLATION_ENV, "auto").strip().lower() or "auto"
    if value not in ("auto", "on", "off"):
        raise EmbeddedServerError(f"{ISOLATION_ENV} must be auto, on or off, not {value!r}")
    return value


#: Runs the supervisor from this package without importing the mmsearch package: importing
#: it starts threads (OpenMP), and a process with threads cannot enter a user namespace.
#: The package is loaded under a name of its own; its modules import each other relatively.
_BOOT = (
    "import importlib, importlib.util, os, sys\n"
    "init = sys.argv[1]\n"
    "spec = importlib.util.spec_from_file_location(\n"
    "    'mmsearch_embedded', init, submodule_search_locations=[os.path.dirname(init)])\n"
    "package = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = package\n"
    "spec.loader.exec_module(package)\n"
    "supervisor = importlib.import_module('mmsearch_embedded.supervisor')\n"
    "sys.exit(supervisor.main(sys.argv[2:]))\n"
)


def _launch_supervisor(
    base_dir: Path, idle_timeout: float, bin_cache: Path | None
) -> subprocess.Popen[bytes]:
    """Start the supervisor, handing it the listening socket clients will use.

    The socket is made here, in the caller's network namespace, on 127.0.0.1: a socket
    keeps the namespace it was made in, so the supervisor can serve it from inside its own.
    """
    isolation = _isolation_setting()
    logs = base_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    try:
        with open(logs / "supervisor.log", "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-P", "-c", _BOOT, str(Path(__file__).resolve())]
                + ["run", str(base_dir), "--listen-fd", str(listener.fileno())]
                + ["--idle-timeout", str(idle_timeout), "--isolation", isolation]
                + (["--bin-cache", str(bin_cache)] if bin_cache else []),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                close_fds=True,
                pass_fds=(listener.fileno(),),
            )
    finally:
        listener.close()


def _attach(base_dir: Path) -> ServerInfo | None:
    """The folder's server once ready, waiting while it (re)starts; None when there is
    none, or once the one stopping has gone."""
    deadline = time.monotonic() + START_TIMEOUT
    while (info := read_state(base_dir)) is not None:
        if info.state == "ready" and pid_alive(info.milvus_pid):
            return info
        if time.monotonic() > deadline:
            raise EmbeddedServerError(
                f"the Milvus server in {base_dir} (supervisor pid {info.supervisor_pid}) is "
                f"still {info.state} after {START_TIMEOUT:.0f} s; see {base_dir / 'logs'}"
            )
        time.sleep(0.1)
    return None


def _wait_ready(base_dir: Path, proc: subprocess.Popen[bytes]) -> ServerInfo:
    """Wait until the supervisor ``proc`` just started says its Milvus is ready."""
    logs = base_dir / "logs"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        info = status(base_dir)
        if info is not None and info.supervisor_pid == proc.pid:
            return info
        if proc.poll() is not None:
            reason = _last_error(logs / "supervisor.log")
            raise EmbeddedServerError(
                f"the Milvus server in {base_dir} did not start"
                + (f": {reason}" if reason else "")
                + f" (see {logs / 'supervisor.log'} and {logs}/milvus-stdout.log)"
            )
        time.sleep(0.1)
    proc.terminate()
    raise EmbeddedServerError(
        f"the Milvus server in {base_dir} did not answer within {START_TIMEOUT:.0f} s; see {logs}"
    )


def _last_error(path: Path) -> str:
    """The message of the supervisor's last ERROR line (why it stopped), or ""."""
    try:
        lines = path.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return ""
    for line in reversed(lines):
        if " ERROR " in line:
            return line.split(" ERROR ", 1)[1].strip()
    return ""


def _stop_older_version(base_dir: Path) -> None:
    """Stop a server started by an older mmsearch (a state file this one cannot read):
    two Milvus processes on one folder's data would corrupt it."""
    raw = read_raw(base_dir)
    if raw is None or read_state(base_dir) is not None:
        return
    pid = raw.get("supervisor_pid")
    if isinstance(pid, int) and supervisor_alive(pid):
        log.warning("stopping the server of an older mmsearch in %s (pid %d)", base_dir, pid)
        stop_server(base_dir)


def _refuse_if_used(base_dir: Path) -> None:
    """Fail at once, naming the process, if a Milvus still runs on this folder's data
    (left without its supervisor, e.g. by an older mmsearch that was killed)."""
    users = [pid for pid in _milvus_processes() if _cwd(pid) == base_dir]
    if users:
        raise EmbeddedServerError(
            f"cannot start a Milvus server in {base_dir}: Milvus process {users[0]} still "
            f"runs on this folder's data without a supervisor. Stop it (kill {users[0]}) "
            "and try again"
        )


def _milvus_processes() -> list[int]:
    """The pids of every ``milvus run`` process on the machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
                if cmd[0].endswith(b"/milvus") and b"run" in cmd[1:]:
                    found.append(int(entry.name))
    return found


def _cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def stop_server(base_dir: Path, *, timeout: float = 120.0) -> bool:
    """Stop the server for ``base_dir`` (flushing first); returns whether one was running."""
    base_dir = Path(base_dir).resolve()
    raw = read_raw(base_dir)
    if raw is None:
        return False
    pid = raw.get("supervisor_pid")
    if not isinstance(pid, int) or not supervisor_alive(pid):
        (base_dir / STATE_FILE).unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        raise EmbeddedServerError(f"the Milvus server in {base_dir} did not stop in {timeout} s")
    return True
