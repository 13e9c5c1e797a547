"""Folders kept in sync: ``mmsearch watch DIR...`` and ``mmsearch serve --watch DIR``.

On start each folder is indexed whole, which catches up on what changed while nothing
watched it (unchanged files are skipped by size and time, gone ones removed, moved ones
keep their vectors). Then ``watchfiles`` reports changes in debounced batches: added and
modified image files are indexed once their size and time stop changing (a copy still in
progress is not read half-written; its last write brings it back), a folder moved in is
walked, and deleted files and folders lose their rows. Nothing is indexed twice: ids come
from paths and unchanged files are skipped, so a watcher killed and restarted only catches
up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mmsearch.engine import MMSearch
from mmsearch.images import IMAGE_SUFFIXES
from mmsearch.ingest import IngestReport
from mmsearch.sources import SourceItem, iter_folder, label_for

log = logging.getLogger(__name__)

#: How long a file's size and modification time must hold still before it is read.
SETTLE_SECONDS = 0.5
#: watchfiles groups changes that come within this many milliseconds of each other.
DEBOUNCE_MS = 800
#: Files indexed per turn of the lock while catching up.
CATCH_UP_CHUNK = 256
#: How often the watching thread looks at its stop event, in milliseconds.
WATCH_TICK_MS = 250


@dataclass
class Change:
    """What one batch of changes did to the index."""

    indexed: IngestReport | None = None
    removed: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)  # still being written


class FolderWatcher:
    """Keeps the rows of ``folders`` in step with the files in them."""

    def __init__(
        self,
        mm: MMSearch,
        folders: Iterable[Path],
        *,
        lock: contextlib.AbstractContextManager | None = None,
        follow_symlinks: bool = False,
    ) -> None:
        self.mm = mm
        self.folders = [Path(f).expanduser().resolve() for f in folders]
        self.lock = lock or threading.Lock()
        self.follow_symlinks = follow_symlinks
        self.ignored = [str(p) + os.sep for p in _own_folders(mm)]
        for folder in self.folders:
            if not folder.is_dir():
                raise NotADirectoryError(f"{folder}: not a folder")
        #: Set when rows were written that OCR has not read yet.
        self.unread = threading.Event()

    def catch_up(self) -> list[IngestReport]:
        """Index every folder whole (what changed while nobody watched), a chunk of files
        at a time under the lock, so that a server answering beside it is not held up."""
        reports = []
        for folder in self.folders:
            items = list(iter_folder(folder, follow_symlinks=self.follow_symlinks))
            report = IngestReport()
            for start in range(0, len(items), CATCH_UP_CHUNK):
                with self.lock:
                    report.add(self.mm.index(items[start : start + CATCH_UP_CHUNK], ocr=False))
                self.unread.set()
            listed = {str(item.path.resolve()) for item in items}
            with self.lock:
                stored = self.mm.store.ids_under(folder) if self.mm.store.exists() else {}
                gone = {i: origin for i, origin in stored.items() if origin not in listed}
                self.mm.store.delete(list(gone))
            report.removed += sorted(gone.values())
            reports.append(report)
        return reports

    def run(
        self,
        stop: threading.Event | None = None,
        report: Callable[[Change], None] = lambda c: None,
        caught_up: Callable[[list[IngestReport]], None] = lambda r: None,
    ) -> None:
        """Watch, catch up, then apply changes as they come, until ``stop`` is set; with
        the ``ocr`` setting on, a thread reads the text of new photos behind.

        The watch starts before the catch-up: a file added while the folders are indexed
        (minutes, for a big one) is applied after it instead of missed until a restart."""
        stop = stop or threading.Event()
        if self.mm.settings.ocr:
            threading.Thread(target=self.read_text, args=(stop,), daemon=True).start()
        with self._watching(stop) as batches:
            caught_up(self.catch_up())
            for batch in batches:
                try:
                    report(self.apply(batch))
                except Exception:  # one bad batch must not end the watch
                    log.exception("could not apply %d changes; retried on restart", len(batch))

    @contextlib.contextmanager
    def _watching(self, stop: threading.Event) -> Iterator[Iterator[set[tuple[int, str]]]]:
        """Batches of (watchfiles.Change, path) from now until ``stop`` is set, gathered by
        a thread while the caller does other work (the catch-up); entered once the folders
        are watched. Leaving the block (``stop``, an error, Ctrl+C) stops the thread."""
        done = threading.Event()
        watching = threading.Event()
        feed: queue.Queue[set[tuple[int, str]] | BaseException | None] = queue.Queue()

        def gather() -> None:
            try:
                for batch in self._changes(done):
                    watching.set()
                    if batch:
                        feed.put(batch)
                feed.put(None)
            except BaseException as exc:  # the folder went away, no inotify watches left...
                feed.put(exc)
            finally:
                watching.set()

        thread = threading.Thread(target=gather, name="watchfiles", daemon=True)
        thread.start()
        watching.wait()
        try:
            yield _drain(feed, stop)
        finally:
            done.set()
            thread.join(timeout=5)

    def _changes(self, stop: threading.Event) -> Iterator[set[tuple[int, str]]]:
        import watchfiles

        return watchfiles.watch(
            *self.folders,
            watch_filter=self._relevant,
            debounce=DEBOUNCE_MS,
            stop_event=stop,
            rust_timeout=WATCH_TICK_MS,
            yield_on_timeout=True,  # the first (empty) batch says the folders are watched
            raise_interrupt=False,
        )

    def apply(self, batch: set[tuple[int, str]]) -> Change:
        """Index what was added or modified, remove what was deleted."""
        import watchfiles

        deleted = [p for kind, p in batch if kind == watchfiles.Change.deleted]
        present = {p for kind, p in batch if kind != watchfiles.Change.deleted}
        items, deferred = self._settled(self._files(present))
        change = Change(deferred=deferred)
        with self.lock:
            # Added first: a file moved (deleted here, added there) keeps its vectors, as
            # ingest finds its bytes still stored under the old path.
            if items:  # vectors first: searchable at once; their text is read behind
                change.indexed = self.mm.index(items, ocr=False)
                self.unread.set()
            if deleted:
                change.removed = self.mm.remove([p for p in deleted if not os.path.lexists(p)])
        return change

    def read_text(self, stop: threading.Event) -> None:
        """The OCR pass whenever rows were written, until ``stop``: the lock is held only
        for the store's calls, so new files are indexed and searches answered meanwhile."""
        while not stop.is_set():
            if not self.unread.wait(timeout=1):
                continue
            self.unread.clear()  # rows written from now on wake the next pass
            try:
                self.mm.enrich_ocr(lock=self.lock)
            except Exception:  # e.g. the store restarting: try again later
                log.exception("reading the text of new photos failed; retrying")
                self.unread.set()
                stop.wait(5)

    def _files(self, paths: Iterable[str]) -> list[SourceItem]:
        """The image files among ``paths``, with folders that appeared walked."""
        items: dict[Path, SourceItem] = {}
        for raw in paths:
            path = Path(raw)
            root = self._root_of(path)
            if root is None:
                continue
            if path.is_dir():
                for item in iter_folder(path, follow_symlinks=self.follow_symlinks):
                    items[item.path] = SourceItem(
                        item.path, label_for(item.path, root), item.refused
                    )
            elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                items[path] = SourceItem(path, label_for(path, root))
        return list(items.values())

    def _root_of(self, path: Path) -> Path | None:
        resolved = path.absolute()
        return next((f for f in self.folders if resolved.is_relative_to(f)), None)

    @staticmethod
    def _settled(items: list[SourceItem]) -> tuple[list[SourceItem], list[str]]:
        """Items whose files held still for SETTLE_SECONDS, and the paths still moving."""
        before = {item.path: _stat(item.path) for item in items}
        if items:
            time.sleep(SETTLE_SECONDS)
        ready, moving = [], []
        for item in items:
            now = _stat(item.path)
            if now is not None and now == before[item.path]:
                ready.append(item)
            elif now is not None:
                moving.append(str(item.path))
        return ready, moving

    def _relevant(self, change: int, path: str) -> bool:
        """Image files, and folders (which can only be told by what happened to them);
        never mmsearch's own data (an embedded server's folder inside a watched one)."""
        import watchfiles

        if any(path.startswith(ignored) for ignored in self.ignored):
            return False
        if not watchfiles.DefaultFilter()(change, path):  # .git, __pycache__, editors' files
            return False
        if os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES:
            return True
        return change == watchfiles.Change.deleted or os.path.isdir(path)


def _own_folders(mm: MMSearch) -> list[Path]:
    """Folders where mmsearch itself writes: the embedded server's data, caches, uploads."""
    settings = mm.settings
    folders = [settings.cache_dir, settings.upload_dir]
    if settings.is_embedded:
        from mmsearch import embedded

        folders.append(embedded.base_dir_of(settings.uri))
    return [Path(f).expanduser().resolve() for f in folders]


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _drain(feed: queue.Queue, stop: threading.Event) -> Iterator[set[tuple[int, str]]]:
    """The batches in ``feed`` until its end (None) or ``stop``; an error there is raised
    here. Waits in short steps, so that Ctrl+C reaches the main thread at once."""
    while not stop.is_set():
        try:
            item = feed.get(timeout=0.5)
        except queue.Empty:
            continue
        if item is None:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
