"""The Milvus store: schema, the provider check, migrations, upserts, searches and stats.

The store knows nothing of models: it keeps vectors and the facts about each file. It owns
its schema (``schema.py``) and records which embedder made a collection (and at which
dimension), because vectors from two models are not comparable and mixing them silently
gives garbage results. A collection of an older layout is migrated when opened.

How a kind of Milvus is reached is the backend's business (``backends.py``). One thing the
backend tells the store: servers before Milvus 2.4 (the embedded one is 2.3) take one
vector field per collection, so there each extra vector field lives in a side collection
``<name>__<field>`` that repeats the scalar fields (so filters and results need no second
lookup). Writes go to the side collections first and to the main one last: the main
collection's content hash is what marks a file as indexed, so a crash between the two is
repaired by the next run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmsearch.backends import (
    Backend,
    InvalidFilterError,
    ProviderMismatchError,
    StoreError,
    backend_for,
)
from mmsearch.config import IndexType, Settings
from mmsearch.filters import literal
from mmsearch.lexical import TOKENS_FIELD, row_tokens
from mmsearch.schema import (
    FEATURE_FIELD,
    IMAGE_FIELD,
    SCHEMA_VERSION,
    SIDE_FIELDS,
    TEXT_FIELD,
    VECTOR_FIELDS,
    Hit,
    Item,
    Row,
    item_record,
    output_fields,
    row_record,
    scalar_fields,
    upgrade_record,
)

if TYPE_CHECKING:
    from mmsearch.bulkload import BulkReport

__all__ = [
    "FEATURE_FIELD",
    "IMAGE_FIELD",
    "TEXT_FIELD",
    "Hit",
    "InvalidFilterError",
    "Item",
    "KnownFile",
    "ProviderMismatchError",
    "Row",
    "Store",
    "StoreError",
]

log = logging.getLogger(__name__)

META_KEY = "mmsearch.meta"
#: Rows per page when copying a collection (migrations) or reading many ids.
PAGE = 1000
#: DiskANN's ``search_list`` may reach max(this, 10·k) on Milvus 2.3 (knowhere refuses more).
DISKANN_MAX_LIST = 200


@dataclass(frozen=True)
class KnownFile:
    """What the store knows of an indexed file, to tell whether it changed."""

    content_hash: str
    file_size: int = 0
    mtime_ns: int = 0

    def same_stat(self, facts: tuple[int, int]) -> bool:
        """Whether a file's (size, mtime_ns) are those recorded: unchanged, not even read."""
        return self.file_size > 0 and facts == (self.file_size, self.mtime_ns)


class Store:
    """One Milvus collection, reached through the backend for the configured URI."""

    def __init__(
        self,
        settings: Settings,
        *,
        backend: Backend | None = None,
        schema_version: int = SCHEMA_VERSION,
    ) -> None:
        self.settings = settings
        self.uri = settings.uri
        self.collection = settings.collection
        self.backend = backend or backend_for(settings)
        #: The layout new collections get; older ones exist only to test migrations.
        self.schema_version = schema_version
        self._version: int | None = None  # of the stored collection, once read
        self._loaded = False

    @property
    def client(self) -> Any:
        return self.backend.client

    def close(self) -> None:
        self._loaded = False
        self.backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- collection -------------------------------------------------------------------------

    @property
    def split(self) -> bool:
        """Whether each extra vector field needs a side collection."""
        return self.backend.one_vector_field

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
        sides = [self._side(f, name) for f in SIDE_FIELDS]
        return [c for c in sides if self.client.has_collection(c)] + [name]

    def exists(self) -> bool:
        return bool(self.client.has_collection(self.collection))

    def meta(self) -> dict[str, Any] | None:
        """What the collection records about who made it, or None if it does not exist."""
        if not self.exists():
            self._finish_interrupted_migration()
            if not self.exists():
                return None
        props = self.client.describe_collection(self.collection).get("properties", {})
        raw = props.get(META_KEY)
        meta = json.loads(raw) if raw else {}
        self._version = int(meta.get("schema_version", 1))
        return meta

    def open(
        self,
        *,
        embedder: str,
        dim: int,
        feature_dim: int = 0,
        create: bool = True,
        extra_meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Make sure the collection exists, has the current layout and was built by this
        embedder; return its meta."""
        meta = self.meta()
        if meta is None:
            if not create:
                raise StoreError(
                    f"collection {self.collection!r} does not exist at {self.uri!r}; "
                    "index some images first (`mmsearch index PATH`)"
                )
            meta = {
                "schema_version": self.schema_version,
                "embedder": embedder,
                "dim": dim,
                "feature_dim": feature_dim,
                "metric": self.settings.metric.value,
                "index_type": self.settings.index_type.value,
                **(extra_meta or {}),
            }
            self._create(self.collection, meta)
            self._version = self.schema_version
            return meta
        self._check(meta, embedder, dim)
        if int(meta.get("schema_version", 1)) < self.schema_version:
            meta = self._migrate(meta)
        self._load()
        return meta

    def _load(self) -> None:
        """Load the collection for reads once per connection (a restarted Milvus, or a
        Milvus Lite file opened again, starts with collections released)."""
        if not self._loaded:
            self.backend.load(self._all_collections())
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

    def _create(self, name: str, meta: dict[str, Any]) -> None:
        kind = IndexType(meta["index_type"])
        self.backend.check_collection(kind.value)  # before anything exists
        vectors = {IMAGE_FIELD: meta["dim"], TEXT_FIELD: meta["dim"]}
        if meta.get("feature_dim"):
            vectors[FEATURE_FIELD] = meta["feature_dim"]
        if not self.split:
            self._create_one(name, vectors, meta, kind)
        else:
            for field, d in vectors.items():
                if field != IMAGE_FIELD:
                    self._create_one(self._side(field, name), {field: d}, None, kind)
            self._create_one(name, {IMAGE_FIELD: meta["dim"]}, meta, kind)
        if name == self.collection:
            self._loaded = True  # create_collection with index params loads it
        log.info("created collection %s at %s (%s)", name, self.uri, meta)

    def _create_one(
        self,
        collection: str,
        vectors: dict[str, int],
        meta: dict[str, Any] | None,
        kind: IndexType,
    ) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        for f in scalar_fields(self.schema_version):
            options = f.options()
            if "element_type" in options:
                options["element_type"] = DataType[options["element_type"]]
            schema.add_field(f.name, DataType[f.dtype], **options)
        for name, d in vectors.items():
            schema.add_field(name, DataType.FLOAT_VECTOR, dim=d)

        index_params = self.client.prepare_index_params()
        for name, d in vectors.items():  # per field: IVF_PQ's m must divide its dimension
            index_params.add_index(
                field_name=name,
                index_type=kind.value,
                metric_type=meta["metric"] if meta else self.settings.metric.value,
                params=self.settings.index_params_for(kind, d),
            )
        self.client.create_collection(
            collection,
            schema=schema,
            index_params=index_params,
            properties={META_KEY: json.dumps(meta, ensure_ascii=False)} if meta else {},
            **self.backend.collection_options(),
        )

    def drop(self, collection: str | None = None) -> bool:
        """Delete the collection (and its side collections); returns whether it existed."""
        name = collection or self.collection
        if not self.client.has_collection(name):
            return False
        for part in self._all_collections(name):
            self.client.drop_collection(part)
        if name == self.collection:
            self._loaded = False
        return True

    def flush(self) -> None:
        """Persist what was written (see ``Backend.flush``)."""
        if self.backend.connected and self.exists():
            self.backend.flush(self._all_collections())

    # -- migrations -------------------------------------------------------------------------

    def _migrating(self) -> str:
        return f"{self.collection}__v{SCHEMA_VERSION}"

    def _migrate(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Copy every row into a collection of the current layout, then swap it in.

        The old collection is dropped only after the copy is complete and flushed, so an
        interrupted migration loses nothing: the next open starts it again, or finishes the
        swap if only the rename was missing (``_finish_interrupted_migration``).
        """
        old_version = int(meta.get("schema_version", 1))
        new_meta = {**meta, "schema_version": SCHEMA_VERSION}
        target = self._migrating()
        log.warning(
            "migrating collection %s from schema %d to %d (once; copies every row)",
            self.collection,
            old_version,
            SCHEMA_VERSION,
        )
        self.drop(target)  # a copy left by an interrupted migration
        self._create(target, new_meta)
        copied = 0
        for page in self._pages(with_vectors=True):
            rows = [upgrade_record(r, old_version) for r in page]
            self._write(rows, collection=target)
            copied += len(rows)
        self.backend.flush(self._all_collections(target))
        self.drop()
        self._rename(target, self.collection)
        self._version = SCHEMA_VERSION
        log.warning("migrated %d rows of %s", copied, self.collection)
        return new_meta

    def _finish_interrupted_migration(self) -> None:
        """The main collection is gone but a complete migrated copy exists: swap it in."""
        target = self._migrating()
        if self.client.has_collection(target):
            log.warning("finishing the interrupted migration of %s", self.collection)
            self._rename(target, self.collection)

    def _pages(self, *, with_vectors: bool) -> Iterator[list[dict[str, Any]]]:
        """Every stored record of this collection, a page at a time."""
        self._load()
        it = self.client.query_iterator(
            self.collection, batch_size=PAGE, filter="", output_fields=["id"]
        )
        try:
            while page := it.next():
                yield self.get([r["id"] for r in page], with_vectors=with_vectors)
        finally:
            it.close()

    def _rename(self, old: str, new: str) -> None:
        for name in self._all_collections(old):
            suffix = name[len(old) :]  # "" or "__<field>"
            self.client.rename_collection(name, new + suffix)
        self._loaded = False

    # -- writes -----------------------------------------------------------------------------

    def upsert(self, rows: Sequence[Row]) -> int:
        """Insert or replace rows by id: writing the same file twice never duplicates it."""
        if not rows:
            return 0
        # One id twice in one write is stored twice by the Milvus 2.3 server: keep the last.
        records = list({row.item.id: row_record(row) for row in rows}.values())
        return self._write(records)

    def _write(self, records: list[dict[str, Any]], collection: str | None = None) -> int:
        """Upsert stored-form records: side collections first, the main one last."""
        name = collection or self.collection
        keep = {"id", *(f.name for f in scalar_fields(self.schema_version))}
        records = [{k: v for k, v in r.items() if k in keep or k in VECTOR_FIELDS} for r in records]
        if TOKENS_FIELD in keep:  # the terms follow the texts, whoever changed them
            records = [{**r, TOKENS_FIELD: row_tokens(r)} for r in records]
        if self.split:
            for vec in SIDE_FIELDS:
                side = [
                    {k: v for k, v in r.items() if k not in VECTOR_FIELDS or k == vec}
                    for r in records
                    if vec in r
                ]
                if side:
                    self.client.upsert(self._side(vec, name), side)
            records = [{k: v for k, v in r.items() if k not in SIDE_FIELDS} for r in records]
        result = self.client.upsert(name, records)
        return int(result.get("upsert_count", len(records)))

    def bulk_write(
        self, rows: Iterable[Row], *, method: str = "auto", expected_rows: int | None = None
    ) -> BulkReport:
        """Write many rows, by upserts or by Milvus's bulk import, whichever is faster for
        their number (``bulkload.write``: the entry point, its guarantees and its measured
        crossover). A file indexed before is replaced, never stored twice."""
        from mmsearch import bulkload

        return bulkload.write(self, rows, method=method, expected_rows=expected_rows)

    def stored_scalars(self, items: Sequence[Item]) -> list[dict[str, Any]]:
        """Each item's scalar fields as this collection stores them (its layout's fields,
        with the lexical terms computed from the texts), as ``_write`` writes them: what
        bulk import puts beside the vectors."""
        keep = [f.name for f in scalar_fields(self.schema_version)]
        records = [item_record(it) for it in items]
        if TOKENS_FIELD in keep:
            records = [{**r, TOKENS_FIELD: row_tokens(r)} for r in records]
        return [{k: r[k] for k in ("id", *keep)} for r in records]

    def vector_layout(self) -> dict[str, list[str]]:
        """Collection name -> the vector fields it holds, in the order writes go (side
        collections first, the main one last: its rows mark files as indexed)."""
        fields = [IMAGE_FIELD, TEXT_FIELD] + ([FEATURE_FIELD] if self.has_feature_field() else [])
        out: dict[str, list[str]] = {}
        for field in reversed(fields):
            out.setdefault(self._collection_of(field), []).append(field)
        main = out.pop(self.collection)
        return {**out, self.collection: sorted(main, key=fields.index)}

    def delete(self, ids: Sequence[str]) -> None:
        if ids:
            for name in self._all_collections():
                self.client.delete(name, ids=list(ids))

    def set_file_facts(self, facts: dict[str, tuple[int, int]]) -> None:
        """Record new (size, mtime_ns) for files whose content did not change (a file
        touched or copied over with the same bytes), so the next run skips them by stat."""
        self.update({i: {"file_size": s, "mtime_ns": m} for i, (s, m) in facts.items()})

    def update(self, changes: Mapping[str, Mapping[str, Any]]) -> int:
        """Set scalar fields of stored rows (id -> field -> value), keeping their vectors:
        Milvus has no partial update, so each row is read whole and written back (its
        ``lex_tokens`` follow the new texts). Rows deleted meanwhile are skipped; returns
        the number written."""
        written = 0
        ids = list(changes)
        for start in range(0, len(ids), PAGE):
            records = self.get(ids[start : start + PAGE], with_vectors=True)
            for r in records:
                r.update(changes[r["id"]])
            written += self._write(records) if records else 0
        return written

    # -- reads ------------------------------------------------------------------------------

    def ids_under(self, folder: Path) -> dict[str, str]:
        """id -> origin of every stored file under ``folder`` (an absolute, resolved path).

        Milvus matches only prefixes, with ``%`` as its wildcard: the pattern stops before
        any ``%`` in the path, and the exact prefix is checked here.
        """
        prefix = str(folder).rstrip("/") + "/"
        pattern = prefix.split("%", 1)[0] + "%"
        self._load()
        found: dict[str, str] = {}
        it = self.client.query_iterator(
            self.collection,
            batch_size=PAGE,
            filter=f"origin like {literal(pattern)}",
            output_fields=["origin"],
        )
        try:
            while page := it.next():
                found.update({r["id"]: r["origin"] for r in page if r["origin"].startswith(prefix)})
        finally:
            it.close()
        return found

    def ids_where(self, filter: str) -> list[str]:
        """The ids of every row matching ``filter``, read a page at a time."""
        self._load()
        found: list[str] = []
        it = self.client.query_iterator(
            self.collection, batch_size=PAGE, filter=filter, output_fields=["id"]
        )
        try:
            while page := it.next():
                found += [r["id"] for r in page]
        finally:
            it.close()
        return found

    def newest(self, filter: str = "", *, limit: int | None = None) -> list[Hit]:
        """Items matching ``filter``, newest photo first (unknown dates last), as hits of
        score 0: browsing by filters alone. Milvus cannot sort, so the dates of every match
        are read (a page at a time) and sorted here."""
        self._load()
        dated: list[tuple[int, str]] = []
        it = self.client.query_iterator(
            self.collection, batch_size=PAGE, filter=filter, output_fields=["taken_at"]
        )
        try:
            while page := it.next():
                dated += [(int(r["taken_at"]) or -(2**62), r["id"]) for r in page]
        finally:
            it.close()
        dated.sort(reverse=True)
        ids = [i for _, i in (dated if limit is None else dated[:limit])]
        return [Hit(**item.__dict__, score=0.0) for item in self.items(ids)]

    def by_content(self, hashes: Sequence[str]) -> dict[str, dict[str, Any]]:
        """content hash -> one stored record with those bytes (vectors included): a file
        moved, renamed or copied keeps the vectors and description it was given."""
        wanted = sorted(set(hashes))
        if not wanted:
            return {}
        self._load()
        expr = "content_hash in [" + ", ".join(literal(h) for h in wanted) + "]"
        # Eventually: asked after this session's writes, Session waited ~230 ms for the
        # server's clock each batch; a row written a moment ago and missed here only costs
        # embedding a copy again. (Most batches find nothing, and read no vectors.)
        found = self.client.query(
            self.collection,
            filter=expr,
            output_fields=["content_hash"],
            consistency_level="Eventually",
        )
        ids = {r["content_hash"]: r["id"] for r in found}
        records = self.get(list(ids.values()), with_vectors=True)
        return {r["content_hash"]: r for r in records}

    def known_files(self, ids: Iterable[str]) -> dict[str, KnownFile]:
        """What the store knows of each id that is present: its hash, size and mtime."""
        self._load()
        ids = list(ids)
        fields = ["content_hash", "file_size", "mtime_ns"]
        out: dict[str, KnownFile] = {}
        for start in range(0, len(ids), PAGE):
            chunk = ids[start : start + PAGE]
            for rec in self.client.query(self.collection, ids=chunk, output_fields=fields):
                out[rec["id"]] = KnownFile(*(rec[f] for f in fields))
        return out

    def get(self, ids: Sequence[str], *, with_vectors: bool = False) -> list[dict[str, Any]]:
        """Stored records by id (scalar fields, and vectors if asked), in the order given."""
        if not ids:
            return []
        self._load()
        fields = output_fields(self._stored_version())
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

    def _stored_version(self) -> int:
        """The layout of the stored collection (older only before ``open`` migrates it)."""
        if self._version is None:
            self.meta()
        return self._version or self.schema_version

    def items(self, ids: Sequence[str]) -> list[Item]:
        """Stored items by id (no vectors), in the order given, a page of ids at a time."""
        records = []
        for start in range(0, len(ids), PAGE):
            records += self.get(ids[start : start + PAGE])
        return [Item.from_entity(r["id"], r) for r in records]

    def iter_items(self) -> Iterator[Item]:
        """Every stored item (no vectors), in pages, for re-indexing and export."""
        for page in self._pages(with_vectors=False):
            yield from (Item.from_entity(r["id"], r) for r in page)

    def rename(self, new_name: str) -> None:
        """Rename the collection (used to swap in a re-indexed copy in one step).

        On a server, unflushed rows are not visible under the new name (measured: count 0
        after renaming on Milvus 2.3), so flush first.
        """
        self.flush()
        self._rename(self.collection, new_name)
        self.collection = new_name

    def collections(self) -> list[str]:
        """The Milvus collections this one is made of (side collections first)."""
        return self._all_collections()

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
        min_ef: int = 0,
    ) -> list[list[Hit]]:
        """Nearest neighbours of each query vector in ``field``; one hit list per query.
        ``min_ef`` widens a graph search (HNSW's ``ef``; DiskANN's ``search_list`` as far as
        Milvus allows) for queries unlike the stored vectors (texts mapped into an image
        space), which need a wider search for the same recall. IVF's ``nprobe`` stays."""
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        self._load()
        params = dict(self.settings.effective_search_params)
        if "ef" in params:  # HNSW refuses ef < k
            params["ef"] = max(int(params["ef"]), k, min_ef)
        if "search_list" in params:  # DiskANN refuses one outside [k, max(200, 10·k)]
            wanted = max(int(params["search_list"]), k, min_ef)
            params["search_list"] = min(wanted, max(DISKANN_MAX_LIST, 10 * k))
        results = self.client.search(
            self._collection_of(field),
            data=vectors.tolist(),
            anns_field=field,
            limit=k,
            filter=filter,
            output_fields=output_fields(self._stored_version()),
            search_params={"metric_type": self.settings.metric.value, "params": params},
        )
        return [[_hit(h) for h in hits] for hits in results]

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


def _hit(result: dict[str, Any]) -> Hit:
    item = Item.from_entity(result["id"], result.get("entity", {}))
    return Hit(**item.__dict__, score=float(result["distance"]))
