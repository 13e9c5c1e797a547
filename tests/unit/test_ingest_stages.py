"""Ingest's stages and runner with fake providers on an in-memory store: what is read,
what is skipped, what is reported, and what is written, in milliseconds per case."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mmsearch import MMSearch
from mmsearch import ingest as ingest_module
from mmsearch.ingest import Ingestor
from mmsearch.providers.base import FatalProviderError, ProviderError
from mmsearch.sources import SourceError, SourceItem
from mmsearch.store import Store

from ..fakes import FakeDescriber, FakeEmbedder, colour_image


@pytest.fixture
def reads(monkeypatch) -> list[Path]:
    """Every file the reader opens."""
    opened: list[Path] = []
    real = ingest_module.read_file

    def counting(path: Path) -> bytes:
        opened.append(path)
        return real(path)

    monkeypatch.setattr(ingest_module, "read_file", counting)
    return opened


def test_a_folder_is_indexed_with_labels_from_folders(settings, photos):
    with MMSearch(settings=settings) as mm:
        report = mm.index(photos)
        assert (report.total, report.indexed, report.unchanged, report.failed) == (5, 5, 0, [])
        labels = {Path(it.origin).stem: it.label for it in mm.store.iter_items()}
    assert labels == {
        "red": "warm",
        "yellow": "warm",
        "blue": "cool",
        "green": "cool",
        "black": "photos",
    }


def test_unchanged_files_are_not_even_read_again(settings, photos, reads):
    with MMSearch(settings=settings) as mm:
        mm.index(photos)
        assert len(reads) == 5
        reads.clear()
        again = mm.index(photos)
        assert (again.indexed, again.unchanged) == (0, 5)
        assert reads == []


def test_a_touched_file_is_hashed_once_then_skipped_by_its_new_time(settings, photos, reads):
    red = photos / "warm" / "red.png"
    with MMSearch(settings=settings) as mm:
        mm.index(photos)
        later = time.time() + 100
        os.utime(red, (later, later))
        reads.clear()
        touched = mm.index(photos)
        assert (touched.indexed, touched.unchanged) == (0, 5)
        assert reads == [red]  # read to compare its hash, not embedded again
        reads.clear()
        assert mm.index(photos).unchanged == 5 and reads == []
        (item,) = [it for it in mm.store.iter_items() if it.origin == str(red.resolve())]
        assert item.mtime_ns == red.stat().st_mtime_ns and item.file_size == red.stat().st_size


def test_a_changed_file_replaces_its_row(settings, photos):
    red = photos / "warm" / "red.png"
    with MMSearch(settings=settings) as mm:
        mm.index(photos)
        colour_image("blue", size=(40, 30)).save(red)
        report = mm.index(photos)
        assert (report.indexed, report.unchanged) == (1, 4)
        assert mm.store.count() == 5
        hit = mm.search("blue", k=2)
        assert {Path(h.origin).name for h in hit} == {"red.png", "blue.png"}


def test_broken_files_are_reported_and_the_run_goes_on(settings, photos):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    (photos / "text.jpg").write_text("not an image")
    os.mkfifo(photos / "pipe.png")
    with MMSearch(settings=settings) as mm:
        report = mm.index(photos)
    assert report.indexed == 5
    reasons = {Path(p).name: r for p, r in report.failed}
    assert set(reasons) == {"broken.png", "text.jpg", "pipe.png"}
    assert reasons["pipe.png"] == "not a regular file"
    assert "not an image" in reasons["text.jpg"]


def test_files_listed_twice_become_one_row(settings, photos, tmp_path):
    red = photos / "warm" / "red.png"
    (photos / "warm" / "alias.png").symlink_to(red)
    rows = "\n".join(f"{n},{red},warm" for n in range(3))
    csv_file = tmp_path / "list.csv"
    csv_file.write_text(f"id,path,label\n{rows}\n")
    with MMSearch(settings=settings) as mm:
        folder = mm.index(photos)
        assert (folder.indexed, folder.duplicates) == (5, 1)
        listed = mm.index(csv_file)
        assert (listed.total, listed.duplicates, listed.unchanged) == (1, 2, 1)
        assert mm.store.count() == 5


def test_links_out_of_the_folder_are_refused(settings, photos, tmp_path):
    private = tmp_path / "private.png"
    colour_image("white").save(private)
    (photos / "leak.png").symlink_to(private)
    with MMSearch(settings=settings) as mm:
        report = mm.index(photos)
        assert [Path(p).name for p, _ in report.failed] == ["leak.png"]
        assert mm.store.count() == 5
    with MMSearch(settings=settings.model_copy(update={"follow_symlinks": True})) as mm:
        assert mm.index(photos).indexed == 1


class FlakyEmbedder(FakeEmbedder):
    """Fails any batch holding a yellow image; fatal on black when ``fatal`` is set."""

    def __init__(self, fatal: bool = False) -> None:
        super().__init__()
        self.fatal = fatal

    def embed_images(self, images):
        vectors = super().embed_images(images)
        colours = images.derived["fake.colours"]
        if self.fatal and "black" in colours:
            raise FatalProviderError("key rejected")
        if "yellow" in colours:
            raise ProviderError("the service refused this image")
        return vectors


def test_one_bad_image_does_not_cost_its_batch(settings, photos):
    store = Store(settings)
    ingestor = Ingestor(settings, store=store, embedder=FlakyEmbedder(), describer=FakeDescriber())
    report = ingestor.run(photos)
    assert report.indexed == 4
    assert [(Path(p).name, r) for p, r in report.failed] == [
        ("yellow.png", "provider error: the service refused this image")
    ]
    store.close()


def test_a_fatal_provider_error_stops_the_run(settings, photos):
    store = Store(settings)
    ingestor = Ingestor(
        settings, store=store, embedder=FlakyEmbedder(fatal=True), describer=FakeDescriber()
    )
    with pytest.raises(FatalProviderError):
        ingestor.run(photos)
    store.close()


def test_embedder_and_describer_share_the_batch_not_a_cache(settings, photos, monkeypatch):
    """What the embedder derived from a batch reaches the describer with the batch."""
    from .. import fakes

    calls = []
    real = fakes._nearest_colour
    monkeypatch.setattr(fakes, "_nearest_colour", lambda im: calls.append(1) or real(im))
    with MMSearch(settings=settings) as mm:
        mm.index(photos)
    assert len(calls) == 5  # once per image, not once per provider


def test_report_and_its_dict_forms(settings, photos):
    (photos / "bad.jpg").write_text("x")
    with MMSearch(settings=settings) as mm:
        report = mm.index(photos)
    full = report.as_dict()
    short = report.as_dict(full_paths=False)
    assert full["failed"] == [
        {"path": str(photos / "bad.jpg"), "reason": full["failed"][0]["reason"]}
    ]
    assert short["failed"][0]["path"] == "bad.jpg"
    assert {"total", "indexed", "unchanged", "duplicates", "seconds", "stage_seconds"} <= set(full)
    assert {"read_decode", "embed_images", "describe", "embed_texts", "store"} <= set(
        full["stage_seconds"]
    )


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_refused(settings, photos, limit):
    with MMSearch(settings=settings) as mm, pytest.raises(SourceError, match="at least 1"):
        mm.index(photos, limit=limit)


def test_limit_counts_distinct_files(settings, photos):
    red = photos / "warm" / "red.png"
    items = [SourceItem(red), SourceItem(red), *(SourceItem(p) for p in photos.rglob("*.png"))]
    with MMSearch(settings=settings) as mm:
        report = mm.index(items, limit=3)
    assert report.total == 3 and report.indexed == 3


def _ingestor(settings, store):
    embedder = FakeEmbedder()
    return Ingestor(settings, store=store, embedder=embedder, describer=FakeDescriber()), embedder


def test_files_gone_from_the_folder_are_removed_and_reported(settings, photos):
    with Store(settings) as store:
        ingestor, _ = _ingestor(settings, store)
        ingestor.run(photos)
        (photos / "warm" / "red.png").unlink()
        report = ingestor.run(photos)
        assert report.removed == [str((photos / "warm" / "red.png").resolve())]
        assert store.count() == 4
        assert report.as_dict(full_paths=False)["removed"] == ["red.png"]


def test_a_partial_run_removes_nothing(settings, photos):
    with Store(settings) as store:
        ingestor, _ = _ingestor(settings, store)
        ingestor.run(photos)
        assert ingestor.run(photos, limit=2).removed == []
        assert store.count() == 5


def test_a_moved_or_renamed_file_keeps_its_vectors(settings, photos):
    with Store(settings) as store:
        ingestor, embedder = _ingestor(settings, store)
        ingestor.run(photos)
        before = embedder.image_calls
        (photos / "warm" / "red.png").rename(photos / "cool" / "crimson.png")
        report = ingestor.run(photos)
        assert (report.moved, report.indexed, report.removed) == (1, 1, [])
        assert embedder.image_calls == before  # nothing embedded again
        (item,) = [it for it in store.iter_items() if it.origin.endswith("crimson.png")]
        assert item.label == "cool" and item.description == "a red picture"
        assert store.count() == 5


def test_a_copy_reuses_the_vectors_and_keeps_the_original(settings, photos):
    with Store(settings) as store:
        ingestor, embedder = _ingestor(settings, store)
        ingestor.run(photos)
        before = embedder.image_calls
        (photos / "copy.png").write_bytes((photos / "cool" / "blue.png").read_bytes())
        report = ingestor.run(photos)
        assert (report.moved, report.indexed) == (0, 1)
        assert embedder.image_calls == before and store.count() == 6
