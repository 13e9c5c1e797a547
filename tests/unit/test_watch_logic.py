"""The folder watcher's decisions, on fakes: what a batch of file events does to the index."""

from __future__ import annotations

import pytest
import watchfiles

from mmsearch import MMSearch
from mmsearch import watch as watch_module
from mmsearch.watch import FolderWatcher

from ..fakes import colour_image

ADDED, MODIFIED, DELETED = (
    watchfiles.Change.added,
    watchfiles.Change.modified,
    watchfiles.Change.deleted,
)


@pytest.fixture
def watcher(settings, photos, monkeypatch):
    monkeypatch.setattr(watch_module, "SETTLE_SECONDS", 0.01)
    with MMSearch(settings=settings) as mm:
        w = FolderWatcher(mm, [photos])
        (report,) = w.catch_up()
        assert report.indexed == 5
        yield w


def _origins(w: FolderWatcher) -> set[str]:
    return {
        it.origin.rsplit("/", 2)[-2] + "/" + it.origin.rsplit("/", 1)[-1]
        for it in w.mm.store.iter_items()
    }


def test_added_modified_and_deleted_files(watcher, photos):
    new = photos / "cool" / "white.png"
    colour_image("white").save(new)
    change = watcher.apply({(ADDED, str(new))})
    assert change.indexed.indexed == 1 and "cool/white.png" in _origins(watcher)
    colour_image("black").save(new)
    assert watcher.apply({(MODIFIED, str(new))}).indexed.indexed == 1
    assert watcher.mm.search("black", k=1)[0].origin.endswith(("white.png", "black.jpg"))
    new.unlink()
    change = watcher.apply({(DELETED, str(new))})
    assert change.removed == [str(new.resolve())] and "cool/white.png" not in _origins(watcher)


def test_a_move_keeps_the_vectors(watcher, photos):
    old, new = photos / "warm" / "red.png", photos / "cool" / "red.png"
    old.rename(new)
    calls = []
    real = watcher.mm.embedder.embed_images
    watcher.mm.embedder.embed_images = lambda images: calls.append(1) or real(images)
    change = watcher.apply({(DELETED, str(old)), (ADDED, str(new))})
    assert change.indexed.moved == 1 and calls == []
    assert "cool/red.png" in _origins(watcher) and "warm/red.png" not in _origins(watcher)
    assert watcher.mm.store.count() == 5


def test_a_folder_moved_in_is_walked_and_one_moved_out_is_removed(watcher, photos, tmp_path):
    outside = tmp_path / "elsewhere"
    (photos / "cool").rename(outside)
    assert len(watcher.apply({(DELETED, str(photos / "cool"))}).removed) == 2
    (outside).rename(photos / "back")
    change = watcher.apply({(ADDED, str(photos / "back"))})
    assert change.indexed.indexed + change.indexed.moved >= 2
    assert {o for o in _origins(watcher) if o.startswith("back/")} == {
        "back/blue.png",
        "back/green.png",
    }


def test_a_file_still_being_written_is_deferred(watcher, photos, monkeypatch):
    path = photos / "growing.png"
    colour_image("white").save(path)
    sizes = iter([(1, 1), (2, 2)])
    monkeypatch.setattr(watch_module, "_stat", lambda p: next(sizes))
    change = watcher.apply({(ADDED, str(path))})
    assert change.deferred == [str(path)] and change.indexed is None


def test_catch_up_after_a_restart_indexes_nothing_twice(watcher, photos):
    (photos / "warm" / "yellow.png").unlink()
    colour_image("white").save(photos / "new.png")
    (report,) = watcher.catch_up()
    assert (report.indexed, report.unchanged, len(report.removed)) == (1, 4, 1)
    (again,) = watcher.catch_up()
    assert (again.indexed, again.unchanged, again.removed) == (0, 5, [])


def test_own_folders_and_other_files_are_not_watched(watcher, settings):
    assert not watcher._relevant(ADDED, str(settings.cache_dir / "x.png"))
    assert not watcher._relevant(MODIFIED, "/tmp/notes.txt")
    assert watcher._relevant(MODIFIED, "/tmp/photo.jpg")
    assert watcher._relevant(DELETED, "/tmp/some-folder")


def test_a_file_added_during_the_catch_up_is_not_missed(watcher, photos):
    """The watch starts before the catch-up: a photo copied in while a big folder is
    being indexed (CI saw one copied right after) is indexed then, not at the next start."""
    import threading

    new = photos / "cool" / "added-meanwhile.png"
    real_catch_up = watcher.catch_up

    def slow_catch_up():
        reports = real_catch_up()
        colour_image("white").save(new)  # after the folder was listed, before the watch loop
        return reports

    watcher.catch_up = slow_catch_up
    stop, changes = threading.Event(), []

    def seen(change):
        changes.append(change)
        if "cool/added-meanwhile.png" in _origins(watcher):
            stop.set()

    runner = threading.Thread(target=watcher.run, args=(stop, seen))
    runner.start()
    stopped = stop.wait(30)
    stop.set()
    runner.join(10)
    assert stopped and not runner.is_alive()
    assert watcher.mm.store.count() == 6
