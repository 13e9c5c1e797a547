"""The ``clip`` embedder: local CLIP-family models, from open_clip or Hugging Face transformers.

One model puts images and texts into one space, so all four search modes use its output
directly and image->image needs no separate features (``feature_dim`` is 0).

What ``clip_model`` may name (``clip_backend=auto`` tells the backend from it):

- a local directory with ``open_clip_config.json`` and a weights file (what open_clip's
  ``push_to_hf_hub`` writes, and what ``hf download laion/...`` leaves): open_clip;
- a weights file (``.safetensors``/``.bin``/``.pt``/``.pth``) with ``open_clip_config.json``
  beside it: open_clip;
- a local directory with ``config.json`` whose ``model_type`` is ``clip`` or
  ``chinese_clip`` (``save_pretrained`` or ``hf download openai/clip-vit-base-patch32``):
  transformers ``CLIPModel`` / ``ChineseCLIPModel`` (the latter for Chinese queries);
- an open_clip architecture name (``ViT-B-32``) with ``clip_pretrained`` a tag
  (``laion2b_s34b_b79k``) or a checkpoint file, or ``hf-hub:org/repo``: open_clip;
- a Hugging Face Hub id (``openai/clip-vit-base-patch32``): transformers.

Names that need the Hub are looked up in the local Hugging Face cache first; where the
model is in neither the cache nor reachable, the error says to pass a local directory,
because machines without a network are where this provider is meant to run.

Nothing heavy happens at import or construction: torch, open_clip and transformers are
imported, and the weights loaded, on the first ``embed_*`` call (or when ``dim`` cannot be
read from a config file). The embedder's ``name`` identifies the weights (a fingerprint
of the local files, or the Hub id / architecture and tag), so a collection built with one
model refuses to be searched with another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from mmsearch.config import Settings
from mmsearch.providers.base import (
    FatalProviderError,
    Images,
    ImageVectors,
    ProviderError,
    as_batch,
    l2_normalize,
    register_embedder,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

OPEN_CLIP = "open_clip"
TRANSFORMERS = "transformers"
_BACKEND_ALIASES = {
    "auto": "auto",
    "open_clip": OPEN_CLIP,
    "open-clip": OPEN_CLIP,
    "openclip": OPEN_CLIP,
    "transformers": TRANSFORMERS,
    "hf": TRANSFORMERS,
    "huggingface": TRANSFORMERS,
}

#: transformers model types this provider knows how to feed: both are dual encoders with
#: ``get_image_features``/``get_text_features``; other types need their own preprocessing
#: (SigLIP pads to max length, for one), so they are refused rather than run wrongly.
HF_MODEL_TYPES = ("clip", "chinese_clip")

OPEN_CLIP_CONFIG = "open_clip_config.json"
HF_CONFIG = "config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

#: The tag used when ``clip_pretrained`` is unset, for the default ``clip_model``:
#: LAION-2B B/32 is the strongest common B/32 (66.6 % ImageNet zero-shot vs 63.3 % for
#: OpenAI's). Other architectures have no silent default: the error lists their tags.
DEFAULT_PRETRAINED = {"ViT-B-32": "laion2b_s34b_b79k"}

#: Files sampled for the fingerprint: at most this many bytes from each end of a weights
#: file (hashing gigabytes at every start would cost seconds), the whole of smaller files.
_SAMPLE_BYTES = 1 << 20

INSTALL_HINT = "pip install 'mmsearch[clip]'"


# -- what to load ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipSpec:
    """Where a model comes from, decided from settings alone (no torch, no network)."""

    backend: str  # OPEN_CLIP or TRANSFORMERS
    source: str  # what the library is given: a directory, an arch name, a Hub id
    name: str  # the embedder name recorded in a collection
    local_dir: Path | None = None  # the model directory when loading from disk
    checkpoint: Path | None = None  # open_clip: an explicit weights file
    pretrained: str | None = None  # open_clip: a tag, with an arch name
    model_type: str | None = None  # transformers: config.json's model_type, when known
    dim: int | None = None  # the shared space's width, when a config file tells it

    @property
    def is_local(self) -> bool:
        return self.local_dir is not None or self.checkpoint is not None


def resolve_spec(settings: Settings) -> ClipSpec:
    """Decide backend and source from ``clip_model``/``clip_pretrained``/``clip_backend``.

    Raises ``FatalProviderError`` with what to change when the settings cannot work.
    """
    backend = _BACKEND_ALIASES.get(settings.clip_backend.strip().lower())
    if backend is None:
        raise FatalProviderError(
            f"clip_backend must be auto, open_clip or transformers, not {settings.clip_backend!r}"
        )
    raw = settings.clip_model.strip()
    if not raw:
        raise FatalProviderError("clip_model is empty; name a local model directory")
    if raw.startswith("local-dir:"):  # open_clip's own spelling of a directory
        raw = raw.removeprefix("local-dir:")
        backend = OPEN_CLIP if backend == "auto" else backend
    path = Path(raw).expanduser()
    if path.is_dir():
        return _spec_from_dir(path.resolve(), backend)
    if path.is_file():
        return _spec_from_file(path.resolve(), backend)
    if _looks_like_path(raw):
        raise FatalProviderError(f"clip_model {raw!r} is not an existing directory or file")
    if raw.startswith("hf-hub:") or (backend == "auto" and "/" not in raw):
        if backend == TRANSFORMERS:
            raise FatalProviderError(
                f"clip_model {raw!r} is an open_clip name but clip_backend is transformers"
            )
        return _spec_open_clip_named(raw, settings.clip_pretrained)
    if backend == OPEN_CLIP:  # an open_clip model on the Hub, named as transformers names it
        return _spec_open_clip_named(f"hf-hub:{raw}", settings.clip_pretrained)
    return ClipSpec(backend=TRANSFORMERS, source=raw, name=f"clip:transformers:{raw}")


def _looks_like_path(raw: str) -> bool:
    """A Hub id is ``org/name``; anything anchored to the file system is meant as a path."""
    return (
        raw.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or raw in (".", "..")
        or (len(raw) > 1 and raw[1] == ":")  # C:\...
        or raw.count("/") > 1
        or raw.lower().endswith(WEIGHT_SUFFIXES)
    )


def _spec_from_dir(path: Path, backend: str) -> ClipSpec:
    has_open_clip = (path / OPEN_CLIP_CONFIG).is_file()
    has_hf = (path / HF_CONFIG).is_file()
    if backend == "auto":
        backend = OPEN_CLIP if has_open_clip else TRANSFORMERS if has_hf else ""
    if backend == OPEN_CLIP:
        if not has_open_clip:
            raise FatalProviderError(f"{path} has no {OPEN_CLIP_CONFIG}; it is no open_clip model")
        cfg = _open_clip_model_cfg(path / OPEN_CLIP_CONFIG)
        if _find_weights(path) is None:
            # open_clip would build the model with random weights and only log a warning.
            raise FatalProviderError(
                f"{path} has {OPEN_CLIP_CONFIG} but no weights file "
                f"({', '.join('*' + s for s in WEIGHT_SUFFIXES)})"
            )
        return ClipSpec(
            backend=OPEN_CLIP,
            source=str(path),
            name=f"clip:open_clip:local:{fingerprint(path)}",
            local_dir=path,
            dim=_int_or_none(cfg.get("embed_dim")),
        )
    if backend == TRANSFORMERS:
        if not has_hf:
            raise FatalProviderError(f"{path} has no {HF_CONFIG}; it is no transformers model")
        config = _read_json(path / HF_CONFIG)
        model_type = str(config.get("model_type", ""))
        _check_model_type(model_type, path)
        return ClipSpec(
            backend=TRANSFORMERS,
            source=str(path),
            name=f"clip:transformers:{model_type}:{fingerprint(path)}",
            local_dir=path,
            model_type=model_type,
            # CLIPConfig and ChineseCLIPConfig both default projection_dim to 512.
            dim=_int_or_none(config.get("projection_dim", 512)),
        )
    raise FatalProviderError(
        f"{path} has neither {OPEN_CLIP_CONFIG} (open_clip) nor {HF_CONFIG} (transformers); "
        "point clip_model at the directory that holds the model's config and weights"
    )


def _spec_from_file(path: Path, backend: str) -> ClipSpec:
    config = path.parent / OPEN_CLIP_CONFIG
    if backend == TRANSFORMERS or not config.is_file():
        raise FatalProviderError(
            f"clip_model {str(path)!r} is a file: an open_clip checkpoint needs "
            f"{OPEN_CLIP_CONFIG} beside it (or set clip_model to the architecture name and "
            "clip_pretrained to the file); a transformers model is given as its directory"
        )
    cfg = _open_clip_model_cfg(config)
    return ClipSpec(
        backend=OPEN_CLIP,
        source=str(path.parent),
        name=f"clip:open_clip:local:{fingerprint(path.parent, weights=[path])}",
        local_dir=path.parent,
        checkpoint=path,
        dim=_int_or_none(cfg.get("embed_dim")),
    )


def _spec_open_clip_named(raw: str, pretrained: str | None) -> ClipSpec:
    if raw.startswith("hf-hub:"):
        return ClipSpec(backend=OPEN_CLIP, source=raw, name=f"clip:open_clip:{raw}")
    pretrained = (pretrained or "").strip() or DEFAULT_PRETRAINED.get(raw)
    if not pretrained:
        raise FatalProviderError(
            f"clip_pretrained is not set for open_clip model {raw!r}; set it to a pretrained "
            f"tag ({_open_clip_tags(raw)}) or to a local checkpoint file"
        )
    file = Path(pretrained).expanduser()
    if file.is_file():
        file = file.resolve()
        return ClipSpec(
            backend=OPEN_CLIP,
            source=raw,
            name=f"clip:open_clip:{raw}:{fingerprint(file.parent, weights=[file], configs=False)}",
            checkpoint=file,
        )
    if _looks_like_path(pretrained):
        raise FatalProviderError(f"clip_pretrained {pretrained!r} is not an existing file")
    return ClipSpec(
        backend=OPEN_CLIP,
        source=raw,
        name=f"clip:open_clip:{raw}:{pretrained}",
        pretrained=pretrained,
    )


def _open_clip_tags(arch: str) -> str:
    try:
        import open_clip

        tags = open_clip.list_pretrained_tags_by_model(arch)
    except ImportError:
        return f"install open_clip to list them: {INSTALL_HINT}"
    return "one of " + ", ".join(tags) if tags else "open_clip knows none for it"


def _check_model_type(model_type: str, where: object) -> None:
    if model_type not in HF_MODEL_TYPES:
        raise FatalProviderError(
            f"{where}: model_type {model_type!r} is not supported by the clip provider "
            f"(supported: {', '.join(HF_MODEL_TYPES)})"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FatalProviderError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise FatalProviderError(f"{path} does not hold a JSON object")
    return data


def _open_clip_model_cfg(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    cfg = data.get("model_cfg")
    if not isinstance(cfg, dict):
        raise FatalProviderError(f"{path} has no 'model_cfg' object")
    return cfg


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _find_weights(path: Path) -> Path | None:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return files[0] if files else None


def fingerprint(
    directory: Path, *, weights: Sequence[Path] | None = None, configs: bool = True
) -> str:
    """12 hex digits that change when the model's configs, tokenizer or weights change.

    Content, not the path: the same model copied or moved elsewhere keeps its name, so its
    collections stay searchable; a fine-tune in a directory of the same name does not.
    Config and tokenizer files (``*.json``, ``*.txt``) are hashed whole; weights files by
    size and their first and last MiB, which every retraining changes.
    """
    digest = hashlib.sha256()
    files: list[Path] = []
    if configs:
        files += sorted(
            p for p in directory.iterdir() if p.is_file() and p.suffix in (".json", ".txt")
        )
    if weights is None:
        weights = sorted(
            p for p in directory.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES
        )
    files += list(weights)
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with file.open("rb") as fh:
            if size <= 2 * _SAMPLE_BYTES:
                digest.update(fh.read())
            else:
                digest.update(fh.read(_SAMPLE_BYTES))
                fh.seek(-_SAMPLE_BYTES, os.SEEK_END)
                digest.update(fh.read(_SAMPLE_BYTES))
    return digest.hexdigest()[:12]


# -- loading ----------------------------------------------------------------------------------


def _hub_offline() -> bool:
    """True when the user asked the Hugging Face libraries not to use the network."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - both backends install huggingface_hub
        return False


def _unreachable(
    what: str, exc: BaseException, *, open_clip_tag: bool = False
) -> FatalProviderError:
    """The error for a model that is neither on disk nor fetchable, saying what to do."""
    also = (
        " or set clip_pretrained to a downloaded checkpoint file (open_clip_pytorch_model.bin)"
        if open_clip_tag
        else ""
    )
    return FatalProviderError(
        f"could not fetch {what} from the Hugging Face Hub, and it is not in the local "
        f"Hugging Face cache (no network here?): {_short(exc)}. Download the model where "
        "there is a network (e.g. `hf download ORG/NAME --local-dir DIR`), copy it here and "
        f"set clip_model (MMSEARCH_CLIP_MODEL) to that local directory{also}"
    )


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _torchvision_hint() -> str:
    """Why a backend may fail to import: a torchvision built for another torch.

    PyPI's torchvision wheels load C++ operators built against one exact torch (a CUDA
    build); beside another, ``import torchvision`` raises ``operator torchvision::nms does
    not exist``, which also breaks transformers' image processors and open_clip.
    """
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        return ""
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure is the hint
        return (
            f". Note: torchvision is installed but does not import ({_short(exc, 120)}): it "
            "was built for another torch. Install the matching pair (e.g. torch==2.14.1 with "
            "torchvision==0.29.1), or uninstall torchvision to use the transformers backend"
        )
    return ""


@contextmanager
def _without_random_init_warning() -> Iterator[None]:
    """Drops open_clip's root-logger warning that a model was initialised randomly."""

    def keep(record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _pick_device(setting: str) -> str:
    import torch

    wanted = setting.strip().lower() or "auto"
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise FatalProviderError(
            f"clip_device is {setting!r} but torch sees no CUDA device "
            f"(torch {torch.__version__}); use clip_device=auto or cpu"
        )
    try:
        torch.device(wanted)
    except RuntimeError as exc:
        raise FatalProviderError(f"clip_device {setting!r} is not a torch device: {exc}") from exc
    return wanted


class _Backend:
    """A loaded model: images or texts in, unnormalised feature rows (torch) out."""

    device: str
    half: bool  # fp16 weights; inputs are cast to match
    dim: int = 0  # 0 until known: the embedder then measures it with one text

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        raise NotImplementedError

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError


class _OpenClipBackend(_Backend):
    def __init__(self, spec: ClipSpec, device: str, half: bool) -> None:
        import open_clip

        self.device, self.half = device, half
        precision = "fp16" if half else "fp32"
        kwargs: dict[str, Any] = {"device": device, "precision": precision}
        if spec.local_dir is not None:
            name = f"local-dir:{spec.local_dir}"
            # With an explicit weights file the model is built empty first; open_clip's
            # "initialized randomly" warning would then be false, so it is held back.
            with _without_random_init_warning():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name, load_weights=spec.checkpoint is None, **kwargs
                )
            if spec.checkpoint is not None:
                open_clip.load_checkpoint(model, str(spec.checkpoint), strict=True)
            tokenizer = open_clip.get_tokenizer(name)
        elif spec.source.startswith("hf-hub:"):
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(spec.source, **kwargs)
                tokenizer = open_clip.get_tokenizer(spec.source)
            except (OSError, RuntimeError) as exc:
                raise _unreachable(repr(spec.source), exc) from exc
        else:
            arch = spec.source
            if arch not in open_clip.list_models():
                raise FatalProviderError(
                    f"{arch!r} is no open_clip architecture (a Hub id needs "
                    "clip_backend=transformers, a local model its directory)"
                )
            pretrained = str(spec.checkpoint) if spec.checkpoint else spec.pretrained
            tag_cfg = {} if spec.checkpoint else open_clip.get_pretrained_cfg(arch, pretrained)
            if not spec.checkpoint and not tag_cfg:
                raise FatalProviderError(
                    f"clip_pretrained {pretrained!r} is not a tag of {arch!r}; "
                    f"use {_open_clip_tags(arch)}, or a local checkpoint file"
                )
            # OpenAI's weights were trained with QuickGELU; open_clip only warns when the
            # architecture's config lacks it, and the vectors then come out subtly wrong.
            arch_cfg = open_clip.get_model_config(arch) or {}
            quick_gelu = bool(tag_cfg.get("quick_gelu")) and not arch_cfg.get("quick_gelu")
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    arch, pretrained=pretrained, force_quick_gelu=quick_gelu, **kwargs
                )
            except RuntimeError as exc:
                if spec.checkpoint:
                    raise
                raise _unreachable(
                    f"open_clip weights {arch}/{pretrained}", exc, open_clip_tag=True
                ) from exc
            tokenizer = open_clip.get_tokenizer(arch)
        self.model = model.eval()
        self.preprocess: Callable[[Image.Image], torch.Tensor] = preprocess
        self.tokenizer = tokenizer

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        import torch

        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        if self.half:
            pixels = pixels.half()
        return self.model.encode_image(pixels)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens)


class _TransformersBackend(_Backend):
    def __init__(self, spec: ClipSpec, device: str, half: bool) -> None:
        import inspect

        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

        self.device, self.half = device, half
        source = spec.source

        def load(local_only: bool) -> tuple[Any, Any, Any, Any]:
            kw = {"local_files_only": local_only}
            config = AutoConfig.from_pretrained(source, **kw)
            _check_model_type(getattr(config, "model_type", ""), source)
            model = AutoModel.from_pretrained(source, **kw)
            tokenizer = AutoTokenizer.from_pretrained(source, **kw)
            processor = AutoImageProcessor.from_pretrained(source, **kw)
            return config, model, tokenizer, processor

        if spec.is_local:
            config, model, tokenizer, processor = load(True)
        else:
            try:  # the Hugging Face cache first: no network needed for a downloaded model
                config, model, tokenizer, processor = load(True)
            except OSError as cached_exc:
                if _hub_offline():
                    raise _unreachable(repr(source), cached_exc) from cached_exc
                try:
                    config, model, tokenizer, processor = load(False)
                except OSError as exc:
                    raise _unreachable(repr(source), exc) from exc
        if half:
            model = model.half()
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.processor = processor
        text_cfg = getattr(config, "text_config", None)
        max_positions = int(getattr(text_cfg, "max_position_embeddings", 77) or 77)
        # Tokenizers saved without model_max_length report a huge number; the position
        # table is the real limit.
        self.max_length = min(max_positions, int(getattr(tokenizer, "model_max_length", 1 << 30)))
        # Chinese-CLIP's text vector is the projected [CLS] state. Computed here rather than
        # by get_text_features, which transformers 4.5x broke for this model (it projects a
        # pooler_output that ChineseCLIPModel never builds: huggingface/transformers#42351).
        self.cls_text = getattr(config, "model_type", "") == "chinese_clip"
        text_forward = model.text_model.forward if self.cls_text else model.get_text_features
        accepted = inspect.signature(text_forward).parameters
        self.text_inputs = [
            k for k in ("input_ids", "attention_mask", "token_type_ids") if k in accepted
        ]
        self.dim = int(config.projection_dim)

    @staticmethod
    def _features(out: Any) -> torch.Tensor:
        # transformers 4 returns the projected tensor; 5 returns an output whose pooler_output
        # holds it.
        return out if not hasattr(out, "pooler_output") else out.pooler_output

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        pixels = pixels.to(self.device, dtype=self.model.dtype)
        return self._features(self.model.get_image_features(pixel_values=pixels))

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        inputs = {k: batch[k].to(self.device) for k in self.text_inputs if k in batch}
        if self.cls_text:
            hidden = self.model.text_model(**inputs).last_hidden_state
            return self.model.text_projection(hidden[:, 0, :])
        return self._features(self.model.get_text_features(**inputs))


# -- the embedder -----------------------------------------------------------------------------


class ClipEmbedder:
    """Embedder protocol over a CLIP-family model, loaded on first use.

    Rows are L2-normalised float32; on CUDA the model runs in fp16 (weights and autocast),
    which halves memory and roughly doubles throughput at no measurable cost to ranking.
    """

    feature_dim = 0

    def __init__(self, spec: ClipSpec, *, device: str = "auto", batch_size: int = 32) -> None:
        self.spec = spec
        self.name = spec.name
        self.device_setting = device
        self.batch_size = max(1, batch_size)
        self._backend: _Backend | None = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        """From the config file when there is one, so that opening a collection is cheap."""
        if self.spec.dim is not None:
            return self.spec.dim
        return self.backend.dim

    @property
    def device(self) -> str:
        return self.backend.device

    @property
    def loaded(self) -> bool:
        return self._backend is not None

    @property
    def backend(self) -> _Backend:
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = self._load()
        return self._backend

    def _load(self) -> _Backend:
        spec = self.spec
        try:
            import torch  # noqa: F401

            device = _pick_device(self.device_setting)
            if spec.backend == OPEN_CLIP:
                import open_clip  # noqa: F401
            else:
                import transformers  # noqa: F401
        except ProviderError:
            raise
        except Exception as exc:  # ImportError, or torchvision built for another torch
            missing = getattr(exc, "name", None) or spec.backend
            raise FatalProviderError(
                f"the clip provider's {spec.backend} backend needs {missing}, which does not "
                f"import here ({_short(exc)}); install it with: {INSTALL_HINT}"
                f"{_torchvision_hint()}"
            ) from exc
        half = device.startswith("cuda")
        cls = _OpenClipBackend if spec.backend == OPEN_CLIP else _TransformersBackend
        log.info("loading %s model %s on %s", spec.backend, spec.source, device)
        try:
            backend = cls(spec, device, half)
        except ProviderError:
            raise
        except Exception as exc:
            raise FatalProviderError(
                f"cannot load {spec.backend} model {spec.source!r}: {_short(exc)}"
                f"{_torchvision_hint()}"
            ) from exc
        if not backend.dim:
            backend.dim = int(self._encode(backend, ["a"], _encode_texts).shape[-1])
        if spec.dim is not None and backend.dim != spec.dim:
            raise FatalProviderError(
                f"{spec.source}: the config says {spec.dim}-d but the model gives {backend.dim}-d"
            )
        return backend

    def embed_images(self, images: Images) -> ImageVectors:
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in as_batch(images).images]
        return ImageVectors(shared=self._run(rgb, _encode_images), features=None)

    def embed_texts(self, texts: Sequence[str], *, query: bool) -> np.ndarray:
        """CLIP embeds queries and documents alike, so ``query`` changes nothing."""
        return self._run(list(texts), _encode_texts)

    def _run(self, items: list[Any], encode: _Encode) -> np.ndarray:
        if not items:
            return np.zeros((0, self.dim), np.float32)
        backend = self.backend
        try:
            out = self._encode(backend, items, encode)
        except ProviderError:
            raise
        except Exception as exc:  # out of memory, a broken image: ingest retries one by one
            raise ProviderError(f"{self.name}: {_short(exc)}") from exc
        return l2_normalize(out)

    def _encode(self, backend: _Backend, items: list[Any], encode: _Encode) -> np.ndarray:
        """Model batches of ``batch_size``, without autograd, in fp16 autocast on CUDA."""
        import torch

        autocast: AbstractContextManager[Any] = (
            torch.autocast("cuda", dtype=torch.float16)
            if backend.device.startswith("cuda")
            else nullcontext()
        )
        out = []
        with torch.inference_mode(), autocast:
            for chunk in _chunks(items, self.batch_size):
                out.append(encode(backend, chunk).float().cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)


_Encode = Callable[[_Backend, list[Any]], "torch.Tensor"]


def _encode_images(backend: _Backend, chunk: list[Any]) -> torch.Tensor:
    return backend.encode_images(chunk)


def _encode_texts(backend: _Backend, chunk: list[Any]) -> torch.Tensor:
    return backend.encode_texts(chunk)


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@register_embedder("clip")
def _clip_embedder(settings: Settings) -> ClipEmbedder:
    return ClipEmbedder(
        resolve_spec(settings), device=settings.clip_device, batch_size=settings.batch_size
    )
