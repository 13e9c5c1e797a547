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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mmsearch.config import Settings
from mmsearch.enrich import EnrichReport
from mmsearch.filters import wall_clock_seconds
from mmsearch.images import ImageError, LoadedImage, decode_photo, hash_bytes, read_file
from mmsearch.metadata import PhotoFacts
from mmsearch.providers import Describer, Embedder, get_describer, get_embedder
from mmsearch.providers.base import FatalProviderError, ImageBatch, ProviderError
from mmsearch.sources import SourceError, SourceItem, iter_source, unique_files
from mmsearch.store import FEATURE_FIELD, IMAGE_FIELD, TEXT_FIELD, Item, KnownFile, Row, Store

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
    #: Files found under a new path with bytes already stored: their old rows are gone.
    moved: int = 0
    #: Files gone from an indexed folder, whose rows were removed.
    removed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    #: Seconds spent per stage (read+decode is summed over the reading threads, which run
    #: beside the models; the others are on the runner's thread). Shows where time goes.
    stages: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    #: The OCR pass that followed, if one did.
    ocr: EnrichReport | None = None

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
            "moved": self.moved,
            "removed": [name(p) for p in self.removed],
            "failed": [{"path": name(p), "reason": r} for p, r in self.failed],
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "stage_seconds": {k: round(v, 3) for k, v in self.stages.items()},
            **({"ocr": self.ocr.as_dict(full_paths=full_paths)} if self.ocr else {}),
        }

    def add(self, other: IngestReport) -> None:
        """Count ``other``'s run in this report (a run done in parts)."""
        for name in ("total", "indexed", "unchanged", "duplicates", "moved", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failed += other.failed
        self.removed += other.removed
        for stage, seconds in other.stages.items():
            self.stages[stage] += seconds

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
    #: When, where and with what it was taken, as ``Item.facts`` stores it.
    facts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # spent reading and decoding


class Reader:
    """A file to a ``Work`` item, reading it only when its size or time changed, with the
    facts its metadata states (when, where, with what)."""

    def __init__(self, settings: Settings) -> None:
        self.max_pixels = settings.max_image_pixels
        self.cache_dir = settings.cache_dir

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
        if known is not None and known.same_stat(facts):
            work.unchanged = True
            return
        data = read_file(work.source.path)
        content_hash = hash_bytes(data)
        if known is not None and content_hash == known.content_hash:
            work.unchanged, work.refresh = True, facts
            return
        photo = decode_photo(data, max_pixels=self.max_pixels, mtime=facts[1] / 1e9)
        work.image = LoadedImage(
            work.source.path, content_hash, photo.width, photo.height, photo.image
        )
        work.image.file_size, work.image.mtime_ns = facts
        work.facts = photo_facts(photo.facts, self._locate(photo.facts))

    def _locate(self, facts: PhotoFacts) -> Any:
        """Where the GPS position is (the gazetteer loads on the first photo with one)."""
        if facts.latitude is None or facts.longitude is None:
            return None
        from mmsearch.places import Gazetteer

        return Gazetteer.shared(self.cache_dir).locate(facts.latitude, facts.longitude)


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
            if getattr(self.embedder, "fuses_titles", False):  # a catalog: image + title
                titles = [w.source.title for w in ready if w.image is not None]
                vectors = self.embedder.embed_images(batch, titles=titles)  # type: ignore[call-arg]
            else:
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
                facts=work.facts,
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

    def by_content(self, hashes: Sequence[str]) -> dict[str, dict[str, Any]]:
        return self.store.by_content(hashes)

    def under(self, folder: Path) -> dict[str, str]:
        return self.store.ids_under(folder)

    def write(self, rows: list[Row], refresh: dict[str, tuple[int, int]]) -> int:
        if refresh:
            self.store.set_file_facts(refresh)
        return self.store.upsert(rows)

    def delete(self, ids: Sequence[str]) -> None:
        self.store.delete(ids)


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
        """Index ``source``; for a whole folder, also remove the rows of files gone from it.

        Rows are not flushed at the end: on a Milvus server that took 4 s of a 22 s run of
        300 images (bench/ingest.py), and it is not needed for safety, as Milvus replays its
        log after a crash and the embedded server flushes when it stops."""
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
        self._run_batches(files, report, progress)
        if isinstance(source, (str, Path)) and Path(source).is_dir() and limit is None:
            self._remove_gone(Path(source), {i for i, _ in files}, report)
        report.seconds = time.perf_counter() - started
        return report

    def _run_batches(
        self,
        files: list[tuple[str, SourceItem]],
        report: IngestReport,
        progress: ProgressCallback | None,
    ) -> None:
        bs, total = self.settings.batch_size, len(files)
        batches = [files[i : i + bs] for i in range(0, total, bs)]
        # What the store knows, read once before any write: asked after a write in the same
        # session, each batch's lookup waited ~230 ms for the server's clock (bench/ingest.py).
        known = self.writer.known([i for i, _ in files])
        with ThreadPoolExecutor(max_workers=self.settings.workers) as pool:
            pending = self._read(pool, batches[0], known) if batches else []
            for index in range(len(batches)):
                current = [f.result() for f in pending]
                # Read and decode the next batch while the models work on this one.
                following = batches[index + 1] if index + 1 < len(batches) else []
                pending = self._read(pool, following, known)
                self._process(current, report)
                done = min((index + 1) * bs, total)
                log.debug("batch written: %d/%d tried, %d indexed", done, total, report.indexed)
                if progress:
                    progress(done, total)

    def _remove_gone(self, folder: Path, listed: set[str], report: IngestReport) -> None:
        """Delete the rows of files under ``folder`` that it no longer holds."""
        with report.timer("store"):
            gone = {
                i: o for i, o in self.store.ids_under(folder.resolve()).items() if i not in listed
            }
            self.writer.delete(list(gone))
        report.removed += sorted(gone.values())

    def _files(
        self, source: Path | Sequence[SourceItem], limit: int | None
    ) -> tuple[list[tuple[str, SourceItem]], int]:
        return list_files(source, limit, follow_symlinks=self.settings.follow_symlinks)

    def _read(
        self,
        pool: ThreadPoolExecutor,
        batch: list[tuple[str, SourceItem]],
        known: dict[str, KnownFile],
    ) -> list[Future]:
        return [pool.submit(self.reader.read, s, i, known.get(i)) for i, s in batch]

    def _process(self, batch: list[Work], report: IngestReport) -> None:
        mapped = map_batch(batch, self.mapper, self.writer, report)
        write_mapped(mapped, self.writer, report)


@dataclass
class Mapped:
    """A batch on its way from the mapper to the writer: new rows, the file facts of
    unchanged files to refresh, and the ids of moved files' old rows to delete."""

    rows: list[Row]
    refresh: dict[str, tuple[int, int]]
    moved: list[str]


def map_batch(batch: list[Work], mapper: Mapper, writer: Writer, report: IngestReport) -> Mapped:
    """Sort a read batch (failed, unchanged, known content, new) and run the models on the
    new files; counts and stage times go to ``report``. Both runners call it."""
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
    with report.timer("store"):
        reused, moved, ready = _known_content(writer, ready)
    rows, failed = mapper.map(ready, report.timer) if ready else ([], [])
    report.failed += [(str(w.source.path), reason) for w, reason in failed]
    report.moved += len(moved)
    return Mapped(reused + rows, refresh, moved)


def write_mapped(mapped: Mapped, writer: Writer, report: IngestReport) -> None:
    """Upsert a mapped batch's rows, refresh its file facts, delete moved files' old rows."""
    with report.timer("store"):
        report.indexed += writer.write(mapped.rows, mapped.refresh)
        writer.delete(mapped.moved)


def _known_content(writer: Writer, ready: list[Work]) -> tuple[list[Row], list[str], list[Work]]:
    """Files whose bytes are already stored under another path (moved, renamed or copied)
    keep those vectors and that description instead of being embedded again. Returns their
    rows, the ids of the old paths that are gone (moves), and the rest."""
    if not ready:
        return [], [], []
    stored = writer.by_content([w.image.content_hash for w in ready if w.image])
    reused, moved, rest = [], [], []
    for work in ready:
        record = stored.get(work.image.content_hash) if work.image else None
        if record is None or record["id"] == work.id:
            rest.append(work)
            continue
        reused.append(_reused_row(work, record))
        if not os.path.lexists(record["origin"]):
            moved.append(record["id"])
    return reused, moved, rest


def _reused_row(work: Work, record: dict[str, Any]) -> Row:
    """A row for ``work``'s file from the stored row of a file with the same bytes."""
    assert work.image is not None
    stored = Item.from_entity(record["id"], record)
    item = replace(
        stored,
        id=work.id,
        origin=str(work.source.path.resolve()),
        label=work.source.label,
        indexed_at=int(time.time()),
        file_size=work.image.file_size,
        mtime_ns=work.image.mtime_ns,
    )
    return Row(item, record[IMAGE_FIELD], record[TEXT_FIELD], record.get(FEATURE_FIELD))


def photo_facts(facts: PhotoFacts, location: Any = None) -> dict[str, Any]:
    """``PhotoFacts`` (and the gazetteer's ``Location`` of its GPS position) as the fields
    ``Item.facts`` stores; what is unknown is left out (stored as the field's default)."""
    out: dict[str, Any] = {}
    if facts.taken_at is not None:
        out["taken_at"] = wall_clock_seconds(facts.taken_at)
        out["taken_at_source"] = facts.taken_at_source or ""
    if facts.utc_offset_minutes is not None:
        sign, minutes = (
            ("-" if facts.utc_offset_minutes < 0 else "+"),
            abs(facts.utc_offset_minutes),
        )
        out["utc_offset"] = f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    if facts.latitude is not None and facts.longitude is not None:
        out.update(has_gps=True, latitude=facts.latitude, longitude=facts.longitude)
    out.update({k: v for k, v in _place_fields(location).items() if v})
    out["camera_make"] = facts.camera_make or ""
    out["camera_model"] = facts.camera_model or ""
    out["file_format"] = facts.file_format or ""
    return out


#: A photo farther than this from the city ``locate`` names keeps only region and country:
#: "Flagstaff" should not find the Grand Canyon, 112 km away.
CITY_KM = 30.0


def _place_fields(location: Any) -> dict[str, Any]:
    if location is None:
        return {}
    city = location.city if location.city_km <= CITY_KM else None
    region, country = location.region, location.country
    names_zh = [p.name_zh for p in (city, region, country) if p is not None and p.name_zh]
    return {
        "place_city_id": int(city.code) if city is not None else 0,
        "place_city": city.name if city is not None else "",
        "place_region_code": region.code if region is not None else "",
        "place_region": region.name if region is not None else "",
        "place_country_code": country.code if country is not None else "",
        "place_country": country.name if country is not None else "",
        "place_zh": " ".join(names_zh),
    }


def list_files(
    source: Path | Sequence[SourceItem], limit: int | None, *, follow_symlinks: bool
) -> tuple[list[tuple[str, SourceItem]], int]:
    """(id, item) of each file a run takes from ``source``, once, up to ``limit``; and how
    many were listed again."""
    if limit is not None and limit < 1:
        raise SourceError(f"limit must be at least 1, got {limit}")
    if isinstance(source, (str, Path)):
        source = iter_source(Path(source), follow_symlinks=follow_symlinks)
    return unique_files(source, limit)


def unchanged_by_stat(
    files: Sequence[tuple[str, SourceItem]], known: dict[str, KnownFile]
) -> set[str]:
    """Ids of the files the store holds with the same size and modification time: a run
    skips them without reading a byte (a distributed run without starting its workers)."""
    same = set()
    for file_id, item in files:
        stored = known.get(file_id)
        if stored is None or item.refused:
            continue
        with contextlib.suppress(ImageError):  # gone or unreadable: the reader says why
            if stored.same_stat(_file_facts(item.path)):
                same.add(file_id)
    return same


def files_to_do(
    store: Store, source: Path | Sequence[SourceItem], limit: int | None, *, follow_symlinks: bool
) -> int:
    """How many files a run would read and embed: those listed, less those the store holds
    with the same size and modification time (for a dry run: nothing is read)."""
    files, _ = list_files(source, limit, follow_symlinks=follow_symlinks)
    stored = store.backend.present() and store.exists()  # a dry run creates no store
    known = store.known_files([i for i, _ in files]) if stored else {}
    todo = 0
    for file_id, item in files:
        try:
            facts = _file_facts(item.path)
        except ImageError:
            continue  # a run would skip it, with this reason
        todo += not (file_id in known and known[file_id].same_stat(facts))
    return todo
