"""What processes share through a data folder: where its server listens and in what state
(the state file), who is using it (holder files) and the root password.

Read by every mmsearch process that uses the folder and written by its supervisor; plain
standard library, as the supervisor runs without the mmsearch package (see ``__init__``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


STATE_FILE = "mmsearch-server.json"
#: The root password of the folder's Milvus (mode 0600); ``client_token`` reads it.
PASSWORD_FILE = "mmsearch-root-password"
HOLDERS_DIR = "holders"
#: Left by a stop that flushed everything: the next start needs no log replay.
FLUSHED_MARK = "mmsearch-flushed"
START_TIMEOUT = 180.0
POLL_SECONDS = 5.0  # idle checks
#: ``auto`` (default): a private network namespace where the OS allows one, else ``off``;
#: ``on``: refuse to start without one; ``off``: never (tests cover that mode with it).
ISOLATION_ENV = "MMSEARCH_EMBEDDED_ISOLATION"


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


def pid_alive(pid: int) -> bool:
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


def read_raw(base_dir: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads((base_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def supervisor_alive(pid: object) -> bool:
    """Whether ``pid`` is a live supervisor (a pid in a stale state file may belong to
    another process by now: never signal that one)."""
    if not isinstance(pid, int) or not pid_alive(pid):
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
    raw = read_raw(base_dir)
    try:
        info = ServerInfo(**raw) if raw is not None else None
    except TypeError:  # a state file of an older version
        return None
    return info if info and supervisor_alive(info.supervisor_pid) else None


def status(base_dir: Path) -> ServerInfo | None:
    """The folder's server when it answers: ready, Milvus running. None while it starts
    or restarts after a crash (``read_state`` tells those apart from stopped)."""
    info = read_state(base_dir)
    if info is None or info.state != "ready" or not pid_alive(info.milvus_pid):
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


def add_holder(base_dir: Path) -> Path:
    """Mark this process as using the server, so that it is not stopped as idle."""
    holders = Path(base_dir) / HOLDERS_DIR
    holders.mkdir(parents=True, exist_ok=True)
    path = holders / str(os.getpid())
    path.touch()
    return path


def remove_holder(path: Path) -> None:
    path.unlink(missing_ok=True)


def live_holders(base_dir: Path) -> int:
    live = 0
    for path in (base_dir / HOLDERS_DIR).glob("*"):
        try:
            pid = int(path.name)
        except ValueError:
            continue
        if pid_alive(pid):
            live += 1
        else:
            path.unlink(missing_ok=True)
    return live
