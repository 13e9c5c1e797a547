"""Writing many rows at once: upserts, or Milvus's bulk import where that is faster.

Why: ingest upserts a batch of rows per call, and on the embedded Milvus 2.3 server every
row travels through the proxy and the message log three times (the main collection and
its two side collections). Milvus's bulk import reads files the server can see and writes
sealed segments directly. ``write`` (``Store.bulk_write``) picks the faster for the number
of rows, at the crossover measured by ``bench/bulkload.py`` (``BULK_IMPORT_MIN_ROWS``).

The entry point for callers that write large runs (the distributed ingest's writers, a
migration, a restore) is ``write(store, rows, method="auto", expected_rows=None)``: pass
an iterable of ``Row``s (it is read once, ``FILE_ROWS`` at a time, so a million rows never
sit in memory together) and get a ``BulkReport``.

Where bulk import works (``Backend.import_target``): the embedded server only. Its storage
is local, so it reads Parquet files written in its folder (``DIR/bulk-import``). Milvus
Lite has no import, and a server by URI reads import files only from its own object
storage (MinIO/S3), whose credentials mmsearch does not hold: both get upserts.

Guarantees (bulk import inserts; it does not replace):

- A row whose id is stored already (in any of the collections: a crash may have left a
  side collection ahead of the main one) is upserted, never imported, so writing a folder
  again replaces its rows instead of doubling them. An empty collection skips the check.
- Side collections are imported before the main one (whose rows mark a file as indexed),
  as upserts are written.
- ``write`` returns only once every imported row is visible to a Strong read: an import
  completes some seconds before its segments are loaded, and a check made meanwhile would
  take the rows for absent and import them again.
- A run that was killed leaves its folder behind; the next run waits for that run's
  import tasks to finish and their rows to be visible before checking ids, then removes it.
- Not guarded: two processes bulk-writing the same new ids at the same moment. Writers
  given disjoint rows (as a distributed ingest's are) are safe.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmsearch import backends
from mmsearch.backends import ImportTarget, StoreError
from mmsearch.schema import Row, scalar_fields

if TYPE_CHECKING:
    from mmsearch.store import Store

log = logging.getLogger(__name__)

#: From this many rows on, bulk import is used (where the store allows it). Measured by
#: bench/bulkload.py on the embedded server, each method on a fresh server in one run
#: (bench/results/bulkload-20261201T080036.json), time until searchable (index built and
#: served, Strong counts right): 10k rows 32.4 s imported vs 41.4 s upserted (1.28x),
#: 100k rows 155 s vs 449 s (2.9x; write calls 1,523 vs 684 rows/s). An import has a fixed
#: cost of ~20 s (tasks, segment hand-off): in a smoke run at 3k rows upserts were ahead
#: (21.4 vs 23.6 s), so the line sits at the smallest size measured where import won.
BULK_IMPORT_MIN_ROWS = 10_000
#: Rows per import file (and per presence check): ~0.35 GB of Parquet for the widest side
#: collection with the offline provider's 1,384-d features; bounds memory and disk.
FILE_ROWS = 50_000
#: Rows per upsert call on the upsert path (ingest writes its batch of 32 per call).
UPSERT_BATCH = 1000
#: Ids per presence query.
ID_PAGE = 1000
#: One id in this many of each file is read back before ``write`` returns.
SAMPLE_EVERY = 5000
POLL_SECONDS = 0.5
#: Seconds to wait for an import task, and then for its rows to be visible.
IMPORT_TIMEOUT = 3 * 3600.0
VISIBLE_TIMEOUT = 900.0

#: Milvus's ImportState values (common.proto).
PENDING, FAILED, STARTED, PERSISTED, COMPLETED, FAILED_CLEANED, FLUSHED = 0, 1, 2, 5, 6, 7, 8
DURABLE = {PERSISTED, FLUSHED, COMPLETED}
FINAL = {COMPLETED, FAILED, FAILED_CLEANED}

_ARROW_TYPES = {
    "VARCHAR": "string",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool_",
    "DOUBLE": "float64",
    "FLOAT": "float32",
}


@dataclass
class BulkReport:
    """What a bulk write did: the method, distinct rows written, how many were imported
    and upserted (a rerun upserts what is stored already), import files, seconds."""

    method: str
    rows: int = 0
    imported: int = 0
    upserted: int = 0
    files: int = 0
    seconds: float = 0.0


def write(
    store: Store,
    rows: Iterable[Row],
    *,
    method: str = "auto",
    expected_rows: int | None = None,
) -> BulkReport:
    """Write ``rows`` into ``store`` (opened), by upserts or bulk import.

    ``method``: "auto" (bulk import from ``BULK_IMPORT_MIN_ROWS`` rows on, where the store
    allows it), "upsert" or "import" (a ``StoreError`` where the store cannot import).
    ``expected_rows`` lets "auto" choose at once; otherwise it holds up to
    ``BULK_IMPORT_MIN_ROWS`` rows in memory until it knows which side of the line it is on.
    """
    if method not in ("auto", "upsert", "import"):
        raise ValueError(f"method must be auto, upsert or import, not {method!r}")
    began = time.perf_counter()
    target = store.backend.import_target()
    if method == "import" and target is None:
        raise StoreError(
            f"bulk import is not available for {store.uri!r}: only the embedded server "
            "reads import files mmsearch writes (Milvus Lite has none; a server reads them "
            "from its own object storage). Use method='upsert'"
        )
    stream: Iterator[Row] = iter(rows)
    use_import = target is not None and method != "upsert"
    if method == "auto" and use_import and (expected_rows or 0) < BULK_IMPORT_MIN_ROWS:
        head = list(islice(stream, BULK_IMPORT_MIN_ROWS))
        use_import = len(head) >= BULK_IMPORT_MIN_ROWS  # fewer: upserts are sooner
        stream = chain(head, stream)
    importer = None if target is None else _Importer(store, target)
    if importer is not None and use_import:
        report = importer.run(stream)
    else:
        if importer is not None:  # an upsert racing a killed run's import would double
            importer.finish_abandoned()
        report = _upsert_all(store, stream)
    report.seconds = round(time.perf_counter() - began, 3)
    return report


def _upsert_all(store: Store, rows: Iterator[Row]) -> BulkReport:
    report = BulkReport("upsert")
    while batch := list(islice(rows, UPSERT_BATCH)):
        written = store.upsert(batch)
        report.rows += written
        report.upserted += written
    return report


def _batches(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    while batch := list(islice(rows, size)):
        yield batch


@dataclass
class _Chunk:
    """One chunk's files and import tasks, by collection, and the ids read back."""

    number: int
    files: dict[str, Path]
    samples: dict[str, list[str]]
    tasks: dict[str, int] = field(default_factory=dict)


class _Importer:
    """One bulk-import run: its folder (locked while it runs), its chunks in flight."""

    def __init__(self, store: Store, target: ImportTarget) -> None:
        self.store = store
        self.client = store.client
        self.target = target
        self.layout = store.vector_layout()
        self.main = store.collection
        self.folder = target.folder / f"run-{uuid.uuid4().hex}"
        self.report = BulkReport("import")
        self.in_flight: list[_Chunk] = []
        self.done: list[_Chunk] = []
        self.seen: set[str] = set()
        self.again: dict[str, Row] = {}  # ids met twice in one run: upserted at the end

    def run(self, rows: Iterator[Row]) -> BulkReport:
        self.target.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder.mkdir(mode=0o700)
        with open(self.folder / ".lock", "w") as lock, _Rpc(self.target) as self.rpc:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._finish_abandoned_runs()
                empty = all(self._count(name) == 0 for name in self.layout)
                for number, batch in enumerate(_batches(rows, FILE_ROWS)):
                    fresh = self._split_known(batch, check=not empty)
                    if fresh:
                        self._start(number, fresh)
                    self._pump(keep=1)  # writes the next file while this one imports
                self._pump(keep=0)
                self._wait_visible(self.done)
                self._upsert(list(self.again.values()))
            finally:
                shutil.rmtree(self.folder, ignore_errors=True)
        self.report.rows = self.report.imported + self.report.upserted
        return self.report

    def _split_known(self, batch: list[Row], *, check: bool) -> list[Row]:
        """The rows to import: distinct ids not stored yet. Stored ones are upserted now;
        an id met again later in this run is upserted at the end (over its import)."""
        fresh: dict[str, Row] = {}
        for row in batch:
            if row.item.id in self.seen:
                self.again[row.item.id] = row
            else:
                fresh[row.item.id] = row
        self.seen.update(fresh)
        stored = self._stored(list(fresh)) if check else set()
        self._upsert([fresh.pop(i) for i in stored])
        return list(fresh.values())

    def _stored(self, ids: list[str]) -> set[str]:
        """The ids present in any of the collections."""
        found: set[str] = set()
        for name in self.layout:
            for s in range(0, len(ids), ID_PAGE):
                page = ids[s : s + ID_PAGE]
                found |= {r["id"] for r in self.client.query(name, ids=page, output_fields=["id"])}
        return found

    def _upsert(self, rows: list[Row]) -> None:
        for s in range(0, len(rows), UPSERT_BATCH):
            self.report.upserted += self.store.upsert(rows[s : s + UPSERT_BATCH])

    def _count(self, name: str) -> int:
        res = self.client.query(
            name, filter="", output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(res[0]["count(*)"]) if res else 0

    def _start(self, number: int, rows: list[Row]) -> None:
        """Write the chunk's files and import its side collections (the main one follows
        once they are durable, in ``_pump``)."""
        files = write_files(self.store, rows, self.folder, number, self.layout)
        samples = {}
        for name in files:
            ids = [r.item.id for r in rows if _has_vectors(r, self.layout[name])]
            samples[name] = sorted({*ids[::SAMPLE_EVERY], ids[-1]})
        chunk = _Chunk(number, files, samples)
        for name in files:
            if name != self.main:
                chunk.tasks[name] = self.rpc.submit(name, files[name])
        if not chunk.tasks:
            chunk.tasks[self.main] = self.rpc.submit(self.main, files[self.main])
        self.in_flight.append(chunk)
        self.report.imported += len(rows)
        self.report.files += len(files)

    def _pump(self, *, keep: int) -> None:
        """Advance the chunks in flight until at most ``keep`` remain: the main collection's
        import starts once the side imports are durable; a finished chunk's files go."""
        deadline = time.monotonic() + IMPORT_TIMEOUT
        while len(self.in_flight) > keep:
            for chunk in list(self.in_flight):
                states = {name: self.rpc.state(task) for name, task in chunk.tasks.items()}
                if self.main not in chunk.tasks and all(s in DURABLE for s in states.values()):
                    chunk.tasks[self.main] = self.rpc.submit(self.main, chunk.files[self.main])
                elif states.get(self.main) == COMPLETED and all(
                    s == COMPLETED for s in states.values()
                ):
                    for path in chunk.files.values():
                        path.unlink(missing_ok=True)
                    self.in_flight.remove(chunk)
                    self.done.append(chunk)
            if time.monotonic() > deadline:
                raise StoreError(f"bulk import into {self.main!r} did not finish in time")
            if len(self.in_flight) > keep:
                time.sleep(POLL_SECONDS)

    def _wait_visible(self, chunks: list[_Chunk]) -> None:
        """Until a Strong read finds each chunk's sample ids in each of its collections."""
        deadline = time.monotonic() + VISIBLE_TIMEOUT
        for chunk in chunks:
            for name, ids in chunk.samples.items():
                while True:
                    found = self.client.query(
                        name, ids=ids, output_fields=["id"], consistency_level="Strong"
                    )
                    if len(found) >= len(ids):
                        break
                    if time.monotonic() > deadline:
                        raise StoreError(f"imported rows of {name!r} not visible in time")
                    time.sleep(POLL_SECONDS)

    def finish_abandoned(self) -> None:
        """``_finish_abandoned_runs`` for a write that upserts (if any run was left)."""
        if any(self.target.folder.glob("run-*")):
            with _Rpc(self.target) as self.rpc:
                self._finish_abandoned_runs()

    def _finish_abandoned_runs(self) -> None:
        """Wait for the import tasks of runs killed before they finished (their folders
        are left and unlocked), until their rows are visible; then remove the folders."""
        for folder in sorted(self.target.folder.glob("run-*")):
            if folder == self.folder:
                continue
            with open(folder / ".lock", "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # another process's run, still going
                chunks = self.rpc.finish_tasks_reading(folder, list(self.layout))
                if chunks:
                    log.warning("waiting for %d imports of an interrupted bulk write", len(chunks))
                self._wait_visible(chunks)
            shutil.rmtree(folder, ignore_errors=True)


def write_files(
    store: Store, rows: list[Row], folder: Path, number: int, layout: dict[str, list[str]]
) -> dict[str, Path]:
    """Write ``rows`` as one Parquet file per collection of ``layout`` (collection ->
    vector fields), in the columns Milvus 2.3's Parquet import reads: every scalar field of
    the layout, vectors as lists of float32, arrays as lists. Returns collection -> file
    (none for a collection no row has vectors for: rows without features)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = store.stored_scalars([r.item for r in rows])
    columns: dict[str, Any] = {"id": pa.array([r["id"] for r in records], pa.string())}
    for f in scalar_fields(store.schema_version):
        values = [r[f.name] for r in records]
        kind = pa.list_(pa.string()) if f.dtype == "ARRAY" else getattr(pa, _ARROW_TYPES[f.dtype])()
        columns[f.name] = pa.array(values, kind)
    out: dict[str, Path] = {}
    for name, vector_fields in layout.items():
        # A row without a feature vector has no row in the feature side (as upserts skip it).
        keep = [i for i, r in enumerate(rows) if _has_vectors(r, vector_fields)]
        if not keep:
            continue
        arrays = (
            columns if len(keep) == len(rows) else {k: v.take(keep) for k, v in columns.items()}
        )
        arrays = {
            **arrays,
            **{v: _vector_column([getattr(r, v) for r in rows], keep) for v in vector_fields},
        }
        path = folder / f"{number:05d}-{name}.parquet"
        pq.write_table(pa.table(arrays), path, compression="none")
        out[name] = path
    return out


def _has_vectors(row: Row, fields: list[str]) -> bool:
    return all(getattr(row, f) is not None for f in fields)


def _vector_column(vectors: list[Any], keep: list[int]) -> Any:
    """Rows ``keep`` of ``vectors`` as an Arrow list<float32> column, without Python floats."""
    import pyarrow as pa

    matrix = np.stack([np.asarray(vectors[i], np.float32) for i in keep]) if keep else None
    if matrix is None:
        return pa.array([], pa.list_(pa.float32()))
    offsets = np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(matrix.reshape(-1)))


class _Rpc:
    """Milvus's bulk-insert RPCs (Import, GetImportState, ListImportTasks) over gRPC, as
    the embedded supervisor speaks to Milvus: pymilvus offers them only in its ORM
    (``utility.do_bulk_insert``), deprecated and to be removed in pymilvus 3.1."""

    def __init__(self, target: ImportTarget) -> None:
        self.target = target
        self.metadata = [("authorization", base64.b64encode(target.token.encode()).decode())]

    def __enter__(self) -> _Rpc:
        import grpc
        from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc

        self.pb = milvus_pb2
        self.channel = grpc.insecure_channel(self.target.address)
        self.stub = milvus_pb2_grpc.MilvusServiceStub(self.channel)
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()

    def _call(self, method: str, request: Any, what: str, *, retry: bool = False) -> Any:
        """One RPC, its gRPC failure as a ``StoreError``. Reads are retried while Milvus is
        unreachable (restarting after a crash); an Import is not, as a second one could
        import the file twice: the run stops, and the next one waits for the imports the
        server took before it looks at what is stored."""
        import grpc

        rpc = getattr(self.stub, method)
        try:
            return backends.while_unreachable(
                lambda: rpc(request, metadata=self.metadata, timeout=60), retry, what
            )
        except grpc.RpcError as exc:
            raise StoreError(
                f"bulk import failed ({what}): Milvus at {self.target.address}: "
                f"{exc.details() or exc.code().name}. Run the command again: it waits "
                "for the imports Milvus took and skips the rows stored"
            ) from None

    def _check(self, status: Any, what: str) -> None:
        if status.code != 0 or status.error_code != 0:
            raise StoreError(f"bulk import failed ({what}): {status.reason}")

    def submit(self, collection: str, path: Path) -> int:
        """Start importing one file into ``collection``; the task's id."""
        request = self.pb.ImportRequest(collection_name=collection, files=[str(path)])
        reply = self._call("Import", request, f"import {path.name} into {collection}")
        self._check(reply.status, f"import {path.name} into {collection}")
        return int(reply.tasks[0])

    def state(self, task: int) -> int:
        """The task's ImportState; a ``StoreError`` with Milvus's reason if it failed."""
        request = self.pb.GetImportStateRequest(task=task)
        reply = self._call("GetImportState", request, f"state of task {task}", retry=True)
        self._check(reply.status, f"state of import task {task}")
        if reply.state in (FAILED, FAILED_CLEANED):
            reason = {kv.key: kv.value for kv in reply.infos}.get("failed_reason", "")
            raise StoreError(f"bulk import task {task} failed: {reason}")
        return int(reply.state)

    def finish_tasks_reading(self, folder: Path, collections: list[str]) -> list[_Chunk]:
        """Wait until every task importing a file of ``folder`` has ended; the completed
        ones, with ids sampled from their files to check that their rows are visible."""
        import pyarrow.parquet as pq

        chunks = []
        for name in collections:
            request = self.pb.ListImportTasksRequest(collection_name=name, limit=0)
            reply = self._call("ListImportTasks", request, f"tasks of {name}", retry=True)
            self._check(reply.status, f"import tasks of {name}")
            for task in reply.tasks:
                path = {kv.key: kv.value for kv in task.infos}.get("files", "")
                if not path.startswith(f"{folder}/"):
                    continue
                deadline = time.monotonic() + IMPORT_TIMEOUT
                with contextlib.suppress(StoreError):  # failed: nothing to wait for
                    while self.state(task.id) not in FINAL and time.monotonic() < deadline:
                        time.sleep(POLL_SECONDS)
                    if self.state(task.id) == COMPLETED and Path(path).exists():
                        ids = pq.read_table(path, columns=["id"])["id"].to_pylist()
                        sample = sorted({*ids[::SAMPLE_EVERY], ids[-1]}) if ids else []
                        chunks.append(_Chunk(-1, {}, {name: sample}))
        return chunks
