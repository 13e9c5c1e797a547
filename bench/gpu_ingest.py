"""GPU ingest throughput: the ``clip`` provider end to end against the bare model, one run.

What it measures (issue 14, the GPU item), on photo-sized JPEGs (640x480, generated here
with EXIF as a phone writes it, or a folder given with ``--images``):

- ``decode``: the product's ``Reader`` (read, hash, decode, EXIF facts) on every file, in
  a thread pool as wide as the machine: the CPU side's ceiling.
- ``bare``: the provider's own loaded model (the same object, fp16 on CUDA) on pixel
  tensors preprocessed beforehand and already on the device, and on the descriptions
  tokenised beforehand: ``get_image_features`` and ``get_text_features`` alone, timed with
  a device synchronisation. ``image`` is images/s of the image tower; ``combined`` counts
  one image forward plus one description forward per image, which is what ingest does.
- ``preprocess``: the provider's image processor alone on the decoded images (it runs on
  the thread that calls ``embed_images``, one batch at a time).
- ``provider``: ``ClipEmbedder.embed_images`` + ``embed_texts`` on images decoded
  beforehand (adds the image processor's resize/normalise, host-to-device copies and
  normalisation to ``bare``).
- ``end_to_end``: the product's local runner, ``Ingestor.run(folder)``: its reading
  threads (``workers`` = every core) read and decode one batch ahead of the models, the
  mapper embeds images, describes, embeds the descriptions, and the writer builds the
  records Milvus would get (``row_record``, the lexical terms) and hands them to a store
  that drops them. Images/s and the seconds of each stage.

``bare`` and ``end_to_end`` alternate for ``--repeats`` rounds, so drift hits both; the
JSON gives each round and the medians, the ratio end-to-end / bare, and clip-retrieval's
published 2,500 images/s per A100 for ViT-B/32 (its README) beside them, against the
issue's target of 3,000 images/s end to end.

Choices, and why:

- The model is a transformers ``CLIPModel`` of ``CLIPConfig()``'s default shape, which is
  ViT-B/32 (vision: 768 wide, 12 layers, 32-px patches at 224 px; text: 512 wide,
  12 layers, 77 positions; 512-d projection), with random weights: the same arithmetic
  as the trained model. It is saved with ``save_pretrained`` to a temporary folder and the
  provider loads it from there (``clip_model`` = that folder, ``clip_backend =
  transformers``), as a user's downloaded model. Its tokenizer is byte-level BPE with one
  merge chain per word of the description, so a description costs about as many tokens
  as with CLIP's real vocabulary (the JSON records the count). On CUDA the provider runs
  the model in fp16 (weights and autocast); nothing needs setting for that.
- The describer is ``bench-fixed`` (defined here): the same ~40-word English description
  and keywords for every image, without touching the image. A real describer is a
  vision-language model behind an API (DashScope, an OpenAI-compatible server) whose time
  is the server's, or the offline classifier, which would put a second model on the GPU
  path; this measures the path of the clip vectors, including embedding a description
  per image as ingest does.
- The store drops what it is given, after the real ``Store.upsert`` has built the
  records (``DiscardStore``). The device machine has no Milvus server, and Milvus Lite
  (one process, rows looped over in Python) would measure Lite, not the GPU path; a
  cluster's write rate is measured by the bulk-load bench, and the issue's Ray runner
  writes from many processes.
- Files are read from the page cache (they were just written): a collection on a network
  disk adds its read time, which is the storage's.

Smoke mode (``--smoke``) runs everything on the CPU with a tiny CLIP (same code paths,
fp32), 48 images and one round: it proves the script, not the speed.

Device run (a session that has the device tool; see ``bench/gpu_ingest.sh``). Needs about
4-6 minutes of the session's 15 minutes of device time (1-2 to start the machine, ~2 for
the run, ~0.5 to give it back): here, once, ``bash bench/gpu_ingest.sh prepare`` (fetches
the wheels of the packages the device lacks into ``.whl/``, which git ignores); then one
call of the device tool::

    run(command="bash bench/gpu_ingest.sh device", carry=[".whl"], timeout_s=480)

then ``give_back``. The JSON comes back under the reply's ``files_at``; copy it into
``bench/results/`` and commit it.

    python bench/gpu_ingest.py --smoke                    # CPU, a minute
    python bench/gpu_ingest.py --n 4096 --batch 256       # the GPU run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - bench/common.py

from mmsearch.config import Settings  # noqa: E402
from mmsearch.ingest import Ingestor, Reader  # noqa: E402
from mmsearch.providers import get_describer, get_embedder  # noqa: E402
from mmsearch.providers.base import (  # noqa: E402
    Description,
    ImageBatch,
    Images,
    as_batch,
    register_describer,
)
from mmsearch.schema import SCHEMA_VERSION  # noqa: E402
from mmsearch.sources import SourceItem, item_id, iter_source  # noqa: E402
from mmsearch.store import KnownFile, Store  # noqa: E402

#: clip-retrieval's README: "about 2500 sample/s" per A100 for ViT-B/32 inference.
CLIP_RETRIEVAL_PER_A100 = 2500
TARGET = 3000
IMAGE_SIZE = (640, 480)

#: What a vision-language model writes about a photo, in length (~40 words).
DESCRIPTION = (
    "A brown dog with long ears runs across a green lawn in a city park on a sunny "
    "afternoon, while a child in a red jacket throws a yellow ball toward the tall trees "
    "and two people sit on a wooden bench near the stone path."
)
KEYWORDS = ["dog", "park", "lawn", "child", "ball", "bench", "trees", "afternoon"]


# -- the describer and the store ---------------------------------------------------------------


class FixedDescriber:
    """The same description for every image: a describer that costs nothing."""

    name = "bench-fixed"

    def describe(self, images: Images) -> list[Description]:
        return [Description(DESCRIPTION, list(KEYWORDS)) for _ in as_batch(images).images]


register_describer("bench-fixed")(lambda settings: FixedDescriber())


class _DiscardClient:
    def upsert(self, collection: str, records: list[dict[str, Any]]) -> dict[str, int]:
        return {"upsert_count": len(records)}


class _DiscardBackend:
    one_vector_field = False
    client = _DiscardClient()

    def close(self) -> None:
        pass


class DiscardStore(Store):
    """A ``Store`` that knows nothing and drops what it is given, after ``upsert`` has
    built the records (``row_record``, the lexical terms) as for Milvus."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, backend=_DiscardBackend())  # type: ignore[arg-type]

    def open(self, **kwargs: Any) -> dict[str, Any]:
        self._version = SCHEMA_VERSION
        return {"schema_version": SCHEMA_VERSION, **kwargs}

    def known_files(self, ids: Any) -> dict[str, KnownFile]:
        return {}

    def by_content(self, hashes: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {}

    def ids_under(self, folder: Path) -> dict[str, str]:
        return {}

    def delete(self, ids: Sequence[str]) -> None:
        pass

    def set_file_facts(self, facts: dict[str, tuple[int, int]]) -> None:
        pass


# -- the model ---------------------------------------------------------------------------------


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 bytes: with them, any text tokenises."""
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)}
    keep |= set(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _word_merges(text: str) -> list[str]:
    """BPE merges that make each word of ``text`` one token: each word is split by the
    merges so far, then its pieces are joined left to right by new (later) merges, which
    fire only where no earlier one applies, so words done before stay whole."""
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(w.strip(".,").lower() for w in text.split()):
        pieces = [*word[:-1], word[-1] + "</w>"] if word else []
        while len(pieces) > 1:  # BPE: the earliest merge present, until none applies
            pairs = [
                (merges.index(p), i)
                for i, p in enumerate(zip(pieces, pieces[1:], strict=False))
                if p in merges
            ]
            if not pairs:
                break
            i = min(pairs)[1]
            pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            pieces[:2] = [pieces[0] + pieces[1]]
    return [f"{a} {b}" for a, b in merges]


def build_model(path: Path, *, tiny: bool) -> dict[str, Any]:
    """A random-weight transformers CLIP saved as a user's model folder; what it is."""
    import torch
    import transformers

    chars = _byte_chars()
    merges = _word_merges(DESCRIPTION + " " + " ".join(KEYWORDS))
    tokens = [*chars, *(c + "</w>" for c in chars), *("".join(m.split()) for m in merges)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(path))
    ids = {
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
        "pad_token_id": vocab["<|endoftext|>"],
    }
    if tiny:  # smoke: the same code paths at a fraction of the arithmetic
        text_cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
        vision_cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
        config = transformers.CLIPConfig(
            text_config={**text_cfg, "num_attention_heads": 2, **ids},
            vision_config={**vision_cfg, "num_attention_heads": 2},
            projection_dim=64,
        )
    else:  # CLIPConfig's defaults are ViT-B/32's shape; only the token ids are ours
        config = transformers.CLIPConfig(text_config=ids)
    torch.manual_seed(0)
    model = transformers.CLIPModel(config)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    transformers.CLIPImageProcessor().save_pretrained(str(path))  # 224 px, CLIP mean/std
    del model
    v, t = config.vision_config, config.text_config
    return {
        "kind": "tiny CLIP (smoke)" if tiny else "ViT-B/32 shape (CLIPConfig defaults)",
        "weights": "random (torch.manual_seed(0))",
        "parameters": params,
        "vision": f"{v.num_hidden_layers} layers x {v.hidden_size}, patch {v.patch_size}, "
        f"{v.image_size} px",
        "text": f"{t.num_hidden_layers} layers x {t.hidden_size}, "
        f"{t.max_position_embeddings} positions",
        "projection_dim": config.projection_dim,
        "description_tokens": len(tokenizer(DESCRIPTION)["input_ids"]),
    }


# -- the images --------------------------------------------------------------------------------


def _photo(seed: int) -> bytes:
    """A 640x480 JPEG with a photo's structure: smooth shapes, edges and sensor noise
    (random pixels alone would be far larger and slower to decode than a photo)."""
    import io

    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    w, h = IMAGE_SIZE
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w // 2, h // 2), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        x1, y1 = x0 + int(rng.integers(10, 100)), y0 + int(rng.integers(10, 100))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    img = img.resize((w, h), Image.Resampling.BICUBIC)  # soft edges, as a lens gives
    noise = rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
    img = Image.fromarray(np.clip(np.asarray(img, np.int16) + noise, 0, 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Apple", "iPhone 13"  # Make, Model
    exif.get_ifd(0x8769)[0x9003] = f"2023:07:{1 + seed % 28:02d} 12:{seed % 60:02d}:00"
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90, exif=exif.tobytes())
    return out.getvalue()


def _write_photos(folder: str, seeds: list[int]) -> int:
    total = 0
    for seed in seeds:
        data = _photo(seed)
        path = Path(folder) / f"class_{seed % 16:02d}" / f"IMG_{seed:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += len(data)
    return total


def make_photos(folder: Path, n: int, workers: int) -> dict[str, Any]:
    """``n`` JPEGs in 16 class folders, written by ``workers`` processes."""
    started = time.perf_counter()
    chunks = [list(range(i, n, workers)) for i in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        total = sum(pool.map(_write_photos, [str(folder)] * workers, chunks))
    return {
        "generated": n,
        "size": f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}",
        "mean_kb": round(total / n / 1024, 1),
        "seconds_to_make": round(time.perf_counter() - started, 1),
    }


# -- the measurements --------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def decode_all(settings: Settings, files: list[SourceItem], workers: int) -> tuple[dict, list]:
    """The product's ``Reader`` on every file, ``workers`` threads: images/s and images."""
    reader = Reader(settings)
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        works = list(pool.map(lambda s: reader.read(s, item_id(s.path), None), files))
    seconds = time.perf_counter() - started
    failed = [w.error for w in works if w.error]
    if failed:
        raise SystemExit(f"{len(failed)} files failed to decode, e.g. {failed[0]}")
    return {
        "images": len(works),
        "threads": workers,
        "images_per_s": round(len(works) / seconds, 1),
        "cpu_ms_per_image": round(1000 * sum(w.seconds for w in works) / len(works), 2),
    }, [w.image.image for w in works]


def _rate(run: Callable[[int], None], batches: int, batch: int, device: str) -> float:
    """Items/s of ``batches`` calls of ``run`` (each ``batch`` items), after one warm-up."""
    run(0)
    _sync(device)
    started = time.perf_counter()
    for i in range(batches):
        run(i)
    _sync(device)
    return batches * batch / (time.perf_counter() - started)


def bare_model(embedder: Any, images: list[Image.Image], batch: int, n: int) -> dict[str, Any]:
    """The provider's loaded model on tensors prepared beforehand, as the provider calls it
    (inference mode, fp16 autocast on CUDA); images/s of each tower and of both."""
    import contextlib

    import torch

    backend = embedder.backend
    model, device = backend.model, backend.device
    sets = []
    for s in range(0, min(len(images), 4 * batch), batch):  # a few different batches
        part = images[s : s + batch]
        part = (part * (batch // len(part) + 1))[:batch]
        pixels = backend.processor(images=part, return_tensors="pt")["pixel_values"]
        sets.append(pixels.to(device, dtype=model.dtype))
    tok = backend.tokenizer(
        [DESCRIPTION] * batch,
        padding=True,
        truncation=True,
        max_length=backend.max_length,
        return_tensors="pt",
    )
    text = {k: tok[k].to(device) for k in backend.text_inputs if k in tok}
    autocast = (
        torch.autocast("cuda", dtype=torch.float16)
        if device.startswith("cuda")
        else contextlib.nullcontext()
    )
    batches = max(40, n // batch)  # at least 40 calls: a timing of a second or so
    with torch.inference_mode(), autocast:
        image = _rate(
            lambda i: model.get_image_features(pixel_values=sets[i % len(sets)]),
            batches,
            batch,
            device,
        )
        texts = _rate(lambda i: model.get_text_features(**text), batches, batch, device)
    return {
        "image_per_s": round(image, 1),
        "text_per_s": round(texts, 1),
        "combined_per_s": round(1 / (1 / image + 1 / texts), 1),
        "batch": batch,
        "text_tokens": int(text["input_ids"].shape[1]),
    }


def preprocess_only(embedder: Any, images: list[Image.Image], batch: int) -> dict[str, Any]:
    """The provider's image processor alone (resize, crop, normalise; on the calling
    thread, as ``embed_images`` runs it): the share of ``provider`` spent on the CPU."""
    processor = embedder.backend.processor
    started = time.perf_counter()
    for s in range(0, len(images), batch):
        processor(images=images[s : s + batch], return_tensors="pt")
    return {
        "images_per_s": round(len(images) / (time.perf_counter() - started), 1),
        "processor": type(processor).__name__,
    }


def provider_stage(embedder: Any, images: list[Image.Image], batch: int) -> dict[str, Any]:
    """``embed_images`` + ``embed_texts`` on decoded images, one batch at a time."""
    timings = {"embed_images": 0.0, "embed_texts": 0.0}
    started = time.perf_counter()
    for s in range(0, len(images), batch):
        part = images[s : s + batch]
        t0 = time.perf_counter()
        embedder.embed_images(ImageBatch(part))
        t1 = time.perf_counter()
        embedder.embed_texts([DESCRIPTION] * len(part), query=False)
        timings["embed_images"] += t1 - t0
        timings["embed_texts"] += time.perf_counter() - t1
    seconds = time.perf_counter() - started
    return {
        "images_per_s": round(len(images) / seconds, 1),
        "stage_seconds": {k: round(v, 3) for k, v in timings.items()},
    }


def end_to_end(settings: Settings, embedder: Any, folder: Path) -> dict[str, Any]:
    describer = get_describer(settings)
    ingestor = Ingestor(
        settings, store=DiscardStore(settings), embedder=embedder, describer=describer
    )
    report = ingestor.run(folder)
    if report.failed or report.indexed != report.total:
        raise SystemExit(f"ingest did not index everything: {report.as_dict()}")
    out = report.as_dict()
    return {k: out[k] for k in ("indexed", "seconds", "images_per_second", "stage_seconds")}


# -- main --------------------------------------------------------------------------------------


def gpu_info(device: str) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info |= {
            "name": props.name,
            "memory_gb": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "cuda": torch.version.cuda,
        }
    return info


def main() -> None:
    cpus = len(os.sched_getaffinity(0))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, 48 images, 1 round")
    ap.add_argument("--n", type=int, default=4096, help="images to generate")
    ap.add_argument("--images", type=Path, help="index this folder instead of generated JPEGs")
    ap.add_argument("--batch", type=int, default=256, help="ingest batch size (batch_size)")
    ap.add_argument("--workers", type=int, default=cpus, help="decoding threads")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of bare and end-to-end")
    ap.add_argument("--device", default=None, help="clip_device (default cuda; smoke: cpu)")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.batch, args.repeats = min(args.n, 48), min(args.batch, 16), 1
        args.workers = min(args.workers, 2)
    device = args.device or ("cpu" if args.smoke else "cuda")
    name = "gpu_ingest-smoke" if args.smoke else "gpu_ingest"
    result: dict[str, Any] = {"machine": common.machine_info(), "args": vars(args) | {}}
    result["args"]["images"] = str(args.images) if args.images else None

    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-ingest-"))
    try:
        folder = args.images or tmp / "photos"
        if args.images is None:  # before torch touches CUDA: the pool forks
            result["images"] = make_photos(folder, args.n, max(1, min(cpus, 16)))
            print(f"[photos] {result['images']}", flush=True)
        result["model"] = build_model(tmp / "model", tiny=args.smoke)
        print(f"[model] {result['model']}", flush=True)
        settings = Settings(
            uri=str(tmp / "unused.db"),
            collection="bench",
            embedder="clip",
            describer="bench-fixed",
            clip_model=str(tmp / "model"),
            clip_backend="transformers",
            clip_device=device,
            batch_size=args.batch,
            workers=args.workers,
            ocr=False,
            cache_dir=tmp / "cache",
        )
        embedder = get_embedder(settings)
        result["gpu"] = gpu_info(device)
        files = [s for _, s in sorted((item_id(s.path), s) for s in iter_source(folder))]
        if not files:
            raise SystemExit(f"no images in {folder}")

        result["decode"], images = decode_all(settings, files, args.workers)
        print(f"[decode] {result['decode']}", flush=True)
        embedder.embed_images(ImageBatch(images[: args.batch]))  # load, warm up
        embedder.embed_texts([DESCRIPTION] * args.batch, query=False)
        backend = embedder.backend
        result["gpu"] |= {
            "dtype": str(backend.model.dtype),
            "autocast_fp16": device.startswith("cuda"),
            "attention": str(getattr(backend.model.config, "_attn_implementation", "")),
            "image_processor": type(backend.processor).__name__,
        }
        result["preprocess"] = preprocess_only(embedder, images, args.batch)
        print(f"[preprocess] {result['preprocess']}", flush=True)
        result["provider"] = provider_stage(embedder, images, args.batch)
        print(f"[provider] {result['provider']}", flush=True)

        rounds = []
        for r in range(args.repeats):
            bare = bare_model(embedder, images, args.batch, len(images))
            e2e = end_to_end(settings, embedder, folder)
            rounds.append({"bare": bare, "end_to_end": e2e})
            print(f"[round {r + 1}] bare {bare} | end to end {e2e}", flush=True)
        del images
        result["rounds"] = rounds
        result["summary"] = summary(rounds, result)
        if device.startswith("cuda"):
            import torch

            result["gpu"]["max_memory_allocated_gb"] = round(
                torch.cuda.max_memory_allocated() / 2**30, 2
            )
    except BaseException as exc:  # a one-shot run keeps what it measured before failing
        result["error"] = "".join(traceback.format_exception(exc))
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        path = common.save_results(name, result)
        print(json.dumps(result.get("summary", result.get("error")), indent=1))
        print(f"saved {path}")


def summary(rounds: list[dict], result: dict[str, Any]) -> dict[str, Any]:
    def med(part: str, key: str) -> float:
        return round(statistics.median(r[part][key] for r in rounds), 1)

    e2e = med("end_to_end", "images_per_second")
    bare_combined, bare_image = med("bare", "combined_per_s"), med("bare", "image_per_s")
    return {
        "end_to_end_images_per_s": e2e,
        "bare_image_tower_images_per_s": bare_image,
        "bare_image_and_text_images_per_s": bare_combined,
        "provider_on_decoded_images_per_s": result["provider"]["images_per_s"],
        "image_processor_only_images_per_s": result["preprocess"]["images_per_s"],
        "decode_only_images_per_s": result["decode"]["images_per_s"],
        "ratio_end_to_end_over_bare_combined": round(e2e / bare_combined, 3),
        "ratio_end_to_end_over_bare_image": round(e2e / bare_image, 3),
        "clip_retrieval_per_a100": CLIP_RETRIEVAL_PER_A100,
        "ratio_end_to_end_over_clip_retrieval": round(e2e / CLIP_RETRIEVAL_PER_A100, 3),
        "target_images_per_s": TARGET,
        "target_met": e2e >= TARGET,
    }


if __name__ == "__main__":
    main()
