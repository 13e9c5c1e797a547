"""`mmsearch serve` under load on loopback: 50 concurrent clients for 30 s (bounded;
MMSEARCH_LOAD_SECONDS), text and image queries mixed with malformed requests. Valid requests
must all succeed; bad ones get 4xx, never 5xx. Figures go to $MMSEARCH_LOAD_REPORT (JSON)
when set.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from .conftest import REVERSE

pytestmark = [pytest.mark.datasets, pytest.mark.slow]

CLIENTS = 50
#: 30 s of 50 clients in the suite (no error, no 500); bench/serve.py measures throughput.
SECONDS = float(os.environ.get("MMSEARCH_LOAD_SECONDS", "30"))
TEXTS = ["狮子", "lion", "棕色的狗", "a red car", "披萨", "鸟", "castle on a hill", "猫"]


def _query_images() -> list[bytes]:
    out = []
    for path in sorted((REVERSE / "test").glob("*/*.JPEG"))[:6]:
        img = Image.open(path).convert("RGB")
        img.thumbnail((320, 320))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


async def _client(
    base: str, seed: int, deadline: float, images: list[bytes], log: list[tuple[str, int, float]]
) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base, timeout=120) as http:
        while time.monotonic() < deadline:
            kind = rng.choices(["text", "image", "bad"], weights=[6, 3, 1])[0]
            started = time.perf_counter()
            if kind == "text":
                mode = rng.choice(["text2image", "text2text"])
                res = await http.get(
                    "/api/v1/search", params={"q": rng.choice(TEXTS), "mode": mode, "k": 10}
                )
            elif kind == "image":
                mode = rng.choice(["image2image", "image2text"])
                res = await http.post(
                    "/api/v1/search/image",
                    files={"file": ("q.jpg", rng.choice(images), "image/jpeg")},
                    data={"mode": mode, "k": "10"},
                )
            else:
                res = await rng.choice(
                    [
                        lambda: http.get("/api/v1/search", params={"q": ""}),
                        lambda: http.get("/api/v1/search", params={"q": "x", "k": 0}),
                        lambda: http.post(
                            "/api/v1/search/image",
                            files={"file": ("x.jpg", b"not an image", "image/jpeg")},
                        ),
                        lambda: http.post(
                            "/api/v1/search/image",
                            files={"file": ("big.jpg", b"\0" * (21 * 2**20), "image/jpeg")},
                        ),
                        lambda: http.get("/api/v1/items/..%2F..%2Fetc%2Fpasswd/image"),
                        lambda: http.post("/api/v1/search/image", content=b"garbage"),
                    ]
                )()
            log.append((kind, res.status_code, time.perf_counter() - started))


def test_fifty_clients_at_once_no_errors(server):
    images = _query_images()
    log: list[tuple[str, int, float]] = []
    deadline = time.monotonic() + SECONDS

    async def run() -> None:
        await asyncio.gather(*(_client(server, i, deadline, images, log) for i in range(CLIENTS)))

    started = time.monotonic()
    asyncio.run(run())
    wall = time.monotonic() - started

    good = [(s, t) for k, s, t in log if k != "bad"]
    bad = [s for k, s, _ in log if k == "bad"]
    errors = [s for s, _ in good if s != 200]
    latencies = np.array([t for _, t in good]) * 1000
    figures = {
        "clients": CLIENTS,
        "seconds": round(wall, 1),
        "requests": len(log),
        "valid_requests": len(good),
        "malformed_requests": len(bad),
        "errors": len(errors),
        "malformed_status_codes": sorted(set(bad)),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p95_ms": round(float(np.percentile(latencies, 95)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
        "requests_per_second": round(len(log) / wall, 1),
    }
    print(json.dumps(figures))
    if os.environ.get("MMSEARCH_LOAD_REPORT"):
        Path(os.environ["MMSEARCH_LOAD_REPORT"]).write_text(json.dumps(figures, indent=2))
    assert len(good) > CLIENTS, figures
    assert not errors, f"valid requests failed: {sorted(set(errors))}; {figures}"
    assert bad and all(400 <= s < 500 for s in bad), figures
