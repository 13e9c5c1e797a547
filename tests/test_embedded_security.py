"""The embedded server is private and survives accidents: what can be reached from the
machine's network, who may read it, several folders at once, a deleted folder, a crash.

Real servers only. Each test starts the servers it needs and stops them whatever happens.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mmsearch import embedded
from mmsearch.embedded.forwarder import H2Guard, Refused
from mmsearch.embedded.server import share_binaries
from mmsearch.embedded.supervisor import TICK

pytestmark = pytest.mark.skipif(
    not embedded.available(), reason="the milvus package (Linux x86_64) is not installed"
)

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


# -- what listens, seen from the test's (the host's) network namespace -----------------------


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    return children


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children, found, todo = _children(), [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _address(hex_address: str) -> tuple[str, int]:
    """An address of /proc/net/tcp{,6}: host-order 32-bit words in hex, then the port."""
    ip_hex, port_hex = hex_address.split(":")
    raw = b"".join(
        int(ip_hex[i : i + 8], 16).to_bytes(4, "little") for i in range(0, len(ip_hex), 8)
    )
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port_hex, 16)


def _listening() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) of every listening TCP socket in this namespace."""
    found = {}
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/self/net/{name}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                found[int(fields[9])] = _address(fields[1])
    return found


def _listeners_of(pid: int) -> set[tuple[str, int]]:
    """What the process tree of ``pid`` listens on, as reachable from here."""
    listening = _listening()
    return {
        listening[inode]
        for member in _tree(pid)
        for inode in _socket_inodes(member)
        if inode in listening
    }


# -- helpers --------------------------------------------------------------------------------


def _cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmsearch.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _env(cache_dir: Path, base: Path, isolation: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMSEARCH_")}
    return {
        **env,
        "MMSEARCH_CACHE_DIR": str(cache_dir),
        "MMSEARCH_URI": f"embedded:{base}",
        embedded.ISOLATION_ENV: isolation,
    }


@contextlib.contextmanager
def _servers(*bases: Path, cache_dir: Path) -> Iterator[list[embedded.ServerInfo]]:
    """Servers for ``bases``, started together and stopped together at the end, whatever
    happens."""

    def start(base: Path) -> embedded.ServerInfo:
        return embedded.ensure_server(base, idle_timeout=0, bin_cache=cache_dir)[0]

    try:
        with ThreadPoolExecutor(len(bases)) as pool:
            yield list(pool.map(start, bases))
    finally:
        with ThreadPoolExecutor(len(bases)) as pool:
            for done in [pool.submit(embedded.stop_server, base) for base in bases]:
                with contextlib.suppress(Exception):
                    done.result()


def _client(uri: str, token: str = "", timeout: float = 60):
    from pymilvus import MilvusClient

    return MilvusClient(uri=uri, token=token, timeout=timeout)


def _refused(port: int) -> bool:
    """Whether a MilvusClient without credentials gets nothing from ``port``."""
    try:
        client = _client(f"http://127.0.0.1:{port}", timeout=5)
        client.list_collections()
    except Exception:
        return True
    client.close()
    return False


def _gone(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(embedded.pid_alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def _down(pid: int, seconds: float) -> bool:
    """Whether ``pid`` is dead (a zombie counts: it serves nothing) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def _vectors(n: int, seed: int) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [{"id": i, "vector": rng.random(384, dtype="float32").tolist()} for i in range(n)]


def _count(client, collection: str, consistency: str = "Strong") -> int:
    rows = client.query(
        collection, filter="", output_fields=["count(*)"], consistency_level=consistency
    )
    return rows[0]["count(*)"]


# -- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("isolation", ["auto", "off"])
def test_only_loopback_is_reachable_and_only_with_the_password(tmp_path, cache_dir, isolation):
    """The attack: every port of Milvus listened on all interfaces, authorization off."""
    base = tmp_path / "private"
    share_binaries(base, cache_dir)  # `server start` would unpack 246 MB here
    env = _env(cache_dir, base, isolation)
    try:
        started = _cli(tmp_path, env, "server", "start")
        assert started.returncode == 0, started.stdout + started.stderr
        info = embedded.status(base)
        assert info is not None and info.state == "ready"
        password_file = base / embedded.PASSWORD_FILE
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600

        listeners = _listeners_of(info.supervisor_pid)
        assert ("127.0.0.1", info.port) in listeners
        if info.isolation != "off":  # nothing of Milvus is even visible from here
            assert listeners == {("127.0.0.1", info.port)}
            own_ns = os.readlink("/proc/self/ns/net")
            assert os.readlink(f"/proc/{info.milvus_pid}/ns/net") != own_ns
        else:  # Milvus 2.3's gRPC servers cannot be bound to loopback; etcd can
            etcd = (base / "configs" / "etcd.yaml").read_text()
            assert "127.0.0.1" in etcd and ":2380" not in etcd
        for address, port in listeners:
            if address not in LOOPBACK:  # (the forwarder passed above)
                assert _refused(port), f"{address}:{port} answered without credentials"
        assert _refused(info.port)

        client = _client(info.uri, embedded.client_token(base))
        try:
            assert client.list_collections() == []
        finally:
            client.close()
        assert _sourceid_refused(info.port)
    finally:
        stopped = _cli(tmp_path, env, "server", "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def _sourceid_refused(port: int) -> bool:
    """Milvus 2.3 lets in anyone sending its components' ``sourceid`` header (with any
    password): tried directly, it lists the collections. The forwarder must refuse it."""
    import grpc
    from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc

    metadata = [
        ("sourceid", base64.b64encode(b"@@milvus-member@@").decode()),
        ("authorization", base64.b64encode(b"root:guess").decode()),
    ]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = milvus_pb2_grpc.MilvusServiceStub(channel)
        try:
            stub.ShowCollections(milvus_pb2.ShowCollectionsRequest(), metadata=metadata, timeout=10)
        except grpc.RpcError:
            return True
    return False


def test_two_folders_run_side_by_side_each_with_its_data(tmp_path, cache_dir):
    """One embedded server per machine was the rule: the embedded etcd's fixed peer port
    made every command in another folder fail while one ran (or was left running)."""
    from pymilvus.exceptions import MilvusException

    first, second = tmp_path / "first", tmp_path / "second"
    with _servers(first, second, cache_dir=cache_dir) as (one, two):
        assert one.port != two.port and one.supervisor_pid != two.supervisor_pid
        for info, base, rows in ((one, first, 3), (two, second, 5)):
            client = _client(info.uri, embedded.client_token(base))
            try:
                client.create_collection("c", dimension=384)
                client.insert("c", _vectors(rows, seed=rows))
                assert _count(client, "c") == rows
            finally:
                client.close()
        # Each folder's password opens its own server only.
        with pytest.raises(MilvusException):
            _client(one.uri, embedded.client_token(second), timeout=5).list_collections()
        assert embedded.status(first) == one and embedded.status(second) == two


def test_deleting_the_folder_stops_its_server(tmp_path, cache_dir):
    base = tmp_path / "doomed"
    with _servers(base, cache_dir=cache_dir) as (info,):
        shutil.rmtree(base)
        # The supervisor looks every TICK; Milvus then gets SIGTERM (3 s graceful stop).
        assert _gone([info.supervisor_pid, info.milvus_pid], 4 * TICK + 10)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", info.port), timeout=2).close()
        assert not base.exists()  # not recreated by the supervisor on its way out

        base.mkdir()
        assert embedded.status(base) is None
        again, started = embedded.ensure_server(base, idle_timeout=0, bin_cache=cache_dir)
        assert started and again.supervisor_pid != info.supervisor_pid


def test_killed_milvus_comes_back_for_a_connected_client(tmp_path, cache_dir):
    """After kill -9 the supervisor restarts Milvus behind the same address; a client that
    stays connected sees all its rows again, never a partly loaded store."""
    base = tmp_path / "crash"
    with _servers(base, cache_dir=cache_dir) as (info,):
        client = _client(info.uri, embedded.client_token(base))
        try:
            client.create_collection("c", dimension=384)
            client.insert("c", _vectors(600, seed=1))
            client.flush("c")
            client.insert("c", [{**row, "id": row["id"] + 600} for row in _vectors(400, seed=2)])
            assert _count(client, "c") == 1000  # 400 rows only in the log: replayed later

            os.kill(info.milvus_pid, signal.SIGKILL)
            assert _down(info.milvus_pid, 5)
            assert embedded.status(base) is None  # not reported as serving meanwhile
            counts: list[int | str] = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    counts.append(_count(client, "c", "Session"))  # as mmsearch reads
                    break
                except Exception as exc:  # a call may fail while Milvus restarts
                    counts.append(type(exc).__name__)
                    time.sleep(0.2)
            assert counts[-1] == 1000, counts
            assert all(c == 1000 for c in counts if isinstance(c, int)), counts
        finally:
            client.close()
        after = embedded.status(base)
        assert after is not None and after.port == info.port
        assert after.milvus_pid != info.milvus_pid and after.restarts == 1
        # A new client that reads whatever is loaded (no consistency wait) sees it all too:
        # "ready" means loaded and replayed, not only answering.
        fresh = _client(after.uri, embedded.client_token(base))
        try:
            assert _count(fresh, "c", "Eventually") == 1000
        finally:
            fresh.close()


def test_missing_password_file_is_a_clear_error(tmp_path, cache_dir):
    base = tmp_path / "locked"
    with _servers(base, cache_dir=cache_dir):
        pass
    (base / embedded.PASSWORD_FILE).unlink()
    with pytest.raises(embedded.EmbeddedServerError) as raised:
        embedded.client_token(base)
    assert embedded.PASSWORD_FILE in str(raised.value)
    try:
        with pytest.raises(embedded.EmbeddedServerError, match="restore the file"):
            embedded.ensure_server(base, idle_timeout=0, bin_cache=cache_dir)
        assert not (base / embedded.PASSWORD_FILE).exists()  # no file that looks right
        assert embedded.read_state(base) is None
    finally:
        embedded.stop_server(base)


# -- the forwarder's check, frame by frame (no server) -----------------------------------


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def _request(encoder, stream: int, extra: list[tuple[str, str]], huffman: bool = True) -> bytes:
    headers = [(":method", "POST"), (":path", "/milvus.proto.milvus.MilvusService/Search")]
    block = encoder.encode(headers + extra, huffman=huffman)
    return _frame(1, 0x4, stream, block) + _frame(0, 0x1, stream, b"\0\0\0\0\0")


def test_the_forwarder_refuses_sourceid_however_it_is_encoded():
    """HPACK lets a client send a header name Huffman-coded or not, split over
    CONTINUATION frames, or as a reference to an earlier header: sourceid is refused
    every way, and nothing of a refused header block reaches Milvus."""
    from hpack import Encoder

    auth = [("authorization", "cm9vdDp4")]
    member = ("sourceid", "QEBtaWx2dXMtbWVtYmVyQEA=")
    for huffman in (True, False):
        guard, encoder = H2Guard(), Encoder()
        settings = _frame(4, 0, 0, b"")
        clean = guard.PREFACE + settings + _request(encoder, 1, auth, huffman)
        assert guard.feed(clean[:10]) == b""  # incomplete: nothing yet
        assert guard.feed(clean[10:]) == clean  # a clean request passes unchanged
        with pytest.raises(Refused):
            guard.feed(_request(encoder, 3, [*auth, member], huffman))

    # References to earlier requests' headers are followed (the guard's table is Milvus's);
    # one to an entry the guard never saw is refused, not guessed.
    guard, encoder = H2Guard(), Encoder()
    guard.feed(guard.PREFACE)
    first, second = _request(encoder, 1, auth), _request(encoder, 3, auth)
    assert len(second) < len(first)  # the second refers to the first's entries
    assert guard.feed(first + second) == first + second
    unseen = Encoder()
    unseen.encode([member])  # in this encoder's table only
    guard = H2Guard()
    guard.feed(guard.PREFACE)
    with pytest.raises(Refused):
        guard.feed(_frame(1, 0x4, 1, unseen.encode([member])))

    # Split over HEADERS + CONTINUATION: the first frame is held, not passed on.
    guard, encoder = H2Guard(), Encoder()
    guard.feed(guard.PREFACE)
    block = encoder.encode([(":method", "POST"), *auth, member])
    assert guard.feed(_frame(1, 0, 1, block[:4])) == b""
    with pytest.raises(Refused):
        guard.feed(_frame(9, 0x4, 1, block[4:]))

    # Not HTTP/2 (the REST API, a probe): refused at the first bytes.
    with pytest.raises(Refused):
        H2Guard().feed(b"GET /v1/vector/collections HTTP/1.1\r\n\r\n")
