"""Ingest throughput, two ratios, each measured side by side in one run.

1. Pipeline / bare models: how much of the models' speed survives reading, decoding,
   resizing, describing and writing to Milvus. The bare figure runs the offline provider's
   own steps (``lite_forward`` on pre-decoded, pre-resized tensors, the ConSE mix, the
   ``image_feature`` vector, the describer, e5 on the descriptions) with nothing around
   them; the pipeline is ``MMSearch.index`` on the same images into a fresh collection.
   Interleaved, so drift hits both alike. Besides wall time, CPU seconds per image (this
   process, plus the Milvus server for the pipeline), which other jobs disturb less.
2. Re-indexing an unchanged folder (all of ``imagenet_sample``): the default run skips each
   file by its stored size and modification time without reading it; the forced run first
   clears the stored size/mtime (``Store.set_file_facts``), so every file is read and
   hashed again (then found unchanged, and its size/mtime written back). Interleaved.

3. Metadata on / off: ``MMSearch.index`` on copies of the images that carry the EXIF a
   phone writes (written by this bench: DateTimeOriginal with OffsetTimeOriginal, GPS of
   24 real cities, Make/Model of 8 cameras), into a fresh collection each run, with
   metadata as shipped (``decode_photo`` reads the facts, the gazetteer names the GPS
   position's place, the row stores them) and without it. There is no setting that turns
   metadata off: "without" means that for the duration of those runs this bench patches
   what ``mmsearch.ingest`` looks up, ``decode_photo`` becoming ``decode_image`` (the same
   decoder, minus ``read_facts``) returning empty ``PhotoFacts``, and ``Reader._locate`` a
   no-op (no gazetteer); the row then stores the facts' defaults. The gazetteer is loaded
   once before timing (its load time is reported), as a running process has it loaded.
   Interleaved, the order alternating each repeat; images/s, CPU seconds per image (this
   process plus the Milvus server) and the ratio with / without (median over repeats).
   Beforehand the facts step alone (``facts_step``): CPU ms per image of decoding with
   facts and place against decoding without, on the same bytes in memory.

OCR is off (``Settings(ocr=False)``): reading text is a pass of its own after ingest, not
part of these measurements. The store is the default one, the embedded Milvus server,
started before timing (it runs across commands); ``--store lite`` uses a Milvus Lite file.
``--parts`` runs some of the parts; ``ingest-latest.json`` then keeps the other parts'
numbers from the earlier file that had them (``part_files`` names it).

    python bench/ingest.py --n 300 --repeats 3
    python bench/ingest.py --parts metadata --n 200 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image
from PIL.ExifTags import GPS, IFD, Base
from PIL.TiffImagePlugin import IFDRational

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - bench/common.py

from mmsearch import MMSearch, Settings, embedded  # noqa: E402
from mmsearch.images import DecodedPhoto, decode_image, decode_photo, load_image  # noqa: E402
from mmsearch.ingest import Reader, photo_facts  # noqa: E402
from mmsearch.metadata import PhotoFacts  # noqa: E402
from mmsearch.places import Gazetteer  # noqa: E402
from mmsearch.providers import get_describer, get_embedder  # noqa: E402
from mmsearch.providers.base import ImageBatch  # noqa: E402
from mmsearch.providers.offline import (  # noqa: E402
    CLASSIFIED,
    CONSE_TEMPERATURE,
    OfflineModels,
    lite_forward,
    preprocess,
)
from mmsearch.sources import SourceItem  # noqa: E402

IMAGES = common.DATASETS / "imagenet_sample" / "images"


def bare(settings: Settings, paths: list[Path], batch_size: int) -> tuple[float, float]:
    """images/s of the models alone (tensors ready, no I/O, no store), and CPU s/image."""
    models = OfflineModels.shared(settings.cache_dir)
    embedder, describer = get_embedder(settings), get_describer(settings)
    images = [load_image(p, max_pixels=settings.max_image_pixels).image for p in paths]
    batches = [
        np.stack([preprocess(im) for im in images[i : i + batch_size]])
        for i in range(0, len(images), batch_size)
    ]
    started, cpu = time.perf_counter(), common.cpu_seconds()
    with torch.inference_mode():
        for batch in batches:
            logits, pooled = lite_forward(models.classifier, torch.from_numpy(batch))
            probs = torch.softmax(logits / CONSE_TEMPERATURE, -1).numpy()
            pooled = pooled.numpy()
            models.conse(probs)
            models.image_features(probs, pooled)
            # The describer takes the classification from the batch, as in ingest.
            descriptions = describer.describe(ImageBatch([], {CLASSIFIED: (probs, pooled)}))
            embedder.embed_texts([d.text for d in descriptions], query=False)
    wall, cpu = time.perf_counter() - started, common.cpu_seconds() - cpu
    return len(paths) / wall, cpu / len(paths)


def server_cpu(settings: Settings) -> float:
    """CPU seconds of the embedded Milvus so far (0 for Lite, which runs in this process)."""
    info = embedded.status(embedded.base_dir_of(settings.uri)) if settings.is_embedded else None
    return common.cpu_seconds(info.milvus_pid) if info else 0.0


def pipeline(settings: Settings, paths: list[Path], *, count_facts: bool = False) -> dict:
    """``MMSearch.index`` on the images, into a fresh collection (dropped afterwards);
    CPU time of this process and of the Milvus server. ``count_facts``: also how many
    stored rows have a date, a place and a camera (read after timing)."""
    counts = {}
    with MMSearch(settings=settings) as mm:
        mm.store.exists()  # connect (and load the models) before timing
        mm.embedder.embed_texts(["warm"], query=False)
        cpu, milvus = common.cpu_seconds(), server_cpu(settings)
        report = mm.index([SourceItem(p, "") for p in paths])
        cpu, milvus = common.cpu_seconds() - cpu, server_cpu(settings) - milvus
        if count_facts:
            items = list(mm.store.iter_items())
            counts = {
                "rows": len(items),
                "with_exif_date": sum(it.fact("taken_at_source") == "exif" for it in items),
                "with_city": sum(bool(it.fact("place_city")) for it in items),
                "with_camera": sum(bool(it.fact("camera_model")) for it in items),
            }
        mm.store.drop()
    if report.failed:
        raise SystemExit(f"{report.failed} images failed: {report.as_dict()}")
    return {
        "images_per_second": round(report.indexed / report.seconds, 2),
        "cpu_s_per_image": round((cpu + milvus) / report.indexed, 4),
        "milvus_cpu_s": round(milvus, 2),
        "seconds": round(report.seconds, 2),
        "stage_seconds": {k: round(v, 2) for k, v in report.stages.items()},
        **({"stored_facts": counts} if count_facts else {}),
    }


def reindex(settings: Settings, repeats: int) -> dict:
    """Index the folder once, then time re-indexing it unchanged: skipped by size+mtime,
    and forced to re-read and re-hash every file. Interleaved."""
    runs = []
    with MMSearch(settings=settings) as mm:
        first = mm.index(IMAGES)
        ids = [it.id for it in mm.store.iter_items()]
        known_s = [0.0]  # time in Store.known_files (ingest asks it once per batch)
        inner = mm.store.known_files

        def timed_known(batch_ids):
            t0 = time.perf_counter()
            try:
                return inner(batch_ids)
            finally:
                known_s[0] += time.perf_counter() - t0

        mm.store.known_files = timed_known  # type: ignore[method-assign]
        for _ in range(repeats):
            known_s[0] = 0.0
            skip = mm.index(IMAGES)
            skip_known = known_s[0]
            mm.store.set_file_facts({i: (0, 0) for i in ids})  # forget size and mtime
            known_s[0] = 0.0
            forced = mm.index(IMAGES)
            for r in (skip, forced):
                if r.unchanged != len(ids) or r.indexed or r.failed:
                    raise SystemExit(f"the folder did not re-index as unchanged: {r.as_dict()}")
            runs.append(
                {
                    "skip_s": round(skip.seconds, 3),
                    "skip_known_files_s": round(skip_known, 3),
                    "forced_rehash_s": round(forced.seconds, 3),
                    "forced_known_files_s": round(known_s[0], 3),
                    "forced_stage_seconds": {k: round(v, 3) for k, v in forced.stages.items()},
                    "loadavg": common.loadavg(),
                    "ratio_forced_over_skip": round(forced.seconds / skip.seconds, 1),
                }
            )
            print(json.dumps(runs[-1]), flush=True)
        mm.store.drop()
    return {
        "images": len(ids),
        "first_index": {
            "seconds": round(first.seconds, 1),
            "images_per_second": round(first.images_per_second, 2),
        },
        "runs": runs,
        "ratio_median": float(np.median([r["ratio_forced_over_skip"] for r in runs])),
    }


#: (name, latitude, longitude, UTC offset the camera writes): real cities on every continent.
CITIES = [
    ("Paris", 48.8566, 2.3522, "+02:00"),
    ("Tokyo", 35.6762, 139.6503, "+09:00"),
    ("Beijing", 39.9042, 116.4074, "+08:00"),
    ("Shanghai", 31.2304, 121.4737, "+08:00"),
    ("Hangzhou", 30.2741, 120.1551, "+08:00"),
    ("Chengdu", 30.5728, 104.0668, "+08:00"),
    ("New York", 40.7128, -74.0060, "-04:00"),
    ("San Francisco", 37.7749, -122.4194, "-07:00"),
    ("Vancouver", 49.2827, -123.1207, "-07:00"),
    ("Mexico City", 19.4326, -99.1332, "-06:00"),
    ("Rio de Janeiro", -22.9068, -43.1729, "-03:00"),
    ("Buenos Aires", -34.6037, -58.3816, "-03:00"),
    ("London", 51.5074, -0.1278, "+01:00"),
    ("Rome", 41.9028, 12.4964, "+02:00"),
    ("Reykjavik", 64.1466, -21.9426, "+00:00"),
    ("Istanbul", 41.0082, 28.9784, "+03:00"),
    ("Moscow", 55.7558, 37.6173, "+03:00"),
    ("Cairo", 30.0444, 31.2357, "+02:00"),
    ("Nairobi", -1.2921, 36.8219, "+03:00"),
    ("Cape Town", -33.9249, 18.4241, "+02:00"),
    ("Mumbai", 19.0760, 72.8777, "+05:30"),
    ("Kathmandu", 27.7172, 85.3240, "+05:45"),
    ("Singapore", 1.3521, 103.8198, "+08:00"),
    ("Sydney", -33.8688, 151.2093, "+10:00"),
]
CAMERAS = [
    ("Apple", "iPhone 15 Pro"),
    ("samsung", "SM-S918B"),
    ("Google", "Pixel 8"),
    ("HUAWEI", "ALN-AL00"),
    ("Canon", "Canon EOS R5"),
    ("SONY", "ILCE-7M4"),
    ("NIKON CORPORATION", "NIKON Z 6_2"),
    ("FUJIFILM", "X-T5"),
]


def _dms(value: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round((value - degrees - minutes / 60) * 3600 * 100)
    return IFDRational(degrees), IFDRational(minutes), IFDRational(seconds, 100)


def phone_exif(taken: datetime, offset: str, lat: float, lon: float, make: str, model: str):
    """EXIF as a phone writes it (as tests/photos.py builds it): camera, date with offset
    in the Exif IFD, position in the GPS IFD."""
    ex = Image.Exif()
    ex[Base.Orientation] = 1
    ex[Base.Make], ex[Base.Model] = make, model
    main = ex.get_ifd(IFD.Exif)
    main[Base.DateTimeOriginal] = taken.strftime("%Y:%m:%d %H:%M:%S")
    main[Base.OffsetTimeOriginal] = offset
    ex.get_ifd(IFD.GPSInfo).update(
        {
            GPS.GPSLatitudeRef: "N" if lat >= 0 else "S",
            GPS.GPSLatitude: _dms(lat),
            GPS.GPSLongitudeRef: "E" if lon >= 0 else "W",
            GPS.GPSLongitude: _dms(lon),
        }
    )
    return ex


def exif_photos(paths: list[Path], folder: Path, seed: int = 0) -> list[Path]:
    """Copies of the images as JPEGs carrying a phone's EXIF: cities, cameras and dates
    (2018-2025, any hour) vary from photo to photo; positions within ~5 km of the centre."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    out = []
    for i, src in enumerate(paths):
        _, lat, lon, offset = CITIES[i % len(CITIES)]
        make, model = CAMERAS[i % len(CAMERAS)]
        taken = datetime(2018, 1, 1) + timedelta(seconds=int(rng.integers(0, 8 * 365 * 86400)))
        lat, lon = lat + rng.uniform(-0.04, 0.04), lon + rng.uniform(-0.04, 0.04)
        target = folder / f"{src.stem}.jpg"
        with Image.open(src) as im:
            tags = phone_exif(taken, offset, lat, lon, make, model)
            im.convert("RGB").save(target, quality=90, exif=tags.tobytes())
        out.append(target)
    return out


def _decode_without_facts(data: bytes, *, max_pixels: int, mtime: float | None = None, **kw):
    """``decode_photo`` with metadata reading switched off: the same decoder
    (``decode_image``), empty facts."""
    image, width, height = decode_image(data, max_pixels=max_pixels, **kw)
    return DecodedPhoto(image, width, height, PhotoFacts())


def without_metadata():
    """What "without" means: ingest's facts step replaced while the context is open."""
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch("mmsearch.ingest.decode_photo", _decode_without_facts))
    stack.enter_context(mock.patch.object(Reader, "_locate", lambda self, facts: None))
    return stack


def facts_step_cpu(settings: Settings, photos: list[Path], repeats: int) -> dict:
    """The facts step alone, in CPU ms per image of this thread (load from other jobs
    disturbs it little): ingest's decode with facts, place and ``photo_facts`` against the
    decode without, on the same bytes in memory, interleaved."""
    data = [p.read_bytes() for p in photos]
    reader = Reader(settings)
    spent: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(repeats):
        for mode in spent:
            t0 = time.thread_time()
            for d in data:
                if mode == "with":
                    photo = decode_photo(d, max_pixels=settings.max_image_pixels)
                    photo_facts(photo.facts, reader._locate(photo.facts))
                else:
                    decode_image(d, max_pixels=settings.max_image_pixels)
            spent[mode].append((time.thread_time() - t0) * 1000 / len(data))
    decode = {m: round(float(np.median(v)), 3) for m, v in spent.items()}
    return {
        "decode_cpu_ms_per_image": decode,
        "facts_cpu_ms_per_image": round(decode["with"] - decode["without"], 3),
    }


def metadata(settings: Settings, paths: list[Path], work: Path, repeats: int) -> dict:
    """``MMSearch.index`` on EXIF-carrying copies of the images with metadata as shipped and
    without it (``without_metadata``); interleaved, the order alternating each repeat."""
    t0 = time.perf_counter()
    photos = exif_photos(paths, work / "exif-photos")
    written_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    Gazetteer.shared(settings.cache_dir).locate(CITIES[0][1], CITIES[0][2])
    gazetteer_s = time.perf_counter() - t0
    facts_step = facts_step_cpu(settings, photos, repeats)
    print(json.dumps({"facts_step": facts_step}), flush=True)
    warm = settings.model_copy(update={"collection": "meta_warm"})
    pipeline(warm, photos[:32])  # warm-up: models, the describer, the store's first write
    with without_metadata():
        pipeline(warm, photos[:32])
    runs = []
    for r in range(repeats):
        order = ("with", "without") if r % 2 == 0 else ("without", "with")
        run: dict = {"order": list(order)}
        for mode in order:
            s = settings.model_copy(update={"collection": f"meta{r}_{mode}"})
            with without_metadata() if mode == "without" else contextlib.nullcontext():
                run[mode] = pipeline(s, photos, count_facts=True)
        facts_with, facts_without = run["with"]["stored_facts"], run["without"]["stored_facts"]
        if min(facts_with["with_exif_date"], facts_with["with_city"]) < len(photos) or any(
            facts_without[k] for k in ("with_exif_date", "with_city", "with_camera")
        ):
            raise SystemExit(f"facts not as expected: with {facts_with}, without {facts_without}")
        run["ratio"] = round(
            run["with"]["images_per_second"] / run["without"]["images_per_second"], 3
        )
        run["cpu_ratio"] = round(
            run["without"]["cpu_s_per_image"] / run["with"]["cpu_s_per_image"], 3
        )
        run["loadavg"] = common.loadavg()
        runs.append(run)
        print(json.dumps(run), flush=True)

    def median(mode: str, key: str) -> float:
        return round(float(np.median([r[mode][key] for r in runs])), 4)

    return {
        "images": len(photos),
        "photos": f"imagenet_sample JPEGs re-saved (quality 90) with EXIF: {len(CITIES)} "
        f"cities, {len(CAMERAS)} cameras, dates 2018-2025 with offsets",
        "photos_written_s": round(written_s, 1),
        "gazetteer_load_s": round(gazetteer_s, 2),
        "without_means": "mmsearch.ingest.decode_photo -> decode_image + empty PhotoFacts; "
        "Reader._locate -> None",
        "facts_step": facts_step,
        "runs": runs,
        "images_per_second_median": {m: median(m, "images_per_second") for m in order},
        "cpu_s_per_image_median": {m: median(m, "cpu_s_per_image") for m in order},
        "ratio_median": float(np.median([r["ratio"] for r in runs])),
        "cpu_ratio_median": float(np.median([r["cpu_ratio"] for r in runs])),
    }


PARTS = ("pipeline", "reindex", "metadata")
#: The keys of the result each part writes (the rest describe the run).
PART_KEYS = {
    "pipeline": ("images", "runs", "ratio_median", "cpu_ratio_median"),
    "reindex": ("reindex_unchanged",),
    "metadata": ("metadata",),
}


def stamped_name(result: dict, text: str | None = None) -> str:
    """The file that holds a result: the stamped file with the same ``text`` (an earlier
    version of ``common`` stamped files with their end time), else the name
    ``common.save_results`` gives it."""
    if text is not None:
        for f in sorted(common.RESULTS.glob("ingest-2*.json")):
            if f.read_text("utf-8") == text:
                return f.name
    stamp = datetime.fromisoformat(result["machine"]["date"]).strftime("%Y%m%dT%H%M%S")
    return f"ingest-{stamp}.json"


def merge_latest(result: dict, previous_text: str | None) -> dict:
    """``ingest-latest.json`` for a run of some parts: the other parts' numbers kept from
    the previous latest, and ``part_files`` naming the file each part's numbers come from."""
    files = {part: stamped_name(result) for part in result["parts"]}
    if previous_text is None:
        return {**result, "part_files": files}
    previous = json.loads(previous_text)
    merged = dict(result)
    earlier_name = stamped_name(previous, previous_text)
    earlier = previous.get("part_files") or {
        part: earlier_name
        for part, keys in PART_KEYS.items()
        if any(k in previous for k in keys if k != "images")
    }
    for part, keys in PART_KEYS.items():
        if part not in result["parts"] and part in earlier:
            merged.update({k: previous[k] for k in keys if k in previous})
            files[part] = earlier[part]
    merged["part_files"] = {part: files[part] for part in PARTS if part in files}
    return merged


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--store", choices=["embedded", "lite"], default="embedded")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    args = ap.parse_args()
    parts = [p for p in PARTS if p in args.parts]
    if args.store == "embedded" and not embedded.available():
        raise SystemExit("--store embedded needs the 'milvus' package; or use --store lite")
    common.require(IMAGES)
    paths = sorted(IMAGES.iterdir())[: args.n]
    if len(paths) < args.n:
        raise SystemExit(f"{IMAGES} has {len(paths)} images, fewer than --n {args.n}")

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-", dir="/tmp"))
    base = work / "milvus"
    uri = f"embedded:{base}" if args.store == "embedded" else str(work / "bench.db")
    settings = common.offline_settings(
        uri=uri,
        batch_size=args.batch_size,
        workers=args.workers,
        embedded_idle_timeout=300,
        ocr=False,
    )
    result = {
        "benchmark": "ingest",
        "parts": parts,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "store": args.store,
        "machine": {**common.machine_info(), "torch_threads": torch.get_num_threads()},
    }
    try:
        if args.store == "embedded":
            t0 = time.perf_counter()
            embedded.ensure_server(base, idle_timeout=300, bin_cache=settings.cache_dir)
            result["server_start_s"] = round(time.perf_counter() - t0, 1)
        bare(settings, paths[:32], args.batch_size)  # warm-up: models and prototypes loaded
        if "pipeline" in parts:
            result["images"] = len(paths)
            runs = []
            for r in range(args.repeats):
                b, b_cpu = bare(settings, paths, args.batch_size)
                p = pipeline(settings.model_copy(update={"collection": f"run{r}"}), paths)
                runs.append(
                    {
                        "bare_images_per_second": round(b, 2),
                        "bare_cpu_s_per_image": round(b_cpu, 4),
                        **p,
                    }
                )
                runs[-1]["ratio"] = round(p["images_per_second"] / b, 3)
                runs[-1]["cpu_ratio"] = round(b_cpu / p["cpu_s_per_image"], 3)
                runs[-1]["loadavg"] = common.loadavg()
                print(json.dumps(runs[-1]), flush=True)
            result["runs"] = runs
            result["ratio_median"] = float(np.median([r["ratio"] for r in runs]))
            result["cpu_ratio_median"] = float(np.median([r["cpu_ratio"] for r in runs]))
        if "reindex" in parts:
            folder = settings.model_copy(update={"collection": "folder"})
            result["reindex_unchanged"] = reindex(folder, args.repeats)
        if "metadata" in parts:
            result["metadata"] = metadata(settings, paths, work, args.repeats)
    finally:
        if args.store == "embedded":
            embedded.stop_server(base)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    latest = common.RESULTS / "ingest-latest.json"
    previous = latest.read_text("utf-8") if latest.exists() else None
    path = common.save_results("ingest", result)
    merged = merge_latest(result, previous)
    latest.write_text(json.dumps(merged, indent=1, ensure_ascii=False, default=str), "utf-8")
    print(f"wrote {path} and {latest} ({merged['part_files']})")


if __name__ == "__main__":
    main()
