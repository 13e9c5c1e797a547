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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmsearch import rank
from mmsearch.config import Metric, Settings
from mmsearch.filters import Filters, Near, expression, within
from mmsearch.images import ImageError, decode_image, read_file
from mmsearch.lexical import LexicalHit, LexicalIndex
from mmsearch.lexical import matches as lexical_matches
from mmsearch.providers import Embedder, get_embedder
from mmsearch.providers.base import feature_queries
from mmsearch.store import FEATURE_FIELD, IMAGE_FIELD, TEXT_FIELD, Hit, Item, Store


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
#: How a text query is ranked: vectors and words fused (default), or either alone.
RANKINGS = ("fused", "vector", "lexical")
#: Relevance cutoffs: none, or where the score curve bends (``rank.autocut``).
CUTOFFS = ("none", "auto")
#: The lexical list's weight in the fusion, the vector list's being 1: a photo holding
#: the query's words (read off it, in its file name) comes before one that only looks like
#: them when both lists rank it first.
LEXICAL_WEIGHT = 2.0
#: The lexical weight follows the BM25F score over the best's to this power: a row holding
#: part of a phrase ("合计书店" for "合计学校") counts for much less than one holding it all.
LEXICAL_SHARPNESS = 2.0
#: How deep each list is read before fusion.
FUSION_POOL = 50
#: The cutoff looks at this many first scores (a long flat tail hides the bend).
CUTOFF_WINDOW = 50
#: Describers whose words are a classifier's guesses (their matches are not searched).
CLASSIFIER_DESCRIBERS = ("offline",)
#: HNSW ef for texts mapped into ``image_feature``: they lie far from the stored image
#: vectors, and recall@10 against exact search at 100k rows was 0.956 at ef 1024, 0.981 at
#: 2048 and 0.991 at 4096 (``bench/hybrid.py``); every other mode has 1.0 at 1024. With
#: DISKANN it raises ``search_list`` as far as Milvus allows; IVF's ``nprobe`` stays.
TEXT_FEATURE_EF = 4096
#: Image->image similarity of the same picture (re-saved, resized), by metric.
NEAR_IDENTICAL = {"COSINE": 0.95, "IP": 0.95, "L2": -0.1}
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
    #: How the hits were ranked (``RANKINGS``; "" for images and browsing).
    ranking: str = ""
    #: Hits below the relevance cutoff, for a "show more" (empty without a cutoff).
    more: list[Hit] = field(default_factory=list)


class Searcher:
    """Runs queries against one collection with the embedder that built it."""

    def __init__(
        self, settings: Settings, *, store: Store | None = None, embedder: Embedder | None = None
    ) -> None:
        self.settings = settings
        self.store = store or Store(settings)
        self.embedder = embedder or get_embedder(settings)
        meta = self.store.open(embedder=self.embedder.name, dim=self.embedder.dim, create=False)
        self.meta = meta
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
        ranking: str = "fused",
        cutoff: str = "none",
        min_score: float | None = None,
    ) -> Results:
        """Search with filters; a text's words that name a time or place become filters
        too (unless ``parse`` is off), and a query of filters alone browses by them.

        ``filter`` is a raw Milvus expression (the CLI's --filter), ANDed with ``filters``.
        A text is ranked by ``ranking`` (``RANKINGS``: vectors and words fused, or either
        alone); ``cutoff="auto"`` and ``min_score`` move the hits past the point where
        relevance ends to ``Results.more`` (``rank.py``).
        """
        check_options(sort, ranking, cutoff)
        filters = filters or Filters()
        text_mode = mode is None or not Mode(mode).takes_image
        if isinstance(query, str) and parse and text_mode and query.strip():
            parsed = parse_text(query, self.settings)
            query, filters = parsed.text, parsed.filters.merged(filters)
        expr = " and ".join(f"({e})" for e in (filter, expression(filters)) if e)
        if query is None or (isinstance(query, str) and not query.strip() and text_mode):
            hits = self.browse(expr, k=k, near=filters.near)
            return Results(_sorted(hits, "date"), None, "", filters)
        mode = check_query(query, mode, k, paths=True)
        wanted = min(MAX_K, k * NEAR_OVERSAMPLING) if filters.near else k
        if not mode.takes_image:
            assert isinstance(query, str)
            ranked = self.ranked_text(query, mode=mode, k=wanted, filter=expr, ranking=ranking)
        else:
            hits = self.search(query, mode=mode, k=wanted, filter=expr)
            ranked = Ranked(hits, [self._similarity(h) for h in hits], [])
        if filters.near:
            ranked = ranked.only(lambda h: _near(filters.near, h))
        shown, more = ranked.cut(k, cutoff=cutoff, min_score=min_score, keep_above=self._same(mode))
        text, used = ("", "") if mode.takes_image else (str(query), ranking)
        return Results(_sorted(shown, sort), mode, text, filters, used, _sorted(more, sort))

    def ranked_text(
        self, text: str, *, mode: Mode, k: int, filter: str = "", ranking: str = "fused"
    ) -> Ranked:
        """A text query's hits by ``ranking``: the vector list, the lexical list (BM25F over
        the rows' words, ``lexical.py``), or both fused by reciprocal rank (``rank.rrf``).
        Each list is read ``pool_size(k)`` deep so that fusion can lift a hit either list
        ranks below ``k``. Every hit says where the query's words occur in it (``why``)."""
        pool = pool_size(k) if ranking == "fused" else k
        vector = []
        if ranking != "lexical":
            vector = self.search_text(text, mode=mode, k=pool, filter=filter)
        return self.fuse(text, vector, k=k, filter=filter, ranking=ranking)

    def fuse(
        self, text: str, vector: list[Hit], *, k: int, filter: str = "", ranking: str = "fused"
    ) -> Ranked:
        """``ranked_text`` with the vector list already searched (``mmsearch eval`` embeds
        its queries in batches): the lexical list is searched here and the two fused."""
        pool = pool_size(k) if ranking == "fused" else k
        lexical = self.lexical.search(text, k=pool, filter=filter) if ranking != "vector" else []
        fused = rank.rrf(vector, lexical, lexical_weight=self._lexical_weight(lexical))[:k]
        items = {h.id: h for h in vector}
        items |= {i.id: i for i in self.store.items([f.id for f in fused if f.id not in items])}
        hits = [_explained(items[f.id], f, text, ranking) for f in fused if f.id in items]
        return Ranked(
            hits,
            [self._similarity(h) for h in vector],
            [h.score for h in lexical],
            fused=ranking == "fused",
        )

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
            return self.store.search(
                query, field=FEATURE_FIELD, k=k, filter=filter, min_ef=TEXT_FEATURE_EF
            )
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

    @cached_property
    def lexical(self) -> LexicalIndex:
        """BM25F over the rows' words. Descriptions and keywords written by the offline
        describer are left out: they come from the classifier behind the image vectors, so
        they add no evidence of their own, and counting them cost Chinese class names 0.065
        of recall@1 in ``mmsearch eval`` (``bench/hybrid.py``)."""
        weights = {}
        if str(self.meta.get("describer", "")).startswith(CLASSIFIER_DESCRIBERS):
            weights = {"description": 0.0, "keywords": 0.0}
        return LexicalIndex(self.store, weights=weights)

    def _lexical_weight(self, lexical: Sequence[LexicalHit]) -> Callable[[LexicalHit], float]:
        """A lexical hit's weight in the fusion: ``LEXICAL_WEIGHT``, times the weight of the
        surest field it matched in (a classifier's description counts less than the text
        on the photo, ``lexical.DEFAULT_WEIGHTS``), times its BM25F score over the best's
        (squared, ``LEXICAL_SHARPNESS``).
        The last keeps what ranks alone lose: a row holding the whole phrase scores many
        times one holding a single character of it, though their ranks differ by one."""
        top = max((h.score for h in lexical), default=0.0) or 1.0
        weights = self.lexical.weights
        return lambda h: (
            LEXICAL_WEIGHT
            * rank.field_weight(h.fields, weights)
            * (h.score / top) ** LEXICAL_SHARPNESS
        )

    def _similarity(self, hit: Hit) -> float:
        return rank.similarity(hit.score, self.settings.metric.value)

    def _same(self, mode: Mode) -> float | None:
        """The similarity above which an image->image result is the same picture: those
        are always shown, first."""
        return NEAR_IDENTICAL[self.settings.metric.value] if mode is Mode.image2image else None

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


@dataclass
class Ranked:
    """A ranking before its cut: the hits in order, and the scores of the lists they came
    from (vector similarities, higher better; BM25F scores), which the cutoff reads."""

    hits: list[Hit]
    vector_scores: list[float]
    lexical_scores: list[float]
    fused: bool = False

    def only(self, keep: Callable[[Hit], bool]) -> Ranked:
        """The hits ``keep`` accepts; one list's scores stay aligned with its hits."""
        kept = [i for i, h in enumerate(self.hits) if keep(h)]
        hits = [self.hits[i] for i in kept]
        if self.fused:  # cut by each hit's rank in its lists, not by position
            return dataclasses.replace(self, hits=hits)
        scores = self.vector_scores or self.lexical_scores
        scores = [scores[i] for i in kept if i < len(scores)]
        if self.vector_scores:
            return dataclasses.replace(self, hits=hits, vector_scores=scores)
        return dataclasses.replace(self, hits=hits, lexical_scores=scores)

    def cut(
        self, k: int, *, cutoff: str, min_score: float | None, keep_above: float | None
    ) -> tuple[list[Hit], list[Hit]]:
        """(shown, more) of the first ``k`` hits. A fused list is cut on each list's own
        curve (``rank.cut_fused``); ``min_score`` bounds the vector similarity."""
        hits = self.hits[:k]
        if cutoff == "none" and min_score is None:
            return hits, []
        if not self.fused:
            scores = self.vector_scores or self.lexical_scores
            n = rank.cutoff(
                scores[: len(hits)],
                method=cutoff,
                min_score=min_score,
                keep_above=keep_above,
                window=CUTOFF_WINDOW,
            )
            return hits[:n], hits[n:]
        v = rank.cutoff(
            self.vector_scores, method=cutoff, min_score=min_score, window=CUTOFF_WINDOW
        )
        lx = rank.cutoff(self.lexical_scores, method=cutoff, window=CUTOFF_WINDOW)
        shown = [h for h in hits if _within(h.why, v, lx)]
        return shown, [h for h in hits if not _within(h.why, v, lx)]


def pool_size(k: int) -> int:
    """How deep each list is read before fusion."""
    return min(MAX_K, max(k, FUSION_POOL))


def _within(why: dict[str, Any], vector_keep: int, lexical_keep: int) -> bool:
    v, lx = why.get("vector_rank"), why.get("lexical_rank")
    return (v is not None and v <= vector_keep) or (lx is not None and lx <= lexical_keep)


def _explained(item: Item, fused: rank.Fused, text: str, ranking: str) -> Hit:
    """A ranked item as a hit: its score in ``ranking`` and why it matched."""
    score = {"vector": fused.vector_score, "lexical": fused.lexical_score}.get(ranking)
    base = {k: v for k, v in item.__dict__.items() if k not in ("score", "why")}
    why = {
        "matched_by": fused.matched_by,
        "vector_rank": fused.vector_rank,
        "vector_score": fused.vector_score,
        "lexical_rank": fused.lexical_rank,
        "lexical_score": fused.lexical_score,
        "matches": [m.as_dict() for m in lexical_matches(item, text)],
    }
    return Hit(**base, score=float(fused.score if score is None else score), why=why)


def check_options(sort: str, ranking: str, cutoff: str) -> None:
    if sort not in SORTS:
        raise QueryError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    if ranking not in RANKINGS:
        raise QueryError(f"ranking must be one of {', '.join(RANKINGS)}, got {ranking!r}")
    if cutoff not in CUTOFFS:
        raise QueryError(f"cutoff must be one of {', '.join(CUTOFFS)}, got {cutoff!r}")


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
