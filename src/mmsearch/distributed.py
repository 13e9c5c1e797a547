"""Ingest on a Ray cluster (Ray Data): the local runner's stages, spread over processes.

The pipeline is the one ``ingest.py`` describes, with each stage a Ray Data operator, as in
Ray's own multimodal example (``doggos/embed.py``):

- read: tasks that stat, hash and decode files (``Reader``), on any CPU of the cluster;
- map: a pool of model actors, each loading its models once (``Mapper``), with a GPU each
  where the cluster has them; they also look up known content (moved files reuse vectors);
- write: a pool of writer actors that upsert into the Milvus server (``Writer``).

The driver lists the files, asks the store what it knows of them once, and streams the
dataset through; it counts each batch's report into one as batches finish, so the report
and the progress bar are the local runner's.

Guarantees (README, "Indexing on Ray"): ids come from file paths and writes are upserts,
so a batch written twice is stored once. Ray restarts a killed actor and retries its batch
(``max_restarts``/``max_task_retries`` are unlimited for Ray Data's actor pools); a killed
driver loses only the batches not yet written, and a rerun skips what is stored and
unchanged. Either way every file ends up indexed exactly once.

A Milvus Lite file is refused: it is one process's file, and the actors are many
processes. An ``embedded:`` store works on a local Ray (the actors attach to the one
server, as any mmsearch process does); a remote cluster needs a server URI it can reach.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from mmsearch import bulkload, enrich
from mmsearch.config import Settings
from mmsearch.ingest import (
    Ingestor,
    IngestReport,
    Mapped,
    Mapper,
    ProgressCallback,
    Reader,
    Writer,
    map_batch,
    unchanged_by_stat,
    write_mapped,
)
from mmsearch.providers import Describer, Embedder, get_describer, get_embedder
from mmsearch.sources import SourceItem
from mmsearch.store import KnownFile, Row, Store, StoreError

log = logging.getLogger(__name__)

#: CPUs a read task asks for: reading is mostly waiting on disk and decoding in C, and on a
#: 2-core machine whole-CPU tasks beside the actors left nothing to run on (the dataset hung).
READ_CPUS = 0.25


class RayError(RuntimeError):
    """Ray is missing, or the cluster cannot be reached: a user error, said in one line."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run goes."""

    #: ``None``: a local Ray on this machine; ``"auto"``: the cluster this machine is in;
    #: ``"ray://host:10001"``: a remote cluster through Ray Client.
    address: str | None = None
    #: Model actors; ``None``: one per GPU where the cluster has GPUs, else one per 2 CPUs.
    actors: int | None = None
    #: CPUs each model actor asks for (its model threads); ``None``: the cluster's CPUs
    #: less the readers' share, split between the actors.
    actor_cpus: float | None = None
    #: Writer actors (each holds one connection to the Milvus server).
    writers: int = 1


class RayIngestor(Ingestor):
    """``Ingestor`` with the batches run on Ray: same listing, skips, report and removal
    of files gone from a folder; only ``_run_batches`` differs."""

    def __init__(
        self,
        settings: Settings,
        options: RayOptions | None = None,
        *,
        store: Store | None = None,
        embedder: Embedder | None = None,
        describer: Describer | None = None,
    ) -> None:
        self.options = options or RayOptions()
        refuse_lite(settings, "--ray")
        check_reachable(self.options.address)  # before any listing, store or progress bar
        super().__init__(settings, store=store, embedder=embedder, describer=describer)

    def _run_batches(
        self,
        files: list[tuple[str, SourceItem]],
        report: IngestReport,
        progress: ProgressCallback | None,
    ) -> None:
        if not files:
            return
        known = self.writer.known([i for i, _ in files])
        # Files unchanged by size and time are counted here: a rerun over an unchanged
        # folder starts no workers (the model actors alone take ~12 s to start).
        same = unchanged_by_stat(files, known)
        report.unchanged += len(same)
        if progress:
            progress(len(same), len(files))
        items = [{"file": _File(i, s, known.get(i))} for i, s in files if i not in same]
        if not items:
            return
        # At least this many files are new: from bulkload's crossover on, and where the
        # store can import, rows come back to this process and go in by bulk import.
        new = len(files) - len(known)
        bulk = new >= bulkload.BULK_IMPORT_MIN_ROWS and self.store.backend.import_target()
        with _ray_session(self.options.address):
            parts = _stream(self.settings, self.options, items, self._open_args(), bool(bulk))
            counted = self._count(parts, report, progress, len(same), len(files))
            if bulk:
                written = self.store.bulk_write(_rows_of(counted, self.writer), expected_rows=new)
                report.indexed += written.rows
            else:
                for _ in counted:
                    pass
        _see_all_writes(self.store)

    @staticmethod
    def _count(
        parts: Iterator[tuple[IngestReport, Mapped | None]],
        report: IngestReport,
        progress: ProgressCallback | None,
        done: int,
        total: int,
    ) -> Iterator[Mapped | None]:
        """Each batch's report counted into ``report`` (and the progress bar, from ``done``
        files) as it comes."""
        for part, mapped in parts:
            part_total, part.total = part.total, 0
            report.add(part)
            done += part_total
            if progress:
                progress(done, total)
            yield mapped

    def _open_args(self) -> dict[str, Any]:
        """What the actors pass to ``Store.open`` (the driver created the collection)."""
        embedder = self.mapper.embedder
        return {"embedder": embedder.name, "dim": embedder.dim, "create": False}


def _rows_of(mapped: Iterator[Mapped | None], writer: Writer) -> Iterator[Row]:
    """The new rows of each batch, for a bulk write; its file facts and moved files' old
    rows are written at once, as the writer actors would."""
    for batch in mapped:
        assert batch is not None
        write_mapped(Mapped([], batch.refresh, batch.moved), writer, IngestReport())
        yield from batch.rows


def _see_all_writes(store: Store) -> None:
    """The actors wrote through clients of their own, and this process reads at Session
    consistency (its own writes at once, others' a moment later: right after a run, a
    count saw 32 of 64 rows). One Strong read per collection waits until the server has
    applied them, so what follows (removing gone files, the OCR pass, the caller) sees all.
    """
    for name in store.collections():
        store.client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")


def refuse_lite(settings: Settings, what: str) -> None:
    """A Milvus Lite file is one process's: say so instead of corrupting or hanging."""
    if settings.is_lite:
        raise StoreError(
            f"{what} needs a Milvus server ({settings.uri} is a Milvus Lite file, which only "
            "one process can use): use the embedded server (--uri embedded:DIR, the default) "
            "or a server URI"
        )


def _stream(
    settings: Settings,
    options: RayOptions,
    items: list[dict[str, Any]],
    open_args: dict,
    bulk: bool = False,
) -> Iterator[tuple[IngestReport, Mapped | None]]:
    """Run the dataset; yield each batch's report as its rows are written, or (``bulk``)
    with its rows, which the caller writes."""
    import ray

    actors, actor_cpus, gpus = _pool_shape(options, ray.cluster_resources())
    bs = settings.batch_size
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // bs))
    ds = ds.map_batches(
        _read_batch, fn_kwargs={"settings": settings}, batch_size=bs, num_cpus=READ_CPUS
    )
    threads = max(1, round(actor_cpus))
    ds = ds.map_batches(
        _ModelStage,
        fn_constructor_kwargs={"settings": settings, "threads": threads},
        batch_size=bs,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=actor_cpus,
        num_gpus=gpus,
    )
    if not bulk:
        ds = ds.map_batches(
            _WriteStage,
            fn_constructor_kwargs={"settings": settings, "open_args": open_args},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=options.writers),
            num_cpus=READ_CPUS,
        )
    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
        mapped = out["mapped"] if bulk else [None] * len(out["report"])
        yield from zip(out["report"], mapped, strict=True)


def _pool_shape(options: RayOptions, resources: dict[str, float]) -> tuple[int, float, int]:
    """(model actors, CPUs each, GPUs each) for the cluster's resources."""
    cpus, gpus = float(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    actors = options.actors or (gpus if gpus else max(1, int(cpus // 2)))
    # Leave the readers and the writers their share, or the dataset waits for CPUs forever.
    spare = cpus - READ_CPUS * (1 + options.writers)
    actor_cpus = options.actor_cpus or max(0.25, round(spare / actors, 2))
    if actor_cpus * actors > spare:
        raise RayError(
            f"{actors} model actors x {actor_cpus} CPUs leave no CPU for reading and writing "
            f"on a cluster of {cpus:g} CPUs: ask for fewer actors or fewer CPUs each"
        )
    return actors, actor_cpus, 1 if gpus and gpus >= actors else 0


@dataclass(frozen=True)
class _File:
    """A file to read, with what the store knows of it (one object: Ray Data would turn a
    column of ``None`` into NaNs)."""

    id: str
    item: SourceItem
    known: KnownFile | None


def _objects(values: list[Any]) -> np.ndarray:
    """A column of Python objects (Ray Data pickles them between stages)."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def _read_batch(batch: dict[str, np.ndarray], settings: Settings) -> dict[str, np.ndarray]:
    """Read stage (a task): files to ``Work`` items, decoded where they changed."""
    reader = Reader(settings)
    works = [reader.read(f.item, f.id, f.known) for f in batch["file"]]
    return {"work": _objects(works)}


class _ModelStage:
    """Map stage (an actor): loads the models once, then maps batch after batch."""

    def __init__(self, settings: Settings, threads: int) -> None:
        _limit_threads(threads)
        self.mapper = Mapper(get_embedder(settings), get_describer(settings))
        store = Store(settings)
        embedder = self.mapper.embedder
        store.open(embedder=embedder.name, dim=embedder.dim, create=False)
        self.writer = Writer(store)  # for known-content lookups only

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        works = list(batch["work"])
        report = IngestReport(total=len(works))
        mapped = map_batch(works, self.mapper, self.writer, report)
        return {"mapped": _objects([mapped]), "report": _objects([report])}


class _WriteStage:
    """Write stage (an actor): one connection to the Milvus server, upserting batches."""

    def __init__(self, settings: Settings, open_args: dict[str, Any]) -> None:
        store = Store(settings)
        store.open(**open_args)
        self.writer = Writer(store)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        reports = []
        for mapped, report in zip(batch["mapped"], batch["report"], strict=True):
            assert isinstance(mapped, Mapped) and isinstance(report, IngestReport)
            write_mapped(mapped, self.writer, report)
            reports.append(report)
        return {"report": _objects(reports)}


def _limit_threads(threads: int) -> None:
    """Give the actor's model as many threads as the CPUs it asked for: two actors with a
    thread per core each would fight over the cores."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Refuse at once a cluster address nothing answers on: ``ray.init`` would retry it for
    minutes, printing a C++ warning every few seconds (measured: > 200 s for a closed
    port). ``auto`` and no address are Ray's to resolve."""
    if not address or address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise RayError(f"bad Ray address {address!r}: {exc}") from None
    if not host or port is None:
        raise RayError(f"bad Ray address {address!r}: give HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise RayError(
            f"cannot reach the Ray cluster at {address!r}: {exc.strerror or exc}; start it "
            "(ray start --head) or check the address"
        ) from None


@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator[None]:
    """Connect to the cluster (or start a local Ray) for the run, and disconnect after; a
    driver already connected (a notebook, a test) is left connected."""
    try:
        import ray
        from ray.data import DataContext
    except ImportError:
        raise RayError("--ray needs Ray: pip install 'mmsearch[ray]'") from None
    started = not ray.is_initialized()
    if started:
        _quiet_ray()
        try:
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        except Exception as exc:  # Ray raises bare Exceptions too ("timed out during startup")
            where = address or "a local Ray"
            raise RayError(f"cannot start or reach {where}: {exc}") from None
    context = DataContext.get_current()
    _quiet_ray()  # Ray sets its loggers' levels when it starts
    context.enable_progress_bars = False  # the caller's progress bar counts files
    context.print_on_execution_start = False
    try:
        yield
    finally:
        if started:
            ray.shutdown()


# -- the OCR pass --------------------------------------------------------------------------


def enrich_ocr_on_ray(
    store: Store,
    options: RayOptions,
    *,
    limit: int | None = None,
    progress: ProgressCallback | None = None,
) -> enrich.EnrichReport:
    """The OCR pass (``enrich.py``) with its batches spread over a pool of OCR actors, each
    loading the engine once and writing what it read: per photo, OCR costs several times
    the rest of ingest (``bench/ocr.py``), so on a cluster it must not run on the driver.
    Resumable as the local pass is: a killed run leaves the rest pending."""
    from mmsearch.ocr import VERSION

    refuse_lite(store.settings, "--ray")
    check_reachable(options.address)
    started = time.perf_counter()
    ids = enrich.ocr_pending(store, VERSION)[:limit]
    report = enrich.EnrichReport(pending=len(ids))
    if ids:
        with _ray_session(options.address):
            done = 0
            for part in _stream_ocr(store.settings, options, ids):
                done += part.pending
                report.read += part.read
                report.with_text += part.with_text
                report.failed += part.failed
                if progress:
                    progress(done, len(ids))
        _see_all_writes(store)
    report.seconds = time.perf_counter() - started
    return report


def _stream_ocr(
    settings: Settings, options: RayOptions, ids: list[str]
) -> Iterator[enrich.EnrichReport]:
    import ray

    actors, actor_cpus, _ = _pool_shape(options, ray.cluster_resources())
    ds = ray.data.from_items(
        [{"id": i} for i in ids], override_num_blocks=max(1, len(ids) // enrich.BATCH)
    )
    ds = ds.map_batches(
        _OcrStage,
        fn_constructor_kwargs={"settings": settings, "threads": max(1, round(actor_cpus))},
        batch_size=enrich.BATCH,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=actor_cpus,
    )
    for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
        yield from out["report"]


class _OcrStage:
    """An OCR actor: the engine loaded once; reads a batch of rows' photos, writes the text."""

    def __init__(self, settings: Settings, threads: int) -> None:
        from mmsearch.ocr import OcrEngine

        embedder = get_embedder(settings)  # its name and size only: nothing is loaded
        self.store = Store(settings)
        self.store.open(embedder=embedder.name, dim=embedder.dim, create=False)
        self.engine = OcrEngine(threads=threads)
        self.max_pixels = settings.max_image_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = self.store.items([str(i) for i in batch["id"]])
        report = enrich.EnrichReport(pending=len(batch["id"]))
        changes = enrich.read_batch(self.engine, items, self.max_pixels, report)
        enrich.write_batch(self.store, items, changes, report)
        return {"report": _objects([report])}


def _quiet_ray() -> None:
    """Keep Ray's notices (execution plans, pickled columns, disabled bars) out of the
    CLI's output; errors still show, and Ray's own logs are in its session folder."""
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
