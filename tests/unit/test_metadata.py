"""Photo facts (metadata.py) and the formats phones write (images.py), on files made here:
JPEG, PNG, WebP and AVIF written with Pillow, HEIC from a fixture made once with pillow-heif
(``tools/heic_fixture.py``; the project itself only decodes HEIC)."""

from __future__ import annotations

import io
import os
import time
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image
from PIL.ExifTags import GPS, Base
from PIL.TiffImagePlugin import IFDRational as R

from mmsearch.images import (
    IMAGE_SUFFIXES,
    ImageError,
    decode_image,
    decode_photo,
    load_image,
    media_type,
)
from mmsearch.metadata import PhotoFacts, read_facts

from ..photos import HEIC, exif

LIMIT = 89_478_485


def _photo(fmt: str, exif: Image.Exif | None = None, mode: str = "RGB") -> bytes:
    """64x32 with a red left quarter, saved in ``fmt`` with ``exif``."""
    img = Image.new(mode, (64, 32), (0, 0, 255, 255) if mode == "RGBA" else (0, 0, 255))
    img.paste((255, 0, 0, 255) if mode == "RGBA" else (255, 0, 0), (0, 0, 16, 32))
    buf = io.BytesIO()
    kw = {"exif": exif.tobytes()} if exif is not None else {}
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _facts(exif: Image.Exif, mtime: float | None = None) -> PhotoFacts:
    return decode_photo(_photo("JPEG", exif), max_pixels=LIMIT, mtime=mtime).facts


def _is_red(pixel: tuple[int, int, int]) -> bool:
    return pixel[0] > 180 and pixel[2] < 90


# -- formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "AVIF", "HEIF"])
def test_every_format_is_decoded_upright_with_its_facts(fmt):
    data = HEIC if fmt == "HEIF" else _photo(fmt, exif())
    photo = decode_photo(data, max_pixels=LIMIT)
    assert photo.image.mode == "RGB" and photo.image.size == (32, 64)
    assert (photo.width, photo.height) == (32, 64)  # as viewed
    assert _is_red(photo.image.getpixel((16, 4))) and not _is_red(photo.image.getpixel((16, 60)))
    facts = photo.facts
    assert facts.file_format == fmt
    assert (facts.camera_make, facts.camera_model) == ("Apple", "iPhone 15 Pro")
    assert facts.taken_at_source == "exif"
    if fmt == "HEIF":
        assert facts.taken_at == datetime(2024, 5, 1, 9, 15, 30, 250000)
        assert facts.utc_offset_minutes == 480
        assert facts.latitude == pytest.approx(30.24181, abs=1e-4)
        assert facts.longitude == pytest.approx(120.15, abs=1e-4)
    else:
        assert facts.taken_at == datetime(2023, 7, 14, 18, 30, 5, 420000)
        assert facts.utc_offset_minutes == 120
        assert (facts.latitude, facts.longitude) == pytest.approx((48.85823, 2.29460), abs=1e-4)
    utc = facts.taken_at - timedelta(minutes=facts.utc_offset_minutes)
    assert facts.taken_at_utc == utc.replace(tzinfo=UTC)
    decode_image(data, max_pixels=LIMIT)  # the old entry point still works


def test_decode_image_keeps_its_signature():
    img, width, height = decode_image(HEIC, max_pixels=LIMIT)
    assert img.size == (width, height) == (32, 64)


def test_phone_formats_are_indexed_and_served():
    assert {".heic", ".heif", ".hif", ".avif"} <= IMAGE_SUFFIXES
    assert media_type(HEIC) == "image/heif"
    assert media_type(_photo("AVIF")) == "image/avif"


def test_avif_alpha_is_flattened_on_white():
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, "AVIF")
    out, _, _ = decode_image(buf.getvalue(), max_pixels=LIMIT)
    assert out.mode == "RGB" and min(out.getpixel((4, 4))) > 240


def _claim_size(data: bytes, width: int, height: int) -> bytes:
    """The same file with every ``ispe`` (image spatial extent) box claiming another size:
    what a HEIC/AVIF decompression bomb looks like from its header."""
    out = bytearray(data)
    at = out.find(b"ispe")
    assert at > 0
    while at > 0:
        out[at + 8 : at + 16] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
        at = out.find(b"ispe", at + 4)
    return bytes(out)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_bombs_are_refused_from_the_header(fmt):
    data = HEIC if fmt == "HEIF" else _photo("AVIF")
    started = time.perf_counter()
    # The HEIC shows 32x64 (cropped from its coded 64x64, then rotated): the coded size
    # counts, since the codec decodes all of it before cropping.
    reason = "too large: 12000x12000 pixels coded" if fmt == "HEIF" else "decompression bomb"
    with pytest.raises(ImageError, match=reason):
        decode_photo(_claim_size(data, 12_000, 12_000), max_pixels=LIMIT)
    # Past libheif's and libavif's own limits the plugins refuse at open: still a reason.
    with pytest.raises(ImageError):
        decode_photo(_claim_size(data, 50_000, 50_000), max_pixels=LIMIT)
    assert time.perf_counter() - started < 0.5  # nothing was decoded


def test_query_pixel_budget_applies_to_heic():
    with pytest.raises(ImageError, match="query images may have at most"):
        decode_image(HEIC, max_pixels=LIMIT, max_decoded_pixels=1000)


def test_load_image_dates_a_photo_without_exif_by_its_mtime(tmp_path):
    path = tmp_path / "screenshot.png"
    path.write_bytes(_photo("PNG"))
    os.utime(path, (1_700_000_000, 1_700_000_000))
    loaded = load_image(path, max_pixels=LIMIT)
    assert loaded.facts.taken_at_source == "mtime"
    assert loaded.facts.taken_at == datetime.fromtimestamp(1_700_000_000)
    assert loaded.facts.file_format == "PNG" and loaded.file_size == path.stat().st_size


# -- dates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        "0000:00:00 00:00:00",
        "    :  :     :  :  ",
        "",
        "2023:13:45 25:61:00",
        "9999:12:31 23:59:59",
        "yesterday",
        "\x00\x00\x00",
    ],
)
def test_garbage_dates_fall_back_to_the_mtime(garbage):
    facts = _facts(exif(date=garbage), mtime=1_700_000_000)
    assert facts.taken_at_source == "mtime"
    assert facts.taken_at == datetime.fromtimestamp(1_700_000_000)
    assert facts.camera_make == "Apple"  # the other facts survive


def test_no_date_and_no_mtime_is_none():
    facts = _facts(exif(date=None))
    assert facts.taken_at is None and facts.taken_at_source is None


def test_date_variants_seen_in_the_wild():
    assert _facts(exif(date="2023-07-14 18:30")).taken_at == datetime(
        2023, 7, 14, 18, 30, 0, 420000
    )
    assert _facts(exif(date="2023:07:14 18:30:05\x00 ")).taken_at.second == 5


def test_fallback_to_datetime_when_the_original_date_is_garbage():
    ex = exif(date="0000:00:00 00:00:00", offset=None)
    ex[Base.DateTime] = "2022:01:02 03:04:05"
    facts = _facts(ex)
    assert facts.taken_at == datetime(2022, 1, 2, 3, 4, 5) and facts.taken_at_source == "exif"


@pytest.mark.parametrize(
    ("offset", "minutes"),
    [("+02:00", 120), ("-05:30", -330), ("+0545", 345), ("+25:00", None), ("junk", None)],
)
def test_utc_offsets(offset, minutes):
    assert _facts(exif(offset=offset, gps={})).utc_offset_minutes == minutes


@pytest.mark.parametrize(("subsec", "micros"), [("5", 500000), ("123456789", 123456), ("ab", 0)])
def test_subseconds(subsec, micros):
    assert _facts(exif(subsec=subsec)).taken_at.microsecond == micros


def test_offset_from_the_gps_clock_when_none_is_written():
    gps = {
        GPS.GPSLatitudeRef: "N",
        GPS.GPSLatitude: (R(35), R(39), R(0)),
        GPS.GPSLongitudeRef: "E",
        GPS.GPSLongitude: (R(139), R(44), R(0)),
        GPS.GPSDateStamp: "2023:07:14",
        GPS.GPSTimeStamp: (R(9), R(30), R(4)),  # 18:30:05 in Tokyo is 09:30:05 UTC
    }
    facts = _facts(exif(offset=None, gps=gps))
    assert facts.utc_offset_minutes == 540
    assert facts.taken_at_utc == datetime(2023, 7, 14, 9, 30, 5, 420000, tzinfo=UTC)


def test_mtime_is_local_wall_clock_with_its_offset(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    try:
        facts = read_facts(Image.new("RGB", (4, 4)), mtime=1_700_000_000)  # 22:13:20 UTC
    finally:
        monkeypatch.undo()
        time.tzset()
    assert facts.taken_at == datetime(2023, 11, 15, 6, 13, 20)
    assert facts.utc_offset_minutes == 480 and facts.taken_at_source == "mtime"


# -- places --------------------------------------------------------------------------------


def _gps(lat: object, lat_ref: object, lon: object, lon_ref: object) -> dict[int, object]:
    return {
        GPS.GPSLatitudeRef: lat_ref,
        GPS.GPSLatitude: lat,
        GPS.GPSLongitudeRef: lon_ref,
        GPS.GPSLongitude: lon,
    }


def test_south_and_west_are_negative():
    gps = _gps((R(33), R(52), R(0)), "S", (R(151), R(12), R(36)), "W")
    facts = _facts(exif(gps=gps))
    assert facts.latitude == pytest.approx(-33.86667) and facts.longitude == pytest.approx(-151.21)


@pytest.mark.parametrize(
    "gps",
    [
        _gps((R(0, 0), R(0, 0), R(0, 0)), "N", (R(0, 0), R(0, 0), R(0, 0)), "E"),  # 0/0
        _gps((R(0), R(0), R(0)), "N", (R(0), R(0), R(0)), "E"),  # no fix yet
        _gps((R(10**9), R(0), R(0)), "N", (R(2), R(0), R(0)), "E"),  # past the pole
        _gps((R(48), R(51)), "N", (R(2), R(17)), "E"),  # two parts
        {GPS.GPSLatitudeRef: "N"},  # half a position
        {},
    ],
)
def test_broken_gps_is_none(gps):
    facts = _facts(exif(gps=gps))
    assert facts.latitude is None and facts.longitude is None
    assert facts.taken_at is not None  # the rest is still read


def test_void_gps_status_is_ignored():
    gps = _gps((R(48), R(51), R(0)), "N", (R(2), R(17), R(0)), "E") | {GPS.GPSStatus: "V"}
    assert not _facts(exif(gps=gps)).has_gps


# -- cameras -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "model", "clean"),
    [
        ("Apple", "iPhone 15 Pro", ("Apple", "iPhone 15 Pro")),
        ("NIKON CORPORATION", "NIKON D750", ("Nikon", "D750")),
        ("Canon", "Canon EOS R5", ("Canon", "EOS R5")),
        ("OLYMPUS IMAGING CORP.  ", "E-M10", ("Olympus", "E-M10")),
        ("RICOH IMAGING COMPANY, LTD.", "GR III", ("Ricoh", "GR III")),
        ("samsung", "SM-G991B\x00\x00", ("samsung", "SM-G991B")),
        ("DJI", "FC3582", ("DJI", "FC3582")),
        ("", "  ", (None, None)),
        (b"Google\x00", b"Pixel 8", ("Google", "Pixel 8")),
    ],
)
def test_camera_names_are_cleaned(make, model, clean):
    facts = _facts(exif(make=make, model=model))
    assert (facts.camera_make, facts.camera_model) == clean


def test_unreadable_exif_never_raises():
    class Broken:
        format = "JPEG"

        def getexif(self):
            raise SyntaxError("not a TIFF file")

    facts = read_facts(Broken(), mtime=None)  # type: ignore[arg-type]
    assert facts == PhotoFacts(file_format="JPEG")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_truncated_exif_block_never_raises():
    data = _photo("JPEG", exif())
    at = data.find(b"Exif\x00\x00")
    broken = data[: at + 6] + b"MM\x00\x2a\x00\x00\xff\xff" + data[at + 14 :]
    photo = decode_photo(broken, max_pixels=LIMIT, mtime=1_700_000_000)
    assert photo.image.size in ((64, 32), (32, 64))
    assert photo.facts.taken_at is not None
