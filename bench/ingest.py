"""Ingest throughput: the whole pipeline vs the bare models, same images, same run.

The figure is the ratio pipeline / bare: how much of the models' speed survives reading,
decoding, resizing, describing and writing to Milvus. The bare figure runs the offline
provider's two models (classifier on pre-decoded, pre-resized tensors, with the ConSE mix
and the caption projection; e5 on the descriptions) with nothing else around them.

    python bench/ingest.py --n 300 [--batch-size 32] [--workers 2] [--store embedded|lite]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from mmsearch import MMSearch, Settings, embedded
from mmsearch.images import load_image
from mmsearch.providers.offline import OfflineModels, preprocess

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT.parent / "shared" / "datasets" / "imagenet_sample" / "images"
RESULTS = ROOT / "bench" / "results"


def machine() -> dict[str, object]:
    return {
        "cpus": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "pymilvus": version("pymilvus"),
        "milvus_lite": version("milvus-lite"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def bare(models: OfflineModels, paths: list[Path], batch_size: int) -> float:
    """images/s of the models alone: tensors ready, no I/O, no store."""
    images = [load_image(p, max_pixels=10**9).image for p in paths]
    batches = [
        np.stack([preprocess(im) for im in images[i : i + batch_size]])
        for i in range(0, len(images), batch_size)
    ]
    from mmsearch.config import Language
    from mmsearch.providers.offline import OfflineDescriber

    describer = OfflineDescriber(models, Language.zh)
    model = models.classifier
    started = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            pooled = model._avg_pooling(model.extract_features(torch.from_numpy(batch))).flatten(1)
            probs = torch.softmax(model._fc(pooled), -1).numpy()
            models.conse(probs)
            models.image_features(probs, pooled.numpy())
            texts = [describer._describe_one(p).text for p in probs]
            models.text_model.passage(texts)
    return len(paths) / (time.perf_counter() - started)


def pipeline(paths: list[Path], batch_size: int, workers: int, cache: Path, store: str) -> dict:
    """The whole pipeline into a fresh collection. With the embedded server (the default
    store) the server is started before timing, as it runs across commands; the final
    flush is timed."""
    with tempfile.TemporaryDirectory() as tmp:
        if store == "embedded":
            base = Path(tmp) / "milvus"
            embedded.ensure_server(base, idle_timeout=0, bin_cache=cache)
            uri = f"embedded:{base}"
        else:
            uri = str(Path(tmp) / "bench.db")
        settings = Settings(uri=uri, batch_size=batch_size, workers=workers, cache_dir=cache)
        try:
            with MMSearch(settings=settings) as mm:
                from mmsearch.sources import SourceItem

                report = mm.index([SourceItem(p, "x") for p in paths])
        finally:
            if store == "embedded":
                embedded.stop_server(base)
    return {
        "images_per_second": report.indexed / report.seconds,
        "seconds": report.seconds,
        "stage_seconds": dict(report.stages),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--store",
        choices=["embedded", "lite"],
        default="embedded" if embedded.available() else "lite",
        help="where the pipeline writes (default: the default store)",
    )
    args = ap.parse_args()
    paths = sorted(IMAGES.iterdir())[: args.n]
    cache = Path.home() / ".cache" / "mmsearch"
    models = OfflineModels.shared(cache)
    models.prototypes  # noqa: B018 - warm: computed once, cached on disk
    bare(models, paths[:32], args.batch_size)  # warm-up
    runs = []
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        b = bare(models, paths, args.batch_size)
        p = pipeline(paths, args.batch_size, args.workers, cache, args.store)
        runs.append({"bare_images_per_second": b, **p, "ratio": p["images_per_second"] / b})
    result = {
        "benchmark": "ingest",
        "images": len(paths),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "store": args.store,
        "machine": machine(),
        "runs": runs,
        "ratio_median": float(np.median([r["ratio"] for r in runs])),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    for name in (f"ingest-{stamp}.json", "ingest-latest.json"):
        (RESULTS / name).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
