"""Ingest from folders and CSVs: broken files, resume, replace, labels, limits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mmsearch import MMSearch, Mode
from mmsearch.sources import SourceError, item_id, iter_csv, iter_folder

from .conftest import REVERSE, REVERSE_CSV

pytestmark = pytest.mark.datasets

CLASSES = ["lion", "pizza", "goldfish", "ambulance", "Afghan_hound"]


def _real_folder(root: Path) -> Path:
    """A folder of five real photos in label sub-folders, plus two broken files."""
    for label in CLASSES:
        src = next((REVERSE / "test" / label).iterdir())
        (root / label).mkdir(parents=True)
        shutil.copy(src, root / label / src.name)
    lion = next((root / "lion").iterdir())
    (root / "lion" / "truncated.jpg").write_bytes(lion.read_bytes()[:3000])
    (root / "notes.jpg").write_text("this is not an image\n")
    return root


def test_broken_files_are_reported_and_the_run_goes_on(settings, tmp_path):
    folder = _real_folder(tmp_path / "photos")
    with MMSearch(settings=settings) as mm:
        report = mm.index(folder)
        assert report.total == 7
        assert report.indexed == 5
        failed = dict(report.failed)
        assert set(failed) == {str(folder / "lion" / "truncated.jpg"), str(folder / "notes.jpg")}
        assert "not an image" in failed[str(folder / "notes.jpg")]
        assert "decode" in failed[str(folder / "lion" / "truncated.jpg")]
        assert mm.stats()["count"] == 5


def test_indexing_twice_adds_nothing(settings, tmp_path):
    folder = _real_folder(tmp_path / "photos")
    with MMSearch(settings=settings) as mm:
        first = mm.index(folder)
        second = mm.index(folder)
        assert first.indexed == 5
        assert second.indexed == 0 and second.unchanged == 5
        assert mm.stats()["count"] == 5


def test_changed_file_replaces_its_row(settings, tmp_path):
    folder = _real_folder(tmp_path / "photos")
    with MMSearch(settings=settings) as mm:
        mm.index(folder)
        target = next((folder / "goldfish").iterdir())
        shutil.copy(next((REVERSE / "test" / "lion").iterdir()), target)  # now shows a lion
        report = mm.index(folder)
        assert report.indexed == 1 and report.unchanged == 4
        assert mm.stats()["count"] == 5
        item = mm.get(item_id(target))
        assert item is not None and "狮" in item.description


def test_labels_come_from_parent_folder(settings, tmp_path):
    folder = _real_folder(tmp_path / "photos")
    with MMSearch(settings=settings) as mm:
        mm.index(folder)
        hits = mm.search("a goldfish", mode=Mode.text2image, k=5)
        assert {h.label for h in hits} == set(CLASSES)
        assert hits[0].label == "goldfish"


def test_csv_source_and_limit(settings):
    with MMSearch(settings=settings) as mm:
        report = mm.index(REVERSE_CSV, limit=7)
        assert report.total == 7 and report.indexed == 7
        assert mm.stats()["count"] == 7


def test_csv_paths_are_relative_to_the_csv(tmp_path):
    csv_file = tmp_path / "sub" / "list.csv"
    csv_file.parent.mkdir()
    csv_file.write_text("id,path,label\n0,./a/x.jpg,cat\n1,/abs/y.png,dog\n")
    items = list(iter_csv(csv_file))
    assert items[0].path == tmp_path / "sub" / "a" / "x.jpg" and items[0].label == "cat"
    assert items[1].path == Path("/abs/y.png")


def test_csv_without_path_column_is_refused(settings, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\nx.jpg,cat\n")
    with MMSearch(settings=settings) as mm, pytest.raises(SourceError, match="'path' column"):
        mm.index(bad)


def test_folder_walk_ignores_non_images_and_survives_link_loops(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.JPG").write_bytes(b"")
    (tmp_path / "a" / "readme.txt").write_text("hi")
    (tmp_path / "a" / "loop").symlink_to(tmp_path)
    items = list(iter_folder(tmp_path))
    assert [(i.path.name, i.label) for i in items] == [("x.JPG", "a")]


def test_ids_are_stable_per_file(tmp_path):
    f = tmp_path / "x.jpg"
    assert item_id(f) == item_id(tmp_path / "." / "x.jpg")
    assert item_id(f) != item_id(tmp_path / "y.jpg")


def test_missing_source_is_a_clear_error(settings, tmp_path):
    with MMSearch(settings=settings) as mm, pytest.raises(SourceError, match="no such file"):
        mm.index(tmp_path / "nope")


class _RenamedOffline:
    """A genuinely different embedder for the reindex test: the offline one's vectors under
    another name and with the image->image vector dropped (so the schema changes too)."""

    def __init__(self, inner):
        self.inner = inner
        self.name, self.dim, self.feature_dim = "offline-without-features", inner.dim, 0

    def embed_images(self, images):
        from mmsearch.providers import ImageVectors

        return ImageVectors(shared=self.inner.embed_images(images).shared)

    def embed_texts(self, texts, *, query):
        return self.inner.embed_texts(texts, query=query)


def test_switching_embedder_is_refused_and_reindex_rebuilds(settings, tmp_path):
    from mmsearch.store import ProviderMismatchError

    folder = _real_folder(tmp_path / "photos")
    with MMSearch(settings=settings) as mm:
        mm.index(folder)
        first = {h.id: h.origin for h in mm.search("lion", k=5)}
    other = MMSearch(settings=settings)
    other.embedder = _RenamedOffline(other.embedder)
    with pytest.raises(ProviderMismatchError, match="built with embedder"):
        other.search("lion")
    report = other.reindex()
    assert report.indexed == 5 and report.total == 5
    stats = other.stats()
    assert stats["embedder"] == "offline-without-features" and stats["count"] == 5
    hits = other.search(next((folder / "lion").iterdir()), mode=Mode.image2image, k=5)
    assert {h.id: h.origin for h in hits} == first
    assert hits[0].label == "lion"
    other.close()
