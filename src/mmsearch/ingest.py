"""Ingest: sources (folder, CSV) -> read + hash -> decode -> describe -> embed -> upsert.

Shaped as reader -> mapper -> writer (as clip-retrieval does) so that the batches could be
handed to another executor later without touching models or store. Decoding runs in a
thread pool one batch ahead of the model. A file that cannot be read or decoded is skipped
and reported; the run goes on. Each file has a stable id (from its absolute path) and a
content hash, so a rerun skips what is already indexed and unchanged, replaces what
changed, and never duplicates anything, whether the last run finished or was killed.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmsearch.config import Settings
from mmsearch.images import (
    IMAGE_SUFFIXES,
    ImageError,
    LoadedImage,
    decode_image,
    hash_bytes,
    read_file,
)
from mmsearch.providers import Describer, Embedder, get_describer, get_embedder
from mmsearch.providers.base import FatalProviderError, ProviderError
from mmsearch.store import Item, Row, Store

log = logging.getLogger(__name__)


class SourceError(ValueError):
    """The thing to index is not a folder, a CSV or an image; the message says which."""


@dataclass(frozen=True)
class SourceItem:
    """One file to index and the label it came with (folder name or CSV column).

    ``refused`` says why the source will not let it be read (a link out of the folder)."""

    path: Path
    label: str = ""
    refused: str = ""


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
    #: Seconds spent per stage (read+decode is summed over the decode threads, which run
    #: beside the model; the others are on the main thread). Shows where time goes.
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


def item_id(path: Path) -> str:
    """Stable id of a file: the same absolute path always maps to the same row."""
    return hashlib.blake2b(str(path.resolve()).encode("utf-8"), digest_size=12).hexdigest()


# -- sources ----------------------------------------------------------------------------------


OUTSIDE_LINK = (
    "a symbolic link to a file outside the indexed folder (set follow_symlinks to index it)"
)


def iter_folder(root: Path, *, follow_symlinks: bool = False) -> Iterator[SourceItem]:
    """Image files under ``root``, recursively, in a stable order; label = parent folder.

    Symbolic links to folders are not followed, so a link loop cannot trap the walk. A link
    to a file outside ``root`` is listed as refused unless ``follow_symlinks``: indexing a
    folder must not publish what lies beyond it. Names that are not valid UTF-8 are kept as
    the OS gives them (surrogate escapes).
    """
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            label = path.parent.name if path.parent != root else root.name
            outside = path.is_symlink() and not path.resolve().is_relative_to(real_root)
            refused = OUTSIDE_LINK if outside and not follow_symlinks else ""
            yield SourceItem(path, label, refused)


def iter_csv(csv_path: Path) -> Iterator[SourceItem]:
    """Rows of a CSV in the reference format ``id,path,label`` (paths relative to the CSV)."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            yield from _csv_rows(csv_path, csv.DictReader(fh))
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{csv_path}: not UTF-8 text (byte {exc.object[exc.start]:#x} at offset "
            f"{exc.start}); save the CSV as UTF-8"
        ) from None
    except csv.Error as exc:
        raise SourceError(f"{csv_path}: not a readable CSV: {exc}") from None


def _csv_rows(csv_path: Path, reader: csv.DictReader) -> Iterator[SourceItem]:
    if not reader.fieldnames or "path" not in reader.fieldnames:
        raise SourceError(
            f"{csv_path}: a CSV source needs a 'path' column (reference format: id,path,label)"
        )
    for row in reader:
        raw = (row.get("path") or "").strip()
        if not raw:
            continue
        path = Path(raw)
        if not path.is_absolute():
            path = csv_path.parent / path
        yield SourceItem(Path(os.path.normpath(path)), (row.get("label") or "").strip())


def iter_source(source: Path, *, follow_symlinks: bool = False) -> Iterator[SourceItem]:
    """A folder, a CSV file, or one image file."""
    source = Path(source)
    if source.is_dir():
        return iter_folder(source, follow_symlinks=follow_symlinks)
    if not source.exists():
        raise SourceError(f"{source}: no such file or folder")
    if source.suffix.lower() == ".csv":
        return iter_csv(source)
    if source.suffix.lower() in IMAGE_SUFFIXES:
        return iter([SourceItem(source, source.parent.name)])
    raise SourceError(f"{source}: not a folder, a .csv file or an image")


def _unique(
    items: Iterable[SourceItem], limit: int | None
) -> tuple[list[tuple[str, SourceItem]], int]:
    """(id, item) for each file once, in order, up to ``limit``; and how many were repeats.

    Two entries with one id (a CSV naming a file twice, a link beside its target) would be
    two rows in one write batch, which the Milvus 2.3 server stores twice.
    """
    seen: dict[str, SourceItem] = {}
    repeats = 0
    for item in items:
        if limit is not None and len(seen) >= limit:
            break
        id_ = item_id(item.path)
        if id_ in seen:
            repeats += 1
        else:
            seen[id_] = item
    return list(seen.items()), repeats


# -- the pipeline -----------------------------------------------------------------------------


@dataclass
class _Prepared:
    source: SourceItem
    id: str
    image: LoadedImage | None = None
    error: str | None = None
    unchanged: bool = False
    seconds: float = 0.0  # spent reading and decoding, in a worker thread


ProgressCallback = Callable[[int, int], None]


@contextlib.contextmanager
def _timed(report: IngestReport, stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        report.stages[stage] += time.perf_counter() - started


class Ingestor:
    """Indexes sources into a store with an embedder and a describer."""

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
        self.embedder = embedder or get_embedder(settings)
        self.describer = describer or get_describer(settings)

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
        if limit is not None and limit < 1:
            raise SourceError(f"limit must be at least 1, got {limit}")
        if isinstance(source, (str, Path)):
            source = iter_source(Path(source), follow_symlinks=self.settings.follow_symlinks)
        items, duplicates = _unique(source, limit)
        self.store.open(
            embedder=self.embedder.name,
            dim=self.embedder.dim,
            feature_dim=self.embedder.feature_dim,
            extra_meta={"describer": self.describer.name},
        )
        report = IngestReport(total=len(items), duplicates=duplicates)
        started = time.perf_counter()
        bs = self.settings.batch_size
        batches = [items[i : i + bs] for i in range(0, len(items), bs)]
        done = 0
        with ThreadPoolExecutor(max_workers=self.settings.workers) as pool:
            pending = self._prepare(pool, batches[0]) if batches else None
            for index in range(len(batches)):
                assert pending is not None
                current = [f.result() for f in pending]
                # Decode the next batch while the model works on this one.
                pending = (
                    self._prepare(pool, batches[index + 1]) if index + 1 < len(batches) else None
                )
                self._process(current, report)
                done += len(current)
                log.debug(
                    "batch written: %d/%d tried, %d indexed", done, len(items), report.indexed
                )
                if progress:
                    progress(done, len(items))
        report.seconds = time.perf_counter() - started
        return report

    def _prepare(
        self, pool: ThreadPoolExecutor, batch: list[tuple[str, SourceItem]]
    ) -> list[Future[_Prepared]]:
        known = self.store.content_hashes([i for i, _ in batch])
        return [pool.submit(self._load, s, i, known.get(i)) for i, s in batch]

    def _load(self, source: SourceItem, id_: str, known_hash: str | None) -> _Prepared:
        prepared = _Prepared(source, id_)
        if source.refused:
            prepared.error = source.refused
            return prepared
        started = time.perf_counter()
        try:
            data = read_file(source.path)
        except ImageError as exc:
            prepared.error = str(exc)
            return prepared
        content_hash = hash_bytes(data)
        if content_hash == known_hash:
            prepared.unchanged = True
            return prepared
        try:
            img, width, height = decode_image(data, max_pixels=self.settings.max_image_pixels)
        except ImageError as exc:
            prepared.error = str(exc)
            return prepared
        finally:
            prepared.seconds = time.perf_counter() - started
        prepared.image = LoadedImage(source.path, content_hash, width, height, img)
        return prepared

    def _process(self, batch: list[_Prepared], report: IngestReport) -> None:
        ready = []
        report.stages["read_decode"] += sum(p.seconds for p in batch)
        for p in batch:
            if p.unchanged:
                report.unchanged += 1
            elif p.error is not None:
                report.failed.append((str(p.source.path), p.error))
                log.info("skipped %s: %s", p.source.path, p.error)  # the report lists it
            else:
                ready.append(p)
        if not ready:
            return
        try:
            rows = self._rows(ready, report)
        except FatalProviderError:
            raise
        except ProviderError as exc:
            # One bad image (or one failed call) must not cost the whole batch: retry the
            # images one by one and record only those that still fail.
            log.warning("batch failed (%s); retrying its images one by one", exc)
            rows = []
            for p in ready:
                try:
                    rows += self._rows([p], report)
                except FatalProviderError:
                    raise
                except ProviderError as one:
                    report.failed.append((str(p.source.path), f"provider error: {one}"))
        with _timed(report, "store"):
            report.indexed += self.store.upsert(rows)

    def _rows(self, ready: list[_Prepared], report: IngestReport) -> list[Row]:
        images = [p.image.image for p in ready if p.image]
        with _timed(report, "embed_images"):
            vectors = self.embedder.embed_images(images)
        with _timed(report, "describe"):
            descriptions = self.describer.describe(images)
        with _timed(report, "embed_texts"):
            texts = [d.text for d in descriptions]
            text_vectors = self.embedder.embed_texts(texts, query=False)
        now = int(time.time())
        rows = []
        for n, (p, desc) in enumerate(zip(ready, descriptions, strict=True)):
            assert p.image is not None
            item = Item(
                id=p.id,
                origin=str(p.source.path.resolve()),
                label=p.source.label,
                description=desc.text,
                keywords=desc.keywords,
                content_hash=p.image.content_hash,
                width=p.image.width,
                height=p.image.height,
                indexed_at=now,
            )
            features = vectors.features[n] if vectors.features is not None else None
            rows.append(Row(item, vectors.shared[n], text_vectors[n], features))
        return rows
