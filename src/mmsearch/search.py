"""The four search modes: a query (text or image) in, ranked hits out.

Mode names are the same everywhere (CLI, API, Python, docs):

- ``text2image``: a text against the images' vectors (``image_feature`` when the embedder
  can map texts into it, see ``FeatureQueries``, else ``image_embedding``);
- ``text2text``: a text against the descriptions' vectors (``text_embedding``);
- ``image2image``: an image against the images (``image_feature`` when the embedder has an
  image-only space, else ``image_embedding``);
- ``image2text``: an image against the descriptions (``text_embedding``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmsearch.config import Metric, Settings
from mmsearch.filters import Filters, Near, expression, within
from mmsearch.images import ImageError, decode_image, read_file
from mmsearch.providers import Embedder, get_embedder
from mmsearch.providers.base import feature_queries
from mmsearch.store import FEATURE_FIELD, IMAGE_FIELD, TEXT_FIELD, Hit, Store


class Mode(StrEnum):
    text2image = "text2image"
    text2text = "text2text"
    image2image = "image2image"
    image2text = "image2text"

    @property
    def takes_image(self) -> bool:
        return self in (Mode.image2image, Mode.image2text)


class QueryError(ValueError):
    """The query cannot be run as given (empty text, unreadable image, wrong mode)."""


MAX_K = 1000


def check_query(query: object, mode: Mode | str | None, k: int, *, paths: bool = False) -> Mode:
    """The mode to run ``query`` in, or a ``QueryError`` that says what is wrong.

    The one place for the checks the CLI, the HTTP API and the Python API share. Without a
    mode, a text runs text2image and an image image2image. ``paths`` lets a string name an
    image file for the image modes (the Python API); the HTTP API never opens a path a
    client sent, and the CLI passes image paths as ``Path``.
    """
    try:
        mode = Mode(mode) if mode is not None else None
    except ValueError:
        raise QueryError(f"unknown mode {mode!r}; modes: {', '.join(Mode)}") from None
    if mode is None:
        mode = Mode.text2image if isinstance(query, str) else Mode.image2image
    if not 1 <= k <= MAX_K:
        raise QueryError(f"k must be between 1 and {MAX_K}, got {k}")
    if mode.takes_image:
        images = (Image.Image, Path, str) if paths else (Image.Image, Path)
        if not isinstance(query, images):
            raise QueryError(f"mode {mode.value} takes an image, not a text")
    elif not isinstance(query, str):
        raise QueryError(f"mode {mode.value} takes a text query, not an image")
    elif not query.strip():
        raise QueryError("the text query is empty")
    return mode


#: How results are ordered: by similarity to the query, or newest photo first.
SORTS = ("relevance", "date")
#: Candidates fetched per result wanted when a filter is checked after the search (a
#: distance from a point, which Milvus cannot compute).
NEAR_OVERSAMPLING = 4


@dataclass
class Results:
    """Hits, and what the query was taken to mean: the text that was embedded ("" when
    browsing by filters alone) and the filters (with the words they came from)."""

    hits: list[Hit]
    mode: Mode | None
    text: str
    filters: Filters = field(default_factory=Filters)


class Searcher:
    """Runs queries against one collection with the embedder that built it."""

    def __init__(
        self, settings: Settings, *, store: Store | None = None, embedder: Embedder | None = None
    ) -> None:
        self.settings = settings
        self.store = store or Store(settings)
        self.embedder = embedder or get_embedder(settings)
        meta = self.store.open(embedder=self.embedder.name, dim=self.embedder.dim, create=False)
        self.has_features = bool(meta.get("feature_dim")) and self.embedder.feature_dim > 0
        #: The embedder's optional mapping of queries into ``image_feature`` (or None).
        self.feature_queries = feature_queries(self.embedder) if self.has_features else None

    def find(
        self,
        query: str | Path | Image.Image | None,
        *,
        mode: Mode | str | None = None,
        k: int = 10,
        filters: Filters | None = None,
        filter: str = "",
        sort: str = "relevance",
        parse: bool = True,
    ) -> Results:
        """Search with filters; a text's words that name a time or place become filters
        too (unless ``parse`` is off), and a query of filters alone browses by them.

        ``filter`` is a raw Milvus expression (the CLI's --filter), ANDed with ``filters``.
        """
        if sort not in SORTS:
            raise QueryError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
        filters = filters or Filters()
        text_mode = mode is None or not Mode(mode).takes_image
        if isinstance(query, str) and parse and text_mode and query.strip():
            parsed = parse_text(query, self.settings)
            query, filters = parsed.text, parsed.filters.merged(filters)
        expr = " and ".join(f"({e})" for e in (filter, expression(filters)) if e)
        if query is None or (isinstance(query, str) and not query.strip() and text_mode):
            hits = self.browse(expr, k=k, near=filters.near)
            return Results(_sorted(hits, "date"), None, "", filters)
        wanted = min(MAX_K, k * NEAR_OVERSAMPLING) if filters.near else k
        hits = self.search(query, mode=mode, k=wanted, filter=expr)
        if filters.near:
            hits = [h for h in hits if _near(filters.near, h)][:k]
        mode = check_query(query, mode, k, paths=True)
        text = query if isinstance(query, str) else ""
        return Results(_sorted(hits, sort), mode, text, filters)

    def browse(self, expr: str, *, k: int, near: Near | None = None) -> list[Hit]:
        """Items matching ``expr`` (every item if empty), newest photo first."""
        if not 1 <= k <= MAX_K:
            raise QueryError(f"k must be between 1 and {MAX_K}, got {k}")
        newest = self.store.newest(expr, limit=k if near is None else None)
        if near is not None:
            newest = [h for h in newest if _near(near, h)]
        return newest[:k]

    def search(
        self,
        query: str | Path | Image.Image,
        *,
        mode: Mode | str | None = None,
        k: int = 10,
        filter: str = "",
    ) -> list[Hit]:
        """One query: a text for the text modes, an image or its path for the image modes
        (the mode defaults to text2image for a text, image2image for an image)."""
        mode = check_query(query, mode, k, paths=True)
        if mode.takes_image:
            assert not isinstance(query, str) or query  # a path, by check_query
            image = self._as_image(query)
            return self.search_image(image, mode=mode, k=k, filter=filter)
        assert isinstance(query, str)
        return self.search_text(query, mode=mode, k=k, filter=filter)

    def search_text(self, text: str, *, mode: Mode, k: int, filter: str = "") -> list[Hit]:
        return self.search_texts([text], mode=mode, k=k, filter=filter)[0]

    def search_texts(
        self, texts: Sequence[str], *, mode: Mode, k: int, filter: str = ""
    ) -> list[list[Hit]]:
        """Many text queries in one model call and one Milvus call (evaluation, batch use)."""
        texts = [t.strip() for t in texts]
        if not texts or not all(texts):
            raise QueryError("the text query is empty")
        vectors = self.embedder.embed_texts(texts, query=True)
        return self.search_vectors(vectors, mode=mode, k=k, filter=filter, texts=texts)

    def search_vectors(
        self,
        vectors: np.ndarray,
        *,
        mode: Mode,
        k: int,
        filter: str = "",
        texts: Sequence[str] | None = None,
    ) -> list[list[Hit]]:
        """Text-mode search with query vectors already embedded (one per row).

        ``texts`` (the queries the rows came from) lets an embedder that maps queries into
        ``image_feature`` pick per-language class names; without them it uses both.
        """
        if mode.takes_image:
            raise QueryError(f"search_vectors takes text-mode vectors, not {mode.value}")
        if mode is Mode.text2image and self.feature_queries is not None:
            query = self.feature_queries.text_feature_queries(np.atleast_2d(vectors), texts)
            return self.store.search(query, field=FEATURE_FIELD, k=k, filter=filter)
        field = IMAGE_FIELD if mode is Mode.text2image else TEXT_FIELD
        return self.store.search(vectors, field=field, k=k, filter=filter)

    def search_image(
        self, image: Image.Image, *, mode: Mode, k: int, filter: str = ""
    ) -> list[Hit]:
        return self.search_images([image], mode=mode, k=k, filter=filter)[0]

    def search_images(
        self, images: Sequence[Image.Image], *, mode: Mode, k: int, filter: str = ""
    ) -> list[list[Hit]]:
        """Many image queries in one model call and one Milvus call."""
        if not images:
            return []
        vectors = self.embedder.embed_images(images)
        if mode is Mode.image2image and self.has_features and vectors.features is not None:
            return self._search_image_features(vectors.features, k=k, filter=filter)
        elif mode is Mode.image2image:
            query, field = vectors.shared, IMAGE_FIELD
        else:
            query, field = vectors.shared, TEXT_FIELD
        return self.store.search(query, field=field, k=k, filter=filter)

    def more_like_this(self, item_id: str, *, k: int = 10, filter: str = "") -> list[Hit]:
        """Images like an indexed item, by its stored vector (no model call)."""
        records = self.store.get([item_id], with_vectors=True)
        if not records:
            raise QueryError(f"no item with id {item_id!r}")
        rec = records[0]
        field = FEATURE_FIELD if self.has_features and FEATURE_FIELD in rec else IMAGE_FIELD
        vector = np.asarray(rec[field], np.float32)
        if field == FEATURE_FIELD:
            return self._search_image_features(vector, k=k, filter=filter)[0]
        return self.store.search(vector, field=field, k=k, filter=filter)[0]

    def _search_image_features(
        self, features: np.ndarray, *, k: int, filter: str
    ) -> list[list[Hit]]:
        """Image->image in ``image_feature``, through the embedder's query mapping if any."""
        features = np.atleast_2d(np.asarray(features, np.float32))
        fq = self.feature_queries
        if fq is None:
            return self.store.search(features, field=FEATURE_FIELD, k=k, filter=filter)
        hits = self.store.search(
            fq.image_feature_queries(features), field=FEATURE_FIELD, k=k, filter=filter
        )
        scale = float(fq.image_feature_score_scale)
        if scale in (0.0, 1.0):
            return hits
        return [[self._rescaled(h, scale) for h in row] for row in hits]

    def _rescaled(self, hit: Hit, scale: float) -> Hit:
        """A score as if the query matched the whole stored vector (identical image: 1.0;
        L2: Milvus's squared distance between unit vectors, 2 - 2 * similarity)."""
        if self.settings.metric is Metric.L2:
            score = 2.0 - (2.0 - hit.score) / scale
        else:
            score = hit.score / scale
        return dataclasses.replace(hit, score=score)

    def _as_image(self, query: str | Path | Image.Image) -> Image.Image:
        if isinstance(query, Image.Image):
            return query.convert("RGB")
        path = Path(query)
        try:
            data = read_file(path)
            image, _, _ = decode_image(data, max_pixels=self.settings.max_image_pixels)
        except ImageError as exc:
            raise QueryError(f"{path}: {exc}") from None
        return image


def _near(near: Near, hit: Hit) -> bool:
    return bool(hit.fact("has_gps")) and within(
        near, float(hit.fact("latitude")), float(hit.fact("longitude"))
    )


def _sorted(hits: list[Hit], sort: str) -> list[Hit]:
    """Newest photo first for "date" (photos of unknown date last); as ranked otherwise."""
    if sort != "date":
        return hits
    return sorted(hits, key=lambda h: int(h.fact("taken_at")) or -(2**62), reverse=True)


def parse_text(text: str, settings: Settings) -> Any:
    """``queryparse.parse_query`` with the gazetteer (loaded only for texts that may name a
    place)."""
    from mmsearch.places import Gazetteer
    from mmsearch.queryparse import parse_query

    return parse_query(text, places=Gazetteer.shared(settings.cache_dir))
