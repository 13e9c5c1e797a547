"""Micro-batching of concurrent query embeddings: many requests, one model call.

Why: ``mmsearch serve`` answers each request in a thread of its own, and each text or
image query needs one model call. On a CPU a model runs a batch of 16 queries in far less
than 16 times the time of one (the weights are read once, the matrix products are
wider), and only one model call at a time can use the cores well anyway. So the queries
that arrive within a few milliseconds of each other (``query_batch_wait_ms``) are embedded
together, at most ``query_batch_max`` items at a time, and each caller gets its own rows
back. Queries that waited while the previous batch ran go at once: the wait is counted
from the first query's arrival, so a busy server adds no wait at all.

Errors stay with their request: when a batch fails, its calls are run again one by one,
so an image the model cannot take fails its own request and no other (a
``FatalProviderError``, which every call would repeat, fails them all at once).

Only queries go through here (``embed_texts(query=True)``, ``embed_images`` of plain
image lists); ingest calls the embedder directly, in its own batches.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from mmsearch.providers.base import (
    Embedder,
    FatalProviderError,
    ImageBatch,
    Images,
    ImageVectors,
    as_batch,
    feature_queries,
)

#: Defaults of ``Settings.query_batch_wait_ms`` and ``query_batch_max``.
DEFAULT_WAIT_MS = 5.0
DEFAULT_MAX_BATCH = 32


@dataclass
class _Call:
    """One caller's items, of which kind, when they arrived, and the future its thread
    waits on."""

    kind: str
    items: Any
    size: int
    arrived: float = field(default_factory=time.monotonic)
    future: Future[Any] = field(default_factory=Future)


@dataclass
class BatchStats:
    """What a batcher has done for one kind of call: model calls made, calls served, the
    largest batch, and the calls run again alone after their batch failed."""

    model_calls: int = 0
    calls: int = 0
    items: int = 0
    largest: int = 0
    retried_alone: int = 0


class Batcher:
    """Collects concurrent calls into batches and hands each call its own result.

    ``runs`` maps each kind of call (texts, images) to a function that takes the items of
    several calls of that kind and returns one result per call, in order. One worker
    thread serves every kind from one queue, in order of arrival: a batch holds what came
    within the window, and each kind in it is one model call. So a process makes one model
    call at a time (two would only share the cores, and some runtimes are not re-entrant),
    and a query waits for the queries before it, whatever their kind, rather than for
    whichever kind the scheduler favours: with one thread per kind, text queries (a third
    of an image's work here) took the CPU and image queries waited seconds.
    """

    def __init__(
        self,
        runs: Mapping[str, Callable[[list[Any]], list[Any]]],
        *,
        wait_s: float = DEFAULT_WAIT_MS / 1000,
        max_batch: int = DEFAULT_MAX_BATCH,
        name: str = "batcher",
    ) -> None:
        self.runs = dict(runs)
        self.wait_s = max(0.0, wait_s)
        self.max_batch = max(1, max_batch)
        self.name = name
        self.stats = {kind: BatchStats() for kind in self.runs}
        self._queue: queue.Queue[_Call | None] = queue.Queue()
        self._held: _Call | None = None  # a call that did not fit the last batch
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    def submit(self, kind: str, items: Sequence[Any]) -> Any:
        """Run ``items`` in the next batch of ``kind``; blocks until its result (or raises
        its error)."""
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        call = _Call(kind, items, len(items))
        self._ensure_thread()
        self._queue.put(call)
        return call.future.result()

    def close(self) -> None:
        """Stop the worker once the calls already queued are done."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            for kind in dict.fromkeys(c.kind for c in batch):  # kinds in order of arrival
                self._run(kind, [c for c in batch if c.kind == kind])

    def _next_batch(self) -> list[_Call] | None:
        """The next calls to run: the first waiting one, then those arriving until
        ``wait_s`` after it arrived, up to ``max_batch`` items. None: closed."""
        first = self._held or self._queue.get()
        self._held = None
        if first is None:
            return None
        batch, items = [first], first.size
        deadline = first.arrived + self.wait_s
        while items < self.max_batch:
            try:
                remaining = deadline - time.monotonic()
                q = self._queue
                nxt = q.get(timeout=remaining) if remaining > 0 else q.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)  # run what we have, then stop
                break
            if items + nxt.size > self.max_batch:
                self._held = nxt
                break
            batch.append(nxt)
            items += nxt.size
        return batch

    def _run(self, kind: str, batch: list[_Call]) -> None:
        """One model call for the calls of ``kind``; if it fails, each call alone, so that
        each gets its own result or its own error."""
        stats = self.stats[kind]
        stats.calls += len(batch)
        stats.items += sum(c.size for c in batch)
        stats.largest = max(stats.largest, sum(c.size for c in batch))
        try:
            stats.model_calls += 1
            results = self.runs[kind]([c.items for c in batch])
        except FatalProviderError as exc:
            for call in batch:
                call.future.set_exception(exc)
            return
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            stats.retried_alone += len(batch)
            for call in batch:
                self._run_alone(call)
            return
        for call, result in zip(batch, results, strict=True):
            call.future.set_result(result)

    def _run_alone(self, call: _Call) -> None:
        try:
            self.stats[call.kind].model_calls += 1
            call.future.set_result(self.runs[call.kind]([call.items])[0])
        except Exception as exc:
            call.future.set_exception(exc)


def _split(rows: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """``rows`` cut into consecutive pieces of ``sizes`` rows."""
    return np.split(rows, np.cumsum(sizes)[:-1]) if sizes else []


class BatchingEmbedder:
    """An ``Embedder`` whose query calls from many threads share model calls.

    ``embed_texts(query=True)`` and ``embed_images`` of plain image lists go through one
    ``Batcher`` (texts and images are separate model calls, one after the other); document
    texts and ``ImageBatch``es that carry another provider's results go straight
    to the wrapped embedder.
    """

    def __init__(self, inner: Embedder, *, wait_s: float, max_batch: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.feature_dim = inner.feature_dim
        self.batcher = Batcher(
            {"texts": self._embed_texts, "images": self._embed_images},
            wait_s=wait_s,
            max_batch=max_batch,
            name="query-batcher",
        )

    def embed_texts(self, texts: Sequence[str], *, query: bool) -> np.ndarray:
        if not query or not texts:
            return self.inner.embed_texts(texts, query=query)
        return self.batcher.submit("texts", list(texts))

    def embed_images(self, images: Images) -> ImageVectors:
        if not len(images) or (isinstance(images, ImageBatch) and images.derived):
            return self.inner.embed_images(images)
        return self.batcher.submit("images", list(as_batch(images).images))

    def close(self) -> None:
        self.batcher.close()

    def _embed_texts(self, calls: list[list[str]]) -> list[np.ndarray]:
        rows = self.inner.embed_texts([t for call in calls for t in call], query=True)
        return _split(np.asarray(rows), [len(c) for c in calls])

    def _embed_images(self, calls: list[list[Image.Image]]) -> list[ImageVectors]:
        vectors = self.inner.embed_images([im for call in calls for im in call])
        sizes = [len(c) for c in calls]
        shared = _split(np.asarray(vectors.shared), sizes)
        if vectors.features is None:
            return [ImageVectors(s) for s in shared]
        features = _split(np.asarray(vectors.features), sizes)
        return [ImageVectors(s, f) for s, f in zip(shared, features, strict=True)]


class BatchingFeatureEmbedder(BatchingEmbedder):
    """``BatchingEmbedder`` of an embedder with the ``FeatureQueries`` capability, which it
    keeps (the searcher asks for it with ``isinstance``; those calls are numpy, unbatched)."""

    inner: Any

    @property
    def image_feature_score_scale(self) -> float:
        return self.inner.image_feature_score_scale

    def text_feature_queries(
        self, vectors: np.ndarray, texts: Sequence[str] | None = None
    ) -> np.ndarray:
        return self.inner.text_feature_queries(vectors, texts)

    def image_feature_queries(self, features: np.ndarray) -> np.ndarray:
        return self.inner.image_feature_queries(features)


def batching(inner: Embedder, *, wait_ms: float, max_batch: int) -> BatchingEmbedder:
    """``inner`` with its query calls batched, keeping its capabilities."""
    cls = BatchingFeatureEmbedder if feature_queries(inner) is not None else BatchingEmbedder
    return cls(inner, wait_s=wait_ms / 1000, max_batch=max_batch)
