"""The fast tier: fake providers and an in-memory Milvus (``tests/fakes.py``)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from mmsearch import Settings

from ..fakes import MemoryBackend, colour_image


@pytest.fixture(params=["memory", "memory-split"])
def settings(request, tmp_path: Path) -> Settings:
    """A fresh in-memory collection, as on Milvus 2.5 and as on 2.3 (side collections)."""
    uri = f"{request.param}:{uuid.uuid4().hex}"
    yield Settings(uri=uri, provider="fake", cache_dir=tmp_path / "cache", batch_size=4)
    MemoryBackend.DATABASES.pop(uri, None)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder of small real PNG/JPEG files in two sub-folders, one per colour."""
    root = tmp_path / "photos"
    for folder, colours in {"warm": ["red", "yellow"], "cool": ["blue", "green"]}.items():
        (root / folder).mkdir(parents=True)
        for colour in colours:
            colour_image(colour).save(root / folder / f"{colour}.png")
    colour_image("black").save(root / "black.jpg", quality=90)
    return root
