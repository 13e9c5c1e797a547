"""The store's own logic on the in-memory Milvus, with one vector field per collection
(side collections, as on Milvus 2.3) and without: migrations, duplicates, errors."""

from __future__ import annotations

import numpy as np
import pytest

from mmsearch import Settings
from mmsearch.schema import SCHEMA_VERSION, TEXT_FIELD, upgrade_record
from mmsearch.store import (
    IMAGE_FIELD,
    InvalidFilterError,
    Item,
    ProviderMismatchError,
    Row,
    Store,
    StoreError,
)


def _row(i: int, label: str = "l") -> Row:
    vec = np.random.default_rng(i).normal(size=8).astype(np.float32)
    item = Item(id=f"id{i}", origin=f"/p/{i}.jpg", label=label, content_hash=f"h{i}")
    return Row(item, vec, vec, np.abs(vec[:4]))


@pytest.fixture
def store(settings):
    with Store(settings) as s:
        s.open(embedder="fake", dim=8, feature_dim=4)
        yield s


def test_side_collections_only_where_the_server_needs_them(store, settings):
    store.upsert([_row(i) for i in range(3)])
    names = set(store.backend.client.collections)
    if settings.uri.startswith("memory-split:"):
        assert names == {"mmsearch", "mmsearch__text_embedding", "mmsearch__image_feature"}
    else:
        assert names == {"mmsearch"}
    store.rename("other")
    assert all(n.startswith("other") for n in store.backend.client.collections)
    assert store.count() == 3
    store.drop()
    assert store.backend.client.collections == {}


def test_repeated_ids_in_one_write_are_one_row(store):
    assert store.upsert([_row(1), _row(2), _row(1)]) == 2
    assert store.count() == 2


def test_migration_from_the_first_layout_keeps_rows_and_vectors(settings):
    with Store(settings, schema_version=1) as old:
        old.open(embedder="fake", dim=8, feature_dim=4)
        old.upsert([_row(i) for i in range(2500)])  # more than one page
        assert "file_size" not in old.get(["id7"])[0]
    with Store(settings) as store:
        meta = store.open(embedder="fake", dim=8, feature_dim=4)
        assert meta["schema_version"] == SCHEMA_VERSION
        assert store.count() == 2500
        (rec,) = store.get(["id7"], with_vectors=True)
        assert rec["file_size"] == 0 and rec["mtime_ns"] == 0 and rec["content_hash"] == "h7"
        assert rec["taken_at"] == 0 and rec["has_gps"] is False and rec["place_city"] == ""
        np.testing.assert_allclose(rec[TEXT_FIELD], _row(7).text_embedding, rtol=1e-6)
        assert store.search(_row(9).image_embedding, field=IMAGE_FIELD, k=1)[0][0].id == "id9"
        assert not any("__v" in n for n in store.backend.client.collections)


def test_an_interrupted_migration_is_finished(settings):
    with Store(settings) as store:
        store.open(embedder="fake", dim=8, feature_dim=4)
        store.upsert([_row(1)])
        store.rename(store._migrating())
    with Store(settings) as store:
        assert store.exists() is False and store.meta() is not None  # finished on sight
        assert store.count() == 1


def test_upgrading_a_record_fills_added_fields():
    record = upgrade_record({"id": "x", "origin": "/a"}, from_version=1)
    assert record["file_size"] == 0 and record["mtime_ns"] == 0
    assert record["taken_at"] == 0 and record["camera_model_key"] == ""
    assert upgrade_record({"id": "y", "file_size": 5}, from_version=2)["file_size"] == 5


def test_a_newer_layout_is_refused(settings):
    with Store(settings) as store:
        store.open(embedder="fake", dim=8)
        meta = store.meta()
        props = store.backend.client.collections["mmsearch"].properties
        props["mmsearch.meta"] = props["mmsearch.meta"].replace(
            f'"schema_version": {SCHEMA_VERSION}', '"schema_version": 99'
        )
        assert meta["schema_version"] == SCHEMA_VERSION
        with pytest.raises(StoreError, match="upgrade mmsearch"):
            store.open(embedder="fake", dim=8)


def test_another_embedder_is_refused(store):
    with pytest.raises(ProviderMismatchError, match="cannot be compared"):
        store.open(embedder="other", dim=8)


def test_a_filter_milvus_cannot_parse_is_an_invalid_filter_error(store):
    store.upsert([_row(1, label="cat")])
    assert [
        h.id
        for h in store.search(
            _row(1).image_embedding, field=IMAGE_FIELD, k=5, filter='label == "cat"'
        )[0]
    ] == ["id1"]
    with pytest.raises(InvalidFilterError, match="invalid filter"):
        store.search(_row(1).image_embedding, field=IMAGE_FIELD, k=5, filter='label == "x')


def test_missing_collection_is_a_clear_error():
    settings = Settings(uri="memory:nothing-here")
    with Store(settings) as store, pytest.raises(StoreError, match="index some images first"):
        store.open(embedder="fake", dim=8, create=False)


def test_file_facts_are_refreshed_without_touching_vectors(store):
    store.upsert([_row(1)])
    store.set_file_facts({"id1": (123, 456)})
    known = store.known_files(["id1"])["id1"]
    assert (known.file_size, known.mtime_ns, known.content_hash) == (123, 456, "h1")
    (rec,) = store.get(["id1"], with_vectors=True)
    np.testing.assert_allclose(rec[IMAGE_FIELD], _row(1).image_embedding, rtol=1e-6)


class _Flaky:
    """A client whose calls fail as pymilvus fails while Milvus restarts, ``fails`` times."""

    def __init__(self, fails: int, code: int = 2, message: str = "Fail connecting") -> None:
        self.fails, self.code, self.message, self.calls = fails, code, message, 0

    def _call(self, *args, **kwargs):
        from pymilvus.exceptions import MilvusException

        self.calls += 1
        if self.calls <= self.fails:
            raise MilvusException(code=self.code, message=self.message)
        return "done"

    query = upsert = create_collection = _call


def test_calls_wait_for_a_restarting_milvus_and_retry_only_what_is_safe(monkeypatch):
    """Issue 10: a Milvus killed mid-run (the embedded supervisor restarts it) ended the run
    when pymilvus's one reconnect came too early. Idempotent calls now retry until it is
    back; creating a collection does not (a retry could fail on the first try's success)."""
    from mmsearch import backends

    monkeypatch.setattr(backends.time, "sleep", lambda s: None)
    flaky = _Flaky(fails=3)
    assert backends.CheckedClient(flaky, "embedded:x").query("c", filter="") == "done"
    assert flaky.calls == 4
    once = _Flaky(fails=1)
    with pytest.raises(StoreError, match="create_collection"):
        backends.CheckedClient(once, "embedded:x").create_collection("c")
    assert once.calls == 1
    # The server answered (a bad filter): not retried.
    refused = _Flaky(fails=1, code=1100, message="cannot parse")
    with pytest.raises(InvalidFilterError):
        backends.CheckedClient(refused, "embedded:x").query("c", filter="x >")
    assert refused.calls == 1
    # A Milvus that lost its etcd sessions (a stall past their TTL) answers this until it
    # exits and is restarted: seen under a 1M-row index build. Waited for too.
    abnormal = _Flaky(fails=2, code=1, message="service not ready[standalone=1]: Abnormal")
    assert backends.CheckedClient(abnormal, "embedded:x").upsert("c", []) == "done"
    assert abnormal.calls == 3
    monkeypatch.setattr(backends, "RECONNECT_WAIT", 0.0)  # never back: fails, naming the URI
    with pytest.raises(StoreError, match="embedded:x"):
        backends.CheckedClient(_Flaky(fails=99), "embedded:x").upsert("c", [])


def test_bulk_import_rpcs_fail_as_store_errors_and_only_reads_retry(tmp_path, monkeypatch):
    """A Milvus that died under a 1M-row import ended the run in a raw gRPC traceback
    (measured). Its RPCs now fail as ``StoreError``s that say what to do; the reads wait
    for a restart, the Import itself is never sent twice."""
    import socket

    from mmsearch import backends, bulkload

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    target = backends.ImportTarget(address, "", tmp_path)
    sleeps: list[float] = []
    monkeypatch.setattr(bulkload.time, "sleep", sleeps.append)
    with bulkload._Rpc(target) as rpc:
        with pytest.raises(StoreError, match="Run the command again"):
            rpc.submit("c", tmp_path / "rows.parquet")
        assert sleeps == []
        monkeypatch.setattr(backends, "RECONNECT_WAIT", 2.0)
        with pytest.raises(StoreError, match=address):
            rpc.state(7)
        assert sleeps  # retried before giving up
