"""Milvus itself: its configuration, its process, its binaries, its root password, and the
few calls the supervisor makes to it (is it up, is it healthy, load, flush)."""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .state import PASSWORD_FILE

log = logging.getLogger(__name__)


class Fatal(Exception):
    """The supervisor cannot go on; the message ends up in ``ensure_server``'s error."""


#: Milvus settings for a one-user server. By default Milvus 2.3 spends up to 30 min in its
#: graceful stop (SIGTERM did not finish in 20 s, measured). Every component holds an etcd
#: session whose lease Milvus keeps alive; a start finds the previous process's sessions
#: until they expire (health checks fail, Strong reads wait, flushes fail: "node not
#: match"), so a clean stop ends them (``end_sessions``) and only a crash leaves
#: them to expire. The TTL is what a stall may last before Milvus loses its sessions and
#: exits: at 5 s, a 1M-row index build on 2 cores stalled the embedded etcd's fsync for
#: 3.8 and then 9.4 s (the disk busy writing segments and indexes) and Milvus went down
#: mid-build. At 20 s, back after a kill -9 in ~30 s (measured; 15 s at TTL 5), after a
#: clean stop as soon as before. The REST API is off (mmsearch speaks gRPC), and every
#: component registers 127.0.0.1.
SERVER_CONFIG: dict[str, Any] = {
    "common.gracefulStopTimeout": 3,
    "common.session.ttl": 20,
    "proxy.http.enabled": "false",
    # Rows not yet in an indexed segment were searched through a small temporary IVF index
    # whatever the search parameters: recall@10 0.82 at ef=1024 for 6-14 s after an index
    # build at 10k rows (bench/search.py). Without it they are searched exactly until their
    # segment is sealed and indexed.
    "queryNode.segcore.interimIndex.enableIndex": "false",
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
#: Where Milvus's components keep their etcd sessions (``etcd.rootPath``/meta/session/).
SESSION_PREFIX = "by-dev/meta/session/"
DEFAULT_ROOT_PASSWORD = "Milvus"  # what Milvus gives root in a new (or pre-auth) folder


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


def _write_config(base_dir: Path, isolation: str) -> tuple[int, int]:
    """Write ``configs/milvus.yaml`` for this start; returns the ports of Milvus's proxy
    and of its embedded etcd.

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
            raise Fatal(f"cannot set etcd.config.path in {path}")
        path.write_text(patched)
    return int(config.get("proxy_port")), int(config.get("etcd_port"))


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


def start_milvus(base_dir: Path, isolation: str) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start ``milvus run standalone`` in ``base_dir``; the process and the ports of its
    proxy and of its etcd."""
    port, etcd_port = _write_config(base_dir, isolation)
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
    return proc, port, etcd_port


def end_sessions(etcd_port: int, timeout: float = 2.0) -> int:
    """Delete the components' session keys from Milvus's embedded etcd in one transaction,
    through etcd's JSON gateway; how many. Called on a clean stop, after the flush, so that
    the next start need not wait for them to expire. One transaction, because each
    component exits as its key goes (revoking their leases one by one, the process was gone
    before the last). Only keys held by a lease: ``session/id`` numbers the servers."""
    import json
    from urllib.request import Request, urlopen

    def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = Request(
            f"http://127.0.0.1:{etcd_port}/v3/kv/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urlopen(request, timeout=timeout) as reply:  # noqa: S310 - fixed local URL
            return json.load(reply)

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    found = call(
        "range",
        {
            "key": b64(SESSION_PREFIX),
            "range_end": b64(SESSION_PREFIX[:-1] + "0"),
            "keys_only": True,
        },
    )
    keys = [kv["key"] for kv in found.get("kvs", []) if kv.get("lease")]
    if keys:
        call("txn", {"success": [{"request_delete_range": {"key": key}} for key in keys]})
    return len(keys)


def share_binaries(base_dir: Path, bin_cache: Path) -> None:
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


def root_password(base_dir: Path) -> tuple[str, bool]:
    """The folder's root password, and whether it was made just now: created with mode
    0600 before Milvus first starts, so it never exists readable by others."""
    path = base_dir / PASSWORD_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        password = path.read_text().strip()
        if not password:
            raise Fatal(f"the root password file {path} is empty") from None
        return password, False
    password = secrets.token_urlsafe(24)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return password, True


def probe(port: int, token: str, timeout: float = 5.0) -> str:
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


def healthy(port: int, token: str) -> bool:
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


def milvus_client(port: int, token: str) -> Any:
    from pymilvus import MilvusClient

    return MilvusClient(uri=f"http://127.0.0.1:{port}", token=token, timeout=60)


def wait_loaded(port: int, token: str, deadline: float, replay: bool) -> None:
    """Wait until every collection Milvus had loaded is loaded again: right after a start a
    search or count sees part of the data, or none. With ``replay`` (the last stop did not
    flush: a crash), also until the unflushed log is replayed, which a Strong read waits
    for; it takes until the dead process's etcd sessions expire (~15 s more, measured)."""
    from pymilvus.client.types import LoadState

    client = milvus_client(port, token)
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


def flush_all(port: int, token: str) -> None:
    """Seal and persist every collection, so that nothing depends on replaying the log."""
    client = milvus_client(port, token)
    try:
        for name in client.list_collections():
            client.flush(name)
    finally:
        client.close()
