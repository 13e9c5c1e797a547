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
- Stopping flushes every collection, then sends SIGTERM (Milvus is configured to finish in
  3 s, see ``SERVER_CONFIG``) and SIGKILL if it is still running. Flushed data survives.
- If Milvus dies, the supervisor starts it again on the same data behind the same address;
  clients wait (their connections are held) instead of seeing a half-loaded store.
- If DIR (or its state file) is deleted, the supervisor stops Milvus and exits.
- Starting is serialised by a file lock per folder; each folder has its own server.

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

import argparse
import asyncio
import base64
import contextlib
import ctypes
import fcntl
import importlib.util
import json
import logging
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEME = "embedded:"
STATE_FILE = "mmsearch-server.json"
#: The root password of the folder's Milvus (mode 0600); ``client_token`` reads it.
PASSWORD_FILE = "mmsearch-root-password"
HOLDERS_DIR = "holders"
#: Left by a stop that flushed everything: the next start needs no log replay.
FLUSHED_MARK = "mmsearch-flushed"
START_TIMEOUT = 180.0
#: ``auto`` (default): a private network namespace where the OS allows one, else ``off``;
#: ``on``: refuse to start without one; ``off``: never (tests cover that mode with it).
ISOLATION_ENV = "MMSEARCH_EMBEDDED_ISOLATION"
#: Milvus settings for a one-user server. By default Milvus 2.3 spends up to 30 min in its
#: graceful stop (SIGTERM did not finish in 20 s, measured). And every start, even after a
#: clean stop, finds the previous process's etcd sessions, which outlive it by their TTL:
#: until they expire, health checks fail, Strong reads wait and flushes fail ("node not
#: match"). Fully usable after a stop / after kill -9 (measured): TTL 15 s: 25-28 s;
#: 10 s: 14 / 15.5 s; 5 s: 8.6 / 11.5 s, the old sessions being gone about when Milvus
#: answers. The cost: a Milvus stalled for 5 s loses its session and exits, and the
#: supervisor restarts it. The REST API is off (mmsearch speaks gRPC), and every component
#: registers 127.0.0.1.
SERVER_CONFIG: dict[str, Any] = {
    "common.gracefulStopTimeout": 3,
    "common.session.ttl": 5,
    "proxy.http.enabled": "false",
    **{
        f"{part}.ip": "127.0.0.1"
        for part in ("rootCoord", "proxy", "queryCoord", "queryNode")
        + ("indexNode", "dataCoord", "dataNode")
    },
}
#: Milvus's management HTTP server (healthz, metrics, pprof and ``/expr``, which runs code
#: for anyone who sends the etcd root path "by-dev") listens on every interface at
#: METRICS_PORT; a port number the kernel refuses keeps it from starting (Milvus only logs).
DISABLED_PORT = "99999"
DEFAULT_ROOT_PASSWORD = "Milvus"  # what Milvus gives root in a new (or pre-auth) folder
#: How long Milvus gets to exit after SIGTERM before it is killed (it has flushed by then).
TERM_GRACE = 15.0
POLL_SECONDS = 5.0  # idle checks
TICK = 0.5  # checks for a dead Milvus, a deleted folder, a stop request
#: More restarts than this within RESTART_WINDOW seconds: give up (something is broken).
MAX_RESTARTS = 5
RESTART_WINDOW = 600.0


class EmbeddedServerError(RuntimeError):
    """The embedded server cannot be started or reached; the message says why."""


@dataclass(frozen=True)
class ServerInfo:
    """Where a running embedded server listens (the content of the state file)."""

    base_dir: str
    supervisor_pid: int
    milvus_pid: int
    #: The forwarder on 127.0.0.1: the one address clients use, kept across Milvus restarts.
    port: int
    #: "starting" (Milvus starting or restarting; connections wait), "ready", or
    #: "stopping" (flushing; a new start waits until it is gone).
    state: str
    #: "netns" or "userns" (a private network namespace, user namespace too), or "off".
    isolation: str
    started_at: float
    restarts: int = 0

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
    """Whether ``pid`` runs; a zombie (dead, not yet reaped by its parent) does not."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError):  # reap it if it is our exited child
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] not in (["Z"], ["X"])


def _read_raw(base_dir: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads((base_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def _supervisor_alive(pid: object) -> bool:
    """Whether ``pid`` is a live supervisor (a pid in a stale state file may belong to
    another process by now: never signal that one)."""
    if not isinstance(pid, int) or not _pid_alive(pid):
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return b"run" in args and any(b"embedded" in arg for arg in args)


def read_state(base_dir: Path) -> ServerInfo | None:
    """The folder's server while its supervisor runs, whatever its state; else None."""
    base_dir = Path(base_dir).resolve()
    raw = _read_raw(base_dir)
    try:
        info = ServerInfo(**raw) if raw is not None else None
    except TypeError:  # a state file of an older version
        return None
    return info if info and _supervisor_alive(info.supervisor_pid) else None


def status(base_dir: Path) -> ServerInfo | None:
    """The folder's server when it answers: ready, Milvus running. None while it starts
    or restarts after a crash (``read_state`` tells those apart from stopped)."""
    info = read_state(base_dir)
    if info is None or info.state != "ready" or not _pid_alive(info.milvus_pid):
        return None
    return info


def client_token(base_dir: Path) -> str:
    """The ``user:password`` token for the server in ``base_dir``.

    Authorization is on and the supervisor gives root a generated password, kept in
    ``DIR/mmsearch-root-password`` (0600), readable only by the user who owns the data.
    """
    path = Path(base_dir).resolve() / PASSWORD_FILE
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        raise EmbeddedServerError(
            f"the Milvus root password file {path} is missing; the server in "
            f"{path.parent} refuses clients without it. Restore it from a backup (or stop "
            "the server and start it again if the data folder is new)"
        ) from None
    if not password:
        raise EmbeddedServerError(f"the Milvus root password file {path} is empty")
    return f"root:{password}"


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


#: Runs the supervisor from this file without importing the mmsearch package: importing it
#: starts threads (OpenMP), and a process with threads cannot enter a user namespace.
_BOOT = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('mmsearch_embedded_run', sys.argv[1])\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = module\n"
    "spec.loader.exec_module(module)\n"
    "sys.exit(module.main(sys.argv[2:]))\n"
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
        if info.state == "ready" and _pid_alive(info.milvus_pid):
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
    raw = _read_raw(base_dir)
    if raw is None or read_state(base_dir) is not None:
        return
    pid = raw.get("supervisor_pid")
    if isinstance(pid, int) and _supervisor_alive(pid):
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
    raw = _read_raw(base_dir)
    if raw is None:
        return False
    pid = raw.get("supervisor_pid")
    if not isinstance(pid, int) or not _supervisor_alive(pid):
        (base_dir / STATE_FILE).unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.1)
    if _pid_alive(pid):
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


# -- network isolation ---------------------------------------------------------------------

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def _isolate(mode: str, base_dir: Path) -> str:
    """Move this process into a private network namespace; returns how ("netns": root
    could; "userns": in a user namespace of its own, as an unprivileged user may) or "off".

    Each way is tried in a forked child first: a half-made user namespace cannot be left.
    Must run before any thread starts (a process with threads cannot enter a user
    namespace), so the supervisor does it first thing.
    """
    if mode == "off":
        return "off"
    ways = [("netns", CLONE_NEWNET)] if os.geteuid() == 0 else []
    ways.append(("userns", CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS))
    for name, flags in ways:
        if _works_in_child(flags, base_dir):
            _enter_namespace(flags, base_dir)
            return name
    if mode == "on":
        raise SystemExit(
            f"{ISOLATION_ENV}=on, but this system does not allow a private network namespace"
        )
    return "off"


def _works_in_child(flags: int, base_dir: Path) -> bool:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only reports success
        code = 1
        try:
            _enter_namespace(flags, base_dir)
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def _enter_namespace(flags: int, base_dir: Path) -> None:
    uid, gid = os.geteuid(), os.getegid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        _libc_error("unshare")
    if flags & CLONE_NEWUSER:  # be root inside, mapped to ourselves outside
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
        _private_runtime_dir(libc, base_dir / "run")
    # A new namespace has only a loopback interface, down; `ip` may not be installed.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags_now = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags_now | IFF_UP))


def _private_runtime_dir(libc: ctypes.CDLL, run_dir: Path) -> None:
    """Give Milvus ``run_dir`` as its runtime directory, in this mount namespace only.

    Milvus 2.3 writes its runtime files to /run/milvus, else /tmp/milvus, and exits when it
    can write to neither: a user who is not root cannot create /run/milvus, and /tmp/milvus
    belongs to whoever ran Milvus first on the machine (measured: exit 255).
    """
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        _libc_error("mount --make-rprivate /")
    run_dir.mkdir(parents=True, exist_ok=True)
    target = Path("/tmp/milvus")
    with contextlib.suppress(FileExistsError):
        target.mkdir(mode=0o700)
    if libc.mount(os.fsencode(run_dir), b"/tmp/milvus", None, MS_BIND, None) != 0:
        _libc_error("mount --bind")


def _libc_error(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


# -- the forwarder: the one way in ---------------------------------------------------------


class _Refused(Exception):
    """A client sent something the forwarder does not pass to Milvus."""


class _H2Guard:
    """Reads the client-to-Milvus half of one HTTP/2 (gRPC) connection frame by frame and
    decodes every header block, to refuse the ``sourceid`` header.

    Why: Milvus 2.3's proxy skips the password check for requests carrying ``sourceid``
    (meant for its own components) and takes the user from ``authorization`` unchecked:
    with it anyone is root whatever the password (tried on 2.3.5). Header names are HPACK
    compressed (and may refer to earlier requests), so every block is decoded in order with
    the state Milvus's decoder has. A block is passed on only once it is whole and clean.
    """

    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    #: An empty SETTINGS frame: what a server sends first. The forwarder sends it itself to
    #: a client that has to wait for Milvus, so that gRPC does not give up on the connection
    #: (it waits 20 s for the server's first SETTINGS; a restart after a crash takes ~25 s).
    EARLY_SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
    HEADERS, SETTINGS, CONTINUATION = 1, 4, 9
    ACK = 0x1
    #: The frame types a client may send (RFC 9113); anything else closes the connection.
    CLIENT_TYPES = frozenset({0, 1, 2, 3, 4, 6, 7, 8, 9})
    END_HEADERS, PADDED, PRIORITY = 0x4, 0x8, 0x20
    MAX_FRAME = 1 << 24
    MAX_BLOCK = 1 << 20

    def __init__(self) -> None:
        from hpack import Decoder

        self._decoder = Decoder(max_header_list_size=self.MAX_BLOCK)
        # Milvus refuses table sizes above its own limit; accepting more here is harmless.
        self._decoder.max_allowed_table_size = 1 << 16
        self._buf = bytearray()
        self._preface = False
        self._held = bytearray()  # the frames of a header block still incomplete
        self._block = bytearray()
        self._block_stream = 0
        self.requests = 0
        #: The client's acknowledgement of EARLY_SETTINGS is for the forwarder, not Milvus.
        self.own_acks = 0

    def feed(self, data: bytes) -> bytes:
        """The bytes that may go to Milvus now (whole frames); raises ``_Refused``."""
        buf = self._buf
        buf += data
        out = bytearray()
        pos = 0
        if not self._preface:
            if len(buf) < len(self.PREFACE):
                if not self.PREFACE.startswith(bytes(buf)):
                    raise _Refused("not an HTTP/2 (gRPC) connection")
                return b""
            if buf[: len(self.PREFACE)] != self.PREFACE:
                raise _Refused("not an HTTP/2 (gRPC) connection")
            out += self.PREFACE
            pos = len(self.PREFACE)
            self._preface = True
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            end = pos + 9 + length
            if length > self.MAX_FRAME:
                raise _Refused("frame too large")
            if len(buf) < end:
                break
            self._frame(memoryview(buf)[pos:end], out)
            pos = end
        del buf[:pos]
        return bytes(out)

    def _frame(self, frame: memoryview, out: bytearray) -> None:
        kind, flags = frame[3], frame[4]
        stream = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
        if self._block_stream:  # inside a header block: only its CONTINUATION frames
            if kind != self.CONTINUATION or stream != self._block_stream:
                raise _Refused("header block interrupted")
            self._add_fragment(frame, bytes(frame[9:]), flags, out)
        elif kind not in self.CLIENT_TYPES or kind == self.CONTINUATION:
            raise _Refused(f"unexpected frame type {kind}")
        elif kind == self.HEADERS:
            self.requests += 1
            self._add_fragment(frame, self._fragment(bytes(frame[9:]), flags), flags, out)
        elif kind == self.SETTINGS and flags & self.ACK and self.own_acks:
            self.own_acks -= 1
        else:
            out += frame

    def _fragment(self, payload: bytes, flags: int) -> bytes:
        """The header block fragment of a HEADERS frame (without padding and priority)."""
        if flags & self.PADDED:
            if not payload or payload[0] >= len(payload):
                raise _Refused("bad padding")
            payload = payload[1 : len(payload) - payload[0]]
        if flags & self.PRIORITY:
            if len(payload) < 5:
                raise _Refused("bad priority")
            payload = payload[5:]
        return payload

    def _add_fragment(self, frame: memoryview, fragment: bytes, flags: int, out: bytearray) -> None:
        self._held += frame
        self._block += fragment
        self._block_stream = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF or -1
        if len(self._block) > self.MAX_BLOCK:
            raise _Refused("header block too large")
        if not flags & self.END_HEADERS:
            return
        self._check_headers(bytes(self._block))
        out += self._held
        self._held.clear()
        self._block.clear()
        self._block_stream = 0

    def _check_headers(self, block: bytes) -> None:
        from hpack import HPACKError

        try:
            headers = self._decoder.decode(block, raw=True)
        except HPACKError as exc:
            raise _Refused(f"bad header block: {exc}") from None
        for name, _ in headers:
            if bytes(name).lower().startswith(b"sourceid"):
                raise _Refused("a request carried the sourceid header (Milvus's auth bypass)")


class _Forwarder:
    """Serves the listening socket that the launcher made on 127.0.0.1: pipes each client
    connection to Milvus, through ``_H2Guard``, in an asyncio loop on its own thread.

    New connections wait while Milvus is not ready (starting, restarting after a crash),
    so clients see it come back with its data instead of errors or a half-loaded store.
    """

    def __init__(self, listener: socket.socket) -> None:
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._loop = asyncio.new_event_loop()
        self._ready = asyncio.Event()
        self._upstream = 0
        self._stop: asyncio.Future[None] | None = None
        self._conns: set[_Client] = set()
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)
        self.requests = 0  # requests passed on so far: the idle check's measure of use

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def set_ready(self, upstream_port: int | None) -> None:
        """Send new connections to Milvus at ``upstream_port``; None: hold them."""
        self._loop.call_soon_threadsafe(self._set_ready, upstream_port)

    def _set_ready(self, upstream_port: int | None) -> None:
        if upstream_port is None:
            self._ready.clear()
        else:
            self._upstream = upstream_port
            self._ready.set()

    def stop(self) -> None:
        """Close the listening socket and every connection."""
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop may have just finished
                self._loop.call_soon_threadsafe(self._finish)
            self._thread.join(10)
        self._listener.close()

    def _finish(self) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except Exception:
            log.exception("the forwarder failed")
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        server = await self._loop.create_server(
            lambda: _Client(self), sock=self._listener, backlog=128
        )
        try:
            await self._stop
        finally:
            server.close()
            for conn in list(self._conns):
                conn.close()
            await asyncio.sleep(0)

    async def connect(self, client: _Client) -> asyncio.Transport | None:
        """A connection to Milvus for ``client``, once Milvus is ready (None: give up)."""
        deadline = self._loop.time() + START_TIMEOUT
        while self._loop.time() < deadline:
            try:
                if not self._ready.is_set():
                    client.waiting()
                await asyncio.wait_for(self._ready.wait(), deadline - self._loop.time())
                transport, _ = await self._loop.create_connection(
                    lambda: _Upstream(client), "127.0.0.1", self._upstream
                )
                return transport  # type: ignore[return-value]
            except TimeoutError:  # (a subclass of OSError)
                break
            except OSError:  # Milvus just died; the supervisor will notice and restart it
                client.waiting()
                await asyncio.sleep(0.2)
        return None


class _Client(asyncio.Protocol):
    """One client connection: checked and passed on to Milvus, answers passed back."""

    def __init__(self, forwarder: _Forwarder) -> None:
        self.forwarder = forwarder
        self.guard = _H2Guard()
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self._pending = bytearray()
        self._closed = False
        self._greeted = False
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.forwarder._conns.add(self)
        self._task = asyncio.get_running_loop().create_task(self._connect())

    def waiting(self) -> None:
        """The client has to wait for Milvus: greet it (once) so that it waits too."""
        if not self._greeted and self.transport is not None:
            self._greeted = True
            self.transport.write(self.guard.EARLY_SETTINGS)
            self.guard.own_acks += 1

    async def _connect(self) -> None:
        upstream = await self.forwarder.connect(self)
        if upstream is None or self._closed:
            if upstream is not None:
                upstream.close()
            self.close()
            return
        self.upstream = upstream
        if self._pending:
            upstream.write(bytes(self._pending))
            self._pending.clear()
        if self.transport is not None and not self.transport.is_reading():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        seen = self.guard.requests
        try:
            out = self.guard.feed(data)
        except _Refused as exc:
            log.warning("closed a client connection: %s", exc)
            self.close()
            return
        self.forwarder.requests += self.guard.requests - seen
        if not out:
            return
        if self.upstream is not None:
            self.upstream.write(out)
            return
        self._pending += out
        if len(self._pending) > 1 << 20 and self.transport is not None:
            self.transport.pause_reading()  # until Milvus is there to take it

    def pause_writing(self) -> None:  # the client reads slower than Milvus answers
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self.forwarder._conns.discard(self)
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()  # still waiting for Milvus
        for transport in (self.transport, self.upstream):
            if transport is not None:
                transport.close()


class _Upstream(asyncio.Protocol):
    """The connection to Milvus of one ``_Client``: answers go back unchanged."""

    def __init__(self, client: _Client) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        if self.client.transport is not None:
            self.client.transport.write(data)

    def pause_writing(self) -> None:  # Milvus reads slower than the client sends
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()  # Milvus stopped or died: the client reconnects and waits


# -- Milvus ---------------------------------------------------------------------------------

#: Runs Milvus so that the kernel kills it when the supervisor dies (PR_SET_PDEATHSIG): a
#: Milvus left behind would keep the folder's data open, and a second one on the same data
#: would corrupt it. Its libraries come with it (LD_LIBRARY_PATH for Milvus only).
_EXEC_MILVUS = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "env = dict(os.environ)\n"
    "env['LD_LIBRARY_PATH'] = ':'.join(filter(None, [sys.argv[2], env.get('LD_LIBRARY_PATH')]))\n"
    "os.execve(sys.argv[3], sys.argv[3:], env)\n"
)


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


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _write_config(base_dir: Path, isolation: str) -> int:
    """Write ``configs/milvus.yaml`` for this start; returns the port of Milvus's proxy.

    In a private namespace Milvus keeps its default ports. Without one the package picks
    free ports, and the embedded etcd, whose ports are not in the package's template, gets
    an etcd config file of its own: 127.0.0.1 and free ports instead of the fixed 2379/2380
    that let one machine run one server.
    """
    from milvus import MilvusServerConfig

    MilvusServerConfig.try_bind_port = _bind_reusing  # type: ignore[method-assign]
    config = MilvusServerConfig()
    config.configs["data_dir"] = str(base_dir)
    config.resolve_storage()
    for key, value in SERVER_CONFIG.items():
        config.set(key, value)
    config.set("authorization_enabled", True)
    etcd_config = None
    if isolation == "off":
        client, peer = _free_ports(2)
        config.configs["etcd_port"] = client
        config.set("etcd.endpoints", f"127.0.0.1:{client}")
        etcd_config = _write_etcd_config(base_dir, client, peer)
    config.resolve()
    if etcd_config is not None:
        path = base_dir / "configs" / "milvus.yaml"
        text = path.read_text()
        patched = text.replace("\netcd:\n", f"\netcd:\n  config:\n    path: {etcd_config}\n", 1)
        if patched == text:
            raise _Fatal(f"cannot set etcd.config.path in {path}")
        path.write_text(patched)
    return int(config.get("proxy_port"))


def _write_etcd_config(base_dir: Path, client: int, peer: int) -> Path:
    client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    path = base_dir / "configs" / "etcd.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "name: default\n"
        f"listen-client-urls: {client_url}\nadvertise-client-urls: {client_url}\n"
        f"listen-peer-urls: {peer_url}\ninitial-advertise-peer-urls: {peer_url}\n"
        f"initial-cluster: default={peer_url}\n"
    )
    return path


def _start_milvus(base_dir: Path, isolation: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``milvus run standalone`` in ``base_dir``; the process and its proxy's port."""
    port = _write_config(base_dir, isolation)
    exe = base_dir / "bin" / "milvus"
    env = {
        **os.environ,
        "DEPLOY_MODE": "STANDALONE",
        "METRICS_PORT": DISABLED_PORT,
        "MILVUS_RUN_DIR": str(base_dir / "run"),
    }
    logs = base_dir / "logs"
    with (
        open(logs / "milvus-stdout.log", "wb") as out,
        open(logs / "milvus-stderr.log", "wb") as err,
    ):
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _EXEC_MILVUS, str(os.getpid()), str(exe.parent)]
            + [str(exe), "run", "standalone"],
            cwd=base_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    return proc, port


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


# -- credentials ----------------------------------------------------------------------------


def _root_password(base_dir: Path) -> tuple[str, bool]:
    """The folder's root password, and whether it was made just now: created with mode
    0600 before Milvus first starts, so it never exists readable by others."""
    path = base_dir / PASSWORD_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        password = path.read_text().strip()
        if not password:
            raise _Fatal(f"the root password file {path} is empty") from None
        return password, False
    password = secrets.token_urlsafe(24)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return password, True


def _probe(port: int, token: str, timeout: float = 5.0) -> str:
    """List collections with ``token``: "ok", "denied" (Milvus answers but refuses the
    credentials) or "down" (not answering yet).

    Not CheckHealth: after any restart, even a clean one, it reports unhealthy until the
    old process's etcd sessions expire (15-20 s more, measured), while reads already work.
    """
    import grpc
    from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc

    auth = base64.b64encode(token.encode()).decode()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = milvus_pb2_grpc.MilvusServiceStub(channel)
        try:
            reply = stub.ShowCollections(
                milvus_pb2.ShowCollectionsRequest(),
                metadata=[("authorization", auth)],
                timeout=timeout,
            )
        except grpc.RpcError as exc:
            details = (exc.details() or "").lower()  # type: ignore[attr-defined]
            code = exc.code()  # type: ignore[attr-defined]
            denied = code == grpc.StatusCode.UNAUTHENTICATED or "auth" in details
            return "denied" if denied else "down"
    return "ok" if reply.status.code == 0 and reply.status.error_code == 0 else "down"


def _healthy(port: int, token: str) -> bool:
    """Milvus's own health check: every component answers, with its current node id."""
    import grpc
    from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc

    auth = base64.b64encode(token.encode()).decode()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = milvus_pb2_grpc.MilvusServiceStub(channel).CheckHealth(
                milvus_pb2.CheckHealthRequest(), metadata=[("authorization", auth)], timeout=5
            )
        except grpc.RpcError:
            return False
    return bool(reply.isHealthy)


def _milvus_client(port: int, token: str) -> Any:
    from pymilvus import MilvusClient

    return MilvusClient(uri=f"http://127.0.0.1:{port}", token=token, timeout=60)


def _wait_loaded(port: int, token: str, deadline: float, replay: bool) -> None:
    """Wait until every collection Milvus had loaded is loaded again: right after a start a
    search or count sees part of the data, or none. With ``replay`` (the last stop did not
    flush: a crash), also until the unflushed log is replayed, which a Strong read waits
    for; it takes until the dead process's etcd sessions expire (~15 s more, measured)."""
    from pymilvus.client.types import LoadState

    client = _milvus_client(port, token)
    try:
        for name in client.list_collections():
            began = time.monotonic()
            state = client.get_load_state(name)["state"]
            while state == LoadState.Loading and time.monotonic() < deadline:
                time.sleep(0.2)
                state = client.get_load_state(name)["state"]
            loaded = time.monotonic()
            if state == LoadState.Loaded and replay:
                client.query(
                    name, filter="", output_fields=["count(*)"], consistency_level="Strong"
                )
            elif state == LoadState.Loading:
                log.warning("collection %s is still loading; serving anyway", name)
            log.info(
                "collection %s: %s, load %.1f s, read %.1f s",
                name,
                state,
                loaded - began,
                time.monotonic() - loaded,
            )
    finally:
        client.close()


def _flush_all(port: int, token: str) -> None:
    """Seal and persist every collection, so that nothing depends on replaying the log."""
    client = _milvus_client(port, token)
    try:
        for name in client.list_collections():
            client.flush(name)
    finally:
        client.close()


# -- the supervisor ------------------------------------------------------------------------


class _Fatal(Exception):
    """The supervisor cannot go on; the message ends up in ``ensure_server``'s error."""


class _Abort(Exception):
    """Stop now: asked to, or the data folder is gone."""


class _MilvusExited(Exception):
    """Milvus died; the supervisor starts it again."""


class _Supervisor:
    """Runs one folder's Milvus behind the forwarder; see the module docstring."""

    def __init__(
        self, base_dir: Path, listener: socket.socket, isolation: str, idle_timeout: float
    ) -> None:
        self.base_dir = base_dir
        self.isolation = isolation
        self.idle_timeout = idle_timeout
        self.forwarder = _Forwarder(listener)
        self.stopping = False
        self.password, self.created = "", False
        self.proc: subprocess.Popen[bytes] | None = None
        self.milvus_port = 0
        self.restarts: list[float] = []
        self.published = False
        self.started_at = time.time()
        st = base_dir.stat()
        self.dir_id = (st.st_dev, st.st_ino)

    @property
    def token(self) -> str:
        return f"root:{self.password}"

    def run(self) -> int:
        """Serve until stopped, idle or orphaned; the exit code of the supervisor."""
        code, flush = 0, True
        try:
            self.password, self.created = _root_password(self.base_dir)
            self.forwarder.start()
            self.publish("starting")
            self.serve()
        except _Abort as exc:
            log.info("stopping: %s", exc)
            flush = str(exc) == "stop requested"
        except _Fatal as exc:
            log.error("%s", exc)
            code, flush = 1, False
        except Exception as exc:
            log.exception("the supervisor failed")
            log.error("the supervisor failed: %s", exc)
            code, flush = 1, False
        self.shutdown(flush)
        return code

    def serve(self) -> None:
        """Start Milvus, and again whenever it dies, until told to stop or idle."""
        while True:
            try:
                self.launch()
                self.watch()
                return
            except _MilvusExited as exc:
                self.forwarder.set_ready(None)  # hold new connections until it is back
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW] + [now]
                if len(self.restarts) > MAX_RESTARTS:
                    raise _Fatal(f"{exc}; {MAX_RESTARTS} restarts in a row failed") from None
                log.error("%s; starting it again", exc)
                self.publish("starting")

    def launch(self) -> None:
        """Start Milvus; publish it once root has our password and the data is loaded."""
        mark = self.base_dir / FLUSHED_MARK
        replay = not mark.exists()
        mark.unlink(missing_ok=True)  # from now on, the data may change again
        self.proc, self.milvus_port = _start_milvus(self.base_dir, self.isolation)
        where = "inside its namespace" if self.isolation != "off" else "on all interfaces"
        log.info("milvus pid %d starting, port %d %s", self.proc.pid, self.milvus_port, where)
        began = time.monotonic()
        deadline = began + START_TIMEOUT
        self.await_root(deadline)
        answering = time.monotonic() - began
        self.settle(deadline, replay)
        loaded = time.monotonic() - began
        while not _healthy(self.milvus_port, self.token):
            self.check()  # writes fail until the dead process's etcd sessions expire
            if time.monotonic() > deadline:
                log.warning("Milvus's health check still fails; serving anyway")
                break
            time.sleep(0.2)
        self.check()
        self.forwarder.set_ready(self.milvus_port)
        self.publish("ready")
        log.info(
            "ready on 127.0.0.1:%d (isolation: %s) after %.1f s (answering %.1f, loaded %.1f)",
            self.forwarder.port,
            self.isolation,
            time.monotonic() - began,
            answering,
            loaded,
        )

    def settle(self, deadline: float, replay: bool) -> None:
        """``_wait_loaded``, again after an error (Milvus may still be settling)."""
        while True:
            try:
                _wait_loaded(self.milvus_port, self.token, deadline, replay)
                return
            except Exception as exc:  # pymilvus raises several types
                self.check()
                if time.monotonic() > deadline:
                    log.warning("waiting for the collections to load failed: %s", exc)
                    return
                time.sleep(1)

    def await_root(self, deadline: float) -> None:
        """Wait until Milvus answers with the folder's root password, setting it first if
        root still has Milvus's default (a new folder, or one from before authorization)."""
        denied_since = None
        while time.monotonic() < deadline:
            self.check()
            answer = _probe(self.milvus_port, self.token)
            if answer == "ok":
                return
            if answer == "denied":
                if _probe(self.milvus_port, f"root:{DEFAULT_ROOT_PASSWORD}") == "ok":
                    self.set_root_password()
                    return
                denied_since = denied_since or time.monotonic()
                if time.monotonic() - denied_since > 5:  # not a start-up hiccup
                    self.wrong_password()
            time.sleep(0.2)
        raise _Fatal(f"Milvus did not answer within {START_TIMEOUT:.0f} s")

    def set_root_password(self) -> None:
        client = _milvus_client(self.milvus_port, f"root:{DEFAULT_ROOT_PASSWORD}")
        try:
            client.update_password("root", DEFAULT_ROOT_PASSWORD, self.password)
        finally:
            client.close()
        self.created = False
        log.info("root password set (kept in %s)", self.base_dir / PASSWORD_FILE)

    def wrong_password(self) -> None:
        path = self.base_dir / PASSWORD_FILE
        if self.created:  # made just now: do not leave a file that looks right
            path.unlink(missing_ok=True)
            raise _Fatal(
                f"{path} was missing, and the Milvus data in {self.base_dir} has a root "
                "password other than Milvus's default: restore the file from a backup"
            )
        raise _Fatal(
            f"the password in {path} is not the root password of the data in {path.parent}"
        )

    def watch(self) -> None:
        """Return when idle; raises when Milvus dies, a stop is asked or the folder goes."""
        last_requests, last_active = -1, time.monotonic()
        next_idle_check = time.monotonic() + POLL_SECONDS
        while True:
            time.sleep(TICK)
            self.check()
            if not self.forwarder.alive:
                raise _Fatal("the forwarder stopped; see the log above")
            if time.monotonic() < next_idle_check:
                continue
            next_idle_check = time.monotonic() + POLL_SECONDS
            requests = self.forwarder.requests
            if _live_holders(self.base_dir) or requests != last_requests:
                last_requests, last_active = requests, time.monotonic()
            elif self.idle_timeout > 0 and time.monotonic() - last_active > self.idle_timeout:
                log.info("idle for %.0f s, stopping", self.idle_timeout)
                return

    def check(self) -> None:
        if self.stopping:
            raise _Abort("stop requested")
        if self.orphaned():
            raise _Abort(f"{self.base_dir} or its state file was deleted")
        if self.proc is not None and self.proc.poll() is not None:
            raise _MilvusExited(f"milvus exited with {self.proc.returncode}")

    def orphaned(self) -> bool:
        try:
            st = self.base_dir.stat()
        except OSError:
            return True
        if (st.st_dev, st.st_ino) != self.dir_id:
            return True
        if not self.published:
            return False
        raw = _read_raw(self.base_dir)
        return raw is None or raw.get("supervisor_pid") != os.getpid()

    def publish(self, state: str) -> None:
        """Write the state file (atomically); never recreate it for a deleted folder."""
        info = ServerInfo(
            base_dir=str(self.base_dir),
            supervisor_pid=os.getpid(),
            milvus_pid=self.proc.pid if self.proc is not None else 0,
            port=self.forwarder.port,
            state=state,
            isolation=self.isolation,
            started_at=self.started_at,
            restarts=len(self.restarts),
        )
        path = self.base_dir / STATE_FILE
        tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(asdict(info)))
            if self.orphaned():
                tmp.unlink()
                raise _Abort(f"{self.base_dir} or its state file was deleted")
            tmp.replace(path)
        except OSError:
            raise _Abort(f"cannot write {path}: the folder was deleted") from None
        self.published = True

    def shutdown(self, flush: bool) -> None:
        """Close the way in, flush (when the data is still there) and stop Milvus."""
        self.forwarder.stop()
        if flush and not self.orphaned():
            with contextlib.suppress(_Abort):
                self.publish("stopping")  # new clients wait for the end, then start anew
        proc = self.proc
        if proc is not None and proc.poll() is None:
            flushed = False
            if flush and not self.orphaned():
                try:
                    _flush_all(self.milvus_port, self.token)
                    flushed = True
                except Exception as exc:  # a failed flush must not keep the server running
                    log.warning("flush before stopping failed: %s", exc)
            proc.terminate()
            try:
                proc.wait(TERM_GRACE)
            except subprocess.TimeoutExpired:
                flushed = False
                proc.kill()
                proc.wait(30)
            if flushed and not self.orphaned():  # the next start need not wait for a replay
                with contextlib.suppress(OSError):
                    (self.base_dir / FLUSHED_MARK).touch()
        raw = _read_raw(self.base_dir)
        if raw is not None and raw.get("supervisor_pid") == os.getpid():
            (self.base_dir / STATE_FILE).unlink(missing_ok=True)
        log.info("stopped")


def run_supervisor(
    base_dir: Path,
    idle_timeout: float,
    bin_cache: Path | None,
    listener: socket.socket,
    isolation: str,
) -> int:
    """Start Milvus in ``base_dir`` behind ``listener``; stop it when told, idle or orphaned."""
    supervisor = _Supervisor(base_dir, listener, isolation, idle_timeout)

    def _on_signal(signum: int, _frame: object) -> None:
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        importlib.import_module("hpack")
        import milvus

        if bin_cache is not None:
            _share_binaries(base_dir, bin_cache)
        elif not (base_dir / "bin").is_symlink():
            milvus._initialize_data_files(str(base_dir))
    except ImportError as exc:
        log.error("the embedded server needs the %r package: pip install %s", exc.name, exc.name)
        listener.close()
        return 1
    return supervisor.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmsearch.embedded")
    parser.add_argument("command", choices=["run"])
    parser.add_argument("base_dir", type=Path)
    parser.add_argument("--idle-timeout", type=float, default=1800.0)
    parser.add_argument("--bin-cache", type=Path, default=None)
    parser.add_argument("--listen-fd", type=int, default=None, help="a socket on 127.0.0.1")
    parser.add_argument("--isolation", choices=["auto", "on", "off"], default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.listen_fd is None:  # run by hand: listen here, before leaving this namespace
        listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    else:
        listener = socket.socket(fileno=args.listen_fd)
    try:
        isolation = _isolate(args.isolation, args.base_dir.resolve())  # first: no threads yet
    except SystemExit as exc:
        log.error("%s", exc.code)
        return 1
    return run_supervisor(
        args.base_dir.resolve(), args.idle_timeout, args.bin_cache, listener, isolation
    )


if __name__ == "__main__":
    sys.exit(main())
