"""What a stored row is: its fields and their limits, the version of that layout, and what
each version added.

Versions are additive: version ``n`` has the fields of version ``n - 1`` plus
``ADDED_FIELDS[n]``, each with the value that rows written before it get. Migrating a
collection (``Store``) copies every row into a collection of the newest layout, filling the
added fields with those values, as rclip's ``ensure_version`` steps one version at a time.
A change that is not an addition adds a step to ``RECORD_STEPS`` as well.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmsearch import lexical

#: Bump with an entry in ADDED_FIELDS (and RECORD_STEPS if needed) when the layout changes.
SCHEMA_VERSION = 4

IMAGE_FIELD = "image_embedding"
TEXT_FIELD = "text_embedding"
FEATURE_FIELD = "image_feature"
VECTOR_FIELDS = (IMAGE_FIELD, TEXT_FIELD, FEATURE_FIELD)
#: Vector fields that live in side collections on servers that take one vector field each.
SIDE_FIELDS = (TEXT_FIELD, FEATURE_FIELD)


@dataclass(frozen=True)
class Field:
    """A scalar field: its Milvus type name, VARCHAR byte limit, and the value for rows
    written before the field existed."""

    name: str
    dtype: str  # a pymilvus DataType member name
    max_length: int = 0
    default: Any = None
    #: For ARRAY fields: the element type (a DataType member name) and most elements.
    element_type: str = ""
    max_capacity: int = 0

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``CollectionSchema.add_field`` beyond name and type,
        with types still as names (``Store`` maps them to ``DataType``)."""
        out: dict[str, Any] = {"max_length": self.max_length} if self.max_length else {}
        if self.element_type:
            out |= {"element_type": self.element_type, "max_capacity": self.max_capacity}
        return out


BASE_FIELDS = (
    Field("origin", "VARCHAR", 4096, ""),
    Field("label", "VARCHAR", 512, ""),
    Field("image_description", "VARCHAR", 4096, ""),
    Field("keywords", "VARCHAR", 1024, "[]"),
    Field("content_hash", "VARCHAR", 64, ""),
    Field("width", "INT32", default=0),
    Field("height", "INT32", default=0),
    Field("indexed_at", "INT64", default=0),
)

#: Fields each version added. 2: the file's size and modification time, so that indexing a
#: folder again skips unchanged files from a ``stat`` instead of reading and hashing each.
#: 3: when, where and with what the photo was taken, and its format (``metadata.py``):
#: ``taken_at`` is the wall-clock time where it was taken in seconds since 1970 (0: not
#: known; see ``filters.py``); places are the gazetteer's (``places.py``); the ``*_key``
#: fields are lower-case copies for prefix filters (Milvus 2.3 matches prefixes only).
#: 4: the text read off the photo (``ocr.py``; ``ocr_version`` names what read it, "" for
#: not read yet, so an OCR pass resumes where it stopped) and ``lex_tokens``, the row's
#: searchable terms for lexical search (``lexical.py``), computed from the stored texts on
#: every write.
ADDED_FIELDS: dict[int, tuple[Field, ...]] = {
    2: (Field("file_size", "INT64", default=0), Field("mtime_ns", "INT64", default=0)),
    3: (
        Field("taken_at", "INT64", default=0),
        Field("taken_at_source", "VARCHAR", 16, ""),
        Field("utc_offset", "VARCHAR", 8, ""),
        Field("has_gps", "BOOL", default=False),
        Field("latitude", "DOUBLE", default=0.0),
        Field("longitude", "DOUBLE", default=0.0),
        Field("place_city_id", "INT64", default=0),
        Field("place_city", "VARCHAR", 256, ""),
        Field("place_region_code", "VARCHAR", 32, ""),
        Field("place_region", "VARCHAR", 256, ""),
        Field("place_country_code", "VARCHAR", 8, ""),
        Field("place_country", "VARCHAR", 256, ""),
        Field("place_zh", "VARCHAR", 512, ""),
        Field("camera_make", "VARCHAR", 128, ""),
        Field("camera_model", "VARCHAR", 128, ""),
        Field("camera_make_key", "VARCHAR", 128, ""),
        Field("camera_model_key", "VARCHAR", 128, ""),
        Field("file_format", "VARCHAR", 16, ""),
    ),
    4: (
        Field("ocr_text", "VARCHAR", 4096, ""),
        Field("ocr_confidence", "FLOAT", default=0.0),
        Field("ocr_version", "VARCHAR", 128, ""),
        Field(
            lexical.TOKENS_FIELD,
            "ARRAY",
            lexical.TOKEN_MAX_BYTES,
            [],
            element_type="VARCHAR",
            max_capacity=lexical.TOKENS_CAPACITY,
        ),
    ),
}
#: The fields of version 3 that ``Item.facts`` carries (all but the lower-case keys).
FACT_FIELDS = tuple(f.name for f in ADDED_FIELDS[3] if not f.name.endswith("_key"))

#: Record rewrites beyond filling added fields, by the version they lead to.
RECORD_STEPS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def scalar_fields(version: int = SCHEMA_VERSION) -> list[Field]:
    """The scalar fields of a layout version, in creation order (id and vectors aside)."""
    fields = list(BASE_FIELDS)
    for v in range(2, version + 1):
        fields += ADDED_FIELDS.get(v, ())
    return fields


def output_fields(version: int = SCHEMA_VERSION) -> list[str]:
    """The scalar fields returned with every hit: all but ``lex_tokens`` (up to a thousand
    terms a row, recomputed from the texts whenever a row is written)."""
    return [f.name for f in scalar_fields(version) if f.name != lexical.TOKENS_FIELD]


def upgrade_record(record: dict[str, Any], from_version: int) -> dict[str, Any]:
    """A stored record of ``from_version`` as the newest layout stores it."""
    for version in range(from_version + 1, SCHEMA_VERSION + 1):
        for f in ADDED_FIELDS.get(version, ()):
            record.setdefault(f.name, f.default)
        if version in RECORD_STEPS:
            record = RECORD_STEPS[version](record)
    return record


@dataclass
class Item:
    """One indexed image as stored: the facts, not the vectors."""

    id: str
    origin: str
    label: str = ""
    description: str = ""
    keywords: list[str] = field(default_factory=list)
    content_hash: str = ""
    width: int = 0
    height: int = 0
    indexed_at: int = 0
    file_size: int = 0
    mtime_ns: int = 0
    #: When, where, with what (schema 3): FACT_FIELDS -> value, defaults where unknown.
    facts: dict[str, Any] = field(default_factory=dict)
    #: The text read off the photo, its mean confidence, and what read it ("": not yet).
    ocr_text: str = ""
    ocr_confidence: float = 0.0
    ocr_version: str = ""

    def fact(self, name: str) -> Any:
        """A fact, or its default when the row has none (an older row, an unknown value)."""
        return self.facts.get(name, _DEFAULTS[name])

    @classmethod
    def from_entity(cls, id_: str, entity: dict[str, Any]) -> Item:
        raw = entity.get("keywords") or "[]"
        try:
            keywords = json.loads(raw)
        except json.JSONDecodeError:
            keywords = [raw]
        return cls(
            id=id_,
            origin=entity.get("origin", ""),
            label=entity.get("label", ""),
            description=entity.get("image_description", ""),
            keywords=keywords,
            content_hash=entity.get("content_hash", ""),
            width=int(entity.get("width", 0)),
            height=int(entity.get("height", 0)),
            indexed_at=int(entity.get("indexed_at", 0)),
            file_size=int(entity.get("file_size", 0)),
            mtime_ns=int(entity.get("mtime_ns", 0)),
            facts={k: entity[k] for k in FACT_FIELDS if k in entity},
            ocr_text=entity.get("ocr_text", ""),
            ocr_confidence=float(entity.get("ocr_confidence", 0.0)),
            ocr_version=entity.get("ocr_version", ""),
        )


@dataclass
class Hit(Item):
    """A search result: the item and its score. From one vector search, the similarity as
    Milvus reports it (higher is better for COSINE/IP, lower for L2); from a fused text
    search, the fusion's score (``rank.rrf``), with ``why`` saying what matched."""

    score: float = 0.0
    #: Why a fused or lexical result matched: ``matched_by`` (vector, lexical, both), each
    #: list's score and rank, and ``matches`` (``lexical.Match`` spans, for highlighting).
    why: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    """What ingest writes for one image."""

    item: Item
    image_embedding: np.ndarray
    text_embedding: np.ndarray
    image_feature: np.ndarray | None = None


_DEFAULTS = {f.name: f.default for f in ADDED_FIELDS[3]}


def _limit(name: str) -> int:
    return next(f.max_length for f in scalar_fields() if f.name == name)


def truncate(value: str, limit: int) -> str:
    """Cut to ``limit`` UTF-8 bytes (Milvus VARCHAR limits are in bytes) on a char boundary."""
    data = value.encode("utf-8")
    if len(data) <= limit:
        return value
    return data[:limit].decode("utf-8", errors="ignore")


def row_record(row: Row) -> dict[str, Any]:
    """A row as Milvus stores it: text cut to the VARCHAR limits, vectors as float lists."""
    record = item_record(row.item)
    record[IMAGE_FIELD] = np.asarray(row.image_embedding, np.float32).tolist()
    record[TEXT_FIELD] = np.asarray(row.text_embedding, np.float32).tolist()
    if row.image_feature is not None:
        record[FEATURE_FIELD] = np.asarray(row.image_feature, np.float32).tolist()
    return record


def item_record(it: Item) -> dict[str, Any]:
    """An item's scalar fields as Milvus stores them (text cut to the VARCHAR limits): the
    part of ``row_record`` that bulk import writes beside vectors kept as arrays (a million
    rows' vectors as Python float lists would cost minutes)."""
    keywords = json.dumps(it.keywords, ensure_ascii=False)
    return {
        "id": it.id,
        "origin": truncate(it.origin, _limit("origin")),
        "label": truncate(it.label, _limit("label")),
        "image_description": truncate(it.description, _limit("image_description")),
        "keywords": truncate(keywords, _limit("keywords")),
        "content_hash": it.content_hash,
        "width": int(it.width),
        "height": int(it.height),
        "indexed_at": int(it.indexed_at),
        "file_size": int(it.file_size),
        "mtime_ns": int(it.mtime_ns),
        **_fact_record(it),
        "ocr_text": truncate(it.ocr_text, _limit("ocr_text")),
        "ocr_confidence": float(it.ocr_confidence),
        "ocr_version": truncate(it.ocr_version, _limit("ocr_version")),
    }


def _fact_record(item: Item) -> dict[str, Any]:
    """The facts as stored: defaults for what is unknown, strings cut to their limits, and
    the lower-case keys the camera filter matches."""
    out: dict[str, Any] = {}
    for f in ADDED_FIELDS[3]:
        value = item.fact(f.name) if not f.name.endswith("_key") else ""
        out[f.name] = truncate(str(value), f.max_length) if f.dtype == "VARCHAR" else value
    out["camera_make_key"] = out["camera_make"].lower()
    out["camera_model_key"] = out["camera_model"].lower()
    return out
