"""Reading image files safely: decode, orient, refuse what is broken or hostile.

Every failure becomes an ``ImageError`` with a one-line reason, so ingest can skip the file,
report it and go on instead of crashing on the ten-thousandth file of a folder.

Phones save HEIC (iPhone since 2017) and AVIF (Android, Chrome): HEIC/HEIF through
pi-heif's Pillow plugin (pillow-heif's decode-only twin, without the GPL x265 encoder),
AVIF through Pillow's own. Both take the same path as JPEG: the
pixel count is checked from the header before anything is decoded, EXIF orientation and alpha
are handled once, and ``decode_photo`` reads the photo's facts (``metadata.py``) from the
same open file.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from mmsearch.metadata import PhotoFacts, read_facts

try:  # HEIC/HEIF decoding: libheif + libde265 in pi-heif's wheels, registered once.
    from pi_heif import register_heif_opener
except ImportError:  # pragma: no cover - pillow-heif is the same plugin, with encoders
    try:
        from pillow_heif import register_heif_opener
    except ImportError:  # without either, HEIC files are "not an image"
        register_heif_opener = None
if register_heif_opener is not None:
    register_heif_opener()
HEIF_SUPPORTED = register_heif_opener is not None

#: File name endings that ingest treats as images when it walks a folder.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".jfif"}
    | {".heic", ".heif", ".hif", ".avif"}
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
    #: Date, place and camera from the file's metadata (``decode_photo``).
    facts: PhotoFacts = field(default_factory=PhotoFacts)


def hash_bytes(data: bytes) -> str:
    """Content hash used to skip unchanged files on re-index."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass
class DecodedPhoto:
    """What one decode gives ingest: the upright RGB image, its size as viewed (the original
    size, not the draft-scaled one) and the facts its metadata states."""

    image: Image.Image
    width: int
    height: int
    facts: PhotoFacts


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
    photo = _decode(data, max_pixels, min_side, max_decoded_pixels, with_facts=False)
    return photo.image, photo.width, photo.height


def decode_photo(
    data: bytes,
    *,
    max_pixels: int,
    min_side: int = DECODE_MIN_SIDE,
    max_decoded_pixels: int | None = None,
    mtime: float | None = None,
) -> DecodedPhoto:
    """``decode_image`` plus the photo's facts (date, place, camera), read from the same
    open file before the EXIF orientation is applied; ``mtime`` (the file's modification
    time, seconds since the epoch) dates a photo whose metadata has no date."""
    return _decode(data, max_pixels, min_side, max_decoded_pixels, with_facts=True, mtime=mtime)


def _decode(
    data: bytes,
    max_pixels: int,
    min_side: int,
    max_decoded_pixels: int | None,
    *,
    with_facts: bool,
    mtime: float | None = None,
) -> DecodedPhoto:
    """The one decoder behind both entry points; every failure becomes an ``ImageError``."""
    if not data:
        raise ImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format in ("HEIF", "AVIF"):
                _check_coded_size(data, max_pixels)
            width, height = _check_size(img, max_pixels, min_side, max_decoded_pixels)
            img.load()
            facts = read_facts(img, mtime=mtime) if with_facts else PhotoFacts()
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
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as exc:
        # RuntimeError: libheif's errors through pi-heif (corrupt data, its own size limit)
        raise ImageError(f"cannot decode: {exc}") from None
    return DecodedPhoto(img, width, height, facts)


def _check_size(
    img: Image.Image, max_pixels: int, min_side: int, max_decoded_pixels: int | None
) -> tuple[int, int]:
    """Refuse too many pixels from the header alone (JPEG, PNG, HEIC and AVIF all state
    their size before any pixel data), and set up JPEG draft scaling; returns the size."""
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
    return width, height


def _check_coded_size(data: bytes, max_pixels: int) -> None:
    """HEIC and AVIF report the size after their crop ("clap") and rotation, but the codec
    decodes the full coded size of every ``ispe`` first: a file showing 64x64 may decode
    12000x12000. Refuse by the largest coded size, read from the ``meta`` box."""
    for width, height in _coded_sizes(data):
        if width * height > max_pixels:
            raise ImageError(
                f"too large: {width}x{height} pixels coded exceeds the limit of {max_pixels:,} "
                "(possible decompression bomb; raise max_image_pixels to allow it)"
            )


def _coded_sizes(data: bytes) -> list[tuple[int, int]]:
    """(width, height) of every ``ispe`` property in an ISO-BMFF file's top-level ``meta``
    box (HEIF, AVIF); [] when there is none to be found."""
    pos = 0
    while pos + 8 <= len(data):
        size, kind, header = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8], 8
        if size == 1:
            size, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif size == 0:
            size = len(data) - pos
        if size < header:
            return []
        if kind == b"meta":
            meta = data[pos + header : pos + size]
            sizes, at = [], meta.find(b"ispe")
            while at >= 4:  # box: size 20, "ispe", version+flags, width, height
                if int.from_bytes(meta[at - 4 : at], "big") == 20 and at + 16 <= len(meta):
                    wh = meta[at + 8 : at + 12], meta[at + 12 : at + 16]
                    sizes.append((int.from_bytes(wh[0], "big"), int.from_bytes(wh[1], "big")))
                at = meta.find(b"ispe", at + 4)
            return sizes
        pos += size
    return []


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
    """Read, hash and decode one file, with its facts (dated by its mtime if need be)."""
    data = read_file(path)
    try:
        st = path.stat()
    except OSError:
        st = None
    photo = decode_photo(
        data, max_pixels=max_pixels, min_side=min_side, mtime=st.st_mtime if st else None
    )
    loaded = LoadedImage(path, hash_bytes(data), photo.width, photo.height, photo.image)
    if st is not None:
        loaded.file_size, loaded.mtime_ns = st.st_size, st.st_mtime_ns
    loaded.facts = photo.facts
    return loaded


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
