"""Store behaviour on real Milvus: a Lite file and the embedded Milvus 2.3 server (where a
collection keeps one vector field and the store adds side collections). Every test runs
on both, since users get the same guarantees on either."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from mmsearch import Settings
from mmsearch.schema import SCHEMA_VERSION
from mmsearch.store import (
    FEATURE_FIELD,
    IMAGE_FIELD,
    TEXT_FIELD,
    Item,
    KnownFile,
    ProviderMismatchError,
    Row,
    Store,
    StoreError,
)


def _row(i: int, dim: int = 8, feature_dim: int = 4) -> Row:
    rng = np.random.default_rng(i)
    vec = rng.normal(size=dim).astype(np.float32)
    return Row(
        Item(
            id=f"id{i}",
            origin=f"/x/{i}.jpg",
            label="l",
            description="描述" * 3000,
            keywords=["a", "b"],
            content_hash=f"h{i}",
            width=3,
            height=4,
            indexed_at=5,
        ),
        vec / np.linalg.norm(vec),
        vec / np.linalg.norm(vec),
        rng.normal(size=feature_dim).astype(np.float32),
    )


@pytest.fixture(params=["lite", "embedded"])
def where(request, tmp_path) -> dict[str, str]:
    """uri and collection of a fresh collection on each backend."""
    if request.param == "lite":
        return {"uri": str(tmp_path / "s.db"), "collection": "c"}
    base = request.getfixturevalue("embedded_server")
    return {"uri": f"embedded:{base}", "collection": f"c_{uuid.uuid4().hex[:12]}"}


@pytest.fixture
def store(where):
    s = Store(Settings(**where))
    s.open(embedder="fake", dim=8, feature_dim=4)
    yield s
    s.drop()
    s.close()


def test_upsert_replaces_by_id(store):
    assert store.upsert([_row(i) for i in range(5)]) == 5
    store.upsert([_row(1), _row(2)])
    assert store.count() == 5
    assert store.known_files(["id1", "id9"]) == {"id1": KnownFile("h1", 0, 0)}


def test_one_id_twice_in_a_write_is_one_row(store):
    """Milvus 2.3 stored both rows of a batch naming one id twice (432 rows for 401 ids)."""
    assert store.upsert([_row(1), _row(2), _row(1), _row(1)]) == 2
    assert store.count() == 2
    hits = store.search(_row(1).image_embedding, field=IMAGE_FIELD, k=10)[0]
    assert sorted(h.id for h in hits) == ["id1", "id2"]


def test_long_descriptions_are_cut_not_rejected(store):
    store.upsert([_row(0)])
    item = store.items(["id0"])[0]
    assert 0 < len(item.description.encode()) <= 4096
    assert item.keywords == ["a", "b"] and (item.width, item.height) == (3, 4)


@pytest.mark.parametrize("field", [IMAGE_FIELD, TEXT_FIELD, FEATURE_FIELD])
def test_search_returns_nearest_first(store, field):
    rows = [_row(i) for i in range(10)]
    store.upsert(rows)
    query = rows[3].image_feature if field == FEATURE_FIELD else rows[3].image_embedding
    hits = store.search(query, field=field, k=3, filter='label == "l"')[0]
    assert hits[0].id == "id3" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].score >= hits[1].score >= hits[2].score
    # Every hit carries the stored facts, whichever collection holds the field.
    assert hits[0].origin == "/x/3.jpg" and hits[0].content_hash == "h3"


def test_k_above_hnsw_ef_is_served(store):
    """HNSW refuses ef < k; the store raises ef to k instead of failing the query."""
    store.settings = store.settings.model_copy(update={"search_params": {"ef": 4}})
    store.upsert([_row(i) for i in range(10)])
    assert len(store.search(_row(0).image_embedding, field=IMAGE_FIELD, k=8)[0]) == 8


def test_feature_field_exists(store):
    assert store.has_feature_field()
    store.upsert([_row(0)])
    rec = store.get(["id0"], with_vectors=True)[0]
    assert len(rec[FEATURE_FIELD]) == 4
    assert np.allclose(rec[TEXT_FIELD], _row(0).text_embedding, atol=1e-6)
    assert np.allclose(rec[IMAGE_FIELD], _row(0).image_embedding, atol=1e-6)


def test_delete_removes_the_item_from_every_mode(store):
    store.upsert([_row(i) for i in range(4)])
    store.delete(["id2"])
    # Session consistency makes a delete visible after ~0.2 s on a server, not at once.
    query = _row(2)
    for _ in range(50):
        found = {
            field: [h.id for h in store.search(vec, field=field, k=4)[0]]
            for field, vec in [
                (IMAGE_FIELD, query.image_embedding),
                (TEXT_FIELD, query.text_embedding),
                (FEATURE_FIELD, query.image_feature),
            ]
        }
        if not any("id2" in ids for ids in found.values()):
            break
        time.sleep(0.1)
    assert all("id2" not in ids and len(ids) == 3 for ids in found.values()), found


def test_rename_and_drop_take_every_part_along(store):
    store.upsert([_row(i) for i in range(3)])
    new = f"{store.collection}_renamed"
    store.rename(new)
    assert store.collection == new and store.count() == 3
    hits = store.search(_row(1).text_embedding, field=TEXT_FIELD, k=1)[0]
    assert hits[0].id == "id1"
    names = set(store.client.list_collections())
    assert all(n == new or n.startswith(new + "__") for n in names if "renamed" in n)
    assert store.drop()
    assert not [n for n in store.client.list_collections() if n.startswith(new)]
    store.open(embedder="fake", dim=8, feature_dim=4)  # so the fixture can drop it


def test_other_embedder_is_refused_with_a_clear_message(store, where):
    store.close()
    again = Store(Settings(**where))
    with pytest.raises(ProviderMismatchError, match="built with embedder 'fake'"):
        again.open(embedder="other", dim=8)
    with pytest.raises(ProviderMismatchError, match="16-d"):
        again.open(embedder="fake", dim=16)
    assert again.open(embedder="fake", dim=8)["embedder"] == "fake"
    again.close()


def test_meta_survives_reopen(store, where):
    store.upsert([_row(0)])
    store.close()
    with Store(Settings(**where)) as again:
        stats = again.stats()
        assert stats["count"] == 1 and stats["embedder"] == "fake" and stats["dim"] == 8
        assert stats["index_type"] == "HNSW" and stats["metric"] == "COSINE"


def test_missing_collection_is_a_clear_error(where):
    with (
        Store(Settings(**{**where, "collection": "none"})) as s,
        pytest.raises(StoreError, match="does not exist"),
    ):
        s.open(embedder="fake", dim=8, create=False)


@pytest.mark.parametrize("index_type", ["IVF_FLAT", "FLAT"])
@pytest.mark.parametrize("metric", ["L2", "IP"])
def test_other_index_types_and_metrics(tmp_path, index_type, metric):
    settings = Settings(uri=str(tmp_path / "s.db"), index_type=index_type, metric=metric)
    with Store(settings) as s:
        s.open(embedder="fake", dim=8, feature_dim=4)
        rows = [_row(i) for i in range(20)]
        s.upsert(rows)
        hits = s.search(rows[7].image_embedding, field=IMAGE_FIELD, k=2)[0]
        assert hits[0].id == "id7"


def test_a_collection_of_the_first_layout_migrates_and_keeps_every_row(where):
    """A collection written by schema version 1 (the last release) opens, is copied into the
    current layout with the new fields at their defaults, and keeps ids, facts and vectors."""
    settings = Settings(**where)
    with Store(settings, schema_version=1) as old:
        old.open(embedder="fake", dim=8, feature_dim=4)
        old.upsert([_row(i) for i in range(30)])
        before = {r["id"]: r for r in old.get([f"id{i}" for i in range(30)], with_vectors=True)}
    with Store(settings) as store:
        meta = store.open(embedder="fake", dim=8, feature_dim=4)
        assert meta["schema_version"] == SCHEMA_VERSION
        assert store.count() == 30
        after = {r["id"]: r for r in store.get(list(before), with_vectors=True)}
        assert after.keys() == before.keys()
        for id_, old_row in before.items():
            new_row = after[id_]
            assert new_row["file_size"] == 0 and new_row["mtime_ns"] == 0
            assert new_row["taken_at"] == 0 and new_row["has_gps"] is False
            for key, value in old_row.items():
                if key in (IMAGE_FIELD, TEXT_FIELD, FEATURE_FIELD):
                    np.testing.assert_allclose(new_row[key], value, rtol=1e-6)
                else:
                    assert new_row[key] == value, key
        assert store.search(_row(3).image_embedding, field=IMAGE_FIELD, k=1)[0][0].id == "id3"
        store.drop()


def test_an_interrupted_migration_is_finished_on_next_open(where):
    """A crash between dropping the old collection and renaming the copy loses nothing."""
    settings = Settings(**where)
    with Store(settings) as store:
        store.open(embedder="fake", dim=8, feature_dim=4)
        store.upsert([_row(i) for i in range(3)])
        store.rename(store._migrating())  # what the crash leaves: only the finished copy
    with Store(settings) as store:
        assert store.open(embedder="fake", dim=8, feature_dim=4, create=False)
        assert store.count() == 3
        store.drop()
