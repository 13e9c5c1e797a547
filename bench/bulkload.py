"""Bulk loads: upserts against Milvus's bulk import on the embedded server, through the
product (``Store.upsert``, ``Store.bulk_write``, ``embedded.ensure_server``/``stop_server``).

For each size, the same N rows (the real schema; vectors of the offline provider's real
dims, 384/384/1,384, made by ``common.mixed`` from its stored vectors of the data-set images,
with their real descriptions and keywords; realistic paths, dates, places, cameras, and
text read off one photo in ten) are written into a fresh collection on a fresh embedded
server, once per method, side by side in one run:

- ``upsert32``: ``Store.upsert`` in ingest's batches of 32 rows;
- ``upsert``: ``Store.bulk_write(method="upsert")``, batches of 1,000;
- ``import``: ``Store.bulk_write(method="import")``, Parquet files + Milvus bulk insert.

Reported per method: write seconds and rows/s (the call returns; for import its rows are
visible by then), and time until searchable: from the start of the write until every
collection's index covers all N rows with none pending, the query node serves them from
indexed segments, a Strong ``count`` of every collection says N, and a search answers.
Rows are made in chunks (never all at once) as the methods consume them; the seconds spent
making them (the same for every method: in a real run they come from the models) are
subtracted from the times and reported as ``make_rows_s``.

    python bench/bulkload.py --sizes 10000 100000
    python bench/bulkload.py --sizes 1000000 --methods upsert import

Writes bench/results/bulkload-<time>.json and bulkload-latest.json (after each method).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - bench/common.py

from mmsearch import embedded  # noqa: E402
from mmsearch.providers import get_embedder  # noqa: E402
from mmsearch.store import IMAGE_FIELD, Item, Row, Store  # noqa: E402

CHUNK = 10_000
CACHE = Path("/tmp/bench-cache")
PLACES = [
    ("Paris", "IDF", "Île-de-France", "FR", "France", "巴黎", 2988507, 48.8566, 2.3522),
    ("Tokyo", "13", "Tokyo", "JP", "Japan", "东京", 1850147, 35.6895, 139.6917),
    ("Hangzhou", "ZJ", "Zhejiang", "CN", "China", "杭州", 1808926, 30.2936, 120.1614),
]
CAMERAS = [("Apple", "iPhone 13"), ("Canon", "EOS R6"), ("SONY", "ILCE-7M3"), ("", "")]


def make_item(i: int, desc: str, keywords: list[str]) -> Item:
    """Item ``i`` as ingest stores a camera photo: path, hash, size, dates, place, camera."""
    year, place = 2015 + i % 10, PLACES[i % len(PLACES)]
    make, model = CAMERAS[i % len(CAMERAS)]
    gps = i % 5 < 2
    facts: dict[str, Any] = {
        "taken_at": 1_420_070_400 + (i * 7919) % 315_360_000,
        "taken_at_source": "exif",
        "utc_offset": "+08:00",
        "has_gps": gps,
        "camera_make": make,
        "camera_model": model,
        "file_format": "jpeg",
    }
    if gps:
        city, rc, region, cc, country, zh, cid, lat, lon = place
        facts |= {"latitude": lat + (i % 100) * 1e-4, "longitude": lon, "place_city": city}
        facts |= {"place_city_id": cid, "place_region_code": rc, "place_region": region}
        facts |= {"place_country_code": cc, "place_country": country, "place_zh": zh}
    text = f"营业时间 9:00-21:00 OPEN {i % 1000}" if i % 10 == 0 else ""
    return Item(
        id=f"{i:016x}{i * 2654435761 % 2**64:016x}",
        origin=f"/home/user/Pictures/{year}/{i % 97:02d}/IMG_{i:07d}.jpg",
        label=f"{i % 97:02d}",
        description=desc,
        keywords=keywords,
        content_hash=f"{i * 11400714819323198485 % 2**256:064x}",
        width=4032,
        height=3024,
        indexed_at=1_700_000_000 + i,
        file_size=2_000_000 + i,
        mtime_ns=1_700_000_000_000_000_000 + i,
        facts=facts,
        ocr_text=text,
        ocr_confidence=0.93 if text else 0.0,
        ocr_version="rapidocr-ppocrv5" if text else "",
    )


def make_rows(n: int, real: dict[str, np.ndarray], spent: list[float]) -> Iterator[Row]:
    """The n rows, CHUNK at a time (vectors of a chunk made together); adds the seconds
    spent making them to ``spent[0]``."""
    import json

    for start in range(0, n, CHUNK):
        t0 = time.perf_counter()
        data = common.mixed(min(CHUNK, n - start), real, seed=start)
        chunk = []
        for j, b in enumerate(data["base"]):
            kw = json.loads(str(real["kw"][b]))
            item = make_item(start + j, str(real["desc"][b]), kw)
            chunk.append(Row(item, data["image"][j], data["text"][j], data["feature"][j]))
        spent[0] += time.perf_counter() - t0
        yield from chunk


def searchable(store: Store, n: int, query: np.ndarray) -> dict[str, Any]:
    """Wait until the rows are indexed, served, counted by a Strong read and searchable."""
    # Index builds grow faster than the rows: 100k upserts took 301 s after the write.
    out: dict[str, Any] = dict(common.wait_indexed(store, n, timeout=max(1800.0, n / 100)))
    for name in store.collections():
        while True:
            res = store.client.query(
                name, filter="", output_fields=["count(*)"], consistency_level="Strong"
            )
            if int(res[0]["count(*)"]) >= n:
                break
            time.sleep(1)
    hits = store.search(query, field=IMAGE_FIELD, k=10)[0]
    out["search_hits"] = len(hits)
    out["counts"] = {
        name: int(
            store.client.query(
                name, filter="", output_fields=["count(*)"], consistency_level="Strong"
            )[0]["count(*)"]
        )
        for name in store.collections()
    }
    return out


def run_method(method: str, n: int, real: dict[str, np.ndarray], workdir: Path) -> dict:
    """One method at one size on a fresh server, stopped after; its folder is removed
    after a run that worked."""
    base = workdir / f"srv-{method}-{n}"
    settings = common.offline_settings(uri=f"embedded:{base}", collection="bulk")
    embedder = get_embedder(settings)
    embedded.ensure_server(base, idle_timeout=300, bin_cache=settings.cache_dir)
    spent = [0.0]
    try:
        store = Store(settings)
        store.open(embedder=embedder.name, dim=embedder.dim, feature_dim=embedder.feature_dim)
        began, cpu0 = time.perf_counter(), common.cpu_seconds()
        report = None
        if method == "upsert32":
            written, rows = 0, make_rows(n, real, spent)
            while batch := list(islice(rows, 32)):
                written += store.upsert(batch)
        else:
            report = store.bulk_write(make_rows(n, real, spent), method=method)
            written = report.rows
        write_s = time.perf_counter() - began - spent[0]
        result = finish(store, n, written, write_s, began, spent[0], real)
        result["client_cpu_s"] = round(common.cpu_seconds() - cpu0, 1)
        result["report"] = report.__dict__ if report else None
        store.close()
    finally:
        embedded.stop_server(base)
    # Only after a run that worked: a failed one leaves the server's logs to read.
    shutil.rmtree(base, ignore_errors=True)
    return result


def finish(store, n, written, write_s, began, make_s, real) -> dict[str, Any]:
    """Time until searchable, and the figures of one method at one size."""
    wait = searchable(store, n, real["image"][0])
    total = time.perf_counter() - began - make_s
    return {
        "rows": n,
        "written": written,
        "write_s": round(write_s, 1),
        "rows_per_s": round(n / write_s, 1),
        "searchable_s": round(total, 1),
        "rows_per_s_to_searchable": round(n / total, 1),
        "make_rows_s": round(make_s, 1),
        "wait": wait,
        "loadavg": common.loadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--methods", nargs="+", default=["upsert32", "upsert", "import"])
    ap.add_argument("--upsert32-max", type=int, default=100_000, help="largest size for upsert32")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    real = common.real_vectors(common.offline_settings(), CACHE)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-bulkload-", dir="/tmp"))
    result: dict[str, Any] = {
        "benchmark": "bulkload",
        "machine": common.machine_info(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "notes": [
            "Each method at each size on a fresh embedded Milvus 2.3 server (3 collections: "
            "main + 2 side, as the store lays them out on 2.3), default HNSW index.",
            "write_s: the write call(s) until they return; import returns once its rows are "
            "visible to a Strong read. searchable_s: from the start of the write until "
            "every index is built and served, Strong counts say N, and a search answers.",
            "Row making (the same for every method) is subtracted (make_rows_s).",
            "Other engineers' jobs ran on this 2-core machine: compare rows of one run.",
        ],
        "sizes": {},
    }
    for n in args.sizes:
        for method in args.methods:
            if method == "upsert32" and n > args.upsert32_max:
                continue
            print(f"[bulkload] {method} {n} rows ...", flush=True)
            out = run_method(method, n, real, workdir)
            result["sizes"].setdefault(str(n), {})[method] = out
            print(f"[bulkload] {method} {n}: {summary(out)}", flush=True)
            common.save_results("bulkload", result)
    result["summary"] = {
        n: {m: summary(r) for m, r in by.items()} for n, by in result["sizes"].items()
    }
    print(common.save_results("bulkload", result))
    shutil.rmtree(workdir, ignore_errors=True)


def summary(r: dict[str, Any]) -> dict[str, float]:
    keys = ("write_s", "rows_per_s", "searchable_s", "rows_per_s_to_searchable")
    return {k: r[k] for k in keys}


if __name__ == "__main__":
    main()
