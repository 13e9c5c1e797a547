"""Images as the remote services take them: base64 JPEG data URIs under a size limit.

DashScope refuses an image whose data URI is over 3 MB, so one that would be larger is
downscaled and re-encoded before it is sent rather than failed by the server.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import math

from PIL import Image

from mmsearch.providers.base import Images, ProviderError, as_batch

log = logging.getLogger(__name__)

#: DashScope refuses an image whose base64 form is over 3 MB; the OpenAI-compatible servers
#: have limits of their own, mostly larger. One limit for both keeps one code path.
MAX_IMAGE_BYTES = 3 * 1024 * 1024
#: First JPEG quality tried: high enough that the model sees what the file shows.
JPEG_QUALITY = 90
#: Lowest quality the re-encoding goes down to; below it, only the size shrinks.
MIN_JPEG_QUALITY = 60
#: Smallest side an image is downscaled to before giving up.
MIN_SIDE = 16
#: Where a batch keeps its images' data URIs: embedding and describing send the same JPEG.
DATA_URIS = "remote.data_uris"


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _data_uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def image_data_uri(image: Image.Image, max_bytes: int = MAX_IMAGE_BYTES) -> str:
    """The image as a ``data:image/jpeg;base64,...`` URI of at most ``max_bytes`` characters.

    JPEG at quality 90 first; if that is too large, the image is downscaled (by the square
    root of the size ratio, with a margin) and re-encoded at a lower quality until it fits.
    Raises ``ProviderError`` if even a ``MIN_SIDE``-pixel image does not fit.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    quality = JPEG_QUALITY
    uri = _data_uri(_encode_jpeg(image, quality))
    while len(uri) > max_bytes:
        w, h = image.size
        if min(w, h) <= MIN_SIDE:
            raise ProviderError(f"cannot encode the image under {max_bytes} bytes")
        scale = math.sqrt(max_bytes / len(uri)) * 0.9
        size = (max(MIN_SIDE, int(w * scale)), max(MIN_SIDE, int(h * scale)))
        log.debug("image data URI is %d bytes; downscaling %dx%d -> %dx%d", len(uri), w, h, *size)
        image = image.resize(size, Image.Resampling.LANCZOS)
        quality = max(MIN_JPEG_QUALITY, quality - 5)
        uri = _data_uri(_encode_jpeg(image, quality))
    return uri


def uri_key(uri: str) -> str:
    """A cache key for an encoded image: its digest, not the megabytes of the URI."""
    return hashlib.blake2b(uri.encode("ascii"), digest_size=16).hexdigest()


def batch_data_uris(images: Images) -> list[str]:
    """The images as data URIs, encoded once per batch whoever asks first."""
    return as_batch(images).reuse(DATA_URIS, lambda ims: [image_data_uri(im) for im in ims])
