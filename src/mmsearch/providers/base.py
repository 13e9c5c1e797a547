"""The two provider protocols and the registry that maps names to implementations.

Providers know nothing of Milvus: they turn images and texts into descriptions and vectors.
An embedder puts images and texts into one shared space, so any of the four search modes
is a nearest-neighbour search between two of its outputs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from mmsearch.config import Settings


class ProviderError(RuntimeError):
    """A provider could not be created or could not answer; the message says what to do.

    Ingest records it against the images of the failed call and goes on.
    """


class FatalProviderError(ProviderError):
    """An error that every further call would repeat (a missing or rejected API key, an
    unknown model): ingest stops at once instead of failing every remaining image."""


@dataclass(frozen=True)
class Description:
    """What a describer says about one image."""

    text: str
    keywords: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ImageVectors:
    """An embedder's output for a batch of images.

    ``shared`` lives in the image/text space (``dim`` wide) and serves text->image and
    image->text. ``features`` is optional: an image-only space that some models do better
    image->image search in (``feature_dim`` wide), or ``None``.
    """

    shared: np.ndarray
    features: np.ndarray | None = None


T = TypeVar("T")


@dataclass
class ImageBatch:
    """Decoded images on their way through the providers, with what one provider computed
    from them that another can reuse: the offline classifier's output (its describer needs
    the same classification its embedder made), the images encoded for an API (embedding
    and describing send the same JPEG). It travels with the batch, so nothing is found
    again in a cache keyed by object identity, and nothing outlives the batch.
    """

    images: list[Image.Image]
    derived: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def reuse(self, key: str, compute: Callable[[list[Image.Image]], T]) -> T:
        """``compute(images)``, computed once per batch under ``key`` (a name of the
        provider module's own, e.g. ``"offline.classified"``)."""
        if key not in self.derived:
            self.derived[key] = compute(self.images)
        return self.derived[key]


def as_batch(images: ImageBatch | Sequence[Image.Image]) -> ImageBatch:
    """The images as an ``ImageBatch`` (a plain list of images is a batch of its own)."""
    return images if isinstance(images, ImageBatch) else ImageBatch(list(images))


Images = ImageBatch | Sequence[Image.Image]


@runtime_checkable
class Embedder(Protocol):
    """Images and texts into one space; rows are L2-normalised float32."""

    name: str
    dim: int
    feature_dim: int  # 0 when the embedder has no separate image->image features

    def embed_images(self, images: Images) -> ImageVectors: ...

    def embed_texts(self, texts: Sequence[str], *, query: bool) -> np.ndarray:
        """``query`` marks search queries, for models that embed queries and documents apart."""
        ...


@runtime_checkable
class FeatureQueries(Protocol):
    """Optional embedder capability: queries that search ``image_feature`` directly.

    An embedder whose image-only space also serves text queries (e.g. class probabilities,
    which a text can be mapped onto) implements both methods; the searcher then runs
    text->image against ``image_feature`` instead of ``image_embedding``. Embedders without
    them (clip, dashscope, openai) keep searching ``image_embedding``.

    ``image_feature_score_scale`` is the similarity (cosine/inner product) that an image's
    own stored feature gets against its image->image query row; the searcher divides
    image->image scores by it, so that an identical image scores 1.0 as elsewhere.
    """

    image_feature_score_scale: float

    def text_feature_queries(
        self, vectors: np.ndarray, texts: Sequence[str] | None = None
    ) -> np.ndarray:
        """Query vectors from ``embed_texts(..., query=True)`` (and, where known, the texts
        themselves, e.g. to pick a language) into ``feature_dim``-wide query rows."""
        ...

    def image_feature_queries(self, features: np.ndarray) -> np.ndarray:
        """Image->image query rows from ``image_feature`` vectors (embedded or stored)."""
        ...


def feature_queries(embedder: Embedder) -> FeatureQueries | None:
    """The embedder as ``FeatureQueries`` if it has that capability and features, else None."""
    if embedder.feature_dim > 0 and isinstance(embedder, FeatureQueries):
        return embedder
    return None


@runtime_checkable
class Describer(Protocol):
    """Image to a short description and keywords, in the configured language."""

    name: str

    def describe(self, images: Images) -> list[Description]: ...


EmbedderFactory = Callable[["Settings"], Embedder]
DescriberFactory = Callable[["Settings"], Describer]

_EMBEDDERS: dict[str, EmbedderFactory] = {}
_DESCRIBERS: dict[str, DescriberFactory] = {}


def register_embedder(name: str) -> Callable[[EmbedderFactory], EmbedderFactory]:
    def deco(factory: EmbedderFactory) -> EmbedderFactory:
        _EMBEDDERS[name] = factory
        return factory

    return deco


def register_describer(name: str) -> Callable[[DescriberFactory], DescriberFactory]:
    def deco(factory: DescriberFactory) -> DescriberFactory:
        _DESCRIBERS[name] = factory
        return factory

    return deco


#: Built-in providers by name and the module that registers them. Imported on first use,
#: so that a provider with heavy or optional dependencies costs nothing until asked for.
BUILTIN_PROVIDERS = {
    "offline": "mmsearch.providers.offline",
    "dashscope": "mmsearch.providers.dashscope",
    "openai": "mmsearch.providers.openai",
    "clip": "mmsearch.providers.clip",
}


def _ensure_builtin(name: str | None = None) -> None:
    """Import the built-in provider modules (one by name, or all that import cleanly)."""
    names = [name] if name is not None else list(BUILTIN_PROVIDERS)
    for n in names:
        module = BUILTIN_PROVIDERS.get(n)
        if module is None or n in _EMBEDDERS or n in _DESCRIBERS:
            continue
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue  # not part of this installation
            if name is not None:
                raise ProviderError(
                    f"provider {n!r} needs {exc.name!r}, which is not installed; "
                    f"install it with: pip install 'mmsearch[{n}]'"
                ) from exc


def available_embedders() -> list[str]:
    _ensure_builtin()
    return sorted(_EMBEDDERS)


def available_describers() -> list[str]:
    _ensure_builtin()
    return sorted(_DESCRIBERS)


def _create(
    kind: str, registry: dict[str, Callable[[Settings], Any]], name: str, settings: Settings
) -> Any:
    _ensure_builtin(name)  # says which package is missing, if one is
    if name not in registry:
        _ensure_builtin()
        raise ProviderError(f"unknown {kind} {name!r}; available: {', '.join(sorted(registry))}")
    return registry[name](settings)


def get_embedder(settings: Settings) -> Embedder:
    return _create("embedder", _EMBEDDERS, settings.embedder_name, settings)


def get_describer(settings: Settings) -> Describer:
    return _create("describer", _DESCRIBERS, settings.describer_name, settings)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation, safe for all-zero rows."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)
