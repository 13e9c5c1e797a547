"""``mmsearch serve --workers N`` and query batching, with the real embedded server and the
real offline models: several processes answer on one port and share one Milvus server;
one of them watches; concurrent queries share model calls and keep their own answers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from mmsearch import Settings
from mmsearch.api import ServedSearch
from mmsearch.batching import BatchingEmbedder, batching
from mmsearch.providers import get_embedder

from .conftest import LION, REVERSE, serve_log, serving

pytestmark = pytest.mark.datasets

LABELS = ["lion", "Afghan_hound", "pizza", "goldfish", "ambulance", "castle"]
TEXTS = ["狮子", "lion", "披萨", "a goldfish in a bowl", "救护车", "castle on a hill"]


def _jpeg(path: Path, size: int = 256) -> bytes:
    img = Image.open(path).convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _workers(pid: int) -> set[int]:
    """The worker processes uvicorn spawned under ``pid`` (not multiprocessing's tracker)."""
    out = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                    out.add(int(child))
    return out


@contextlib.contextmanager
def _serve(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[tuple[str, int, Path]]:
    """``mmsearch serve ARGS`` on a free loopback port; yields (base URL, pid, log file)."""
    with serving(env, cwd, args) as (base, pid):
        yield base, pid, serve_log(cwd, base)


async def _queries(base: str, n: int, images: list[bytes]) -> list[httpx.Response]:
    """``n`` searches at once, text and image alternating, each on a connection of its
    own (so the kernel can hand them to any worker), plus one undecodable upload."""

    async def one(i: int) -> httpx.Response:
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            if i == n:
                files = {"file": ("x.jpg", b"not an image", "image/jpeg")}
                return await http.post("/api/v1/search/image", files=files)
            if i % 2:
                files = {"file": ("q.jpg", images[i % len(images)], "image/jpeg")}
                return await http.post("/api/v1/search/image", files=files, data={"k": "3"})
            return await http.get("/api/v1/search", params={"q": TEXTS[i % len(TEXTS)], "k": 3})

    return await asyncio.gather(*(one(i) for i in range(n + 1)))


async def _guarded(base: str, n: int) -> list[httpx.Response]:
    """``n`` requests the guard refuses, each on a connection of its own: a foreign Host
    (DNS rebinding) and, without an API token configured, indexing."""

    async def one(i: int) -> httpx.Response:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            if i % 2:
                return await http.get("/api/v1/search?q=x", headers={"Host": "evil.example"})
            return await http.post("/api/v1/index/folder", json={"path": "/"})

    return await asyncio.gather(*(one(i) for i in range(n)))


def _milvus_on(base: Path) -> list[int]:
    from mmsearch.embedded import _cwd, _milvus_processes

    return [pid for pid in _milvus_processes() if _cwd(pid) == base]


def test_two_workers_share_one_embedded_server_and_one_watcher(
    embedded_server, cache_dir, tmp_path
):
    photos = tmp_path / "photos"
    for label in LABELS:
        src = next((REVERSE / "test" / label).iterdir())
        (photos / label).mkdir(parents=True)
        shutil.copy(src, photos / label / src.name)
    env = {
        "MMSEARCH_URI": f"embedded:{embedded_server}",
        "MMSEARCH_COLLECTION": "workers",
        "MMSEARCH_CACHE_DIR": str(cache_dir),
    }
    milvus_before = _milvus_on(embedded_server)
    assert len(milvus_before) == 1
    args = ["--workers", "2", "--watch", str(photos)]
    with _serve(args, env, tmp_path) as (base, pid, log):
        workers = _workers(pid)
        deadline = time.monotonic() + 120  # the watcher's worker indexes the folder first
        while httpx.get(f"{base}/api/v1/stats", timeout=30).json().get("count") != len(LABELS):
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(1)
        images = [_jpeg(LION), *(_jpeg(p) for p in sorted(photos.glob("*/*"))[:3])]
        answers = asyncio.run(_queries(base, 40, images))
        assert [r.status_code for r in answers[:-1]] == [200] * 40
        assert answers[-1].status_code == 415
        first = {r.json()["query"]: r.json()["hits"][0]["label"] for r in answers[:-1]}
        assert first["狮子"] == "lion" and first["披萨"] == "pizza"
        refused = asyncio.run(_guarded(base, 20))  # the same guard whichever worker answers
        assert [r.status_code for r in refused] == [403, 400] * 10
        assert all(r.headers["x-content-type-options"] == "nosniff" for r in answers + refused)
        # Each worker that answered a search holds the embedded server (a holder file named
        # by its pid); the one server runs still, no other was started.
        holders = {int(p.name) for p in (embedded_server / "holders").iterdir()}
        text = log.read_text(errors="replace")
    assert len(workers) == 2 and workers <= holders, (workers, holders, text[-2000:])
    assert _milvus_on(embedded_server) == milvus_before
    assert text.count("keeps the watched folders in sync") == 1, text[-2000:]


def test_workers_refuse_a_lite_file(tmp_path, cache_dir):
    env = {**os.environ, "MMSEARCH_CACHE_DIR": str(cache_dir)}
    cmd = [sys.executable, "-m", "mmsearch.cli", "--uri", str(tmp_path / "one.db"), "serve"]
    res = subprocess.run(
        [*cmd, "--workers", "2"], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 1
    assert "Milvus Lite file, which only one process can open" in res.stderr
    assert "Traceback" not in res.stderr


def _together(n: int, fn) -> list:
    out: list = [None] * n
    start = threading.Barrier(n)

    def one(i: int) -> None:
        start.wait()
        try:
            out[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - each caller's own error is the point
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_batched_queries_get_the_vectors_they_get_alone(cache_dir):
    inner = get_embedder(Settings(provider="offline", cache_dir=cache_dir))
    embedder = batching(inner, wait_ms=50, max_batch=32)
    images = [Image.open(p).convert("RGB") for p in sorted((REVERSE / "test").glob("*/*"))[:6]]
    texts = TEXTS * 2
    alone_t = [inner.embed_texts([t], query=True) for t in texts]
    alone_i = [inner.embed_images([im]) for im in images]

    got_t = _together(len(texts), lambda i: embedder.embed_texts([texts[i]], query=True))
    got_i = _together(len(images), lambda i: embedder.embed_images([images[i]]))
    for a, g in zip(alone_t, got_t, strict=True):
        np.testing.assert_allclose(g, a, atol=1e-5)
    for a, g in zip(alone_i, got_i, strict=True):
        np.testing.assert_allclose(g.shared, a.shared, atol=1e-5)
        np.testing.assert_allclose(g.features, a.features, atol=1e-5)
    stats = embedder.batcher.stats
    assert stats["texts"].calls == len(texts) and stats["texts"].model_calls < len(texts)
    assert stats["images"].calls == len(images) and stats["images"].model_calls < len(images)
    embedder.close()


def test_an_image_the_model_cannot_take_fails_only_its_own_query(cache_dir):
    inner = get_embedder(Settings(provider="offline", cache_dir=cache_dir))
    embedder = batching(inner, wait_ms=50, max_batch=32)
    images = [Image.open(p).convert("RGB") for p in sorted((REVERSE / "test").glob("*/*"))[:5]]
    images.insert(2, Image.new("RGB", (0, 0)))  # no pixels: the model's resize fails
    got = _together(len(images), lambda i: embedder.embed_images([images[i]]))
    assert isinstance(got[2], Exception)
    for i, g in enumerate(got):
        if i != 2:
            np.testing.assert_allclose(g.shared, inner.embed_images([images[i]]).shared, atol=1e-5)
    assert embedder.batcher.stats["images"].retried_alone > 0
    embedder.close()


def test_only_servers_batch_queries(settings):
    """On a Lite file searches run one at a time under the lock: no batcher to wait in."""
    lite = ServedSearch(settings=settings)
    assert lite.query_embedder is lite.embedder
    remote = ServedSearch(settings=settings.model_copy(update={"uri": "http://127.0.0.1:9"}))
    assert isinstance(remote.query_embedder, BatchingEmbedder)
    remote.close()
    lite.close()
