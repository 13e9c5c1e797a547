"""The three kinds of Milvus mmsearch runs on, one backend object each.

- ``LiteBackend``: a Milvus Lite file, served inside this process; one process per file.
- ``EmbeddedBackend``: the Milvus 2.3 server mmsearch starts for ``embedded:DIR`` URIs
  (``embedded.py``), shared by processes, with credentials kept in DIR.
- ``ServerBackend``: any Milvus server or cluster by URI, with the configured token.

A backend owns what differs between them: connecting and closing (Lite's per-file
reference count, the embedded server's start and holder file), the consistency level of
new collections, what flushing and loading mean, and whether each extra vector field needs
a side collection, which depends on what the server can do (its version), not on the URI.
``backend_for`` is the one place that looks at the URI. The backend knows nothing of the
schema; ``Store`` does.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from mmsearch import embedded
from mmsearch.config import Settings

log = logging.getLogger(__name__)

#: Consistency for collections on a server. Session reads this client's own writes at once
#: and does not wait for the whole cluster's clock: with Milvus's default (Bounded) the first
#: query after a server restart waited 22-25 s, with Session 0.08 s (bench/README.md).
CONSISTENCY = "Session"
#: Milvus before 2.4 allows one vector field per collection.
MULTI_VECTOR_VERSION = (2, 4)
#: Index types Milvus Lite accepts at creation but cannot load (``LiteBackend``).
LITE_UNSUPPORTED = ("IVF_PQ", "DISKANN")
#: How long a call waits for an unreachable Milvus to come back before failing: an embedded
#: server restarted by its supervisor after a crash serves again in ~30 s (measured: its
#: old etcd sessions expire first; ``embedded/server.py``).
RECONNECT_WAIT = 90.0
#: Calls that may run twice with the same effect, so they are retried when Milvus cannot
#: be reached mid-call (ids come from paths and writes are upserts). Creating, dropping and
#: renaming collections are not retried: a second try could fail on the first's success.
RETRIED_CALLS = frozenset(
    {
        "query",
        "query_iterator",
        "search",
        "upsert",
        "delete",
        "flush",
        "has_collection",
        "describe_collection",
        "list_collections",
        "get_load_state",
        "load_collection",
        "get_server_version",
    }
)


class StoreError(RuntimeError):
    """The store cannot do what was asked; the message names the URI and what to do."""


class ProviderMismatchError(StoreError):
    """The collection was built by another embedder; its vectors cannot be searched with ours."""


class InvalidFilterError(StoreError):
    """A filter expression Milvus cannot parse or apply; the message quotes it and says why."""


@dataclass(frozen=True)
class ImportTarget:
    """How to bulk-import files into a server (``bulkload.py``): its gRPC address
    (host:port), the token, and a folder it can read the import files from."""

    address: str
    token: str
    folder: Path


class CheckedClient:
    """A ``MilvusClient`` whose failures arrive as ``StoreError``s that name the URI.

    pymilvus raises ``MilvusException`` (and logs a traceback) for everything from a typo
    in a filter to a killed server; the CLI and the API need one error type with a message
    a user can act on, and a filter error told apart (a 400, not a 503).
    """

    def __init__(self, client: Any, uri: str) -> None:
        self._client = client
        self._uri = uri

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            from pymilvus.exceptions import MilvusException

            retried = name in RETRIED_CALLS
            try:
                what = f"{name} at {self._uri!r}"
                return while_unreachable(lambda: attr(*args, **kwargs), retried, what)
            except MilvusException as exc:
                raise self._error(name, kwargs.get("filter"), exc) from None

        return call

    def _error(self, call: str, filter: str | None, exc: Exception) -> StoreError:
        reason = " ".join(str(getattr(exc, "message", exc)).split())
        code = getattr(exc, "code", None)
        if filter and code not in (1, 2) and "connect" not in reason.lower():
            return InvalidFilterError(f"invalid filter {filter!r}: {reason}")
        return StoreError(
            f"Milvus at {self._uri!r} failed ({call}): {reason}. If the server stopped, run "
            "the command again (an embedded server is restarted on first use)"
        )


T = TypeVar("T")


def while_unreachable(call: Callable[[], T], retry: bool, what: str) -> T:
    """``call()``, made again (with ``retry``) while it fails because Milvus cannot be
    reached, for up to RECONNECT_WAIT seconds; then its last error is raised."""
    deadline = time.monotonic() + RECONNECT_WAIT
    pause = 0.5
    while True:
        try:
            return call()
        except Exception as exc:
            if not (retry and unreachable(exc)) or time.monotonic() + pause > deadline:
                raise
            log.warning("Milvus unreachable (%s); retrying", what)
            time.sleep(pause)
            pause = min(pause * 2, 8.0)


def unreachable(exc: Exception) -> bool:
    """Whether a pymilvus or gRPC error says the server could not be reached (it may be
    restarting), as opposed to refusing the request. pymilvus reconnects once on its own
    and gives up when the server is not back yet: "Fail connecting" (code 2), or gRPC's
    UNAVAILABLE (a ``grpc.RpcError`` has ``code()``, a ``MilvusException`` ``code``).
    Also "service not ready" (code 1): a Milvus whose components lost their etcd sessions
    (stalled past the session TTL) answers that until it exits and is restarted."""
    code = getattr(exc, "code", None)
    if callable(code):
        code = code()
    if code == 1 and "service not ready" in str(getattr(exc, "message", exc)).lower():
        return True
    return code == 2 or getattr(code, "name", None) == "UNAVAILABLE"


def _quiet_milvus_logs() -> None:
    """Keep pymilvus's and Milvus Lite's tracebacks out of the terminal: each failure they
    log also reaches the caller as a ``StoreError`` that says what to do."""
    # Milvus Lite's in-process gRPC server logs a traceback for each RPC it does not
    # implement (pymilvus 3 asks for AllocTimestamp when creating indexes, and falls back).
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    logging.getLogger("milvus_lite.server_manager").setLevel(logging.CRITICAL)
    logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
    logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)
    # Its failed reconnects log tracebacks; CheckedClient retries and says so in one line.
    logging.getLogger("pymilvus.client.connection_manager").setLevel(logging.CRITICAL)


def _version_tuple(text: str) -> tuple[int, ...]:
    """``"v2.3.5-lite"`` -> (2, 3, 5); unknown parts count as 0."""
    parts = []
    for piece in text.lstrip("vV").split("-", 1)[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


class Backend:
    """How mmsearch reaches one kind of Milvus; a subclass per kind."""

    #: What to check when connecting fails, for the error message.
    hint = "check that the Milvus server is running and reachable, and the token"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.uri = settings.uri
        self._client: CheckedClient | None = None

    @property
    def client(self) -> CheckedClient:
        if self._client is None:
            self._client = self._connect()
        return self._client

    @property
    def connected(self) -> bool:
        return self._client is not None

    def present(self) -> bool:
        """Whether the store may hold data, known without creating anything (a server is
        asked; a Lite file or an embedded server's folder that does not exist holds none)."""
        return True

    def _connect(self) -> CheckedClient:
        _quiet_milvus_logs()
        from pymilvus import MilvusClient

        try:
            address, token = self._address()
            return CheckedClient(MilvusClient(uri=address, token=token, timeout=30), self.uri)
        except StoreError:
            self._release()
            raise
        except Exception as exc:  # pymilvus raises several unrelated types here
            self._release()
            hint = self.hint
            if isinstance(exc, OSError):
                hint = "the data folder must exist or be creatable, and be writable"
            raise StoreError(f"cannot open Milvus at {self.uri!r}: {exc}. {hint}.") from exc

    def _address(self) -> tuple[str, str]:
        """The address and token to connect with (starting what must run first)."""
        token = self.settings.token.get_secret_value() if self.settings.token else ""
        return self.uri, token

    def _release(self) -> None:
        """Undo what ``_address`` reserved (a Lite file's count, a holder file)."""

    def close(self) -> None:
        client, self._client = self._client, None
        try:
            if client is not None:
                client.close()
        finally:
            if client is not None:
                self._release()
            self.__dict__.pop("one_vector_field", None)

    @cached_property
    def one_vector_field(self) -> bool:
        """Whether the server takes one vector field per collection (Milvus before 2.4)."""
        version = str(self.client.get_server_version())
        return _version_tuple(version) < MULTI_VECTOR_VERSION

    def collection_options(self) -> dict[str, Any]:
        """Extra arguments for ``create_collection``."""
        options: dict[str, Any] = {"consistency_level": CONSISTENCY}
        if self.settings.shards is not None:
            options["num_shards"] = self.settings.shards
        return options

    def check_collection(self, index_type: str) -> None:
        """Refuse, before anything is created, a collection this kind of Milvus accepts but
        cannot serve. A server decides for itself: its refusal (say, DISKANN without
        ``queryNode.enableDisk``, or more than 16 shards) arrives as a ``StoreError``."""

    def import_target(self) -> ImportTarget | None:
        """Where bulk-import files go, or None where mmsearch cannot bulk-import: Milvus
        Lite has no import, and a server reads import files only from its own object
        storage (MinIO/S3), whose credentials mmsearch does not hold."""
        return None

    def flush(self, names: list[str]) -> None:
        """Persist what was written: unflushed rows are replayed from the log after a server
        restart, and stay invisible until then (~25 s, measured)."""
        for name in names:
            self.client.flush(name)

    def load(self, names: list[str]) -> None:
        """Make collections searchable, with every row visible (once per connection)."""
        for name in names:
            self.client.load_collection(name)
        self._catch_up(names)

    def _catch_up(self, names: list[str]) -> None:
        """Wait until the server has caught up with the present.

        ``load_collection`` returns once segments are loaded, but after a server restart,
        rows still being replayed from its log are not yet visible to Session reads of a
        new client: the first ``count`` after a crash said 0 for 10-20 s. One Strong read
        per collection waits for them (it costs ~260 ms, measured on Milvus 2.3).
        """
        for name in names:
            self.client.query(
                name, filter="", output_fields=["count(*)"], consistency_level="Strong"
            )


#: Open clients per Milvus Lite file in this process. Milvus Lite runs one server per file
#: and holds the file's lock until it stops; the last user to close stops it, so another
#: process (say `mmsearch serve` after `mmsearch index`) can open the file.
_LITE_USERS: Counter[str] = Counter()
_LITE_LOCK = threading.Lock()


class LiteBackend(Backend):
    """A Milvus Lite file: in this process, one process per file, one vector field each."""

    hint = (
        "Milvus Lite allows one process per file: stop the other mmsearch process using it "
        "(for example `mmsearch serve`), or use a Milvus server URI"
    )

    def _address(self) -> tuple[str, str]:
        path = Path(self.uri).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = os.path.abspath(path)
        with _LITE_LOCK:
            _LITE_USERS[self._path] += 1
        return str(path), ""

    def _release(self) -> None:
        path = getattr(self, "_path", None)
        if path is None:
            return
        with _LITE_LOCK:
            _LITE_USERS[path] -= 1
            if _LITE_USERS[path] > 0:
                return
            del _LITE_USERS[path]
        try:
            from milvus_lite.server_manager import server_manager_instance
        except ImportError:  # an older milvus-lite without a server manager holds no lock
            return
        server_manager_instance.release_server(path)

    @cached_property
    def one_vector_field(self) -> bool:
        return False

    def collection_options(self) -> dict[str, Any]:
        return {}

    def check_collection(self, index_type: str) -> None:
        """Milvus Lite 3.2 creates an IVF_PQ or DISKANN collection, then fails to load it
        once written ("reserved for a future phase", "unknown index_type", measured), and
        ignores ``num_shards``: refuse both now rather than a broken store later."""
        if index_type in LITE_UNSUPPORTED:
            server = "embedded:DIR or a server URI" if index_type == "IVF_PQ" else "a server URI"
            raise StoreError(
                f"Milvus Lite ({self.uri!r}) cannot build {index_type} indexes; use HNSW, "
                f"IVF_FLAT or FLAT here, or {index_type} on a Milvus server ({server})"
            )
        if (self.settings.shards or 1) > 1:
            raise StoreError(
                f"Milvus Lite ({self.uri!r}) keeps one shard per collection; unset shards, "
                "or use a Milvus server (embedded:DIR or a server URI) for more"
            )

    def flush(self, names: list[str]) -> None:
        """Nothing to do: Milvus Lite writes through."""

    def _catch_up(self, names: list[str]) -> None:
        """Nothing to wait for: Milvus Lite has no log to replay."""

    def present(self) -> bool:
        return Path(self.uri).expanduser().exists()


class EmbeddedBackend(Backend):
    """The Milvus server mmsearch runs for ``embedded:DIR``: started on first use, kept
    running for the next commands while this process holds it."""

    hint = "see `mmsearch server status` and the logs in the server's folder"

    def check_collection(self, index_type: str) -> None:
        """The embedded server's build of Milvus 2.3 has no DiskANN: its index node fails
        every DISKANN build ("bad_function_call") and retries it forever, so segments are
        never indexed (measured). ``queryNode.enableDisk`` cannot add what is not built in."""
        if index_type == "DISKANN":
            raise StoreError(
                f"the embedded Milvus server ({self.uri!r}) is built without DiskANN; use "
                "IVF_PQ or HNSW here, or DISKANN on a Milvus server with queryNode.enableDisk"
            )

    def present(self) -> bool:
        return embedded.base_dir_of(self.uri).exists()

    def _address(self) -> tuple[str, str]:
        base_dir = embedded.base_dir_of(self.uri)
        try:
            info, _ = embedded.ensure_server(
                base_dir,
                idle_timeout=self.settings.embedded_idle_timeout,
                bin_cache=self.settings.cache_dir,
            )
            token = embedded.client_token(base_dir)
        except embedded.EmbeddedServerError as exc:
            raise StoreError(f"cannot open Milvus at {self.uri!r}: {exc}") from exc
        except OSError as exc:  # a read-only or vanished data folder
            where = f": {exc.filename}" if exc.filename else ""
            raise StoreError(f"cannot open Milvus at {self.uri!r}: {exc.strerror}{where}") from exc
        self._holder = embedded.add_holder(base_dir)
        return info.uri, token

    def import_target(self) -> ImportTarget | None:
        """The server's local storage is this machine's disk: it reads import files from
        any path, so they go in DIR (owner-only, beside the data) through the forwarder."""
        self.client  # noqa: B018 - connecting starts the server if it is not running
        base_dir = embedded.base_dir_of(self.uri)
        info = embedded.status(base_dir)
        if info is None:  # restarting right now: the caller upserts instead
            return None
        token = embedded.client_token(base_dir)
        return ImportTarget(f"127.0.0.1:{info.port}", token, base_dir / "bulk-import")

    def _catch_up(self, names: list[str]) -> None:
        """Nothing to wait for: the supervisor reports the server ready only once the log
        of an unclean stop has been replayed (``embedded.py``), so a Strong read per
        connection (~260 ms a collection) would buy nothing."""

    def _release(self) -> None:
        holder = getattr(self, "_holder", None)
        if holder is not None:
            embedded.remove_holder(holder)
            self._holder = None


class ServerBackend(Backend):
    """Any Milvus server or cluster by URI, with the configured token."""


#: Backends for other URI schemes (the tests' in-memory store, a plugin), by scheme prefix.
_EXTRA_BACKENDS: dict[str, type[Backend]] = {}


def register_backend(scheme: str, backend: type[Backend]) -> None:
    """Serve URIs starting with ``scheme`` with ``backend``."""
    _EXTRA_BACKENDS[scheme] = backend


def backend_for(settings: Settings) -> Backend:
    """The backend for the configured URI: the one place that tells the kinds apart."""
    for scheme, backend in _EXTRA_BACKENDS.items():
        if settings.uri.startswith(scheme):
            return backend(settings)
    if settings.is_embedded:
        return EmbeddedBackend(settings)
    if settings.is_lite:
        return LiteBackend(settings)
    return ServerBackend(settings)
