"""Search: Milvus Lite against the embedded Milvus server, and index settings, through the
product (``Store``, ``Searcher``, ``embedded.ensure_server``/``stop_server``).

For each size, N items made from the offline provider's real vectors (``common.mixed``:
mixes of two of the 1,866 data-set images' stored vectors, with their real descriptions)
go into a fresh collection with ``Store.upsert``, for each index option, on each store.
Measured side by side in one run:

- insert rows/s (ingest's batch of 32 for the first 5,000 rows, then batches of 1,000), and
  the time until searches go through the index (server: flush, wait for the indexes to
  be built and for the query node to serve the indexed segments; Lite: close, which
  builds them);
- ``Store.search`` latency p50/p95 (one query vector, top-10, one client thread) and
  recall@10 against exact numpy search on the same vectors, for a few search params;
  queries: 100 texts (class names and flickr8k captions, English and Chinese) and 100
  reference test images (not among the 1,866), embedded by the offline provider;
- memory: RSS of the Milvus server (now and peak), or of a fresh process that holds the
  Lite file and has answered 20 queries;
- cold start: a fresh process that imports mmsearch, opens the collection and answers one
  query; for the server also after a server restart (starting it included);
- for the default index only, a text query end to end through ``Searcher.search``.

Each server option runs on a server of its own (started and stopped here, in /tmp).

    python bench/search.py                     # server 10k and 100k, Lite 10k: ~20 min
    python bench/search.py --sizes 10000 --lite-sizes 10000 --options hnsw-m32

Writes bench/results/search-<time>.json and search-latest.json.
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
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - bench/common.py

from mmsearch import Settings, embedded  # noqa: E402
from mmsearch.images import load_image  # noqa: E402
from mmsearch.providers import get_embedder  # noqa: E402
from mmsearch.providers.base import feature_queries  # noqa: E402
from mmsearch.search import Mode, Searcher  # noqa: E402
from mmsearch.store import FEATURE_FIELD, IMAGE_FIELD, TEXT_FIELD, Store  # noqa: E402

K = common.K
#: name: index type, build params, search params tried (the last one is the option's own).
OPTIONS: dict[str, tuple[str, dict, list[dict]]] = {
    "hnsw-m16": ("HNSW", {"M": 16, "efConstruction": 200}, [{"ef": 64}, {"ef": 256}]),
    "ivf": ("IVF_FLAT", {"nlist": 128}, [{"nprobe": 8}, {"nprobe": 32}]),
    "flat": ("FLAT", {}, [{}]),
    "hnsw-m32": ("HNSW", {"M": 32, "efConstruction": 200}, [{"ef": 256}, {"ef": 1024}]),
}
DATA_KEY = {IMAGE_FIELD: "image", TEXT_FIELD: "text", FEATURE_FIELD: "feature"}
#: A server left behind by a crashed run stops itself after this long without a client.
IDLE_TIMEOUT = 300.0

#: A fresh process: import, open, first result, then 20 more queries and its RSS.
COLD = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from mmsearch import Settings
from mmsearch.store import Store
spec = json.loads(sys.argv[1])
store = Store(Settings(**spec["settings"]))
store.open(embedder=spec["embedder"], dim=spec["dim"], create=False)
t1 = time.perf_counter()
queries = np.load(spec["queries"])
store.search(queries[0], field=spec["field"], k=10)
t2 = time.perf_counter()
for q in queries[1:]:
    store.search(q, field=spec["field"], k=10)
rss = [ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmRSS")][0]
print(json.dumps({"open_s": round(t1 - t0, 3), "first_result_s": round(t2 - t0, 3),
                  "rss_mb": round(int(rss) / 1024, 1)}))
store.close()
"""


def query_vectors(embedder, field: str, texts: list[str], images: list) -> np.ndarray:
    """The vectors ``Searcher`` sends to ``field`` for these texts and images."""
    text_v = embedder.embed_texts(texts, query=True)
    image_v = embedder.embed_images(images)
    if field != FEATURE_FIELD:
        return np.concatenate([text_v, image_v.shared]).astype(np.float32)
    fq = feature_queries(embedder)
    if fq is None:
        raise SystemExit(f"embedder {embedder.name} has no {FEATURE_FIELD} queries")
    both = [fq.text_feature_queries(text_v, texts), fq.image_feature_queries(image_v.features)]
    return np.concatenate(both).astype(np.float32)


def numpy_exact(x: np.ndarray, queries: np.ndarray) -> dict:
    """One query at a time, exact: matrix-vector product and partial sort."""
    lat = []
    for q in np.concatenate([queries, queries]):
        t0 = time.perf_counter()
        s = x @ q
        top = np.argpartition(-s, K)[:K]
        top[np.argsort(-s[top])]
        lat.append(time.perf_counter() - t0)
    return common.pct(lat[len(queries) // 2 :])


def data_shape(x: np.ndarray, exact_scores: np.ndarray) -> dict:
    """How clustered the collection is: cosine of random pairs, of the queries' neighbours."""
    r = np.random.default_rng(0)
    a, b = r.integers(0, len(x), (2, 2000))
    pairs = np.einsum("nd,nd->n", x[a], x[b])
    return {
        "cos_random_pairs_p5_p50_p95": [
            round(float(np.percentile(pairs, p)), 3) for p in (5, 50, 95)
        ],
        "cos_query_1st_10th_neighbour_p50": [
            round(float(np.median(exact_scores[:, 0])), 3),
            round(float(np.median(exact_scores[:, -1])), 3),
        ],
    }


def measure(store: Store, settings: Settings, params: dict, run: dict) -> dict:
    """Latency and recall@10 of ``Store.search`` with these search params."""
    store.settings = settings.model_copy(update={"search_params": params})
    field, queries = run["field"], run["queries"]
    for q in queries[:3]:  # warm-up
        store.search(q, field=field, k=K)
    lat, ids, scores = [], [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = store.search(q, field=field, k=K)[0]
        lat.append(time.perf_counter() - t0)
        ids.append([common.row_number(h.id) for h in hits])
        scores.append([h.score for h in hits])
    store.settings = settings
    ex_ids, ex_scores = run["exact"]
    out = {
        "search_params": params,
        **common.pct(lat),
        **common.recall(ids, scores, ex_ids, ex_scores),
    }
    for kind in ("text", "image"):
        m = run["kinds"] == kind
        sub = common.recall(
            [g for g, k in zip(ids, m, strict=True) if k],
            [g for g, k in zip(scores, m, strict=True) if k],
            ex_ids[m],
            ex_scores[m],
        )
        out[f"recall_ties_{kind}"] = sub["recall_ties"]
    print(f"    {json.dumps(out)}", flush=True)
    return out


def cold_start(settings: Settings, run: dict) -> dict:
    """A fresh process opening the collection and answering (see ``COLD``)."""
    keep = {"uri", "collection", "index_type", "index_params", "search_params", "provider"}
    spec = {
        "settings": settings.model_dump(mode="json", include=keep)
        | {"embedded_idle_timeout": IDLE_TIMEOUT},
        "embedder": run["embedder"].name,
        "dim": run["embedder"].dim,
        "queries": str(run["queries_file"]),
        "field": run["field"],
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", COLD, json.dumps(spec)], capture_output=True, text=True
    )
    wall = round(time.perf_counter() - t0, 2)
    if proc.returncode != 0:
        raise SystemExit(f"cold-start process failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_wall_s": wall}


def end_to_end(settings: Settings, store: Store, run: dict) -> dict:
    """A text query through ``Searcher.search`` (embedding and search), and the same
    query's embedding alone, one query at a time."""
    mode = Mode.text2text if run["field"] == TEXT_FIELD else Mode.text2image
    embedder, texts = run["embedder"], run["texts"]
    searcher = Searcher(settings, store=store, embedder=embedder)
    for t in texts[:3]:
        searcher.search(t, mode=mode, k=K)
    total, embed = [], []
    for t in texts:
        t0 = time.perf_counter()
        searcher.search(t, mode=mode, k=K)
        total.append(time.perf_counter() - t0)
    for t in texts:
        t0 = time.perf_counter()
        embedder.embed_texts([t], query=True)
        embed.append(time.perf_counter() - t0)
    out = {"mode": mode.value, "total": common.pct(total), "embed_alone": common.pct(embed)}
    print(f"    end to end: {json.dumps(out)}", flush=True)
    return out


def run_option(kind: str, name: str, n: int, data: dict, run: dict, work: Path) -> dict:
    """Build one collection in a fresh store of ``kind`` and measure it."""
    index_type, index_params, searches = OPTIONS[name]
    base = work / f"{kind}-{n}-{name}"
    uri = f"embedded:{base}" if kind == "server" else str(base / "bench.db")
    settings = common.offline_settings(
        uri=uri,
        collection="bench",
        index_type=index_type,
        index_params=index_params,
        search_params=searches[-1],
        embedded_idle_timeout=IDLE_TIMEOUT,
    )
    shipped = Settings()
    is_default = (index_type, settings.effective_index_params, searches[-1]) == (
        shipped.index_type.value,
        shipped.effective_index_params,
        shipped.effective_search_params,
    )
    rec: dict[str, Any] = {"option": name, "index_type": index_type, "index_params": index_params}
    print(f"[{kind} {name}] n={n}", flush=True)
    emb = run["embedder"]
    feature_dim = emb.feature_dim if run["field"] == FEATURE_FIELD else 0
    try:
        if kind == "server":
            t0 = time.perf_counter()
            embedded.ensure_server(base, idle_timeout=IDLE_TIMEOUT, bin_cache=settings.cache_dir)
            rec["server_start_s"] = round(time.perf_counter() - t0, 1)
        store = Store(settings)
        store.open(embedder=emb.name, dim=emb.dim, feature_dim=feature_dim)
        rec["insert"] = common.fill(store, data, run["real"])
        if kind == "server":
            rec["after_insert"] = common.wait_indexed(store, n)
            served = rec["after_insert"]["index_served_s"]
            rec["to_indexed_s"] = round(rec["insert"]["insert_s"] + served, 1)
        else:  # Milvus Lite builds its indexes when the file is closed
            t0 = time.perf_counter()
            store.close()
            rec["close_s"] = round(time.perf_counter() - t0, 1)
            rec["to_indexed_s"] = round(rec["insert"]["insert_s"] + rec["close_s"], 1)
            rec["cold_start"] = cold_start(settings, run)
            store = Store(settings)
            store.open(embedder=emb.name, dim=emb.dim, create=False)
        print(f"    {json.dumps(rec)}", flush=True)
        rec["searches"] = [measure(store, settings, p, run) for p in searches]
        if is_default:
            rec["end_to_end"] = end_to_end(settings, store, run)
        if kind == "server":  # Milvus may have compacted and re-indexed meanwhile
            rec["index_progress_after"] = common.index_progress(store)
        store.close()
        if kind == "server":
            rec["cold_start"] = cold_start(settings, run)  # attaching to the running server
            info = embedded.status(base)
            if info is None:
                raise SystemExit(f"the server in {base} is not running")
            rec["server_rss"] = common.rss_mb(info.milvus_pid)
            if is_default:
                t0 = time.perf_counter()
                embedded.stop_server(base)
                rec["server_stop_s"] = round(time.perf_counter() - t0, 1)
                rec["cold_start_after_restart"] = cold_start(settings, run)  # starts it
        print(f"    cold: {json.dumps({k: v for k, v in rec.items() if 'cold' in k})}", flush=True)
    finally:
        if kind == "server":
            embedded.stop_server(base)
        shutil.rmtree(base, ignore_errors=True)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000], help="server")
    ap.add_argument("--lite-sizes", type=int, nargs="*", default=[10_000])
    ap.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    ap.add_argument("--field", default=IMAGE_FIELD, choices=list(DATA_KEY))
    ap.add_argument("--text-queries", type=int, default=100)
    ap.add_argument("--image-queries", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/bench-cache"), help="real vectors")
    ap.add_argument("--out-name", default="search")
    args = ap.parse_args()
    if args.sizes and not embedded.available():
        raise SystemExit(
            "the embedded server needs the 'milvus' package (pip install --no-deps "
            "milvus==2.3.5, Linux x86_64); or measure Lite only with --sizes (nothing)"
        )

    settings = common.offline_settings()
    embedder = get_embedder(settings)
    real = common.real_vectors(settings, args.cache)
    texts = common.text_queries(args.text_queries, args.seed)
    images = [
        load_image(p, max_pixels=settings.max_image_pixels).image
        for p in common.query_image_paths(args.image_queries)
    ]
    queries = query_vectors(embedder, args.field, texts, images)
    work = Path(tempfile.mkdtemp(prefix="bench-search-", dir="/tmp"))
    run: dict[str, Any] = {
        "embedder": embedder,
        "real": real,
        "field": args.field,
        "texts": texts,
        "queries": queries,
        "queries_file": work / "queries.npy",
        "kinds": np.array(["text"] * len(texts) + ["image"] * len(images)),
    }
    np.save(run["queries_file"], queries[:21])
    result: dict[str, Any] = {
        "benchmark": "search",
        "machine": common.machine_info(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "embedder": embedder.name,
        "field": args.field,
        "queries": {"text": len(texts), "image": len(images)},
        "real_images": len(real["image"]),
        "sizes": {},
    }
    key = DATA_KEY[args.field]
    try:
        for n in sorted(set(args.sizes) | set(args.lite_sizes)):
            fields = ("image", "text", "feature") if key == "feature" else ("image", "text")
            data = common.mixed(n, real, args.seed + n, fields)
            run["exact"] = common.exact_topk(data[key], queries)
            size: dict[str, Any] = {
                "data": data_shape(data[key], run["exact"][1]),
                "numpy_exact": numpy_exact(data[key], queries),
            }
            result["sizes"][str(n)] = size
            print(f"[n={n}] {json.dumps(size)}", flush=True)
            for kind, sizes in (("server", args.sizes), ("lite", args.lite_sizes)):
                if n in sizes:
                    size[kind] = []
                    for name in args.options:
                        size[kind].append(run_option(kind, name, n, data, run, work))
                        size[f"loadavg_after_{kind}"] = common.loadavg()
                        common.save_results(args.out_name, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {common.save_results(args.out_name, result)}")


if __name__ == "__main__":
    main()
