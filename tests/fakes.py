"""Fakes for the fast test tier: deterministic providers and an in-memory Milvus.

They exist to test mmsearch's own logic (ingest stages, search modes, API validation, the
store's migrations, side collections and reports) in seconds, without models, data sets or
a Milvus process. They are not a replacement for the real tier: everything they stand for
is also tested against real Milvus and real models in the other test modules.

- ``FakeEmbedder`` / ``FakeDescriber`` (provider name ``fake``): vectors and descriptions
  from an image's mean colour and a text's words, so equal inputs give equal outputs and a
  red image is nearest to "red".
- ``MemoryBackend`` (URIs ``memory:NAME``): the subset of ``MilvusClient`` that ``Store``
  calls, over Python dicts and numpy, shared by every store of one NAME in the process.
  ``memory-split:NAME`` behaves like Milvus 2.3: one vector field per collection.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from pymilvus.exceptions import MilvusException

from mmsearch.backends import Backend, CheckedClient, register_backend
from mmsearch.providers.base import (
    Description,
    Images,
    ImageVectors,
    as_batch,
    l2_normalize,
    register_describer,
    register_embedder,
)

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
    "yellow": (230, 220, 40),
    "black": (10, 10, 10),
    "white": (245, 245, 245),
}
DIM = 8


def colour_image(name: str, size: tuple[int, int] = (32, 24)) -> Image.Image:
    return Image.new("RGB", size, COLOURS[name])


def _nearest_colour(image: Image.Image) -> str:
    mean = np.asarray(image.convert("RGB").resize((4, 4))).reshape(-1, 3).mean(axis=0)
    return min(COLOURS, key=lambda c: float(np.sum((np.array(COLOURS[c]) - mean) ** 2)))


def _word_vector(word: str) -> np.ndarray:
    """A fixed direction per colour word, a hashed one for any other word."""
    if word in COLOURS:
        vec = np.zeros(DIM, np.float32)
        vec[list(COLOURS).index(word)] = 1.0
        return vec
    seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32) * 0.1


class FakeEmbedder:
    name = "fake-embedder"
    dim = DIM
    feature_dim = 0

    def __init__(self) -> None:
        self.image_calls = 0

    def embed_images(self, images: Images) -> ImageVectors:
        batch = as_batch(images)
        self.image_calls += 1
        colours = batch.reuse("fake.colours", lambda ims: [_nearest_colour(im) for im in ims])
        return ImageVectors(shared=self._texts(colours))

    def embed_texts(self, texts: Sequence[str], *, query: bool) -> np.ndarray:
        return self._texts(list(texts))

    def _texts(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, DIM), np.float32)
        rows = [
            sum((_word_vector(w) for w in re.findall(r"\w+", t.lower())), np.zeros(DIM))
            for t in texts
        ]
        return l2_normalize(np.stack(rows) + 1e-3)


class FakeDescriber:
    name = "fake-describer"

    def describe(self, images: Images) -> list[Description]:
        batch = as_batch(images)
        colours = batch.reuse("fake.colours", lambda ims: [_nearest_colour(im) for im in ims])
        return [Description(f"a {c} picture", [c, "picture"]) for c in colours]


@register_embedder("fake")
def _fake_embedder(settings: Any) -> FakeEmbedder:
    return FakeEmbedder()


@register_describer("fake")
def _fake_describer(settings: Any) -> FakeDescriber:
    return FakeDescriber()


# -- an in-memory Milvus ---------------------------------------------------------------------


def _parse_error(message: str) -> MilvusException:
    return MilvusException(code=1100, message=message)


_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?:\.\d+)?(?:e-?\d+)?)'
    r"|(?P<op>==|!=|>=|<=|>|<|\(|\)|\[|\]|,)|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)


#: Milvus's array functions that mmsearch calls (lexical search).
_FUNCTIONS: dict[str, Any] = {
    "array_contains_any": lambda values, wanted: bool(set(values or ()) & set(wanted)),
}


def _to_python(filter: str) -> str:
    """The subset of Milvus's expressions that mmsearch writes, as a Python expression:
    comparisons, ``in [...]``, ``and``/``or``/``not``, parentheses and, as on Milvus 2.3,
    ``like`` with a prefix pattern only."""
    out: list[str] = []
    pos = 0
    while pos < len(filter.rstrip()):
        m = _TOKEN.match(filter, pos)
        if not m or m.end() == pos:
            raise _parse_error(f"cannot parse expression: {filter}")
        pos = m.end()
        kind, text = m.lastgroup, m.group(m.lastgroup)
        if kind == "str":
            if out and out[-1] == "like":
                out[-1] = _like(text, filter)
                continue
            text = repr(re.sub(r"\\(.)", r"\1", text[1:-1]))
        elif kind == "word" and text in ("true", "false"):
            text = text.capitalize()
        elif kind == "word" and text not in ("and", "or", "not", "in", "like", *_FUNCTIONS):
            text = f"row[{text!r}]"
        out.append(text)
    return " ".join(out)


def _like(pattern: str, filter: str) -> str:
    body = re.sub(r"\\(.)", r"\1", pattern[1:-1])
    if "%" in body[:-1]:
        raise _parse_error(f"cannot parse expression: {filter}, unsupported pattern: {body}")
    return f".startswith({body.rstrip('%')!r})" if body.endswith("%") else f"== {body!r}"


def _matches(filter: str) -> Any:
    """A predicate on a row for a Milvus filter expression."""
    if not filter.strip():
        return lambda row: True
    python = _to_python(filter).replace(" .startswith", ".startswith")
    try:
        code = compile(python, "<filter>", "eval")
    except SyntaxError:
        raise _parse_error(f"cannot parse expression: {filter}") from None
    return lambda row: bool(eval(code, {"__builtins__": {}}, {"row": row, **_FUNCTIONS}))


class _Collection:
    def __init__(self, schema: Any, index_params: Any, properties: dict[str, str]) -> None:
        self.fields = [{"name": f.name, "params": dict(f.params)} for f in schema.fields]
        self.vectors = [f.name for f in schema.fields if "dim" in f.params]
        self.metric = {ip.field_name: ip.to_dict()["metric_type"] for ip in index_params}
        self.properties = dict(properties)
        self.rows: dict[str, dict[str, Any]] = {}


class MemoryClient:
    """What ``Store`` calls on a ``MilvusClient``, over dicts (see the module docstring)."""

    def __init__(self, collections: dict[str, _Collection], version: str) -> None:
        self.collections = collections
        self.version = version

    def get_server_version(self) -> str:
        return self.version

    def has_collection(self, name: str) -> bool:
        return name in self.collections

    def prepare_index_params(self) -> Any:
        from pymilvus import MilvusClient

        return MilvusClient.prepare_index_params()

    def create_collection(self, name, *, schema, index_params, properties=None, **kw) -> None:
        vectors = [f for f in schema.fields if "dim" in f.params]
        if self.version < "2.4" and len(vectors) > 1:
            raise MilvusException(code=1, message="multiple vector fields is not supported")
        self.collections[name] = _Collection(schema, index_params, properties or {})

    def describe_collection(self, name: str) -> dict[str, Any]:
        c = self._get(name)
        return {"fields": c.fields, "properties": c.properties}

    def drop_collection(self, name: str) -> None:
        self.collections.pop(name, None)

    def rename_collection(self, old: str, new: str) -> None:
        self.collections[new] = self.collections.pop(old)

    def load_collection(self, name: str) -> None:
        self._get(name)

    def flush(self, name: str) -> None:
        self._get(name)

    def upsert(self, name: str, records: list[dict[str, Any]]) -> dict[str, int]:
        c = self._get(name)
        names = {f["name"] for f in c.fields}
        for r in records:
            if set(r) != names:
                raise MilvusException(code=1100, message=f"fields {sorted(set(r) ^ names)}")
            c.rows[r["id"]] = dict(r)
        return {"upsert_count": len(records)}

    def delete(self, name: str, ids: list[str]) -> None:
        for i in ids:
            self._get(name).rows.pop(i, None)

    def query(self, name, *, ids=None, filter="", output_fields=(), **kw) -> list[dict]:
        c = self._get(name)
        keep = _matches(filter)
        rows = [c.rows[i] for i in ids if i in c.rows] if ids is not None else list(c.rows.values())
        rows = [r for r in rows if keep(r)]
        if list(output_fields) == ["count(*)"]:
            return [{"count(*)": len(rows)}]
        return [{"id": r["id"], **{f: r[f] for f in output_fields}} for r in rows]

    def query_iterator(self, name, *, batch_size, filter="", output_fields=()) -> Any:
        rows = self.query(name, filter=filter, output_fields=output_fields)
        pages = iter([rows[i : i + batch_size] for i in range(0, len(rows), batch_size)])

        class _Iterator:
            def next(self) -> list[dict]:
                return next(pages, [])

            def close(self) -> None:
                pass

        return _Iterator()

    def search(self, name, *, data, anns_field, limit, filter="", output_fields=(), **kw):
        c = self._get(name)
        keep = _matches(filter)
        rows = [r for r in c.rows.values() if keep(r)]
        if not rows:
            return [[] for _ in data]
        matrix = np.array([r[anns_field] for r in rows], np.float32)
        metric = c.metric.get(anns_field, "COSINE")
        out = []
        for q in np.asarray(data, np.float32):
            if metric == "L2":
                scores = ((matrix - q) ** 2).sum(axis=1)
                order = np.argsort(scores)
            else:
                if metric == "COSINE":
                    matrix_n, q = l2_normalize(matrix), q / max(np.linalg.norm(q), 1e-12)
                    scores = matrix_n @ q
                else:
                    scores = matrix @ q
                order = np.argsort(-scores)
            out.append(
                [
                    {
                        "id": rows[i]["id"],
                        "distance": float(scores[i]),
                        "entity": {f: rows[i][f] for f in output_fields},
                    }
                    for i in order[:limit]
                ]
            )
        return out

    def close(self) -> None:
        pass

    def _get(self, name: str) -> _Collection:
        if name not in self.collections:
            raise MilvusException(code=100, message=f"collection not found[{name}]")
        return self.collections[name]


class MemoryBackend(Backend):
    """``memory:NAME`` (Milvus 2.5-like) or ``memory-split:NAME`` (2.3-like) in memory."""

    #: Every store of the process: URI -> collections, so that stores on one URI share data.
    DATABASES: dict[str, dict[str, _Collection]] = {}

    def _connect(self) -> CheckedClient:
        version = "2.3.5" if self.uri.startswith("memory-split:") else "2.5.0"
        collections = self.DATABASES.setdefault(self.uri, {})
        return CheckedClient(MemoryClient(collections, version), self.uri)


register_backend("memory:", MemoryBackend)
register_backend("memory-split:", MemoryBackend)
