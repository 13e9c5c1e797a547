"""Reading image files safely: decode, orient, refuse what is broken or hostile.

Every failure becomes an ``ImageError`` with a one-line reason, so ingest can skip the file,
report it and go on instead of crashing on the ten-thousandth file of a folder.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

#: File name endings that ingest treats as images when it walks a folder.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".jfif"}
)

#: Decoded images keep at least this many pixels on their short side. JPEGs are decoded at a
#: reduced scale (libjpeg's DCT scaling) down to it, which makes decode several times faster
#: for camera photos; models downstream resize to 224-448 px anyway.
DECODE_MIN_SIDE = 512


#: Formats served back to browsers, by the format Pillow decoded (never the file name).
MEDIA_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "HEIF": "image/heif",
    "AVIF": "image/avif",
}

_ORIENTATION = 0x0112
_SWAPS_SIDES = frozenset({5, 6, 7, 8})


class ImageError(ValueError):
    """The file cannot be used as an image; ``str(err)`` is a one-line reason."""


@dataclass
class LoadedImage:
    """A decoded, upright RGB image plus what the store records about its file."""

    path: Path
    content_hash: str
    width: int
    height: int
    image: Image.Image
    file_size: int = 0
    mtime_ns: int = 0


def hash_bytes(data: bytes) -> str:
    """Content hash used to skip unchanged files on re-index."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    min_side: int = DECODE_MIN_SIDE,
    max_decoded_pixels: int | None = None,
) -> tuple[Image.Image, int, int]:
    """Decode bytes to an upright RGB image; returns it with the original width and height.

    The pixel count is checked from the header, before any pixel is decoded, so a
    decompression bomb costs nothing. ``max_decoded_pixels`` bounds what is actually
    decoded (after JPEG draft scaling): a query image from the network gets a budget far
    below the indexing limit, since a 260 KB PNG can hold 89 million pixels (268 MB).
    """
    if not data:
        raise ImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(
                    f"too large: {width}x{height} pixels exceeds the limit of {max_pixels:,} "
                    "(possible decompression bomb; raise max_image_pixels to allow it)"
                )
            if img.format == "JPEG" and min(width, height) > 2 * min_side:
                scale = min_side / min(width, height)
                img.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
            if max_decoded_pixels is not None and img.width * img.height > max_decoded_pixels:
                raise ImageError(
                    f"too large: {width}x{height} pixels; query images may have at most "
                    f"{max_decoded_pixels:,} (send a smaller copy)"
                )
            img.load()
            if img.getexif().get(_ORIENTATION, 1) in _SWAPS_SIDES:
                width, height = height, width  # record the size as the image is viewed
            img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                img = _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"cannot decode: {exc}") from None
    return img, width, height


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten alpha onto white (not black, which is what a plain convert gives)."""
    if img.mode == "I;16" or img.mode.startswith("I;16"):
        img = img.point(lambda v: v / 256).convert("L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def read_file(path: Path) -> bytes:
    """The file's bytes, or an ``ImageError`` saying in a few words why not."""
    try:
        if not path.is_file():
            # A FIFO or device named like an image would block or never end.
            raise ImageError("not a regular file" if path.exists() else "no such file")
        return path.read_bytes()
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None


def load_image(path: Path, *, max_pixels: int, min_side: int = DECODE_MIN_SIDE) -> LoadedImage:
    """Read, hash and decode one file."""
    data = read_file(path)
    img, width, height = decode_image(data, max_pixels=max_pixels, min_side=min_side)
    return LoadedImage(path, hash_bytes(data), width, height, img)


def read_indexed(path: Path, content_hash: str) -> bytes:
    """The bytes of an indexed file, only while it is still the regular file that was indexed.

    The file is opened without following a symbolic link in its last part (``O_NOFOLLOW``;
    ``O_NONBLOCK`` so that a FIFO put in its place cannot hang the server) and its bytes must
    have the content hash recorded at indexing. A file swapped for a link to /etc/shadow, or
    rewritten with other content, is refused; a parent folder swapped for a link can only
    lead to a file with exactly the indexed content. Bytes are checked before any is sent.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError("the file was replaced by a symbolic link") from None
        raise ImageError(f"cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise ImageError("not a regular file")
        data = fh.read()
    if hash_bytes(data) != content_hash:
        raise ImageError("the file changed since it was indexed")
    return data


def media_type(data: bytes) -> str:
    """The media type of image bytes, from the format Pillow reads in them; only image types
    are ever returned, so nothing is served as HTML or script whatever its name."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or ""
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageError("not an image (unrecognised format)") from None
    if fmt not in MEDIA_TYPES:
        raise ImageError(f"{fmt or 'unknown'} images are not served")
    return MEDIA_TYPES[fmt]
