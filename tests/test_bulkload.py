"""Bulk loads (``Store.bulk_write``, ``bulkload.py``) on real Milvus: bulk import into the
embedded Milvus 2.3 server stores what upserts store, a rerun does not duplicate, and a
Milvus Lite file gets upserts (it has no import)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mmsearch import Settings, bulkload
from mmsearch.store import FEATURE_FIELD, IMAGE_FIELD, TEXT_FIELD, Item, Row, Store, StoreError

N = 2500


def _rows(start: int, stop: int, *, gaps: bool = True) -> list[Row]:
    """Rows with every kind of field set; with ``gaps``, every 7th has no feature vector
    (the server keeps features in a side collection; Lite needs every vector field)."""
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, stop):
        vec = rng.normal(size=(3, 8)).astype(np.float32)
        item = Item(
            id=f"id{i}",
            origin=f"/photos/{i % 13}/IMG_{i}.jpg",
            label=f"{i % 13}",
            description="一只棕色的狗 a brown dog",
            keywords=["狗", "dog"],
            content_hash=f"{i:064x}",
            width=640,
            height=480,
            indexed_at=1_700_000_000 + i,
            file_size=1000 + i,
            mtime_ns=i,
            facts={"taken_at": 1_600_000_000 + i, "has_gps": True, "latitude": 48.85},
            ocr_text="营业时间" if i % 3 == 0 else "",
            ocr_confidence=0.5,
        )
        feature = rng.normal(size=4).astype(np.float32)
        feature = None if gaps and i % 7 == 0 else feature
        out.append(Row(item, vec[0], vec[1], feature))
    return out


def _store(uri: str, collection: str) -> Store:
    store = Store(Settings(uri=uri, collection=collection))
    store.open(embedder="fake", dim=8, feature_dim=4)
    return store


@contextlib.contextmanager
def _fresh(server: Path, n: int) -> Iterator[list[Store]]:
    """``n`` fresh collections on the embedded server (each costs ~9 s of index setup)."""
    uri = f"embedded:{server}"
    stores = [_store(uri, f"b_{uuid.uuid4().hex[:12]}") for _ in range(n)]
    yield stores
    for s in stores:
        s.drop()
        s.close()


@pytest.fixture
def pair(embedded_server):
    """Two fresh collections on the embedded server."""
    with _fresh(embedded_server, 2) as stores:
        yield stores


@pytest.fixture
def one(embedded_server):
    """One fresh collection on the embedded server."""
    with _fresh(embedded_server, 1) as stores:
        yield stores[0]


def _dump(store: Store, ids: list[str]) -> dict[str, dict]:
    return {r["id"]: r for r in store.get(ids, with_vectors=True)}


def _counts(store: Store) -> dict[str, int]:
    return {
        name: int(
            store.client.query(
                name, filter="", output_fields=["count(*)"], consistency_level="Strong"
            )[0]["count(*)"]
        )
        for name in store.collections()
    }


def test_import_stores_what_upserts_store(pair):
    imported, upserted = pair
    rows = _rows(0, N)
    report = imported.bulk_write(iter(rows), method="import")
    assert (report.method, report.rows, report.imported, report.files) == ("import", N, N, 3)
    upserted.upsert(rows)
    ids = [r.item.id for r in rows]
    got, want = _dump(imported, ids), _dump(upserted, ids)
    assert sorted(got) == sorted(want) == sorted(ids)
    for i in ids:
        a, b = got[i], want[i]
        for name in (IMAGE_FIELD, TEXT_FIELD, FEATURE_FIELD):
            assert (name in a) == (name in b)
            if name in a:
                np.testing.assert_allclose(a.pop(name), b.pop(name), rtol=1e-6)
        assert a == b
    # Visible as soon as the call returns, to Strong reads and to searches.
    assert sorted(_counts(imported).values()) == sorted(_counts(upserted).values())
    hits = imported.search(rows[5].image_embedding, field=IMAGE_FIELD, k=3)[0]
    assert hits[0].id == "id5"


def test_rerun_does_not_duplicate(one, monkeypatch):
    store, n = one, 1500  # two files, then one, at 1,000 rows a file
    monkeypatch.setattr(bulkload, "FILE_ROWS", 1000)  # several files and presence checks
    store.bulk_write(_rows(0, n), method="import")
    # Half stored already (upserted: replaced), half new (imported), and an id met again
    # in a later file (upserted over its import at the end).
    again = _rows(n // 2, n + n // 2)
    again[-1].item.description = "changed"
    report = store.bulk_write([*again, _rows(n, n + 1)[0]], method="import")
    assert (report.imported, report.upserted) == (n // 2, n // 2 + 1)
    expected = n + n // 2
    with_feature = sum(1 for i in range(expected) if i % 7)
    counts = _counts(store)
    assert counts[store.collection] == expected
    assert counts[f"{store.collection}__{TEXT_FIELD}"] == expected
    assert counts[f"{store.collection}__{FEATURE_FIELD}"] == with_feature
    assert store.items([f"id{expected - 1}"])[0].description == "changed"
    assert len(store.ids_where('origin like "/photos/%"')) == expected


def test_auto_upserts_below_the_crossover(one, monkeypatch):
    store = one
    report = store.bulk_write(_rows(0, 300))
    assert (report.method, report.rows) == ("upsert", 300)
    monkeypatch.setattr(bulkload, "BULK_IMPORT_MIN_ROWS", 200)
    report = store.bulk_write(_rows(300, 600))
    assert (report.method, report.imported) == ("import", 300)
    assert store.count() == 600


def test_lite_upserts(tmp_path):
    """Milvus Lite has no import: "auto" upserts (no matter how many rows); "import" says
    why it cannot."""
    store = _store(str(tmp_path / "b.db"), "c")
    try:
        assert store.backend.import_target() is None
        report = bulkload.write(store, _rows(0, 300, gaps=False), expected_rows=10**7)
        assert (report.method, report.rows, report.upserted) == ("upsert", 300, 300)
        store.bulk_write(_rows(0, 300, gaps=False))
        assert store.count() == 300
        with pytest.raises(StoreError, match="not available"):
            store.bulk_write(_rows(0, 3, gaps=False), method="import")
    finally:
        store.close()


KILLED = """
import sys
sys.path.insert(0, sys.argv[3])
from mmsearch import Settings
from mmsearch.store import Store
from test_bulkload import N, _rows
store = Store(Settings(uri=sys.argv[1], collection=sys.argv[2]))
store.open(embedder="fake", dim=8, feature_dim=4)
store.bulk_write(_rows(0, N), method="import")
"""


def test_killed_run_is_finished_without_duplicates(one):
    """kill -9 once the import files exist (side imports submitted or about to be): the
    rerun waits for the dead run's imports, then upserts what they stored."""
    store = one
    folder = store.backend.import_target().folder
    here = str(Path(__file__).resolve().parent)
    args = [sys.executable, "-c", KILLED, store.uri, store.collection, here]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(folder.glob("run-*/*.parquet"))) < 3 and time.monotonic() < deadline:
        assert proc.poll() is None
        time.sleep(0.05)
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    report = store.bulk_write(_rows(0, N), method="import")
    assert report.rows == N
    counts = _counts(store)
    assert counts[store.collection] == N
    assert counts[f"{store.collection}__{TEXT_FIELD}"] == N
    assert not list(folder.glob("run-*"))
