"""Lexical search on real Milvus: the same checks on Milvus Lite, on the embedded Milvus 2.3
server, and on that server reached as a plain server URI (the ``ServerBackend`` path any
Milvus server takes): ARRAY fields, ``array_contains_any`` with tagged Chinese and English
terms, count queries for document frequencies, filters ANDed, and the candidate cap.

The collection is made here with ``lexical.SCHEMA_FIELDS`` (the product's schema gets them
when search is wired up); reads go through a real ``Store``'s ``client`` and ``count()``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from mmsearch import Settings, embedded, lexical, rank
from mmsearch.lexical import LexicalIndex
from mmsearch.store import Store

ROWS = {
    "sign": {"ocr_text": "欢迎光临 北京烤鸭店", "image_description": "一张餐厅的照片"},
    "guess": {"image_description": "一张烤鸭的照片，也可能是面包。"},
    "named": {"origin": "/photos/Peking_Duck.jpg", "image_description": "a photo of food"},
    "dog": {"image_description": "一张狗的照片", "keywords": '["狗", "宠物"]', "label": "pets"},
    "dog2": {"image_description": "两只狗在草地上", "label": "pets"},
    "cat": {"image_description": "一张猫的照片", "label": "pets"},
    "quote": {"image_description": 'a "quoted" \\ back\\slash', "label": 'we"ird'},
    "empty": {"origin": "/photos/_.jpg"},  # no terms at all: an empty array
}


def _record(row_id: str, fields: dict[str, str]) -> dict[str, Any]:
    base = {"origin": f"/photos/{row_id}.jpg", "label": "", "ocr_text": ""}
    base |= {"image_description": "", "keywords": "[]", **fields}
    return {"id": row_id, **base, **lexical.lexical_record(base), "v": [1.0, 0.0]}


def _create(store: Store) -> None:
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    for name in ("origin", "label", "ocr_text", "image_description", "keywords"):
        schema.add_field(name, DataType.VARCHAR, max_length=4096)
    for spec in lexical.SCHEMA_FIELDS:
        kw = {k: v for k, v in spec.items() if k not in ("field_name", "datatype")}
        kw["element_type"] = DataType[kw["element_type"]]
        schema.add_field(spec["field_name"], DataType[spec["datatype"]], **kw)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
    index = store.client.prepare_index_params()
    index.add_index(field_name="v", index_type="FLAT", metric_type="COSINE")
    store.client.create_collection(
        store.collection, schema=schema, index_params=index, **store.backend.collection_options()
    )


@pytest.fixture(params=["lite", "embedded", "server-uri"])
def store(request, tmp_path: Path, cache_dir: Path):
    """A real Store on each kind of Milvus, its collection holding ROWS."""
    name = f"lex_{uuid.uuid4().hex[:12]}"
    if request.param == "lite":
        settings = Settings(uri=str(tmp_path / "lex.db"), collection=name, cache_dir=cache_dir)
    else:
        base = request.getfixturevalue("embedded_server")
        settings = Settings(uri=f"embedded:{base}", collection=name, cache_dir=cache_dir)
        if request.param == "server-uri":
            info, _ = embedded.ensure_server(base, idle_timeout=0, bin_cache=cache_dir)
            token = embedded.client_token(base)
            settings = Settings(uri=info.uri, token=token, collection=name, cache_dir=cache_dir)
    s = Store(settings)
    _create(s)
    s.client.upsert(name, [_record(i, f) for i, f in ROWS.items()])
    yield s
    s.client.drop_collection(name)
    s.close()


def test_one_design_serves_every_kind_of_milvus(store):
    index = LexicalIndex(store)
    found = index.search("烤鸭", k=10)
    assert [h.id for h in found] == ["sign", "guess"]  # text on the photo beats a guess
    assert found[0].fields == ("ocr_text",)
    assert [h.id for h in index.search("duck")] == ["named"]  # file name, case folded
    assert [h.id for h in index.search("狗 宠物")] == ["dog", "dog2"]
    assert index.search("zebra") == [] and index.search("的") == []


def test_filters_are_anded_with_the_term_query(store):
    index = LexicalIndex(store)
    assert [h.id for h in index.search("狗", filter='label == "pets"')] == ["dog", "dog2"]
    assert index.search("狗", filter='label == "nobody"') == []
    assert [h.id for h in index.search("quoted")] == ["quote"]


def test_document_frequencies_from_count_queries_match_the_rows(store):
    index = LexicalIndex(store)
    assert index.doc_freq("照片") == 4
    assert index.doc_freq("烤鸭") == 2
    assert index.doc_freq("nothing") == 0
    assert index.rows() == len(ROWS)


def test_the_candidate_cap_fetches_by_the_rarest_terms(store):
    found = LexicalIndex(store, max_candidates=2).search("照片 宠物")
    assert found[0].id == "dog"


def test_fused_with_vector_hits_and_highlighted(store):
    lex = LexicalIndex(store).search("烤鸭")
    vector = [type("H", (), {"id": "cat", "score": 0.9})()]
    fused = rank.rrf(vector, lex, lexical_weight=lambda h: rank.field_weight(h.fields, {}))
    assert [f.id for f in fused] == ["cat", "sign", "guess"]  # zero weight: no boost
    row = store.client.query(store.collection, ids=["sign"], output_fields=["ocr_text"])[0]
    (m,) = lexical.matches(row, "烤鸭")
    assert (m.field, row["ocr_text"][m.start : m.end]) == ("ocr_text", "烤鸭")
