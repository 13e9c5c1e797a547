"""The micro-batcher on fakes: concurrent calls share model calls, each caller gets its own
rows, and an error stays with the call that caused it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from PIL import Image

from mmsearch.batching import Batcher, BatchingEmbedder, BatchingFeatureEmbedder, batching
from mmsearch.providers.base import (
    FatalProviderError,
    ImageBatch,
    ImageVectors,
    ProviderError,
    as_batch,
    feature_queries,
)


def _together(n: int, fn: Callable[[int], object]) -> list[object]:
    """``fn(i)`` for i < n, from n threads released at once; results (or errors) in order."""
    out: list[object] = [None] * n
    start = threading.Barrier(n)

    def one(i: int) -> None:
        start.wait()
        try:
            out[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - the test looks at each caller's error
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


class Doubler:
    """A 'model' that doubles numbers, refuses negatives, and records its calls."""

    def __init__(self, delay: float = 0.02) -> None:
        self.calls: list[list[list[int]]] = []
        self.delay = delay

    def __call__(self, calls: list[list[int]]) -> list[list[int]]:
        self.calls.append(calls)
        time.sleep(self.delay)
        if any(x < 0 for c in calls for x in c):
            raise ProviderError("negative")
        return [[2 * x for x in c] for c in calls]


def test_concurrent_calls_share_model_calls_and_get_their_own_results():
    model = Doubler()
    batcher = Batcher({"n": model}, wait_s=0.05, max_batch=64)
    out = _together(16, lambda i: batcher.submit("n", [i, i + 100]))
    assert out == [[2 * i, 2 * i + 200] for i in range(16)]
    assert len(model.calls) < 16 and batcher.stats["n"].model_calls == len(model.calls)
    assert batcher.stats["n"].calls == 16 and batcher.stats["n"].items == 32
    batcher.close()


def test_batches_keep_within_max_batch():
    model = Doubler()
    batcher = Batcher({"n": model}, wait_s=0.05, max_batch=5)
    out = _together(12, lambda i: batcher.submit("n", [i, i]))
    assert out == [[2 * i, 2 * i] for i in range(12)]
    assert all(sum(len(c) for c in calls) <= 5 for calls in model.calls)
    assert batcher.stats["n"].largest <= 5
    batcher.close()


def test_a_failing_call_fails_alone():
    model = Doubler()
    batcher = Batcher({"n": model}, wait_s=0.05, max_batch=64)
    out = _together(8, lambda i: batcher.submit("n", [-1] if i == 3 else [i]))
    assert isinstance(out[3], ProviderError)
    assert [o for i, o in enumerate(out) if i != 3] == [[2 * i] for i in range(8) if i != 3]
    assert batcher.stats["n"].retried_alone > 0
    batcher.close()


def test_a_fatal_error_fails_the_batch_without_retries():
    def fatal(calls: list[list[int]]) -> list[list[int]]:
        raise FatalProviderError("no key")

    batcher = Batcher({"n": fatal}, wait_s=0.05, max_batch=64)
    out = _together(4, lambda i: batcher.submit("n", [i]))
    assert all(isinstance(o, FatalProviderError) for o in out)
    assert batcher.stats["n"].retried_alone == 0
    batcher.close()


def test_a_lone_call_waits_at_most_the_window():
    batcher = Batcher({"n": Doubler(delay=0)}, wait_s=0.005, max_batch=64)
    batcher.submit("n", [1])  # starts the thread
    started = time.perf_counter()
    assert batcher.submit("n", [2]) == [4]
    assert time.perf_counter() - started < 0.5
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("n", [3])


class FakeEmbedder:
    """Rows that name their input (text length, image width), and a call log."""

    name, dim, feature_dim = "fake", 3, 2

    def __init__(self) -> None:
        self.image_calls: list[int] = []
        self.text_calls: list[tuple[int, bool]] = []

    def embed_images(self, images) -> ImageVectors:
        images = as_batch(images).images
        self.image_calls.append(len(images))
        if any(im.width == 1 for im in images):
            raise ProviderError("cannot embed a 1-px image")
        shared = np.array([[im.width, 0, 0] for im in images], np.float32)
        return ImageVectors(shared, np.array([[im.width, 1] for im in images], np.float32))

    def embed_texts(self, texts: Sequence[str], *, query: bool) -> np.ndarray:
        self.text_calls.append((len(texts), query))
        return np.array([[len(t), 1, 0] for t in texts], np.float32).reshape(-1, 3)


class FakeFeatureEmbedder(FakeEmbedder):
    image_feature_score_scale = 0.5

    def text_feature_queries(self, vectors, texts=None):
        return vectors[:, :2]

    def image_feature_queries(self, features):
        return features


def test_embedder_batches_queries_not_documents():
    inner = FakeEmbedder()
    emb = batching(inner, wait_ms=50, max_batch=32)
    assert type(emb) is BatchingEmbedder and feature_queries(emb) is None
    out = _together(10, lambda i: emb.embed_texts(["x" * (i + 1)], query=True))
    for i, rows in enumerate(out):
        np.testing.assert_array_equal(rows, [[i + 1, 1, 0]])
    assert len(inner.text_calls) < 10 and all(q for _, q in inner.text_calls)
    assert emb.batcher.stats["texts"].model_calls == len(inner.text_calls)
    before = len(inner.text_calls)
    emb.embed_texts(["a", "bb"], query=False)
    assert inner.text_calls[before:] == [(2, False)]
    emb.close()


def test_embedder_splits_image_vectors_and_isolates_bad_images():
    inner = FakeFeatureEmbedder()
    emb = batching(inner, wait_ms=50, max_batch=32)
    assert isinstance(emb, BatchingFeatureEmbedder) and feature_queries(emb) is emb
    assert emb.image_feature_score_scale == 0.5

    def query(i: int) -> ImageVectors:
        return emb.embed_images([Image.new("RGB", (1 if i == 2 else 10 + i, 4))])

    out = _together(6, query)
    assert isinstance(out[2], ProviderError)
    for i, vec in enumerate(out):
        if i != 2:
            assert isinstance(vec, ImageVectors)
            np.testing.assert_array_equal(vec.shared, [[10 + i, 0, 0]])
            np.testing.assert_array_equal(vec.features, [[10 + i, 1]])
    calls = len(inner.image_calls)
    batch = ImageBatch([Image.new("RGB", (5, 5))], derived={"other": 1})
    emb.embed_images(batch)  # carries another provider's results: straight through
    assert inner.image_calls[calls:] == [1]
    emb.close()


def test_texts_and_images_share_one_queue_in_order_of_arrival():
    inner = FakeEmbedder()
    emb = batching(inner, wait_ms=50, max_batch=32)

    def query(i: int):
        if i % 2:
            return emb.embed_images([Image.new("RGB", (10 + i, 4))])
        return emb.embed_texts(["x" * (i + 1)], query=True)

    out = _together(8, query)
    for i, got in enumerate(out):
        if i % 2:
            np.testing.assert_array_equal(got.shared, [[10 + i, 0, 0]])
        else:
            np.testing.assert_array_equal(got, [[i + 1, 1, 0]])
    stats = emb.batcher.stats
    assert stats["texts"].calls == stats["images"].calls == 4
    assert stats["texts"].model_calls + stats["images"].model_calls < 8
    assert emb.batcher.name == "query-batcher"
    emb.close()
