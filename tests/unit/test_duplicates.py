"""Duplicate groups and collapsed hit lists, on fake providers and the in-memory store.

The fake embedder gives every image of one mean colour the same vector, so these tests pin
the logic (hashing, pairing, grouping, representatives, collapsing, files that changed)
rather than the threshold, which ``tests/test_duplicates.py`` and ``bench/duplicates.py``
check with the real provider.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmsearch import MMSearch
from mmsearch import duplicates as dup
from mmsearch.schema import Hit, Item
from mmsearch.search import Results
from mmsearch.store import Store

from ..fakes import COLOURS

HOUR_NS = 3600 * 10**9


def textured(colour: str, seed: int, size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A photo-like image: smooth random light and dark in a colour's tint, so that its
    difference hash has structure and its mean colour is still ``colour``."""
    rng = np.random.default_rng(seed)
    noise = Image.fromarray((rng.random((6, 8)) * 255).astype(np.uint8)).resize(
        size, Image.Resampling.BICUBIC
    )
    light = 0.6 + 0.4 * np.asarray(noise, np.float32)[..., None] / 255.0
    return Image.fromarray((np.array(COLOURS[colour], np.float32) * light).astype(np.uint8))


@pytest.fixture(autouse=True)
def _cold_cache():
    dup.clear_hash_cache()
    yield
    dup.clear_hash_cache()


@pytest.fixture
def copies(tmp_path: Path) -> Path:
    """One photo with four copies (re-encoded, halved, byte copy, PNG of a JPEG), and two
    other photos; the original is the oldest file."""
    root = tmp_path / "copies"
    (root / "backup").mkdir(parents=True)
    original = textured("red", 1)
    original.save(root / "a.png")
    original.save(root / "a-q40.jpg", quality=40)
    original.resize((48, 32), Image.Resampling.LANCZOS).save(root / "a-half.png")
    shutil.copyfile(root / "a.png", root / "backup" / "a.png")
    textured("blue", 2).save(root / "b.png")
    textured("green", 3).save(root / "c.png")
    old = os.stat(root / "a.png").st_mtime_ns - HOUR_NS
    os.utime(root / "a.png", ns=(old, old))
    return root


@pytest.fixture
def indexed(settings, copies):
    with MMSearch(settings=settings) as mm:
        report = mm.index(copies)
        assert report.indexed == 6 and not report.failed
        yield mm, copies


def names(items) -> list[str]:
    return [str(Path(it.origin).relative_to(Path(it.origin).parents[1])) for it in items]


# -- the copy vector ---------------------------------------------------------------------------


def test_dhash_survives_resizing_and_re_encoding_but_not_another_photo(tmp_path):
    image = textured("red", 7, (200, 150))
    image.save(tmp_path / "q40.jpg", quality=40)
    variants = [image.resize((100, 75)), Image.open(tmp_path / "q40.jpg")]
    other = dup.dhash(textured("red", 8, (200, 150)))
    h = dup.dhash(image)
    assert all(bin((h ^ dup.dhash(v)) & (2**64 - 1)).count("1") <= 6 for v in variants)
    assert bin((h ^ other) & (2**64 - 1)).count("1") >= 16
    assert -(2**63) <= h < 2**63  # fits a Milvus INT64


def test_hash_bits_inner_product_is_one_minus_twice_the_hamming_share():
    rng = np.random.default_rng(0)
    hashes = [int(x) for x in rng.integers(-(2**63), 2**63 - 1, 20, dtype=np.int64)]
    bits = dup.hash_bits(hashes)
    for a in range(5):
        for b in range(5):
            hamming = bin((hashes[a] ^ hashes[b]) & (2**64 - 1)).count("1")
            assert bits[a] @ bits[b] == pytest.approx(1 - 2 * hamming / 64)


def test_copy_similarity_mixes_cosine_and_hash_by_the_weight():
    vectors = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    hashes = [0, 0b1111]  # 4 bits apart
    cv = dup.copy_vectors(vectors, hashes, weight=0.4)
    assert np.linalg.norm(cv, axis=1) == pytest.approx([1.0, 1.0])
    assert cv[0] @ cv[1] == pytest.approx(0.4 * 0.6 + 0.6 * (1 - 8 / 64))


def test_similar_pairs_finds_exactly_the_pairs_above_the_threshold_across_blocks():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(57, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    i, j, s = dup.similar_pairs(x, 0.5, block_cells=57 * 4)  # blocks of 4 rows
    sims = x @ x.T
    expected = {(a, b) for a in range(57) for b in range(a + 1, 57) if sims[a, b] >= 0.5}
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == expected
    assert np.allclose(s, sims[i, j])
    assert all(a < b for a, b in zip(i, j, strict=True))


# -- groups ------------------------------------------------------------------------------------


def snapshot(items: list[Item], vectors: np.ndarray, usable=None) -> dup.Snapshot:
    usable = np.ones(len(items), bool) if usable is None else np.asarray(usable)
    return dup.Snapshot(items, np.asarray(vectors, np.float32), usable)


def item(name: str, content: str = "", w: int = 10, h: int = 10, mtime: int = 5) -> Item:
    return Item(
        id=name, origin=f"/p/{name}", content_hash=content, width=w, height=h, mtime_ns=mtime
    )


def test_groups_join_exact_copies_and_near_pairs_transitively():
    items = [
        item("a", "h1"),
        item("a2", "h1"),  # same bytes as a: exact, and never scanned itself
        item("b", "h2"),  # near a
        item("c", "h3"),  # near b but not a: joined through b
        item("d", "h4"),  # alone
        item("e", "h5", w=1),  # unusable (its file could not be hashed): alone
    ]
    v = np.array([[1, 0, 0], [1, 0, 0], [0.8, 0.6, 0], [0.28, 0.96, 0], [0, 0, 1], [1, 0, 0]])
    groups = dup.find_groups(snapshot(items, v, [1, 1, 1, 1, 1, 0]), threshold=0.75)
    assert len(groups) == 1
    g = groups[0]
    assert sorted(it.id for it in g.items) == ["a", "a2", "b", "c"]
    kinds = {(p.a, p.b) if p.a < p.b else (p.b, p.a): p.kind for p in g.pairs}
    assert kinds[("a", "a2")] == "exact" and kinds[("a", "b")] == "near"
    assert len(g.pairs) == 6 and g.kind == "mixed"
    by_pair = {frozenset((p.a, p.b)): p.similarity for p in g.pairs}
    assert by_pair[frozenset(("a", "c"))] == pytest.approx(0.28)  # listed, joined via b
    assert [p.similarity for p in g.pairs] == sorted((p.similarity for p in g.pairs), reverse=True)


def test_representative_has_most_pixels_then_is_oldest_then_largest_file():
    big = Item(id="big", origin="/p/big", width=20, height=20, mtime_ns=9)
    old = Item(id="old", origin="/p/old", width=10, height=10, mtime_ns=1, file_size=1)
    heavy = Item(id="heavy", origin="/p/heavy", width=10, height=10, mtime_ns=1, file_size=9)
    unknown = Item(id="unknown", origin="/p/unknown", width=10, height=10, mtime_ns=0)
    order = sorted([unknown, old, heavy, big], key=dup.representative_key)
    assert [it.id for it in order] == ["big", "heavy", "old", "unknown"]


def test_groups_largest_first_and_big_groups_list_pairs_with_the_representative_only(
    monkeypatch,
):
    monkeypatch.setattr(dup, "MAX_ALL_PAIRS", 3)
    items = [item(f"x{i}", f"x{i}") for i in range(4)] + [item("y0", "y"), item("y1", "y")]
    v = np.array([[1, 0]] * 4 + [[0, 1]] * 2, np.float32)
    groups = dup.find_groups(snapshot(items, v), threshold=0.9)
    assert [len(g.items) for g in groups] == [4, 2]
    assert len(groups[0].pairs) == 3  # 4 members: 3 pairs with the representative, not 6
    assert all(p.a == groups[0].representative.id for p in groups[0].pairs)
    assert groups[1].kind == "exact" and groups[1].similarity == 1.0


def test_report_json_names_files_without_their_folders():
    items = [item("a", "h"), item("b", "h", w=5)]
    groups = dup.find_groups(snapshot(items, np.ones((2, 2))), 0.5)
    report = dup.DuplicateReport(groups, 0.5, items=2, failed=[("/secret/dir/x.jpg", "gone")])
    public = report.as_dict(full_paths=False)
    assert public["groups_count"] == 1 and public["duplicates"] == 1
    first = public["groups"][0]
    assert first["representative"] == "a" and first["kind"] == "exact"
    assert [i["name"] for i in first["items"]] == ["a", "b"]
    assert [i["kind"] for i in first["items"]] == ["representative", "exact"]
    assert "origin" not in first["items"][0] and public["failed"][0]["path"] == "x.jpg"
    assert report.as_dict()["groups"][0]["items"][0]["origin"] == "/p/a"
    assert report.group_of() == {"a": 0, "b": 0}


# -- collapsing --------------------------------------------------------------------------------


def hit(name: str, score: float) -> Hit:
    return Hit(id=name, origin=f"/p/{name}", score=score)


def test_collapse_keeps_the_best_ranked_member_and_counts_its_copies():
    hits = [hit("a", 0.9), hit("b", 0.8), hit("a-copy", 0.7), hit("c", 0.6), hit("a-2", 0.5)]
    out = dup.collapse(hits, ["A", "B", "A", "C", "A"])
    assert [c.hit.id for c in out] == ["a", "b", "c"]
    assert [c.count for c in out] == [3, 1, 1]
    assert [h.id for h in out[0].copies] == ["a-copy", "a-2"]


def test_collapse_by_a_report_mapping_leaves_unknown_ids_alone():
    hits = [hit("x", 0.9), hit("y", 0.8), hit("new", 0.7), hit("z", 0.6)]
    out = dup.collapse(hits, {"x": 0, "z": 0, "y": 1})
    assert [(c.hit.id, c.count) for c in out] == [("x", 2), ("y", 1), ("new", 1)]
    with pytest.raises(ValueError, match="2 keys for 4 hits"):
        dup.collapse(hits, ["a", "b"])


# -- on the store ------------------------------------------------------------------------------


def test_find_duplicates_groups_the_copies_with_the_original_first(indexed):
    mm, _ = indexed
    report = dup.find_duplicates(mm.store)
    assert report.items == 6 and not report.failed
    assert len(report.groups) == 1
    group = report.groups[0]
    assert names(group.items)[0] == "copies/a.png"  # most pixels, then oldest
    assert sorted(names(group.items)) == [
        "backup/a.png",
        "copies/a-half.png",
        "copies/a-q40.jpg",
        "copies/a.png",
    ]
    by_name = {n: i for n, i in zip(names(group.items), group.items, strict=True)}
    exact = {frozenset((p.a, p.b)) for p in group.pairs if p.kind == "exact"}
    assert exact == {frozenset((by_name["copies/a.png"].id, by_name["backup/a.png"].id))}
    assert group.kind == "mixed" and report.duplicates == 3
    assert set(report.stages) >= {"read store", "hash files", "scan"}


@pytest.mark.parametrize("threshold", [0.0, -0.5, 1.01])
def test_a_threshold_outside_0_1_is_refused(indexed, threshold):
    mm, _ = indexed
    with pytest.raises(ValueError, match="threshold must be in"):
        dup.find_duplicates(mm.store, threshold)
    with pytest.raises(ValueError, match="threshold must be in"):
        dup.collapse_hits(mm.store, [], threshold=threshold)


def test_files_moved_or_changed_after_indexing_are_reported_and_left_out(indexed):
    mm, root = indexed
    (root / "a-q40.jpg").unlink()
    textured("red", 99).save(root / "a-half.png")  # same name, other content
    report = dup.find_duplicates(mm.store)
    reasons = {Path(p).name: r for p, r in report.failed}
    assert set(reasons) == {"a-q40.jpg", "a-half.png"}
    assert "changed" in reasons["a-half.png"]
    assert [sorted(names(g.items)) for g in report.groups] == [["backup/a.png", "copies/a.png"]]


def test_collapse_hits_shows_each_photo_once(indexed):
    mm, root = indexed
    hits = mm.search(textured("red", 1), mode="image2image", k=6)
    assert len(hits) == 6
    out = dup.collapse_hits(mm.store, hits)
    counts = {names([c.hit])[0]: c.count for c in out}
    assert len(out) == 3 and sorted(counts.values()) == [1, 1, 4]
    first = out[0]
    assert {names([h])[0] for h in [first.hit, *first.copies]} >= {"copies/a-q40.jpg"}


def test_collapsed_search_asks_for_more_until_k_distinct_photos(indexed, monkeypatch):
    mm, _ = indexed
    ranked = mm.search(textured("red", 1), mode="image2image", k=6)  # the 4 copies first
    asked: list[int] = []

    def search(n: int) -> Results:
        asked.append(n)
        return Results(list(ranked[:n]), None, "")

    monkeypatch.setattr(dup, "COLLAPSE_OVERSAMPLING", 1)
    results, copies = dup.collapsed_search(mm.store, search, 2)
    assert asked == [2, 4, 8]  # 2 and 4 hits hold one photo; 8 asks past the end (6)
    assert len(results.hits) == 2 and copies[0] == 3
    assert names(results.hits)[0].startswith(("copies/a", "backup/a"))

    asked.clear()
    results, copies = dup.collapsed_search(mm.store, search, 5)  # only 3 distinct exist
    assert asked == [5, 10] and sorted(copies) == [0, 0, 3]


def test_stored_hashes_are_used_and_files_are_not_read(indexed, monkeypatch):
    mm, root = indexed
    items = list(mm.store.iter_items())
    stored = {it.id: dup.file_dhash(it, max_pixels=10**8) for it in items}
    real_get = Store.get

    def get_with_hash(self, ids, *, with_vectors=False):
        return [
            {**r, dup.DHASH_FIELD: stored[r["id"]]}
            for r in real_get(self, ids, with_vectors=with_vectors)
        ]

    monkeypatch.setattr(Store, "get", get_with_hash)
    dup.clear_hash_cache()
    shutil.rmtree(root)  # nothing left to read
    report = dup.find_duplicates(mm.store)
    assert not report.failed and [len(g.items) for g in report.groups] == [4]


def test_each_file_is_hashed_once_per_process(indexed, monkeypatch):
    mm, _ = indexed
    reads = []
    real = dup.read_indexed
    monkeypatch.setattr(dup, "read_indexed", lambda p, h: reads.append(p) or real(p, h))
    dup.find_duplicates(mm.store)
    assert len(reads) == 5  # six files, two with the same bytes
    dup.find_duplicates(mm.store)
    assert len(reads) == 5
