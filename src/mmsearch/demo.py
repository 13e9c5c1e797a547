"""Demo data that needs no network: real photos that ship inside scikit-image."""

from __future__ import annotations

from pathlib import Path

from mmsearch.sources import SourceItem, iter_source

#: The photographs among scikit-image's bundled sample images (its README credits each).
SAMPLE_PHOTOS = (
    "astronaut.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "hubble_deep_field.jpg",
    "motorcycle_left.png",
    "rocket.jpg",
    "moon.png",
    "retina.jpg",
    "brick.png",
    "grass.png",
    "gravel.png",
    "clock_motion.png",
    "page.png",
)


#: Text searches the sample photos can answer (the reference's 棕色的狗 finds no dog there);
#: "segmentation" is a word printed on page.png, found by the text read off it (OCR).
SAMPLE_QUERIES = (
    "一只猫",
    "a cup of coffee",
    "宇航员",
    "a rocket on the launch pad",
    "segmentation",
)


def _skimage_data_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def sample_photos() -> list[SourceItem]:
    """scikit-image's sample photos, labelled by file name (they share one folder)."""
    folder = _skimage_data_dir()
    return [SourceItem(folder / n, Path(n).stem) for n in SAMPLE_PHOTOS if (folder / n).exists()]


def default_query_image(source: Path | None) -> Path:
    """The image the demo's image searches use: Chelsea the cat, or the data's first image."""
    if source is None:
        return _skimage_data_dir() / "chelsea.png"
    for item in iter_source(source):
        return item.path
    raise FileNotFoundError(f"{source}: no images found")
