"""The Milvus store: schema, the provider check, upserts, searches and stats.

The store knows nothing of models: it keeps vectors and the facts about each file. It owns
its schema and records which embedder made a collection (and at which dimension), because
vectors from two models are not comparable and mixing them silently gives garbage results.

Three kinds of Milvus sit behind one interface: a Milvus Lite file, the Milvus server that
mmsearch starts for ``embedded:DIR`` URIs (``embedded.py``), and any server by URI. Milvus
before 2.4 (the embedded one is 2.3) allows one vector field per collection, so there each
extra vector field lives in a side collection ``<name>__<field>`` that repeats the scalar
fields (so filters and results need no second lookup). Writes go to the side collections
first and to the main one last: the main collection's content hash is what marks a file as
indexed, so a crash between the two is repaired by the next run.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmsearch import embedded
from mmsearch.config import Settings

log = logging.getLogger(__name__)

#: Bump with a migration in ``_migrate`` when the schema changes.
SCHEMA_VERSION = 1
META_KEY = "mmsearch.meta"

IMAGE_FIELD = "image_embedding"
TEXT_FIELD = "text_embedding"
FEATURE_FIELD = "image_feature"

#: Scalar fields returned with every hit.
OUTPUT_FIELDS = [
    "origin",
    "label",
    "image_description",
    "keywords",
    "content_hash",
    "width",
    "height",
    "indexed_at",
]

_VECTOR_FIELDS = (IMAGE_FIELD, TEXT_FIELD, FEATURE_FIELD)
_SIDE_FIELDS = (TEXT_FIELD, FEATURE_FIELD)

_VARCHAR_LIMITS = {
    "id": 64,
    "origin": 4096,
    "label": 512,
    "image_description": 4096,
    "keywords": 1024,
    "content_hash": 64,
}


#: Open Store objects per Milvus Lite file in this process. Milvus Lite runs one embedded
#: server per file and holds the file's lock until that server stops; the last Store to
#: close stops it, so another process (say `mmsearch serve` after `mmsearch index`) can
#: open the file.
_LITE_USERS: Counter[str] = Counter()
_LITE_LOCK = threading.Lock()


class StoreError(RuntimeError):
    """The store cannot do what was asked; the message names the URI and what to do."""


class ProviderMismatchError(StoreError):
    """The collection was built by another embedder; its vectors cannot be searched with ours."""


class InvalidFilterError(StoreError):
    """A filter expression Milvus cannot parse or apply; the message quotes it and says why."""


class _Checked:
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

            try:
                return attr(*args, **kwargs)
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


@dataclass
class Item:
    """One indexed image as stored: the facts, not the vectors."""

    id: str
    origin: str
    label: str = ""
    description: str = ""
    keywords: list[str] = field(default_factory=list)
    content_hash: str = ""
    width: int = 0
    height: int = 0
    indexed_at: int = 0

    @classmethod
    def from_entity(cls, id_: str, entity: dict[str, Any]) -> Item:
        raw = entity.get("keywords") or "[]"
        try:
            keywords = json.loads(raw)
        except json.JSONDecodeError:
            keywords = [raw]
        return cls(
            id=id_,
            origin=entity.get("origin", ""),
            label=entity.get("label", ""),
            description=entity.get("image_description", ""),
            keywords=keywords,
            content_hash=entity.get("content_hash", ""),
            width=int(entity.get("width", 0)),
            height=int(entity.get("height", 0)),
            indexed_at=int(entity.get("indexed_at", 0)),
        )


@dataclass
class Hit(Item):
    """A search result: the item and its similarity score (higher is better for COSINE/IP,
    lower for L2, as Milvus reports it)."""

    score: float = 0.0


@dataclass
class Row:
    """What ingest writes for one image."""

    item: Item
    image_embedding: np.ndarray
    text_embedding: np.ndarray
    image_feature: np.ndarray | None = None


def _release_lite(path: str) -> None:
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


def row_record(row: Row) -> dict[str, Any]:
    """A row as Milvus stores it: text cut to the VARCHAR limits, vectors as float lists."""
    it = row.item
    record: dict[str, Any] = {
        "id": it.id,
        "origin": _truncate(it.origin, _VARCHAR_LIMITS["origin"]),
        "label": _truncate(it.label, _VARCHAR_LIMITS["label"]),
        "image_description": _truncate(it.description, _VARCHAR_LIMITS["image_description"]),
        "keywords": _truncate(
            json.dumps(it.keywords, ensure_ascii=False), _VARCHAR_LIMITS["keywords"]
        ),
        "content_hash": it.content_hash,
        "width": int(it.width),
        "height": int(it.height),
        "indexed_at": int(it.indexed_at),
        IMAGE_FIELD: np.asarray(row.image_embedding, np.float32).tolist(),
        TEXT_FIELD: np.asarray(row.text_embedding, np.float32).tolist(),
    }
    if row.image_feature is not None:
        record[FEATURE_FIELD] = np.asarray(row.image_feature, np.float32).tolist()
    return record


def _truncate(value: str, limit: int) -> str:
    """Cut to ``limit`` UTF-8 bytes (Milvus VARCHAR limits are in bytes) on a char boundary."""
    data = value.encode("utf-8")
    if len(data) <= limit:
        return value
    return data[:limit].decode("utf-8", errors="ignore")


#: Consistency for collections on a server. Session reads this client's own writes at once
#: and does not wait for the whole cluster's clock: with Milvus's default (Bounded) the first
#: query after a server restart waited 22-25 s, with Session 0.08 s (bench/README.md).
CONSISTENCY = "Session"


def _version_tuple(text: str) -> tuple[int, ...]:
    """``"v2.3.5-lite"`` -> (2, 3, 5); unknown parts count as 0."""
    parts = []
    for piece in text.lstrip("vV").split("-", 1)[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


class Store:
    """One Milvus collection, reached through ``MilvusClient`` (Lite file, embedded server
    or server URI)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.uri = settings.uri
        self.collection = settings.collection
        self._client: Any = None
        self._lite_path: str | None = None
        self._holder: Path | None = None
        self._loaded = False
        self._split: bool | None = None

    # -- connection -------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self) -> Any:
        # Milvus Lite runs a gRPC server in-process that logs a traceback for each RPC it
        # does not implement (pymilvus 3 asks for AllocTimestamp when creating indexes, and
        # falls back); they are noise to a user, so keep them out of the terminal.
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        # It also logs a traceback when a file is locked by another process; we raise a
        # StoreError that says so instead.
        logging.getLogger("milvus_lite.server_manager").setLevel(logging.CRITICAL)
        logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
        # pymilvus logs a traceback for every failed call; ours raise a StoreError instead.
        logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)
        from pymilvus import MilvusClient

        uri = self.uri
        token = self.settings.token.get_secret_value() if self.settings.token else ""
        if self.settings.is_embedded:
            uri, token = self._start_embedded()
        try:
            if self.settings.is_lite:
                uri = self._lite_file()
            client = _Checked(MilvusClient(uri=uri, token=token, timeout=30), self.uri)
            if self.settings.is_lite:
                with _LITE_LOCK:
                    _LITE_USERS[os.path.abspath(uri)] += 1
                self._lite_path = os.path.abspath(uri)
            return client
        except Exception as exc:  # pymilvus raises several unrelated types here
            if self._holder is not None:
                embedded.remove_holder(self._holder)
                self._holder = None
            if isinstance(exc, OSError):
                hint = "the data folder must exist or be creatable, and be writable"
            elif self.settings.is_lite:
                hint = (
                    "Milvus Lite allows one process per file: stop the other mmsearch process "
                    "using it (for example `mmsearch serve`), or use a Milvus server URI"
                )
            elif self.settings.is_embedded:
                hint = "see `mmsearch server status` and the logs in the server's folder"
            else:
                hint = "check that the Milvus server is running and reachable, and the token"
            raise StoreError(f"cannot open Milvus at {self.uri!r}: {exc}. {hint}.") from exc

    def _lite_file(self) -> str:
        path = Path(self.uri).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return str(path)

    def _start_embedded(self) -> tuple[str, str]:
        """Attach to (or start) the Milvus server for an ``embedded:DIR`` URI; its address
        and the credentials mmsearch keeps for it."""
        base_dir = embedded.base_dir_of(self.uri)
        try:
            info, _ = embedded.ensure_server(
                base_dir,
                idle_timeout=self.settings.embedded_idle_timeout,
                bin_cache=self.settings.cache_dir,
            )
        except embedded.EmbeddedServerError as exc:
            raise StoreError(f"cannot open Milvus at {self.uri!r}: {exc}") from exc
        except OSError as exc:  # a read-only or vanished data folder
            raise StoreError(
                f"cannot open Milvus at {self.uri!r}: {exc.strerror or exc}"
                + (f": {exc.filename}" if exc.filename else "")
            ) from exc
        self._holder = embedded.add_holder(base_dir)
        return info.uri, ""

    def close(self) -> None:
        if self._client is None:
            return
        try:
            self._client.close()
        finally:
            self._client = None
            self._loaded = False
            self._split = None
            path, self._lite_path = self._lite_path, None
            if path is not None:
                _release_lite(path)
            holder, self._holder = self._holder, None
            if holder is not None:
                embedded.remove_holder(holder)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- collection -------------------------------------------------------------------------

    @property
    def split(self) -> bool:
        """Whether each extra vector field needs a side collection (Milvus before 2.4)."""
        if self._split is None:
            if self.settings.is_lite:
                self._split = False
            else:
                version = str(self.client.get_server_version())
                self._split = _version_tuple(version) < (2, 4)
        return self._split

    def _side(self, field: str, collection: str | None = None) -> str:
        return f"{collection or self.collection}__{field}"

    def _collection_of(self, field: str) -> str:
        """The collection that holds vector ``field``."""
        return self._side(field) if self.split and field != IMAGE_FIELD else self.collection

    def _all_collections(self, collection: str | None = None) -> list[str]:
        """The main collection and its side collections that exist, sides first."""
        name = collection or self.collection
        if not self.split:
            return [name]
        sides = [self._side(f, name) for f in (TEXT_FIELD, FEATURE_FIELD)]
        return [c for c in sides if self.client.has_collection(c)] + [name]

    def _server_kwargs(self) -> dict[str, Any]:
        return {} if self.settings.is_lite else {"consistency_level": CONSISTENCY}

    def exists(self) -> bool:
        return bool(self.client.has_collection(self.collection))

    def meta(self) -> dict[str, Any] | None:
        """What the collection records about who made it, or None if it does not exist."""
        if not self.exists():
            return None
        props = self.client.describe_collection(self.collection).get("properties", {})
        raw = props.get(META_KEY)
        return json.loads(raw) if raw else {}

    def open(
        self,
        *,
        embedder: str,
        dim: int,
        feature_dim: int = 0,
        create: bool = True,
        extra_meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Make sure the collection exists and was built by this embedder; return its meta."""
        meta = self.meta()
        if meta is None:
            if not create:
                raise StoreError(
                    f"collection {self.collection!r} does not exist at {self.uri!r}; "
                    "index some images first (`mmsearch index PATH`)"
                )
            meta = {
                "schema_version": SCHEMA_VERSION,
                "embedder": embedder,
                "dim": dim,
                "feature_dim": feature_dim,
                "metric": self.settings.metric.value,
                "index_type": self.settings.index_type.value,
                **(extra_meta or {}),
            }
            self._create(dim, feature_dim, meta)
            return meta
        self._check(meta, embedder, dim)
        self._load()
        return meta

    def _load(self) -> None:
        """Load the collection for reads once per connection (a restarted Milvus, or a
        Milvus Lite file opened again, starts with collections released)."""
        if not self._loaded:
            for name in self._all_collections():
                self.client.load_collection(name)
            self._loaded = True

    def _check(self, meta: dict[str, Any], embedder: str, dim: int) -> None:
        if meta.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise StoreError(
                f"collection {self.collection!r} has schema version {meta['schema_version']}, "
                f"newer than this mmsearch understands ({SCHEMA_VERSION}); upgrade mmsearch"
            )
        if meta.get("embedder") != embedder or int(meta.get("dim", dim)) != dim:
            raise ProviderMismatchError(
                f"collection {self.collection!r} at {self.uri!r} was built with embedder "
                f"{meta.get('embedder')!r} ({meta.get('dim')}-d), but the configured embedder "
                f"is {embedder!r} ({dim}-d); their vectors cannot be compared. Use the same "
                "provider, pick another collection (--collection), or delete this one "
                "(`mmsearch drop`) and index again"
            )

    def _create(self, dim: int, feature_dim: int, meta: dict[str, Any]) -> None:
        vectors = {IMAGE_FIELD: dim, TEXT_FIELD: dim}
        if feature_dim:
            vectors[FEATURE_FIELD] = feature_dim
        if not self.split:
            self._create_one(self.collection, vectors, meta)
        else:
            for name, d in vectors.items():
                if name != IMAGE_FIELD:
                    self._create_one(self._side(name), {name: d}, None)
            self._create_one(self.collection, {IMAGE_FIELD: dim}, meta)
        self._loaded = True  # create_collection with index params loads it
        log.info("created collection %s at %s (%s)", self.collection, self.uri, meta)

    def _create_one(
        self, collection: str, vectors: dict[str, int], meta: dict[str, Any] | None
    ) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("origin", DataType.VARCHAR, max_length=_VARCHAR_LIMITS["origin"])
        schema.add_field("label", DataType.VARCHAR, max_length=_VARCHAR_LIMITS["label"])
        schema.add_field(
            "image_description", DataType.VARCHAR, max_length=_VARCHAR_LIMITS["image_description"]
        )
        schema.add_field("keywords", DataType.VARCHAR, max_length=_VARCHAR_LIMITS["keywords"])
        schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("width", DataType.INT32)
        schema.add_field("height", DataType.INT32)
        schema.add_field("indexed_at", DataType.INT64)
        for name, d in vectors.items():
            schema.add_field(name, DataType.FLOAT_VECTOR, dim=d)

        index_params = self.client.prepare_index_params()
        for name in vectors:
            index_params.add_index(
                field_name=name,
                index_type=self.settings.index_type.value,
                metric_type=self.settings.metric.value,
                params=self.settings.effective_index_params,
            )
        self.client.create_collection(
            collection,
            schema=schema,
            index_params=index_params,
            properties={META_KEY: json.dumps(meta, ensure_ascii=False)} if meta else {},
            **self._server_kwargs(),
        )

    def drop(self) -> bool:
        """Delete the collection; returns whether it existed."""
        if not self.exists():
            return False
        for name in self._all_collections():
            self.client.drop_collection(name)
        self._loaded = False
        return True

    def flush(self) -> None:
        """Persist what was written (servers only): unflushed rows are replayed from the log
        after a server restart, and stay invisible until then (~25 s, measured)."""
        if not self.settings.is_lite and self._client is not None and self.exists():
            for name in self._all_collections():
                self.client.flush(name)

    # -- writes -----------------------------------------------------------------------------

    def upsert(self, rows: Sequence[Row]) -> int:
        """Insert or replace rows by id: writing the same file twice never duplicates it."""
        if not rows:
            return 0
        # One id twice in one write is stored twice by the Milvus 2.3 server: keep the last.
        data = list({row.item.id: row_record(row) for row in rows}.values())
        if self.split:
            for vec in _SIDE_FIELDS:
                side = [
                    {k: v for k, v in r.items() if k not in _VECTOR_FIELDS or k == vec}
                    for r in data
                    if vec in r
                ]
                if side:
                    self.client.upsert(self._side(vec), side)
            data = [{k: v for k, v in r.items() if k not in _SIDE_FIELDS} for r in data]
        result = self.client.upsert(self.collection, data)
        return int(result.get("upsert_count", len(data)))

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            for name in self._all_collections():
                self.client.delete(name, ids=list(ids))

    # -- reads ------------------------------------------------------------------------------

    def content_hashes(self, ids: Iterable[str]) -> dict[str, str]:
        """id -> stored content hash, for the ids that are present."""
        self._load()
        ids = list(ids)
        out: dict[str, str] = {}
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            for rec in self.client.query(
                self.collection, ids=chunk, output_fields=["content_hash"]
            ):
                out[rec["id"]] = rec["content_hash"]
        return out

    def get(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[dict[str, Any]]:
        """Stored records by id (scalar fields, and vectors if asked), in the order given."""
        if not ids:
            return []
        self._load()
        fields = list(OUTPUT_FIELDS)
        vectors = []
        if with_vectors:
            vectors = [IMAGE_FIELD, TEXT_FIELD]
            if self.has_feature_field():
                vectors.append(FEATURE_FIELD)
        main = [f for f in vectors if self._collection_of(f) == self.collection]
        found = {
            r["id"]: dict(r)
            for r in self.client.query(self.collection, ids=list(ids), output_fields=fields + main)
        }
        for name in vectors:
            if name in main:
                continue
            for r in self.client.query(
                self._collection_of(name), ids=list(found), output_fields=[name]
            ):
                found[r["id"]][name] = r[name]
        return [found[i] for i in ids if i in found]

    def items(self, ids: Sequence[str]) -> list[Item]:
        return [Item.from_entity(r["id"], r) for r in self.get(ids)]

    def iter_items(self, batch_size: int = 1000) -> Iterator[Item]:
        """Every stored item (no vectors), in pages, for re-indexing and export."""
        self._load()
        it = self.client.query_iterator(
            self.collection, batch_size=batch_size, filter="", output_fields=OUTPUT_FIELDS
        )
        try:
            while page := it.next():
                yield from (Item.from_entity(r["id"], r) for r in page)
        finally:
            it.close()

    def rename(self, new_name: str) -> None:
        """Rename the collection (used to swap in a re-indexed copy in one step).

        On a server, unflushed rows are not visible under the new name (measured: count 0
        after renaming on Milvus 2.3), so flush first.
        """
        self.flush()
        for name in self._all_collections():
            suffix = name[len(self.collection) :]  # "" or "__<field>"
            self.client.rename_collection(name, new_name + suffix)
        self.collection = new_name
        self._loaded = False

    def has_feature_field(self) -> bool:
        if self.split:
            return bool(self.client.has_collection(self._side(FEATURE_FIELD)))
        fields = self.client.describe_collection(self.collection)["fields"]
        return any(f["name"] == FEATURE_FIELD for f in fields)

    def count(self) -> int:
        self._load()
        res = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"]) if res else 0

    def search(
        self,
        vectors: np.ndarray,
        *,
        field: str,
        k: int,
        filter: str = "",
    ) -> list[list[Hit]]:
        """Nearest neighbours of each query vector in ``field``; one hit list per query."""
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        self._load()
        params = dict(self.settings.effective_search_params)
        if "ef" in params:  # HNSW refuses ef < k
            params["ef"] = max(int(params["ef"]), k)
        results = self.client.search(
            self._collection_of(field),
            data=vectors.tolist(),
            anns_field=field,
            limit=k,
            filter=filter,
            output_fields=OUTPUT_FIELDS,
            search_params={"metric_type": self.settings.metric.value, "params": params},
        )
        out: list[list[Hit]] = []
        for hits in results:
            row = []
            for h in hits:
                item = Item.from_entity(h["id"], h.get("entity", {}))
                row.append(Hit(**item.__dict__, score=float(h["distance"])))
            out.append(row)
        return out

    def stats(self) -> dict[str, Any]:
        meta = self.meta()
        if meta is None:
            return {"uri": self.uri, "collection": self.collection, "exists": False, "count": 0}
        return {
            "uri": self.uri,
            "collection": self.collection,
            "exists": True,
            "count": self.count(),
            **meta,
        }
