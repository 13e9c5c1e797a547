"""Near-duplicates: precision and recall of the groups ``mmsearch.duplicates`` reports, the
curve over thresholds, which vector separates copies from look-alikes, collapsing search
results, and the time at 10k and 100k items.

    python bench/duplicates.py                      # everything (about 10 min on 2 cores)
    python bench/duplicates.py --scale 10000        # a smaller timing part

Two generated sets, each indexed through the real pipeline (``MMSearch(...).index``, the
offline provider, a Milvus Lite file) in a temporary folder, never in the project:

- ``imagenet``: the 100 ``reverse_image_search`` photos as originals, and as distractors the
  100 ``imagenet_sample`` photos of the same classes (another lion for the lion);
- ``flickr``: 150 ``flickr8k_cn`` photos as originals and 150 others as distractors (people,
  dogs and scenes that look alike). By default these are the shuffled list's photos from
  300 on, which were not looked at while the method and its threshold were designed.

Each original gets five copies (resized to 50 %, JPEG quality 40, cropped by 5 % on each
side, rotated pixels with the EXIF tag that turns them upright, PNG) and every fourth an
exact byte copy. Truth: two files are duplicates when they come from the same original.
A reported pair is any two items of one reported group (groups are transitive, so this is
what a user sees). Writes ``bench/results/duplicates-<time>.json`` and
``duplicates-latest.json``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - bench/common.py

from mmsearch import MMSearch, Settings  # noqa: E402
from mmsearch import duplicates as dup
from mmsearch.images import decode_image
from mmsearch.schema import FEATURE_FIELD, Item, Row
from mmsearch.store import Store

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
RESULTS = ROOT / "bench" / "results"
VARIANTS = ("resize50", "jpeg40", "crop5", "exifrot", "png")
THRESHOLDS = np.round(np.arange(0.30, 0.951, 0.005), 3)
#: A threshold is "good" where precision and recall both reach this on a set.
GOOD = 0.98
HOUR_NS = 3600 * 10**9


# -- the generated sets ------------------------------------------------------------------------


def source_sets(
    n_imagenet: int, n_flickr: int, flickr_offset: int
) -> dict[str, tuple[list[Path], list[Path]]]:
    """(originals, distractors) per set, from the data sets' own lists."""
    rev = DATASETS / "reverse_image_search"
    sample = DATASETS / "imagenet_sample"
    with (rev / "reverse_image_search.csv").open() as fh:
        reference = [(rev / r["path"], r["label"]) for r in csv.DictReader(fh)][:n_imagenet]
    with (sample / "seed_class_overlap.csv").open() as fh:
        by_label = {r["seed_label"]: sample / r["sample_path"] for r in csv.DictReader(fh)}
    imagenet = ([p for p, _ in reference], [by_label[label] for _, label in reference])
    flickr = sorted((DATASETS / "flickr8k_cn" / "images").iterdir())
    random.Random(0).shuffle(flickr)
    chosen = flickr[flickr_offset : flickr_offset + 2 * n_flickr]
    if len(chosen) < 2 * n_flickr:
        raise SystemExit(f"flickr8k_cn has {len(flickr)} images; lower --flickr-offset")
    return {"imagenet": imagenet, "flickr": (chosen[:n_flickr], chosen[n_flickr:])}


def variants(image: Image.Image) -> list[tuple[str, Image.Image, dict[str, Any]]]:
    """The five copies of an upright image, with how each is saved."""
    w, h = image.size
    dx, dy = round(w * 0.05), round(h * 0.05)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": undoes ROTATE_90 below
    return [
        ("resize50", image.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS),
         {"format": "JPEG", "quality": 90}),
        ("jpeg40", image, {"format": "JPEG", "quality": 40}),
        ("crop5", image.crop((dx, dy, w - dx, h - dy)), {"format": "JPEG", "quality": 90}),
        ("exifrot", image.transpose(Image.Transpose.ROTATE_90),
         {"format": "JPEG", "quality": 90, "exif": exif.tobytes()}),
        ("png", image, {"format": "PNG"}),
    ]  # fmt: skip


def write_set(name: str, originals: list[Path], distractors: list[Path], root: Path) -> dict:
    """Write one set under ``root/name``; returns path -> (set, family, variant).

    Originals are dated an hour before their copies, as a camera's file precedes the copies
    made of it, so the representative can be checked.
    """
    folder = root / name
    folder.mkdir(parents=True)
    truth: dict[str, tuple[str, str, str]] = {}
    now = time.time_ns()
    for i, src in enumerate(originals):
        family = f"{name}-o{i:03d}"
        data = src.read_bytes()
        files = [(folder / f"{family}-orig{src.suffix.lower()}", data, "orig")]
        if i % 4 == 0:
            files.append((folder / "backup" / f"{family}-exact{src.suffix.lower()}", data, "exact"))
        image, _, _ = decode_image(data, max_pixels=10**9)
        for variant, copy, how in variants(image):
            buf = io.BytesIO()
            copy.save(buf, **how)
            ext = ".png" if how["format"] == "PNG" else ".jpg"
            files.append((folder / f"{family}-{variant}{ext}", buf.getvalue(), variant))
        for path, content, variant in files:
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(content)
            t = now - HOUR_NS if variant == "orig" else now
            os.utime(path, ns=(t, t))
            truth[str(path.resolve())] = (name, family, variant)
    for i, src in enumerate(distractors):
        path = folder / f"{name}-d{i:03d}{src.suffix.lower()}"
        shutil.copyfile(src, path)
        truth[str(path.resolve())] = (name, f"{name}-d{i:03d}", "distractor")
    return truth


def check_rotation(truth: dict[str, tuple[str, str, str]]) -> None:
    """The rotated copies must display as their originals do (upright, same size)."""
    by_family = {(f, v): p for p, (_, f, v) in truth.items()}
    for (family, variant), path in by_family.items():
        if variant == "exifrot":
            rot = decode_image(Path(path).read_bytes(), max_pixels=10**9)[0]
            orig = decode_image(Path(by_family[family, "orig"]).read_bytes(), max_pixels=10**9)[0]
            assert rot.size == orig.size, (path, rot.size, orig.size)


# -- precision and recall ----------------------------------------------------------------------


def labels(
    items: list[Item], truth: dict[str, tuple[str, str, str]]
) -> tuple[list[str], list[str]]:
    """Each item's set and family, by its stored path."""
    found = [truth[it.origin] for it in items]
    return [f[0] for f in found], [f[1] for f in found]


def labels_at(
    sims: np.ndarray, heads: np.ndarray, scan: np.ndarray, threshold: float
) -> np.ndarray:
    """A component label per item: the groups ``duplicates.components`` forms (exact copies
    through their head, near pairs among the scanned heads), from a precomputed similarity
    matrix so that a whole curve costs one matrix product (checked against the product's
    code in ``evaluate``)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(heads)
    sub = sims[np.ix_(scan, scan)]
    a, b = np.nonzero(np.triu(sub >= threshold, 1))
    rows = np.concatenate([scan[a], np.arange(n)])
    cols = np.concatenate([scan[b], heads])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def pr_from_labels(comp: np.ndarray, sets: list[str], families: list[str]) -> dict:
    """Precision and recall of the pairs inside the groups, per set and over all; a pair
    across the two sets counts (as wrong) in ``all`` only."""
    reported, correct, truth = Counter(), Counter(), Counter()
    for (_, s), n in Counter(zip(comp.tolist(), sets, strict=True)).items():
        reported[s] += n * (n - 1) // 2
    for n in Counter(comp.tolist()).values():
        reported["all"] += n * (n - 1) // 2
    for (_, fam), n in Counter(zip(comp.tolist(), families, strict=True)).items():
        correct[fam.split("-")[0]] += n * (n - 1) // 2
        correct["all"] += n * (n - 1) // 2
    for fam, n in Counter(families).items():
        truth[fam.split("-")[0]] += n * (n - 1) // 2
        truth["all"] += n * (n - 1) // 2
    return {
        s: {
            "precision": round(correct[s] / reported[s], 4) if reported[s] else 1.0,
            "recall": round(correct[s] / truth[s], 4) if truth[s] else 1.0,
            "reported_pairs": reported[s],
            "true_pairs": truth[s],
        }
        for s in truth
    }


class Curve:
    """Precision/recall of one representation at any threshold, from one matrix product."""

    def __init__(self, snapshot: dup.Snapshot, vectors: np.ndarray, sets, families) -> None:
        self.sims = vectors @ vectors.T
        self.heads = np.array(dup.exact_heads(snapshot.items))
        n = len(self.heads)
        self.scan = np.flatnonzero((self.heads == np.arange(n)) & snapshot.usable)
        self.sets, self.families = sets, families

    def at(self, threshold: float) -> dict:
        comp = labels_at(self.sims, self.heads, self.scan, threshold)
        return {"threshold": float(threshold), **pr_from_labels(comp, self.sets, self.families)}

    def points(self) -> list[dict]:
        return [self.at(float(t)) for t in THRESHOLDS]


def worst(point: dict, names: list[str]) -> float:
    """The weaker of precision and recall over the sets: both targets must hold."""
    return min(min(point[s]["precision"], point[s]["recall"]) for s in names)


def plateau(points: list[dict], names: list[str]) -> dict:
    """The best point by min(precision, recall) over the sets, and the widest run of
    thresholds where both stay >= GOOD: its centre is the threshold that generalises."""
    best = max(points, key=lambda p: worst(p, names))
    runs, run = [], []
    for p in points:
        if worst(p, names) >= GOOD:
            run.append(p["threshold"])
        elif run:
            runs.append(run)
            run = []
    if run:
        runs.append(run)
    widest = max(runs, key=len, default=[])
    return {
        "best_threshold": best["threshold"],
        "best_min_pr": worst(best, names),
        "good_from": widest[0] if widest else None,
        "good_to": widest[-1] if widest else None,
        "centre": round((widest[0] + widest[-1]) / 2, 3) if widest else best["threshold"],
    }


def weighted(vector_part: np.ndarray, hash_part: np.ndarray, weight: float) -> np.ndarray:
    """Copy vectors from unit vector and hash parts with another weight."""
    return np.concatenate(
        [np.sqrt(weight) * vector_part, np.sqrt(1 - weight) * hash_part], axis=1
    ).astype(np.float32)


def parts(snapshot: dup.Snapshot) -> tuple[np.ndarray, np.ndarray]:
    """The unit vector part and the +-1/8 hash part of a snapshot's copy vectors."""
    w = snapshot.weight
    return snapshot.vectors[:, :-64] / np.sqrt(w), snapshot.vectors[:, -64:] / np.sqrt(1 - w)


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# -- which vector ------------------------------------------------------------------------------


def penultimate(items: list[Item], settings: Settings) -> np.ndarray:
    """The offline classifier's penultimate features (1280-d, not stored today) of each
    item's file, decoded as ingest decodes it: the candidate worth storing."""
    from mmsearch.providers.offline import OfflineModels

    models = OfflineModels.shared(settings.cache_dir)
    out = []
    for start in range(0, len(items), 32):
        batch = items[start : start + 32]
        images = [
            decode_image(Path(it.origin).read_bytes(), max_pixels=settings.max_image_pixels)[0]
            for it in batch
        ]
        out.append(models.classify(images)[1])
    return np.concatenate(out)


def representations(snapshot: dup.Snapshot, pen: np.ndarray | None) -> dict[str, np.ndarray]:
    """Copy vectors for every candidate: stored vectors alone, the hash alone, and mixes."""
    vec, bits = parts(snapshot)
    probs, proj = unit(vec[:, :1000]), unit(vec[:, 1000:])
    zero = np.zeros_like(bits)
    reps = {
        "image_feature (stored, 1384-d)": vec,
        "image_feature probability part (what image->image ranks by)": probs,
        "image_feature projected part (384-d)": proj,
        "dhash alone (64 bits)": weighted(np.zeros_like(vec[:, :1]), bits, 0.0),
    }
    for w in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
        reps[f"{w:g} image_feature + {1 - w:g} dhash"] = weighted(vec, bits, w)
    reps["0.25 projected part + 0.75 dhash"] = weighted(proj, bits, 0.25)
    if pen is not None:
        pen_unit = unit(pen) * snapshot.usable[:, None]
        reps["penultimate (not stored, 1280-d)"] = weighted(pen_unit, zero, 1.0)
        for w in (0.3, 0.5):
            reps[f"{w:g} penultimate + {1 - w:g} dhash"] = weighted(pen_unit, bits, w)
    return reps


def compare(snapshot: dup.Snapshot, reps: dict[str, np.ndarray], sets, families) -> dict:
    """For each candidate: its plateau over both sets, and P/R at the plateau's centre."""
    names = ["imagenet", "flickr"]
    out = {}
    for label, vectors in reps.items():
        c = Curve(snapshot, vectors, sets, families)
        pl = plateau(c.points(), names)
        at = c.at(pl["centre"])
        out[label] = {**pl, "at_centre": {s: at[s] for s in names}}
        print(f"{label:60s} {pl}", flush=True)
    return out


def cross_validate(c: Curve, points: list[dict]) -> dict:
    """Pick the threshold on one set (its plateau's centre), measure it on the other."""
    out = {}
    for fit, test in (("imagenet", "flickr"), ("flickr", "imagenet")):
        chosen = plateau(points, [fit])["centre"]
        out[f"fit on {fit}, test on {test}"] = {"threshold": chosen, test: c.at(chosen)[test]}
    return out


def recall_by_variant(groups: list[dup.Group], truth: dict) -> dict[str, float]:
    """For each kind of copy, the share grouped with its original: which edits are missed."""
    group_of = {it.origin: n for n, g in enumerate(groups) for it in g.items}
    originals = {f: p for p, (_, f, v) in truth.items() if v == "orig"}
    found: Counter = Counter()
    total: Counter = Counter()
    for path, (_, family, variant) in truth.items():
        if variant in ("orig", "distractor"):
            continue
        total[variant] += 1
        orig = group_of.get(originals[family])
        found[variant] += orig is not None and group_of.get(path) == orig
    return {v: round(found[v] / total[v], 4) for v in total}


def representatives(groups: list[dup.Group], truth: dict) -> dict:
    """How often a group that holds an original shows the original as its representative."""
    with_orig = [g for g in groups if any(truth[it.origin][2] == "orig" for it in g.items)]
    right = sum(truth[g.representative.origin][2] == "orig" for g in with_orig)
    return {"groups_with_original": len(with_orig), "original_is_representative": right}


# -- collapsing search results -----------------------------------------------------------------


def collapse_eval(mm: MMSearch, truth: dict, queries: list[str], k: int) -> dict:
    """Search each original image->image, collapse the hits, and count what went wrong:
    copies left as separate entries, and entries that swallowed another photo."""
    cold, warm, separate, merged, entries, hits_n = [], [], 0, 0, 0, 0
    for origin in queries:
        hits = mm.search(Path(origin), mode="image2image", k=k)
        dup.clear_hash_cache()
        started = time.perf_counter()
        collapsed = dup.collapse_hits(mm.store, hits)
        cold.append(time.perf_counter() - started)
        started = time.perf_counter()
        dup.collapse_hits(mm.store, hits)
        warm.append(time.perf_counter() - started)
        heads = [truth[c.hit.origin][1] for c in collapsed]
        separate += sum(n - 1 for n in Counter(heads).values())
        merged += sum(
            truth[h.origin][1] != truth[c.hit.origin][1] for c in collapsed for h in c.copies
        )
        entries += len(collapsed)
        hits_n += len(hits)
    return {
        "queries": len(queries),
        "k": k,
        "hits": hits_n,
        "entries_after_collapse": entries,
        "copies_left_separate": separate,
        "wrong_merges": merged,
        "ms_first_call_p50": round(1000 * float(np.median(cold)), 2),
        "ms_first_call_p95": round(1000 * float(np.percentile(cold, 95)), 2),
        "ms_hashes_cached_p50": round(1000 * float(np.median(warm)), 2),
        "ms_hashes_cached_p95": round(1000 * float(np.percentile(warm, 95)), 2),
    }


# -- time at scale -----------------------------------------------------------------------------


def synthetic(snapshot: dup.Snapshot, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows like a photo library's: each vector part a mix of two real ones (a in
    [0.3, 0.7]) and each hash a third photo's with 8-24 bits flipped, so that rows are
    distinct yet as clustered as real photos; then 5 % of the rows replaced by copies of
    others (vector 0.95/0.05 with a random real one, 0-6 hash bits flipped)."""
    vec, bits = parts(snapshot)
    real = np.flatnonzero(snapshot.usable)
    rng = np.random.default_rng(seed)
    a, b, c = (rng.choice(real, n) for _ in range(3))
    alpha = rng.uniform(0.3, 0.7, (n, 1)).astype(np.float32)
    v = unit(alpha * vec[a] + (1 - alpha) * vec[b])
    h = _flip(bits[c], rng, 8, 24)
    copies = rng.choice(n, n // 20, replace=False)
    sources = rng.choice(n, n // 20)
    v[copies] = unit(0.95 * v[sources] + 0.05 * vec[rng.choice(real, len(copies))])
    h[copies] = _flip(h[sources], rng, 0, 6)
    return v, h


def _flip(bits: np.ndarray, rng: np.random.Generator, low: int, high: int) -> np.ndarray:
    """Each row with ``low``..``high`` of its 64 bits flipped."""
    counts = rng.integers(low, high + 1, len(bits))
    order = np.argsort(rng.random(bits.shape), axis=1)
    flips = order < counts[:, None]
    return np.where(flips, -bits, bits).astype(np.float32)


def scan_time(snapshot: dup.Snapshot, n: int) -> dict:
    """``find_groups`` on ``n`` synthetic items: the pair scan, union-find and groups."""
    v, h = synthetic(snapshot, n, seed=n)
    vectors = weighted(v, h, dup.VECTOR_WEIGHT)
    del v, h
    items = [Item(id=f"{i:08d}", origin=f"/synthetic/{i}.jpg") for i in range(n)]
    fake = dup.Snapshot(items, vectors, np.ones(n, bool))
    started = time.perf_counter()
    pairs = len(dup.similar_pairs(vectors, dup.DEFAULT_THRESHOLD)[0])
    scan = time.perf_counter() - started
    started = time.perf_counter()
    groups = dup.find_groups(fake, dup.DEFAULT_THRESHOLD)
    seconds = time.perf_counter() - started
    return {
        "n": n,
        "dims": int(vectors.shape[1]),
        "similar_pairs_seconds": round(scan, 2),
        "pairs": pairs,
        "find_groups_seconds": round(seconds, 2),
        "groups": len(groups),
        "grouped_items": sum(len(g.items) for g in groups),
    }


def store_time(mm: MMSearch, snapshot: dup.Snapshot, n: int, folder: Path) -> dict:
    """A Milvus Lite collection of ``n`` rows mixed from the real ones: the time to read it
    back for a scan, and what searching every item's neighbours in Milvus would cost."""
    meta = mm.store.meta() or {}
    real = mm.store.get([it.id for it in snapshot.items[:300]], with_vectors=True)
    settings = mm.settings.model_copy(update={"uri": str(folder / f"scale{n}.db")})
    rng = np.random.default_rng(n)
    with Store(settings) as store:
        store.open(embedder=meta["embedder"], dim=meta["dim"], feature_dim=meta["feature_dim"])
        started = time.perf_counter()
        for start in range(0, n, 1000):
            store.upsert([_row(real, rng, i) for i in range(start, min(n, start + 1000))])
        fill = time.perf_counter() - started
        started = time.perf_counter()
        snap = dup.load_snapshot(store)
        read = time.perf_counter() - started
        queries = snap.vectors[:200, :-64] / np.sqrt(snap.weight)
        started = time.perf_counter()
        for q in range(0, len(queries), 50):
            store.search(queries[q : q + 50], field=FEATURE_FIELD, k=16)
        per_query = (time.perf_counter() - started) / len(queries)
    return {
        "n": n,
        "fill_seconds": round(fill, 1),
        "read_for_scan_seconds": round(read, 1),
        "read_stages": {k: round(v, 2) for k, v in snap.stages.items()},
        "milvus_topk16_ms_per_query": round(1000 * per_query, 2),
        "milvus_all_items_seconds_extrapolated": round(per_query * n, 1),
    }


def _row(real: list[dict], rng: np.random.Generator, i: int) -> Row:
    a, b = real[rng.integers(len(real))], real[rng.integers(len(real))]
    alpha = float(rng.uniform(0.5, 1.0))

    def mix(name: str) -> np.ndarray:
        x = alpha * np.asarray(a[name], np.float32) + (1 - alpha) * np.asarray(b[name])
        return x / np.linalg.norm(x)

    item = Item(id=f"scale-{i:08d}", origin=f"/synthetic/{i}.jpg", content_hash=f"{i:032x}")
    return Row(item, mix("image_embedding"), mix("text_embedding"), mix(FEATURE_FIELD))


# -- main --------------------------------------------------------------------------------------


def save(result: dict[str, Any]) -> Path:
    """``bench/results/duplicates-<time>.json`` and ``duplicates-latest.json``."""
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    text = json.dumps(result, indent=1, ensure_ascii=False, default=str)
    path = RESULTS / f"duplicates-{stamp}.json"
    path.write_text(text, "utf-8")
    (RESULTS / "duplicates-latest.json").write_text(text, "utf-8")
    return path


def check_fast_path(snapshot: dup.Snapshot, c: Curve) -> None:
    """The bench's curve must group exactly as ``duplicates.components`` does."""
    for t in (dup.DEFAULT_THRESHOLD - 0.1, dup.DEFAULT_THRESHOLD, dup.DEFAULT_THRESHOLD + 0.1):
        product, _ = dup.components(snapshot.items, snapshot.vectors, snapshot.usable, t)
        comp = labels_at(c.sims, c.heads, c.scan, t)
        fast = Counter(comp.tolist())
        mine = {frozenset(np.flatnonzero(comp == lab).tolist()) for lab, n in fast.items() if n > 1}
        assert mine == {frozenset(g) for g in product}, f"fast path differs at {t}"


def evaluate(mm: MMSearch, truth: dict, args: argparse.Namespace) -> dict[str, Any]:
    """Everything measured on the indexed sets."""
    dup.clear_hash_cache()
    report = dup.find_duplicates(mm.store)
    snapshot = dup.load_snapshot(mm.store)
    sets, families = labels(snapshot.items, truth)
    default_curve = Curve(snapshot, snapshot.vectors, sets, families)
    check_fast_path(snapshot, default_curve)
    points = default_curve.points()
    default = default_curve.at(dup.DEFAULT_THRESHOLD)
    pen = penultimate(snapshot.items, mm.settings) if args.penultimate else None
    hashed = len({it.content_hash for it in snapshot.items})  # exact copies: hashed once
    queries = [it.origin for it in snapshot.items if truth[it.origin][2] == "orig"]
    return {
        "find_duplicates": {
            "items": report.items,
            "groups": len(report.groups),
            "duplicates": report.duplicates,
            "failed": report.failed,
            "seconds": round(report.seconds, 2),
            "stages": report.stages,
            "hash_ms_per_file": round(1000 * report.stages["hash files"] / hashed, 2),
            "kinds": dict(Counter(g.kind for g in report.groups)),
        },
        "default_threshold": dup.DEFAULT_THRESHOLD,
        "vector_weight": dup.VECTOR_WEIGHT,
        "at_default": {k: v for k, v in default.items() if k != "threshold"},
        "plateau": plateau(points, ["imagenet", "flickr"]),
        "cross_validation": cross_validate(default_curve, points),
        "representatives": representatives(report.groups, truth),
        "recall_by_variant": recall_by_variant(report.groups, truth),
        "candidates": compare(snapshot, representations(snapshot, pen), sets, families),
        "collapse": collapse_eval(mm, truth, queries[:: max(1, len(queries) // 40)], k=30),
        "curve": points,
    }


def main() -> None:
    """Generate the sets, index them, measure, and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--flickr", type=int, default=150, help="flickr originals (and distractors)"
    )
    parser.add_argument("--imagenet", type=int, default=100, help="imagenet originals (<= 100)")
    parser.add_argument("--flickr-offset", type=int, default=300)
    parser.add_argument("--scale", default="10000,100000", help="sizes for the timing part")
    parser.add_argument("--no-penultimate", dest="penultimate", action="store_false")
    parser.add_argument("--cache-dir", type=Path, default=Settings().cache_dir)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "machine": common.machine_info(),
        "args": {**vars(args), "cache_dir": "..."},
    }
    with tempfile.TemporaryDirectory(prefix="mmsearch-duplicates-") as tmp:
        root = Path(tmp) / "photos"
        truth: dict[str, tuple[str, str, str]] = {}
        for name, (originals, distractors) in source_sets(
            args.imagenet, args.flickr, args.flickr_offset
        ).items():
            truth |= write_set(name, originals, distractors, root)
        check_rotation(truth)
        result["files"] = dict(Counter(f"{s}:{v}" for s, _, v in truth.values()))
        settings = Settings(
            uri=str(Path(tmp) / "dup.db"), collection="dup", cache_dir=args.cache_dir
        )
        with MMSearch(settings=settings) as mm:
            started = time.perf_counter()
            indexed = mm.index(root)
            result["index"] = {"indexed": indexed.indexed, "failed": indexed.failed,
                               "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
            print("indexed", result["index"], flush=True)
            result |= evaluate(mm, truth, args)
            print(json.dumps({k: result[k] for k in ("at_default", "plateau")}, indent=1))
            sizes = [int(s) for s in args.scale.split(",") if s]
            result["scale_scan"] = [scan_time(dup.load_snapshot(mm.store), n) for n in sizes]
            print("scan", result["scale_scan"], flush=True)
            snapshot = dup.load_snapshot(mm.store)
            result["scale_store"] = [store_time(mm, snapshot, n, Path(tmp)) for n in sizes]
            print("store", result["scale_store"], flush=True)
    print("wrote", save(result))


if __name__ == "__main__":
    main()
