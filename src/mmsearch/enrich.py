"""Passes that fill in fields of rows already stored, without embedding anything again.

Today one: the text in each photo (OCR, ``ocr.py``). It runs as a pass of its own after
ingest, as Immich's OCR job does, rather than as an ingest stage: even with its cheap
text/no-text gate, OCR costs several times the rest of ingest per photo (``bench/ocr.py``),
so photos become searchable by their vectors first and their text fills in behind.

The pass is resumable by construction: it works on the rows whose ``ocr_version`` is not
the engine's (``ocr.VERSION``), and each batch it finishes is written with that version.
Stopped half way (Ctrl-C, a crash, kill -9), the next run starts where it stopped; a new
engine or setting reads every row again. A file that cannot be read now (gone, changed
since indexing, unreadable) stays pending and is reported, never marked as read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mmsearch.filters import literal
from mmsearch.images import ImageError, decode_image, read_indexed
from mmsearch.ocr import MAX_SIDE
from mmsearch.schema import Item
from mmsearch.store import Store

#: (rows done, rows to do) after each batch.
Progress = Callable[[int, int], None]
#: Photos read per batch (and per write back to Milvus).
BATCH = 16
#: A JPEG is decoded at a reduced scale only where its short side stays at least this (the
#: embedders need 512; small text on a camera photo needs its pixels, up to what
#: ``ocr.MAX_SIDE`` reads).
OCR_MIN_SIDE = 2000


@dataclass
class EnrichReport:
    """What an OCR pass did: rows it read, how many hold text, files it could not read."""

    pending: int = 0
    read: int = 0
    with_text: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self, *, full_paths: bool = True) -> dict[str, Any]:
        name = (lambda p: p) if full_paths else (lambda p: Path(p).name)
        return {
            "pending": self.pending,
            "read": self.read,
            "with_text": self.with_text,
            "failed": [{"path": name(p), "reason": r} for p, r in self.failed],
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.read / self.seconds, 2) if self.seconds else 0.0,
        }


class Reader:
    """What the pass needs of an OCR engine (``ocr.OcrEngine``; tests pass a fake)."""

    version: str

    def read(self, images: Sequence[Image.Image]) -> Sequence[Any]: ...


def ocr_pending(store: Store, version: str) -> list[str]:
    """Ids of the rows not read by OCR engine ``version`` yet."""
    return store.ids_where(f"ocr_version != {literal(version)}")


def enrich_ocr(
    store: Store,
    *,
    reader: Reader | None = None,
    max_pixels: int,
    limit: int | None = None,
    progress: Progress | None = None,
    lock: AbstractContextManager | None = None,
) -> EnrichReport:
    """Read the text of every row not read yet (at most ``limit``) and store it.

    ``lock`` (a server's or a watcher's) is held only around the store's calls, never while
    photos are read, so that searches and new files are not kept waiting by OCR."""
    if reader is None:
        from mmsearch.ocr import OcrEngine

        reader = OcrEngine.shared()
    guard = lock or nullcontext()
    start = time.perf_counter()
    with guard:
        ids = ocr_pending(store, reader.version)[:limit]
    report = EnrichReport(pending=len(ids))
    for first in range(0, len(ids), BATCH):
        with guard:
            items = store.items(ids[first : first + BATCH])
        changes = read_batch(reader, items, max_pixels, report)
        with guard:
            write_batch(store, items, changes, report)
        if progress:
            progress(min(first + BATCH, len(ids)), len(ids))
    report.seconds = time.perf_counter() - start
    return report


def read_batch(
    reader: Reader, items: list[Item], max_pixels: int, report: EnrichReport
) -> dict[str, dict[str, Any]]:
    """Decode a batch's files (guarded like the image endpoint) and read them: the fields
    to store per id. (The pass on Ray, ``distributed.py``, runs it in its actors.)"""
    readable: list[tuple[Item, Image.Image]] = []
    for item in items:
        try:
            data = read_indexed(Path(item.origin), item.content_hash)
            image = decode_image(data, max_pixels=max_pixels, min_side=OCR_MIN_SIDE)[0]
            image.thumbnail((MAX_SIDE, MAX_SIDE))  # all OCR reads; a batch holds ~12 MB each
            readable.append((item, image))
        except ImageError as exc:
            report.failed.append((item.origin, str(exc)))
    if not readable:
        return {}
    results = reader.read([image for _, image in readable])
    return {
        item.id: {
            "ocr_text": result.text,
            "ocr_confidence": float(result.confidence),
            "ocr_version": reader.version,
        }
        for (item, _), result in zip(readable, results, strict=True)
    }


def write_batch(
    store: Store, items: list[Item], changes: dict[str, dict[str, Any]], report: EnrichReport
) -> None:
    """Store what was read, for the rows that still hold the bytes that were read (a file
    re-indexed meanwhile waits for the next pass)."""
    read = {item.id: item.content_hash for item in items}
    now = {item.id: item.content_hash for item in store.items(list(changes))}
    current = {i: c for i, c in changes.items() if now.get(i) == read[i]}
    store.update(current)
    report.read += len(current)
    report.with_text += sum(1 for c in current.values() if c["ocr_text"])
