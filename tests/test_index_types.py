"""Index types for 10M-100M rows (IVF_PQ, DISKANN) and shards: built where the kind of
Milvus can serve them, refused with the reason where it cannot.

Measured here: the embedded Milvus 2.3 server builds IVF_PQ and takes num_shards; its
build has no DiskANN (every build fails, "bad_function_call", and is retried forever).
Milvus Lite 3.2 creates IVF_PQ and DISKANN collections, then cannot load them, and keeps
one shard whatever it is asked.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import pytest

from mmsearch import Settings
from mmsearch.config import IndexType, pq_m
from mmsearch.store import FEATURE_FIELD, IMAGE_FIELD, TEXT_FIELD, Item, Row, Store, StoreError

from . import fakes

#: Rows per collection: two shards make two segments, each above the 1,024 rows under which
#: Milvus 2.3 leaves a segment unindexed (so the searches below go through IVF_PQ).
ROWS = 2600
DIM, FEATURE_DIM = 64, 42  # 42: m falls back from 10.5 to 7, its largest divisor below


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """Random unit vectors: nearly equidistant, so only a working index finds the right one."""
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _rows(n: int) -> list[Row]:
    shared, features = _vectors(n, DIM, 1), _vectors(n, FEATURE_DIM, 2)
    items = [
        Item(id=f"id{i}", origin=f"/x/{i}.jpg", label="l", content_hash=f"h{i}") for i in range(n)
    ]
    return [Row(it, shared[i], shared[i], features[i]) for i, it in enumerate(items)]


def _near(vectors: np.ndarray, seed: int) -> np.ndarray:
    """Each vector moved a little: its nearest stored neighbour is still itself."""
    noisy = vectors + 0.02 * _vectors(len(vectors), vectors.shape[1], seed)
    return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)


def test_pq_m_divides_every_width_mmsearch_stores():
    widths = {384: 96, 1384: 346, 512: 128, 1024: 256, 1152: 288, 42: 7, 1001: 143, 3: 1}
    assert {d: pq_m(d) for d in widths} == widths
    s = Settings(uri="x.db", index_type="IVF_PQ")
    assert s.index_params_for(IndexType.IVF_PQ, 1384) == {"nlist": 1024, "nbits": 8, "m": 346}
    assert s.effective_search_params == {"nprobe": 64}
    mine = Settings(uri="x.db", index_type="IVF_PQ", index_params={"m": 8, "nlist": 64})
    assert mine.index_params_for(IndexType.IVF_PQ, 64) == {"nlist": 64, "nbits": 8, "m": 8}
    # a collection migrated keeps its own index type, and the user's params are not its own
    assert mine.index_params_for(IndexType.HNSW, 64) == {"M": 32, "efConstruction": 200}


@pytest.mark.parametrize(
    ("k", "min_ef", "expected"),
    [(10, 0, 100), (10, 4096, 200), (50, 4096, 500), (300, 0, 300)],
)
def test_diskann_search_list_is_kept_within_what_milvus_allows(monkeypatch, k, min_ef, expected):
    """Milvus 2.3 (knowhere) refuses search_list outside [k, max(200, 10·k)]."""
    seen: list[dict[str, Any]] = []
    original = fakes.MemoryClient.search

    def search(self: Any, name: str, **kw: Any) -> Any:
        seen.append(kw["search_params"]["params"])
        return original(self, name, **kw)

    monkeypatch.setattr(fakes.MemoryClient, "search", search)
    store = Store(Settings(uri=f"memory:{uuid.uuid4().hex}", index_type="DISKANN"))
    store.open(embedder="fake", dim=DIM)
    store.search(_vectors(1, DIM, 3), field=IMAGE_FIELD, k=k, min_ef=min_ef)
    assert seen == [{"search_list": expected}]


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"index_type": "IVF_PQ"}, "cannot build IVF_PQ indexes"),
        ({"index_type": "DISKANN"}, "cannot build DISKANN indexes"),
        ({"shards": 2}, "keeps one shard per collection"),
    ],
)
def test_milvus_lite_refuses_what_it_cannot_serve(tmp_path, options, reason):
    store = Store(Settings(uri=str(tmp_path / "s.db"), collection="c", **options))
    with store, pytest.raises(StoreError, match=reason) as err:
        store.open(embedder="fake", dim=DIM)
    assert "\n" not in str(err.value) and "use" in str(err.value)
    with Store(Settings(uri=str(tmp_path / "s.db"), collection="c")) as again:
        assert not again.exists()  # refused before anything was created


def test_the_embedded_server_refuses_diskann(embedded_server):
    settings = Settings(
        uri=f"embedded:{embedded_server}",
        collection=f"d_{uuid.uuid4().hex[:12]}",
        index_type="DISKANN",
    )
    with Store(settings) as store:
        with pytest.raises(StoreError, match="built without DiskANN.*IVF_PQ or HNSW"):
            store.open(embedder="fake", dim=DIM, feature_dim=FEATURE_DIM)
        assert not store.exists() and not store.client.has_collection(store._side(TEXT_FIELD))


@pytest.fixture
def ivf_pq_store(embedded_server):
    """An IVF_PQ collection of two shards on the embedded server, ROWS rows, searched
    through their built indexes."""
    settings = Settings(
        uri=f"embedded:{embedded_server}",
        collection=f"pq_{uuid.uuid4().hex[:12]}",
        index_type="IVF_PQ",
        shards=2,
    )
    store = Store(settings)
    store.open(embedder="fake", dim=DIM, feature_dim=FEATURE_DIM)
    try:
        rows = _rows(ROWS)
        for start in range(0, ROWS, 500):
            store.upsert(rows[start : start + 500])
        store.flush()  # seals the segments: their indexes are built now
        _wait_searched_by_index(store, rows[:20])
        yield store, rows
    finally:
        store.drop()
        store.close()


def _wait_searched_by_index(store: Store, rows: list[Row], timeout: float = 90) -> None:
    """Wait until the query node searches every field through the IVF_PQ indexes: a stored
    vector then scores its PQ approximation, not its exact 1.0 (17 s after the flush,
    measured; the indexes are built in ~10 s, then handed to the query node)."""
    queries = {
        IMAGE_FIELD: np.stack([r.image_embedding for r in rows]),
        TEXT_FIELD: np.stack([r.text_embedding for r in rows]),
        FEATURE_FIELD: np.stack([r.image_feature for r in rows]),
    }
    deadline = time.monotonic() + timeout
    while True:
        scores = [h[0].score for f, q in queries.items() for h in store.search(q, field=f, k=1)]
        if all(abs(score - 1.0) > 1e-4 for score in scores):
            return
        assert time.monotonic() < deadline, "the indexes were not searched in time"
        time.sleep(0.5)


def test_ivf_pq_with_two_shards_on_the_embedded_server(ivf_pq_store):
    store, rows = ivf_pq_store
    for name, field, m in [
        (store.collection, IMAGE_FIELD, DIM // 4),
        (store._side(TEXT_FIELD), TEXT_FIELD, DIM // 4),
        (store._side(FEATURE_FIELD), FEATURE_FIELD, 7),
    ]:
        assert store.client.describe_collection(name)["num_shards"] == 2
        index = store.client.describe_index(name, field)
        assert index["index_type"] == "IVF_PQ" and int(index["m"]) == m, index
        assert int(index["nlist"]) == 1024 and int(index["nbits"]) == 8
        assert index["indexed_rows"] == index["total_rows"] == ROWS

    picked = np.random.default_rng(4).choice(ROWS, size=40, replace=False)
    for field, source in [
        (IMAGE_FIELD, np.stack([rows[i].image_embedding for i in picked])),
        (FEATURE_FIELD, np.stack([rows[i].image_feature for i in picked])),
    ]:
        hits = store.search(_near(source, 5), field=field, k=10)
        found = [h[0].id for h in hits]
        assert found == [f"id{i}" for i in picked], field  # each one's own row first
