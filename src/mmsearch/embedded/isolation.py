"""A private network namespace for the supervisor and Milvus, where Linux allows one: none
of Milvus's ports then exist on the machine's network (see ``__init__``, Security)."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import socket
import struct
from pathlib import Path

from .state import ISOLATION_ENV

log = logging.getLogger(__name__)

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def isolate(mode: str, base_dir: Path) -> str:
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
