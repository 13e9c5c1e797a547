"""Store behaviour on a real Milvus Lite file: schema, provider check, upsert by id."""

from __future__ import annotations

import numpy as np
import pytest

from mmsearch import Settings
from mmsearch.store import (
    FEATURE_FIELD,
    IMAGE_FIELD,
    TEXT_FIELD,
    Item,
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


@pytest.fixture
def store(tmp_path):
    s = Store(Settings(uri=str(tmp_path / "s.db"), collection="c"))
    s.open(embedder="fake", dim=8, feature_dim=4)
    yield s
    s.close()


def test_upsert_replaces_by_id(store):
    assert store.upsert([_row(i) for i in range(5)]) == 5
    store.upsert([_row(1), _row(2)])
    assert store.count() == 5
    assert store.content_hashes(["id1", "id9"]) == {"id1": "h1"}


def test_long_descriptions_are_cut_not_rejected(store):
    store.upsert([_row(0)])
    item = store.items(["id0"])[0]
    assert 0 < len(item.description.encode()) <= 4096
    assert item.keywords == ["a", "b"] and (item.width, item.height) == (3, 4)


@pytest.mark.parametrize("field", [IMAGE_FIELD, TEXT_FIELD])
def test_search_returns_nearest_first(store, field):
    rows = [_row(i) for i in range(10)]
    store.upsert(rows)
    hits = store.search(rows[3].image_embedding, field=field, k=3)[0]
    assert hits[0].id == "id3" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].score >= hits[1].score >= hits[2].score


def test_feature_field_exists(store):
    assert store.has_feature_field()
    store.upsert([_row(0)])
    rec = store.get(["id0"], with_vectors=True)[0]
    assert len(rec[FEATURE_FIELD]) == 4


def test_other_embedder_is_refused_with_a_clear_message(store, tmp_path):
    store.close()
    again = Store(Settings(uri=str(tmp_path / "s.db"), collection="c"))
    with pytest.raises(ProviderMismatchError, match="built with embedder 'fake'"):
        again.open(embedder="other", dim=8)
    with pytest.raises(ProviderMismatchError, match="16-d"):
        again.open(embedder="fake", dim=16)
    assert again.open(embedder="fake", dim=8)["embedder"] == "fake"
    again.close()


def test_meta_survives_reopen(store, tmp_path):
    store.upsert([_row(0)])
    store.close()
    with Store(Settings(uri=str(tmp_path / "s.db"), collection="c")) as again:
        stats = again.stats()
        assert stats["count"] == 1 and stats["embedder"] == "fake" and stats["dim"] == 8
        assert stats["index_type"] == "HNSW" and stats["metric"] == "COSINE"


def test_missing_collection_is_a_clear_error(tmp_path):
    with (
        Store(Settings(uri=str(tmp_path / "s.db"), collection="none")) as s,
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
