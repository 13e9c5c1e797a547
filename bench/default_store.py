"""The default configuration at scale, end to end: what a user gets with no settings.

``Settings()`` as shipped (``embedded:DIR``, HNSW with the default parameters), a collection
with the real schema (all three vector fields, side collections on Milvus 2.3) filled with
N items made from the offline provider's real vectors (``common.mixed``: mixes of two of
the 1,866 data-set images' stored vectors, with their real descriptions), then real queries
through ``Searcher.search`` with the real offline models:

- text queries (English and Chinese class names, English and Chinese flickr8k captions) in
  text2image and text2text, and the 100 reference test images in image2image: latency end
  to end (model + search), the Milvus call alone, and recall@10 of the search against exact
  numpy search over the same field with the same query vector;
- cold start: a fresh process that attaches to the running server and answers one text
  query; and the same after a server restart (starting the server included).

    python bench/default_store.py --n 100000      # ~15 min on 2 cores

Writes ``bench/results/default-store-<time>.json`` and ``default-store-latest.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - bench/common.py

from mmsearch import embedded  # noqa: E402
from mmsearch.images import load_image  # noqa: E402
from mmsearch.providers import get_embedder  # noqa: E402
from mmsearch.search import Mode, Searcher  # noqa: E402
from mmsearch.store import FEATURE_FIELD, IMAGE_FIELD, TEXT_FIELD, Store  # noqa: E402

K = common.K
IDLE_TIMEOUT = 300.0  # a server left by a crashed run stops itself


def run_mode(searcher: Searcher, mode: Mode, queries: list, data: dict) -> dict:
    """Each query through Searcher.search, timed end to end (embedding included); the
    vector and field it searched, and the hits, are captured for recall."""
    captured: list[tuple[np.ndarray, str, list]] = []
    store_s: list[float] = []
    inner = searcher.store.search

    def recording(vectors, *, field, k, filter=""):
        t0 = time.perf_counter()
        hits = inner(vectors, field=field, k=k, filter=filter)
        store_s.append(time.perf_counter() - t0)
        captured.append((np.atleast_2d(np.asarray(vectors, np.float32)), field, hits))
        return hits

    searcher.store.search = recording  # type: ignore[method-assign]
    lat = []
    try:
        for q in queries[:3]:  # warm-up
            searcher.search(q, mode=mode, k=K)
        captured.clear()
        store_s.clear()
        for q in queries:
            t0 = time.perf_counter()
            searcher.search(q, mode=mode, k=K)
            lat.append(time.perf_counter() - t0)
    finally:
        searcher.store.search = inner  # type: ignore[method-assign]
    fields = {f for _, f, _ in captured}
    assert len(fields) == 1 and len(captured) == len(queries), (fields, len(captured))
    field = fields.pop()
    matrix = {IMAGE_FIELD: data["image"], TEXT_FIELD: data["text"], FEATURE_FIELD: data["feature"]}
    qv = np.concatenate([v for v, _, _ in captured])
    ex_i, ex_s = common.exact_topk(matrix[field], qv)
    got = [[common.row_number(h.id) for h in hits[0]] for _, _, hits in captured]
    got_scores = [[h.score for h in hits[0]] for _, _, hits in captured]
    out = {
        "mode": mode.value,
        "field": field,
        "dim": int(qv.shape[1]),
        "queries": len(queries),
        "latency": common.pct(lat),
        "store_search": common.pct(store_s),  # the Milvus call alone; the rest is the models
        **common.recall(got, got_scores, ex_i, ex_s),
    }
    print(json.dumps(out), flush=True)
    return out


def cold_start(uri: str) -> dict:
    """A fresh interpreter: seconds to import mmsearch, to open the collection (the
    ``Searcher``: connect, load), and to its first answer to a text query (models loaded)."""
    code = (
        "import time; t=time.perf_counter();"
        "from mmsearch import MMSearch, Settings; t1=time.perf_counter();"
        f"mm=MMSearch(settings=Settings(uri={uri!r}, collection='bench', provider='offline',"
        f" embedded_idle_timeout={IDLE_TIMEOUT})); mm.searcher; t2=time.perf_counter();"
        "mm.search('lion', k=10); t3=time.perf_counter(); mm.close();"
        "print(round(t1-t, 2), round(t2-t1, 2), round(t3-t2, 2), round(t3-t, 2))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"cold-start process failed:\n{out.stderr[-3000:]}")
    parts = [float(x) for x in out.stdout.strip().splitlines()[-1].split()]
    return dict(zip(("import_s", "open_s", "first_search_s", "total_s"), parts, strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200, help="text queries per text mode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-name", default="default-store")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/bench-cache"), help="real vectors")
    args = ap.parse_args()
    if not embedded.available():
        raise SystemExit("the default store needs the 'milvus' package (Linux x86_64)")

    work = Path(tempfile.mkdtemp(prefix="bench-default-store-", dir="/tmp"))
    shipped = common.offline_settings()
    settings = shipped.model_copy(
        update={
            "uri": f"embedded:{work / 'milvus'}",
            "collection": "bench",
            "embedded_idle_timeout": IDLE_TIMEOUT,
        }
    )
    result: dict = {
        "benchmark": "default-store",
        "machine": common.machine_info(),
        "n": args.n,
        "uri_default": shipped.uri,
        "index_type": settings.index_type.value,
        "index_params": settings.effective_index_params,
        "search_params": settings.effective_search_params,
    }
    embedder = get_embedder(settings)
    real = common.real_vectors(settings, args.cache)
    t = time.perf_counter()
    data = common.mixed(args.n, real, args.seed)
    result["data"] = {
        "real_images": len(real["image"]),
        "dims": {k: int(real[k].shape[1]) for k in ("image", "text", "feature")},
        "gen_s": round(time.perf_counter() - t, 1),
    }
    texts = common.text_queries(args.queries, args.seed)
    images = [
        load_image(p, max_pixels=settings.max_image_pixels).image
        for p in common.query_image_paths(args.queries)
    ]
    base = embedded.base_dir_of(settings.uri)
    try:
        t = time.perf_counter()
        store = Store(settings)
        store.open(embedder=embedder.name, dim=embedder.dim, feature_dim=embedder.feature_dim)
        result["server_start_s"] = round(time.perf_counter() - t, 1)
        result["fill"] = common.fill(store, data, real)
        result["fill"].update(common.wait_indexed(store, args.n))
        print(json.dumps(result["fill"]), flush=True)

        searcher = Searcher(settings, store=store, embedder=embedder)
        result["modes"] = [
            run_mode(searcher, Mode.text2image, texts, data),
            run_mode(searcher, Mode.text2text, texts, data),
            run_mode(searcher, Mode.image2image, images, data),
        ]
        result["index_progress_after_queries"] = common.index_progress(store)
        store.close()
        info = embedded.status(base)
        if info is None:
            raise SystemExit(f"the server in {base} stopped during the run")
        result["server_rss"] = common.rss_mb(info.milvus_pid)
        result["cold_start_attach"] = cold_start(settings.uri)
        t = time.perf_counter()
        embedded.stop_server(base)
        result["server_stop_s"] = round(time.perf_counter() - t, 1)
        result["cold_start_after_restart"] = cold_start(settings.uri)  # starts the server
    finally:
        embedded.stop_server(base)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1, ensure_ascii=False))
    print(f"wrote {common.save_results(args.out_name, result)}")


if __name__ == "__main__":
    main()
