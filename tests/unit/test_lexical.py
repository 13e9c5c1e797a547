"""Lexical search (``mmsearch.lexical``): terms, the per-row token field, highlights, and
BM25F over an in-memory Milvus that knows ``array_contains_any`` (the fakes' client, extended
here only)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

import pytest
from pymilvus import DataType, MilvusClient

from mmsearch import lexical
from mmsearch.lexical import LexicalIndex, matches, row_tokens, terms, tokenize
from mmsearch.schema import Item

from ..fakes import MemoryClient, _matches

_ARRAY = re.compile(r"array_contains_any\((\w+), \[(.*?)\]\)")


class ArrayMemoryClient(MemoryClient):
    """The fakes' in-memory Milvus plus ``array_contains_any`` and ``limit`` in queries, as
    Milvus 2.3 and Lite have them; records every filter it is asked."""

    def __init__(self) -> None:
        super().__init__({}, "2.3.5")
        self.filters: list[str] = []

    def query(self, name, *, ids=None, filter="", output_fields=(), limit=None, **kw):
        self.filters.append(filter)
        c = self._get(name)
        found = _ARRAY.search(filter)
        wanted, field = set(), ""
        if found:
            field, wanted = found.group(1), set(json.loads(f"[{found.group(2)}]"))
            filter = filter[: found.start()] + "true" + filter[found.end() :]
        keep = _matches(filter)
        rows = [r for r in c.rows.values() if keep(r) and (not field or wanted & set(r[field]))]
        if list(output_fields) == ["count(*)"]:
            return [{"count(*)": len(rows)}]
        rows = rows[:limit] if limit else rows
        return [{"id": r["id"], **{f: r[f] for f in output_fields}} for r in rows]


ROWS = {
    "sign": {"ocr_text": "欢迎光临 北京烤鸭店", "image_description": "一张餐厅的照片"},
    "guess": {"image_description": "一张烤鸭的照片，也可能是面包。"},
    "named": {"origin": "/photos/peking_duck.jpg", "image_description": "a photo of food"},
    "dog": {"image_description": "一张狗的照片", "keywords": '["狗", "宠物"]', "label": "pets"},
    "dog2": {"image_description": "两只狗在草地上", "label": "pets"},
    "cat": {"image_description": "一张猫的照片", "label": "pets"},
}


def _record(row_id: str, fields: dict[str, str]) -> dict[str, Any]:
    base = {"origin": f"/photos/{row_id}.jpg", "label": "", "ocr_text": ""}
    base |= {"image_description": "", "keywords": "[]", **fields}
    return {"id": row_id, **base, **lexical.lexical_record(base), "v": [1.0, 0.0]}


@pytest.fixture
def store() -> SimpleNamespace:
    """A ``Store``-like object: ``client``, ``collection`` and ``count()``."""
    client = ArrayMemoryClient()
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    for name in ("origin", "label", "ocr_text", "image_description", "keywords"):
        schema.add_field(name, DataType.VARCHAR, max_length=4096)
    schema.add_field(
        lexical.TOKENS_FIELD,
        DataType.ARRAY,
        element_type=DataType.VARCHAR,
        max_capacity=lexical.TOKENS_CAPACITY,
        max_length=lexical.TOKEN_MAX_BYTES,
    )
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
    index = client.prepare_index_params()
    index.add_index(field_name="v", metric_type="COSINE")
    client.create_collection("photos", schema=schema, index_params=index)
    client.upsert("photos", [_record(i, f) for i, f in ROWS.items()])
    return SimpleNamespace(
        client=client, collection="photos", count=lambda: len(client.collections["photos"].rows)
    )


# -- terms ------------------------------------------------------------------------------------


def test_chinese_gives_characters_and_bigrams_with_offsets():
    got = [(t.term, t.start, t.end, t.kind) for t in tokenize("棕色狗")]
    assert got == [
        ("棕", 0, 1, "char"),
        ("棕色", 0, 2, "bigram"),
        ("色", 1, 2, "char"),
        ("色狗", 1, 3, "bigram"),
        ("狗", 2, 3, "char"),
    ]


def test_common_characters_are_dropped_alone_but_kept_in_bigrams():
    assert terms("的狗") == ["的狗", "狗"]
    assert terms("一只") == []  # both characters are stop characters


def test_traditional_characters_fold_to_simplified_keeping_offsets():
    (first, *_rest) = [t for t in tokenize("看獅子") if t.kind == "bigram" and t.term == "狮子"]
    assert (first.start, first.end) == (1, 3)


def test_english_words_fold_case_accents_plurals_and_drop_stopwords():
    assert terms("The Brown DOGS of Café Noël") == ["brown", "dog", "cafe", "noel"]
    assert terms("puppies boxes glass bus") == ["puppy", "boxe", "glass", "bus"]
    assert terms("IMG_2023 iPhone15") == ["img", "2023", "iphone15"]


def test_mixed_text_keeps_both_scripts():
    assert terms("iPhone拍的海边") == ["iphone", "拍", "拍的", "的海", "海", "海边", "边"]


def test_query_tokens_can_leave_covered_characters_out_of_the_fetch():
    all_terms, fetch = lexical.query_tokens("狮子", chars=False)
    assert all_terms == ["狮", "狮子", "子"] and fetch == ["狮子"]
    assert lexical.query_tokens("狗", chars=False)[1] == ["狗"]
    assert lexical.query_tokens("狮子")[1] == ["狮", "狮子", "子"]


# -- the row's token field ------------------------------------------------------------------


def test_row_tokens_are_tagged_by_field_surest_first():
    tokens = row_tokens(
        {
            "origin": "/a/b/n02099601_golden_retriever.JPEG",
            "label": "dogs",
            "ocr_text": "SALE",
            "image_description": "金毛",
            "keywords": '["狗"]',
        }
    )
    assert tokens[:2] == ["l:dog", "f:n02099601"]
    assert "f:jpeg" not in tokens  # the extension means nothing
    assert {"f:golden", "f:retriever", "o:sale", "k:狗", "d:金毛"} <= set(tokens)
    assert tokens.index("o:sale") < tokens.index("k:狗") < tokens.index("d:金毛")


def test_row_tokens_respect_the_array_limits():
    long_ocr = " ".join(f"word{i}" for i in range(5000)) + " " + "x" * 100
    tokens = row_tokens({"ocr_text": long_ocr, "origin": "/a.jpg"})
    assert len(tokens) == lexical.TOKENS_CAPACITY
    assert all(len(t.encode()) <= lexical.TOKEN_MAX_BYTES for t in tokens)
    assert row_tokens({"ocr_text": "x" * 100}) == []


def test_row_tokens_read_items_as_well_as_stored_records():
    item = Item(id="1", origin="/p/Sunset.png", description="海边", keywords=["beach"])
    assert row_tokens(item) == ["f:sunset", "k:beach", "d:海", "d:海边", "d:边"]


# -- highlights -------------------------------------------------------------------------------


def test_matches_give_field_offsets_joined_spans_and_keyword_index():
    row = {
        "origin": "/x/IMG_狮子王.jpg",
        "ocr_text": "THE LION KING",
        "image_description": "一张狮子的照片，也可能是猎豹。",
        "keywords": '["猫科", "狮子"]',
    }
    got = [(m.field, m.start, m.end, m.text, m.index) for m in matches(row, "狮子 lion")]
    assert got == [
        ("file_name", 4, 6, "狮子", 0),
        ("ocr_text", 4, 8, "LION", 0),
        ("keywords", 0, 2, "狮子", 1),
        ("description", 2, 4, "狮子", 0),
    ]
    assert matches(row, "狮子", fields=["ocr_text"]) == []
    assert matches(row, "the of") == []  # stopwords only


def test_matches_on_a_hit_and_as_dict():
    item = Item(id="1", origin="/p/a.jpg", description="Brown dogs playing")
    (m,) = matches(item, "dog")
    assert m.as_dict() == {
        "field": "description",
        "start": 6,
        "end": 10,
        "text": "dogs",
        "index": 0,
    }


# -- BM25F over Milvus ------------------------------------------------------------------------


def test_text_read_off_the_photo_outranks_a_models_guess(store):
    found = LexicalIndex(store).search("烤鸭", k=10)
    assert [h.id for h in found] == ["sign", "guess"]
    assert found[0].fields == ("ocr_text",) and "烤鸭" in found[0].terms
    assert found[0].score > found[1].score > 0


def test_file_names_are_searched_and_weights_of_zero_leave_fields_out(store):
    assert [h.id for h in LexicalIndex(store).search("duck")] == ["named"]
    assert LexicalIndex(store, weights={"file_name": 0.0}).search("duck") == []
    only_ocr = {"description": 0.0, "keywords": 0.0}
    assert [h.id for h in LexicalIndex(store, weights=only_ocr).search("烤鸭")] == ["sign"]


def test_rarer_terms_weigh_more(store):
    found = LexicalIndex(store).search("狗 宠物", k=10)
    assert found[0].id == "dog"  # holds both, and 宠物 is rare
    assert {h.id for h in found} == {"dog", "dog2"}


def test_filters_are_anded_and_no_match_is_empty(store):
    index = LexicalIndex(store)
    assert [h.id for h in index.search("狗", filter='label == "pets"')] == ["dog", "dog2"]
    assert index.search("狗", filter='label == "cars"') == []
    assert index.search("zebra") == [] and index.search("the") == []
    assert store.client.filters[-1].startswith("array_contains_any")  # zebra; "the" asks nothing


def test_too_many_candidates_fetch_by_the_rarest_terms(store):
    index = LexicalIndex(store, max_candidates=2)
    found = index.search("照片 宠物", k=10)
    assert found[0].id == "dog"  # the only row with 宠物, though 照片 is in four
    assert any(
        "count(*)" not in f and '"k:宠物"' in f and '"d:照片"' not in f
        for f in store.client.filters
    )


def test_document_frequencies_are_counted_once_then_cached(store):
    index = LexicalIndex(store, max_candidates=2)
    index.search("照片 宠物")
    asked = len(store.client.filters)
    index.search("照片 宠物")
    again = store.client.filters[asked:]
    assert len(again) == 2  # the fetch and the refetch: no count(*) queries
    assert LexicalIndex(store).doc_freq("照片") == 4


def test_a_long_query_costs_a_bounded_number_of_store_queries(store):
    """Each query term may cost a count query (a scan on Milvus 2.3): a 1,000-character
    query from the network must not turn into thousands of them."""
    text = "".join(chr(0x4E00 + i * 7) for i in range(1000))
    all_terms, fetch = lexical.query_tokens(text)
    assert len(all_terms) == lexical.MAX_QUERY_TERMS and set(fetch) <= set(all_terms)
    before = len(store.client.filters)
    LexicalIndex(store).search(text, filter='label == "pets"')  # a filter: counts per term
    assert len(store.client.filters) - before <= lexical.MAX_QUERY_TERMS + 2
