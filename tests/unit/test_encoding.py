"""Images as data URIs: small ones as they are, large ones re-encoded under the limit."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from mmsearch.providers.base import ProviderError
from mmsearch.providers.encoding import MAX_IMAGE_BYTES, image_data_uri, uri_key

PREFIX = "data:image/jpeg;base64,"


def decode(uri: str) -> Image.Image:
    assert uri.startswith(PREFIX)
    return Image.open(io.BytesIO(base64.b64decode(uri[len(PREFIX) :])))


def noise(width: int, height: int) -> Image.Image:
    """Random pixels: JPEG cannot compress them, so size tracks the pixel count."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8))


def test_limit_is_dashscopes_3_mb():
    assert MAX_IMAGE_BYTES == 3 * 1024 * 1024


def test_small_image_is_sent_as_it_is():
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    sent = decode(image_data_uri(image))
    assert sent.format == "JPEG" and sent.size == (64, 48)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_mode_becomes_rgb_jpeg(mode):
    image = Image.new("RGB", (32, 32), (10, 200, 30)).convert(mode)
    assert decode(image_data_uri(image)).mode == "RGB"


def test_large_image_is_downscaled_under_the_limit_keeping_its_shape():
    image = noise(600, 400)
    limit = 60_000
    uri = image_data_uri(image, max_bytes=limit)
    assert len(uri) <= limit
    sent = decode(uri)
    assert sent.width < 600 and sent.width / sent.height == pytest.approx(1.5, rel=0.05)
    assert len(image_data_uri(image)) > limit  # under the real limit it was left as it was


def test_an_image_that_cannot_fit_is_an_error():
    with pytest.raises(ProviderError, match="cannot encode the image under 100 bytes"):
        image_data_uri(noise(200, 200), max_bytes=100)


def test_cache_key_is_a_short_digest_of_the_uri():
    a, b = image_data_uri(noise(40, 40)), image_data_uri(Image.new("RGB", (40, 40)))
    assert uri_key(a) == uri_key(a) != uri_key(b)
    assert len(uri_key(a)) == 32
