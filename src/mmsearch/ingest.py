"""Ingest: sources -> reader -> mapper -> writer, driven by a runner (as clip-retrieval's
``runner.py`` drives its stages).

- ``Reader``: one file to a ``Work`` item, given what the store knows of it: unchanged by
  size and modification time (no read), unchanged by content hash (only its file facts
  are refreshed), failed (with a one-line reason), or decoded and ready.
- ``Mapper``: ready images to rows: embed, describe, embed the descriptions. What one
  provider computed for the batch (a classification, an encoding) travels with it in an
  ``ImageBatch``. A failed provider call is retried image by image, so one bad image does
  not cost its batch-mates.
- ``Writer``: rows into the store (upserts), file facts refreshed.
- ``Ingestor``: the local runner. Threads read and decode one batch ahead of the models;
  it times each stage and owns the report and the progress callback. A distributed runner
  can drive the same stages.

A file that cannot be read or decoded is skipped and reported; the run goes on. Each file
has a stable id (from its absolute path) and a content hash, so a rerun skips what is
indexed and unchanged, replaces what changed and never duplicates anything, whether the
last run finished or was killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsearch.config import Settings
from mmsearch.images import ImageError, LoadedImage, decode_image, hash_bytes, read_file
from mmsearch.providers import Describer, Embedder, get_describer, get_embedder
from mmsearch.providers.base import FatalProviderError, ImageBatch, ProviderError
from mmsearch.sources import SourceError, SourceItem, iter_source, unique_files
from mmsearch.store import Item, KnownFile, Row, Store

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
Timer = Callable[[str], contextlib.AbstractContextManager[None]]


@dataclass
class IngestReport:
    """What a run did; ``failed`` lists (path, one-line reason) for every skipped file."""

    total: int = 0
    indexed: int = 0
    unchanged: int = 0
    #: Files listed again (a CSV row repeated, a link to a file already listed): one row each.
    duplicates: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: Seconds spent per stage (read+decode is summed over the reading threads, which run
    #: beside the models; the others are on the runner's thread). Shows where time goes.
    stages: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def images_per_second(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self, *, full_paths: bool = True) -> dict[str, Any]:
        """The report as JSON-ready data: one form for the CLI, the API and scripts.

        ``full_paths=False`` keeps only file names (the API does not disclose folders)."""
        name = (lambda p: p) if full_paths else (lambda p: Path(p).name)
        return {
            "total": self.total,
            "indexed": self.indexed,
            "unchanged": self.unchanged,
            "duplicates": self.duplicates,
            "failed": [{"path": name(p), "reason": r} for p, r in self.failed],
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "stage_seconds": {k: round(v, 3) for k, v in self.stages.items()},
        }

    def timer(self, stage: str) -> contextlib.AbstractContextManager[None]:
        """Adds the time spent in the block to ``stage``."""
        return _timed(self.stages, stage)


@contextlib.contextmanager
def _timed(stages: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        stages[stage] += time.perf_counter() - started


# -- reader ------------------------------------------------------------------------------------


@dataclass
class Work:
    """One file on its way through the stages."""

    source: SourceItem
    id: str
    image: LoadedImage | None = None  # decoded: to embed and describe
    error: str | None = None  # failed: why
    unchanged: bool = False
    #: (size, mtime_ns) to record for an unchanged file whose stat changed.
    refresh: tuple[int, int] | None = None
    seconds: float = 0.0  # spent reading and decoding


class Reader:
    """A file to a ``Work`` item, reading it only when its size or time changed."""

    def __init__(self, settings: Settings) -> None:
        self.max_pixels = settings.max_image_pixels

    def read(self, source: SourceItem, id_: str, known: KnownFile | None) -> Work:
        work = Work(source, id_)
        started = time.perf_counter()
        try:
            self._read(work, known)
        except ImageError as exc:
            work.error = str(exc)
        work.seconds = time.perf_counter() - started
        return work

    def _read(self, work: Work, known: KnownFile | None) -> None:
        if work.source.refused:
            raise ImageError(work.source.refused)
        facts = _file_facts(work.source.path)
        if known is not None and known.file_size > 0 and facts == (known.file_size, known.mtime_ns):
            work.unchanged = True
            return
        data = read_file(work.source.path)
        content_hash = hash_bytes(data)
        if known is not None and content_hash == known.content_hash:
            work.unchanged, work.refresh = True, facts
            return
        img, width, height = decode_image(data, max_pixels=self.max_pixels)
        work.image = LoadedImage(work.source.path, content_hash, width, height, img)
        work.image.file_size, work.image.mtime_ns = facts


def _file_facts(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of a regular file, or an ``ImageError`` saying why not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device named like an image would block or never end.
        raise ImageError("not a regular file")
    return st.st_size, st.st_mtime_ns


# -- mapper ------------------------------------------------------------------------------------


class Mapper:
    """Decoded images to rows: embed the images, describe them, embed the descriptions."""

    def __init__(self, embedder: Embedder, describer: Describer) -> None:
        self.embedder = embedder
        self.describer = describer

    def map(self, ready: list[Work], timer: Timer) -> tuple[list[Row], list[tuple[Work, str]]]:
        """Rows for the images, and the (work, reason) of those that failed.

        A failed call is retried image by image, so only the images that fail alone are
        reported; a fatal error (a rejected key) stops the run.
        """
        try:
            return self._rows(ready, timer), []
        except FatalProviderError:
            raise
        except ProviderError as exc:
            log.warning("batch failed (%s); retrying its images one by one", exc)
        rows: list[Row] = []
        failed: list[tuple[Work, str]] = []
        for work in ready:
            try:
                rows += self._rows([work], timer)
            except FatalProviderError:
                raise
            except ProviderError as one:
                failed.append((work, f"provider error: {one}"))
        return rows, failed

    def _rows(self, ready: list[Work], timer: Timer) -> list[Row]:
        loaded = [w.image for w in ready if w.image is not None]
        batch = ImageBatch([im.image for im in loaded])
        with timer("embed_images"):
            vectors = self.embedder.embed_images(batch)
        with timer("describe"):
            descriptions = self.describer.describe(batch)
        with timer("embed_texts"):
            text_vectors = self.embedder.embed_texts([d.text for d in descriptions], query=False)
        now = int(time.time())
        rows = []
        for n, (work, image, desc) in enumerate(zip(ready, loaded, descriptions, strict=True)):
            item = Item(
                id=work.id,
                origin=str(work.source.path.resolve()),
                label=work.source.label,
                description=desc.text,
                keywords=desc.keywords,
                content_hash=image.content_hash,
                width=image.width,
                height=image.height,
                indexed_at=now,
                file_size=image.file_size,
                mtime_ns=image.mtime_ns,
            )
            features = vectors.features[n] if vectors.features is not None else None
            rows.append(Row(item, vectors.shared[n], text_vectors[n], features))
        return rows


# -- writer ------------------------------------------------------------------------------------


class Writer:
    """Rows and file facts into the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def known(self, ids: Sequence[str]) -> dict[str, KnownFile]:
        return self.store.known_files(ids)

    def write(self, rows: list[Row], refresh: dict[str, tuple[int, int]]) -> int:
        if refresh:
            self.store.set_file_facts(refresh)
        return self.store.upsert(rows)


# -- runner ------------------------------------------------------------------------------------


class Ingestor:
    """The local runner: indexes sources into a store with an embedder and a describer."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        embedder: Embedder | None = None,
        describer: Describer | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or Store(settings)
        self.reader = Reader(settings)
        self.mapper = Mapper(
            embedder or get_embedder(settings), describer or get_describer(settings)
        )
        self.writer = Writer(self.store)

    def run(
        self,
        source: Path | Sequence[SourceItem],
        *,
        limit: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> IngestReport:
        """Index ``source``. Rows are not flushed at the end: on a Milvus server that took
        4 s of a 22 s run of 300 images (bench/ingest.py), and it is not needed for safety,
        as Milvus replays its log after a crash and the embedded server flushes when it
        stops."""
        files, duplicates = self._files(source, limit)
        embedder = self.mapper.embedder
        self.store.open(
            embedder=embedder.name,
            dim=embedder.dim,
            feature_dim=embedder.feature_dim,
            extra_meta={"describer": self.mapper.describer.name},
        )
        report = IngestReport(total=len(files), duplicates=duplicates)
        started = time.perf_counter()
        bs = self.settings.batch_size
        batches = [files[i : i + bs] for i in range(0, len(files), bs)]
        with ThreadPoolExecutor(max_workers=self.settings.workers) as pool:
            pending = self._read(pool, batches[0]) if batches else []
            for index in range(len(batches)):
                current = [f.result() for f in pending]
                # Read and decode the next batch while the models work on this one.
                pending = self._read(pool, batches[index + 1]) if index + 1 < len(batches) else []
                self._process(current, report)
                done = min((index + 1) * bs, len(files))
                total = len(files)
                log.debug("batch written: %d/%d tried, %d indexed", done, total, report.indexed)
                if progress:
                    progress(done, len(files))
        report.seconds = time.perf_counter() - started
        return report

    def _files(
        self, source: Path | Sequence[SourceItem], limit: int | None
    ) -> tuple[list[tuple[str, SourceItem]], int]:
        if limit is not None and limit < 1:
            raise SourceError(f"limit must be at least 1, got {limit}")
        if isinstance(source, (str, Path)):
            source = iter_source(Path(source), follow_symlinks=self.settings.follow_symlinks)
        return unique_files(source, limit)

    def _read(self, pool: ThreadPoolExecutor, batch: list[tuple[str, SourceItem]]) -> list[Future]:
        known = self.writer.known([i for i, _ in batch])
        return [pool.submit(self.reader.read, s, i, known.get(i)) for i, s in batch]

    def _process(self, batch: list[Work], report: IngestReport) -> None:
        report.stages["read_decode"] += sum(w.seconds for w in batch)
        ready = []
        refresh = {}
        for work in batch:
            if work.error is not None:
                report.failed.append((str(work.source.path), work.error))
                log.info("skipped %s: %s", work.source.path, work.error)  # the report lists it
            elif work.unchanged:
                report.unchanged += 1
                if work.refresh is not None:
                    refresh[work.id] = work.refresh
            else:
                ready.append(work)
        rows, failed = self.mapper.map(ready, report.timer) if ready else ([], [])
        report.failed += [(str(w.source.path), reason) for w, reason in failed]
        with report.timer("store"):
            report.indexed += self.writer.write(rows, refresh)
