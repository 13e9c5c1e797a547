"""The ``clip`` embedder, on tiny CLIP models that the tests build with random weights.

No model can be downloaded here, so each backend's real loading code is exercised on a
model made in the test and saved the way a downloaded one is laid out: an open_clip
directory (``open_clip_config.json`` + safetensors), a transformers ``CLIPModel`` and a
``ChineseCLIPModel`` (``save_pretrained`` with a tokenizer built from a vocabulary written
here). Random weights say nothing about ranking quality, so the end-to-end checks assert
what must hold for any model: an image finds itself, scores are the cosine of the vectors
the embedder gives, k hits come back, and a collection refuses a different model.

A backend whose package does not import is skipped with the reason; the checks of
settings resolution, naming and laziness need neither package.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mmsearch import MMSearch, Mode, Settings
from mmsearch.providers import get_embedder
from mmsearch.providers.base import FatalProviderError, ProviderError
from mmsearch.providers.clip import ClipEmbedder, resolve_spec
from mmsearch.store import ProviderMismatchError

from .conftest import REVERSE

DIM = 16  # projection width of every tiny model
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


#: The vision tower of every tiny test model (CLIP and Chinese-CLIP alike): 32 px, 2 layers.
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}


def _require(module: str) -> Any:
    """Import a backend's package or skip; any failure counts (torchvision raises
    RuntimeError, not ImportError, beside a torch it was not built for)."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - the reason is reported in the skip
        pytest.skip(
            f"{module} does not import here ({type(exc).__name__}: {exc}); "
            "install it with: pip install 'mmsearch[clip]'"
        )


# -- tiny models --------------------------------------------------------------------------------


def build_open_clip(path: Path) -> Path:
    """An open_clip directory as ``push_to_hf_hub`` lays it out, with a 2-layer ViT.

    The text tower keeps open_clip's own BPE vocabulary (49,408 tokens, shipped inside the
    package), so the real ``SimpleTokenizer`` runs.
    """
    open_clip = _require("open_clip")
    torch = _require("torch")
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": DIM,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 32,
            "head_width": 16,
            "patch_size": 8,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 2,
        },
    }
    preprocess_cfg = {
        "mean": CLIP_MEAN,
        "std": CLIP_STD,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})
    )
    torch.manual_seed(0)
    model = open_clip.CLIP(**model_cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "open_clip_model.safetensors"))
    return path


def _byte_level_vocab() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 bytes: with them, any text tokenises."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def build_hf_clip(path: Path) -> Path:
    """A transformers ``CLIPModel`` with a byte-level BPE tokenizer of 519 tokens."""
    _require("torch")
    transformers = _require("transformers")
    path.mkdir(parents=True, exist_ok=True)
    chars = _byte_level_vocab()
    merges = ["l i", "o n</w>", "li on</w>"]
    tokens = [
        *chars,
        *(c + "</w>" for c in chars),
        *("".join(m.split()) for m in merges),
        "<|startoftext|>",
        "<|endoftext|>",
    ]
    vocab = {t: i for i, t in enumerate(tokens)}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(path))
    eos = vocab["<|endoftext|>"]
    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config=dict(TINY_VISION),
        projection_dim=DIM,
    )
    _require("torch").manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    ).save_pretrained(str(path))
    return path


def build_chinese_clip(path: Path) -> Path:
    """A transformers ``ChineseCLIPModel`` with a BERT WordPiece vocabulary of Chinese
    characters (Chinese-CLIP's text tower is a Chinese RoBERTa; BERT's tokenizer splits
    Chinese into characters): every character of the ImageNet class names the offline
    describer writes, so that different descriptions tokenise differently.

    Its text init is widened (``initializer_range``): at BERT's 0.02 the [CLS] output of a
    random 2-layer model barely depends on the input, and every text would score ~1.
    """
    _require("torch")
    transformers = _require("transformers")
    path.mkdir(parents=True, exist_ok=True)
    from mmsearch.providers.offline import load_classes

    chars = {ch for c in load_classes() for ch in c.zh_name + c.zh_category}
    chars |= set("一张的照片，也可能是或（）。棕色狗狮子")
    tokens = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *sorted(chars),
        *"abcdefghijklmnopqrstuvwxyz",
        "lion",
        "dog",
        "photo",
    ]
    (path / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    tokenizer = transformers.BertTokenizer.from_pretrained(str(path))
    config = transformers.ChineseCLIPConfig(
        text_config={
            "vocab_size": len(tokens),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "initializer_range": 0.5,
        },
        vision_config=dict(TINY_VISION),
        projection_dim=DIM,
    )
    _require("torch").manual_seed(0)
    transformers.ChineseCLIPModel(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    transformers.ChineseCLIPImageProcessor(
        size={"height": 32, "width": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    ).save_pretrained(str(path))
    return path


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "open_clip": build_open_clip,
    "clip": build_hf_clip,
    "chinese_clip": build_chinese_clip,
}
EXPECTED_BACKEND = {
    "open_clip": "open_clip",
    "clip": "transformers",
    "chinese_clip": "transformers",
}


@pytest.fixture(scope="module", params=list(BUILDERS))
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each tiny model, built once per module."""
    return BUILDERS[request.param](tmp_path_factory.mktemp("models") / request.param)


def clip_settings(model: Path | str, tmp_path: Path, cache_dir: Path, **extra: Any) -> Settings:
    return Settings(
        embedder="clip",
        clip_model=str(model),
        describer="offline",
        uri=str(tmp_path / "x.db"),
        cache_dir=cache_dir,
        **extra,
    )


def synthetic_images(n: int) -> list[Image.Image]:
    """Distinct images of several sizes and modes, so no data set is needed."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        w, h = 40 + 7 * i, 30 + 11 * i
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        im = Image.fromarray(arr)
        out.append(im.convert("L") if i % 3 == 2 else im)  # grey images are made RGB
    return out


def dataset_images(n: int) -> list[Path]:
    """``n`` reference images, one per class, the lion first."""
    folders = sorted(p for p in (REVERSE / "test").iterdir() if p.is_dir())
    lion = [p for p in folders if p.name == "lion"]
    picked = [*lion, *(p for p in folders if p.name != "lion")][:n]
    return [sorted(f.glob("*.JPEG"))[0] for f in picked]


# -- loading, shapes, normalisation, batching ---------------------------------------------------


def test_backend_is_detected_from_the_directory(model_dir: Path, tmp_path: Path, cache_dir: Path):
    spec = resolve_spec(clip_settings(model_dir, tmp_path, cache_dir))
    assert spec.backend == EXPECTED_BACKEND[model_dir.name]
    assert spec.dim == DIM  # read from the config file, without loading the model
    assert spec.name.startswith(f"clip:{spec.backend}:")


def test_shapes_and_normalisation(model_dir: Path, tmp_path: Path, cache_dir: Path):
    embedder = get_embedder(clip_settings(model_dir, tmp_path, cache_dir))
    assert isinstance(embedder, ClipEmbedder)
    assert not embedder.loaded  # creating the embedder and reading name/dim load nothing
    assert (embedder.dim, embedder.feature_dim) == (DIM, 0)
    assert not embedder.loaded

    vectors = embedder.embed_images(synthetic_images(3))
    assert embedder.loaded and embedder.device == "cpu"
    assert vectors.features is None
    assert vectors.shared.shape == (3, DIM) and vectors.shared.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors.shared, axis=1), 1.0, atol=1e-5)

    texts = embedder.embed_texts(["a photo of a lion", "一张狮子的照片", "dog"], query=True)
    assert texts.shape == (3, DIM) and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    # Different inputs give different vectors, even with random weights.
    assert float(texts[0] @ texts[1]) < 0.9999
    assert float(vectors.shared[0] @ vectors.shared[1]) < 0.9999
    # CLIP embeds queries and documents alike.
    np.testing.assert_allclose(embedder.embed_texts(["dog"], query=False), texts[2:], atol=1e-6)

    assert embedder.embed_images([]).shared.shape == (0, DIM)
    assert embedder.embed_texts([], query=True).shape == (0, DIM)


def test_batches_equal_one_by_one(model_dir: Path, tmp_path: Path, cache_dir: Path):
    """Batching (with padding of texts of different lengths) must not change a vector."""
    embedder = get_embedder(clip_settings(model_dir, tmp_path, cache_dir, batch_size=2))
    images = synthetic_images(5)
    batched = embedder.embed_images(images).shared  # three model batches: 2, 2, 1
    single = np.concatenate([embedder.embed_images([im]).shared for im in images])
    np.testing.assert_allclose(batched, single, atol=1e-5)

    texts = ["lion", "a photo of a brown dog on a red car", "一张狮子的照片", "猫", "x" * 300]
    batched_t = embedder.embed_texts(texts, query=False)
    single_t = np.concatenate([embedder.embed_texts([t], query=False) for t in texts])
    np.testing.assert_allclose(batched_t, single_t, atol=1e-5)


# -- the four search modes on Milvus Lite -------------------------------------------------------


@pytest.fixture(scope="module")
def indexed(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> Iterator[tuple[MMSearch, list[Path]]]:
    """Six reference images indexed with each tiny model (offline describer)."""
    if not (REVERSE / "test").is_dir():
        pytest.skip(f"data sets not found at {REVERSE}")
    images = dataset_images(6)
    settings = clip_settings(
        model_dir, tmp_path_factory.mktemp("db"), cache_dir, index_type="FLAT", batch_size=4
    )
    mm = MMSearch(settings=settings)
    report = mm.index([_source(p) for p in images])
    assert report.indexed == 6 and not report.failed, report
    yield mm, images
    mm.close()


def _source(path: Path) -> Any:
    from mmsearch.sources import SourceItem

    return SourceItem(path=path, label=path.parent.name)


@pytest.mark.datasets
def test_image2image_finds_itself_first(indexed: tuple[MMSearch, list[Path]]):
    mm, images = indexed
    for path in images[:3]:
        hits = mm.search(path, mode=Mode.image2image, k=3)
        assert len(hits) == 3
        assert Path(hits[0].origin) == path.resolve()
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert hits[0].score >= hits[1].score >= hits[2].score


@pytest.mark.datasets
@pytest.mark.parametrize("query", ["a photo of a lion", "一张狮子的照片"])
def test_text2image_scores_are_cosines(indexed: tuple[MMSearch, list[Path]], query: str):
    """Text against the images' vectors: the scores are the cosine between the query's
    text vector and each image's vector, in rank order."""
    mm, images = indexed
    hits = mm.search(query, mode=Mode.text2image, k=4, ranking="vector")  # fused: RRF scores
    assert len(hits) == 4 and len({h.id for h in hits}) == 4
    q = mm.embedder.embed_texts([query], query=True)[0]
    vecs = mm.embedder.embed_images([Image.open(h.origin).convert("RGB") for h in hits]).shared
    np.testing.assert_allclose([h.score for h in hits], vecs @ q, atol=2e-3)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert {h.origin for h in hits} <= {str(p.resolve()) for p in images}


@pytest.mark.datasets
def test_text2text_finds_a_description(indexed: tuple[MMSearch, list[Path]]):
    """A description, queried as text, comes back first: it is the same text vector."""
    mm, _ = indexed
    target = mm.search("anything", mode=Mode.text2text, k=6)
    assert len(target) == 6
    description = target[-1].description
    hits = mm.search(description, mode=Mode.text2text, k=2, ranking="vector")
    assert hits[0].description == description
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)


@pytest.mark.datasets
def test_image2text_scores_are_cosines(indexed: tuple[MMSearch, list[Path]]):
    """An image against the descriptions' vectors, which the same CLIP text tower made."""
    mm, images = indexed
    hits = mm.search(images[0], mode=Mode.image2text, k=5)
    assert len(hits) == 5 and all(h.description for h in hits)
    v = mm.embedder.embed_images([Image.open(images[0]).convert("RGB")]).shared[0]
    t = mm.embedder.embed_texts([h.description for h in hits], query=False)
    np.testing.assert_allclose([h.score for h in hits], t @ v, atol=2e-3)


@pytest.mark.datasets
def test_collection_records_and_checks_the_model(
    indexed: tuple[MMSearch, list[Path]], tmp_path: Path
):
    """The name stored with the collection is the model's; another model is refused."""
    mm, _ = indexed
    stats = mm.stats()
    assert stats["embedder"] == mm.embedder.name and stats["dim"] == DIM
    assert stats["feature_dim"] == 0 and stats["count"] == 6
    assert mm.more_like_this(mm.search("lion", mode=Mode.text2image, k=1)[0].id, k=2)

    other = tmp_path / "other"
    shutil.copytree(Path(mm.settings.clip_model), other)
    weights = next(p for p in other.iterdir() if p.suffix == ".safetensors")
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)  # a different model: same architecture, other weights
    weights.write_bytes(bytes(data))
    changed = mm.settings.model_copy(update={"clip_model": str(other)})
    with pytest.raises(ProviderMismatchError):
        MMSearch(settings=changed).search("lion", mode=Mode.text2image, k=1)


# -- open_clip checkpoint file, names, laziness, errors -----------------------------------------


def test_open_clip_checkpoint_file_loads_like_its_directory(tmp_path: Path, cache_dir: Path):
    model = build_open_clip(tmp_path / "oc")
    by_dir = get_embedder(clip_settings(model, tmp_path, cache_dir))
    by_file = get_embedder(
        clip_settings(model / "open_clip_model.safetensors", tmp_path, cache_dir)
    )
    assert by_file.name == by_dir.name
    images = synthetic_images(2)
    np.testing.assert_allclose(
        by_file.embed_images(images).shared, by_dir.embed_images(images).shared, atol=1e-6
    )


def _fake_model_dir(path: Path, config: dict[str, Any], name: str, weights: bytes) -> Path:
    """Config and weights files with the right names: enough for resolution and naming."""
    path.mkdir(parents=True)
    (path / name).write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(weights)
    return path


def test_name_follows_content_not_path(tmp_path: Path, cache_dir: Path):
    cfg = {"model_type": "clip", "projection_dim": 512}
    a = _fake_model_dir(tmp_path / "a", cfg, "config.json", b"w" * 5000)
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    c = _fake_model_dir(tmp_path / "c", cfg, "config.json", b"v" * 5000)
    name = lambda p: resolve_spec(clip_settings(p, tmp_path, cache_dir)).name  # noqa: E731
    assert name(a) == name(b)  # moved or copied: the same model
    assert name(a) != name(c)  # other weights: another model
    assert name(a).startswith("clip:transformers:clip:")
    assert resolve_spec(clip_settings(a, tmp_path, cache_dir)).dim == 512


def test_settings_resolution(tmp_path: Path, cache_dir: Path):
    def spec(model: str | Path, **kw: Any):
        return resolve_spec(clip_settings(model, tmp_path, cache_dir, **kw))

    oc = _fake_model_dir(
        tmp_path / "oc", {"model_cfg": {"embed_dim": 768}}, "open_clip_config.json", b"x"
    )
    hf = _fake_model_dir(
        tmp_path / "hf",
        {"model_type": "chinese_clip", "projection_dim": 1024},
        "config.json",
        b"x",
    )
    assert (spec(oc).backend, spec(oc).dim) == ("open_clip", 768)
    assert (spec(hf).backend, spec(hf).dim, spec(hf).model_type) == (
        "transformers",
        1024,
        "chinese_clip",
    )
    assert spec(f"local-dir:{oc}").name == spec(oc).name

    default = spec("ViT-B-32")  # the settings' default: a tag is chosen, nothing imported
    assert (default.backend, default.pretrained) == ("open_clip", "laion2b_s34b_b79k")
    assert default.name == "clip:open_clip:ViT-B-32:laion2b_s34b_b79k"
    assert spec("ViT-B-32", clip_pretrained="openai").name == "clip:open_clip:ViT-B-32:openai"
    hub = spec("OFA-Sys/chinese-clip-vit-base-patch16")
    assert (hub.backend, hub.source, hub.dim) == (
        "transformers",
        "OFA-Sys/chinese-clip-vit-base-patch16",
        None,
    )
    assert spec("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K").backend == "open_clip"
    assert spec("org/model", clip_backend="open_clip").source == "hf-hub:org/model"

    with pytest.raises(FatalProviderError, match="not an existing directory"):
        spec(tmp_path / "missing" / "model")
    with pytest.raises(FatalProviderError, match="neither"):
        spec(tmp_path)  # a directory with no model config
    with pytest.raises(FatalProviderError, match="no open_clip model"):
        spec(hf, clip_backend="open_clip")
    with pytest.raises(FatalProviderError, match="model_type 'bert'"):
        spec(_fake_model_dir(tmp_path / "bert", {"model_type": "bert"}, "config.json", b"x"))
    with pytest.raises(FatalProviderError, match="no weights"):
        (oc / "model.safetensors").unlink()
        spec(oc)  # open_clip would run it with random weights
    with pytest.raises(FatalProviderError, match="clip_backend must be"):
        spec(hf, clip_backend="onnx")


def test_import_and_construction_are_lazy(tmp_path: Path, cache_dir: Path):
    """Neither torch nor a backend library is imported to create the embedder and read
    its name and dim: ``mmsearch stats`` and opening a collection stay fast."""
    oc = _fake_model_dir(
        tmp_path / "oc", {"model_cfg": {"embed_dim": 16}}, "open_clip_config.json", b"x"
    )
    hf = _fake_model_dir(tmp_path / "hf", {"model_type": "clip"}, "config.json", b"x")
    code = f"""
import sys
from mmsearch import Settings
from mmsearch.providers import get_embedder
for model in [{str(oc)!r}, {str(hf)!r}]:
    e = get_embedder(Settings(embedder="clip", clip_model=model, uri="unused.db"))
    print(e.name, e.dim)
heavy = [m for m in ("torch", "transformers", "open_clip", "torchvision") if m in sys.modules]
assert not heavy, heavy
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "16" in out.stdout and "512" in out.stdout


def test_missing_package_names_the_extra(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    hf = _fake_model_dir(tmp_path / "hf", {"model_type": "clip"}, "config.json", b"x")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    embedder = get_embedder(clip_settings(hf, tmp_path, cache_dir))
    with pytest.raises(FatalProviderError, match=r"pip install 'mmsearch\[clip\]'"):
        embedder.embed_texts(["x"], query=True)


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Hub traffic from the tests: the libraries read the setting at import time, so it
    is set on the module too."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        from huggingface_hub import constants
    except ImportError:
        return
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_unfetchable_hub_id_says_to_pass_a_local_directory(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    _require("torch")
    _require("transformers")
    _offline(monkeypatch)
    embedder = get_embedder(clip_settings("mmsearch-tests/no-such-clip", tmp_path, cache_dir))
    assert embedder.name == "clip:transformers:mmsearch-tests/no-such-clip"
    with pytest.raises(ProviderError, match="local directory") as info:
        embedder.embed_texts(["lion"], query=True)
    assert "Hugging Face" in str(info.value) and "mmsearch-tests/no-such-clip" in str(info.value)


def test_unfetchable_open_clip_hub_model_says_to_pass_a_local_directory(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    _require("open_clip")
    _offline(monkeypatch)
    embedder = get_embedder(
        clip_settings("hf-hub:mmsearch-tests/no-such-clip", tmp_path, cache_dir)
    )
    with pytest.raises(ProviderError, match="local directory"):
        embedder.embed_images(synthetic_images(1))


def test_open_clip_names_are_checked_before_any_download(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """An unknown architecture or tag, or an architecture with no default tag, is refused
    with the choices, before anything is fetched."""
    _require("open_clip")
    _offline(monkeypatch)
    with pytest.raises(FatalProviderError, match="set it to a pretrained tag.*openai"):
        get_embedder(clip_settings("RN50", tmp_path, cache_dir))
    unknown_arch = get_embedder(
        clip_settings("NoSuchArch", tmp_path, cache_dir, clip_pretrained="x")
    )
    with pytest.raises(FatalProviderError, match="no open_clip architecture"):
        unknown_arch.embed_texts(["x"], query=True)
    unknown_tag = get_embedder(
        clip_settings("ViT-B-32", tmp_path, cache_dir, clip_pretrained="no_such_tag")
    )
    with pytest.raises(FatalProviderError, match="not a tag of 'ViT-B-32'.*laion2b_s34b_b79k"):
        unknown_tag.embed_texts(["x"], query=True)


def test_unfetchable_open_clip_tag_says_to_pass_a_local_directory(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    open_clip = _require("open_clip")
    from huggingface_hub import try_to_load_from_cache

    tag = "commonpool_s_s13m_b4k"
    repo = open_clip.get_pretrained_cfg("ViT-B-32", tag)["hf_hub"].strip("/")
    if any(
        isinstance(try_to_load_from_cache(repo, f), str)
        for f in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
    ):
        pytest.skip(f"{repo} is in this machine's Hugging Face cache")
    _offline(monkeypatch)
    embedder = get_embedder(clip_settings("ViT-B-32", tmp_path, cache_dir, clip_pretrained=tag))
    assert embedder.name == f"clip:open_clip:ViT-B-32:{tag}"
    with pytest.raises(FatalProviderError, match="local directory.*clip_pretrained"):
        embedder.embed_texts(["x"], query=True)


def test_cuda_asked_for_but_absent_is_reported(tmp_path: Path, cache_dir: Path):
    torch = _require("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    hf = _fake_model_dir(tmp_path / "hf", {"model_type": "clip"}, "config.json", b"x")
    embedder = get_embedder(clip_settings(hf, tmp_path, cache_dir, clip_device="cuda"))
    with pytest.raises(FatalProviderError, match="no CUDA device"):
        embedder.embed_texts(["x"], query=True)
