"""Shared fixtures: real Milvus Lite files in temp dirs, real images from ../shared/datasets."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mmsearch import MMSearch, Settings

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
REVERSE = DATASETS / "reverse_image_search"
REVERSE_CSV = REVERSE / "reverse_image_search.csv"
LION = REVERSE / "test" / "lion" / "n02129165_13728.JPEG"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not REVERSE_CSV.exists():
        skip = pytest.mark.skip(reason=f"data sets not found at {DATASETS}")
        for item in items:
            if "datasets" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session: class-name embeddings are computed once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def settings(tmp_path: Path, cache_dir: Path) -> Settings:
    return Settings(uri=str(tmp_path / "test.db"), cache_dir=cache_dir, batch_size=16)


@pytest.fixture(scope="session")
def reverse_index(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    """The 100 reference test images indexed once from the reference CSV."""
    db = tmp_path_factory.mktemp("reverse") / "reverse.db"
    mm = MMSearch(settings=Settings(uri=str(db), cache_dir=cache_dir))
    report = mm.index(REVERSE_CSV)
    assert report.indexed == 100 and not report.failed, report
    yield mm
    mm.close()


def reverse_labels() -> dict[str, str]:
    """origin path (resolved) -> label, from the reference CSV."""
    with REVERSE_CSV.open() as fh:
        return {str((REVERSE / r["path"]).resolve()): r["label"] for r in csv.DictReader(fh)}
