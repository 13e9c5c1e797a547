"""Photos with the metadata phones and cameras write, built by the tests (never downloaded):
EXIF with date, offset, GPS and camera, and a small HEIC made once with pillow-heif."""

from __future__ import annotations

import base64
from datetime import datetime
from pathlib import Path

from PIL import Image
from PIL.ExifTags import GPS, IFD, Base
from PIL.TiffImagePlugin import IFDRational as R

#: 64x32 stored, orientation 6 (viewed 32x64, red on top), 2024-05-01 09:15:30.25 +08:00,
#: Apple iPhone 15 Pro, West Lake (30°14'30.5"N 120°9'E). See tools/heic_fixture.py.
HEIC = base64.b64decode(
    "AAAAHGZ0eXBoZWljAAAAAG1pZjFoZWljbWlhZgAAAchtZXRhAAAAAAAAACFoZGxyAAAAAAAAAABwaWN0AAAAAAAA"
    "AAAAAAAAAAAAADRpbG9jAAAAAERAAAIAAQAAAAAB7AABAAAAAAAAACYAAgAAAAACEgABAAAAAAAAARQAAAA4aWlu"
    "ZgAAAAAAAgAAABVpbmZlAgAAAAABAABodmMxAAAAABVpbmZlAgAAAQACAABFeGlmAAAAAA5waXRtAAAAAAABAAAB"
    "B2lwcnAAAADmaXBjbwAAAHZodmNDAQNwAAAAkAAAAAAAHvAA/P34+AAADwNgAAEAGEABDAH//wNwAAADAJAAAAMA"
    "AAMAHroCQGEAAQAqQgEBA3AAAAMAkAAAAwAAAwAeoCCBBZbq5Ka5uAhoMCAAAAMDIAAAAwAhYgABAAZEAcFzwIkA"
    "AAATY29scm5jbHgAAQANAAaAAAAAFGlzcGUAAAAAAAAAQAAAAEAAAAAoY2xhcAAAAEAAAAABAAAAIAAAAAEAAAAA"
    "AAAAAv///+AAAAACAAAAEHBpeGkAAAAAAwgICAAAAAlpcm90AwAAABlpcG1hAAAAAAAAAAEAAQaBAgMFhIYAAAAa"
    "aXJlZgAAAAAAAAAOY2RzYwACAAEAAQAAAUJtZGF0AAAAIigBrxmA94SFN//iMr/mIF/ron7/3Brr61Qv+Ge3b/n+"
    "TGYAAAAGRXhpZgAATU0AKgAAAAgABQEPAAIAAAAGAAAASgEQAAIAAAAOAAAAUAESAAMAAAABAAYAAIdpAAQAAAAB"
    "AAAAXoglAAQAAAABAAAApAAAAABBcHBsZQBpUGhvbmUgMTUgUHJvAAADkAMAAgAAABQAAACIkBEAAgAAAAcAAACc"
    "kpEAAgAAAAMyNQAAAAAAADIwMjQ6MDU6MDEgMDk6MTU6MzAAKzA4OjAwAAAABAABAAIAAAACTgAAAAACAAUAAAAD"
    "AAAA2gADAAIAAAACRQAAAAAEAAUAAAADAAAA8gAAAAAAAAAeAAAAAQAAAA4AAAABAAAAPQAAAAIAAAB4AAAAAQAA"
    "AAkAAAABAAAAAAAAAAE="
)


def exif(
    *,
    date: object = "2023:07:14 18:30:05",
    subsec: object = "42",
    offset: object = "+02:00",
    gps: dict[int, object] | None = None,
    make: object = "Apple",
    model: object = "iPhone 15 Pro",
    orientation: int = 6,
) -> Image.Exif:
    """EXIF as a phone writes it; any value may be replaced by garbage (None leaves it out)."""
    ex = Image.Exif()
    ex[Base.Orientation] = orientation
    for tag, value in ((Base.Make, make), (Base.Model, model)):
        if value is not None:
            ex[tag] = value
    main = ex.get_ifd(IFD.Exif)
    for tag, value in (
        (Base.DateTimeOriginal, date),
        (Base.SubsecTimeOriginal, subsec),
        (Base.OffsetTimeOriginal, offset),
    ):
        if value is not None:
            main[tag] = value
    if gps is None:  # the Eiffel Tower: 48°51'29.64"N 2°17'40.56"E
        gps = {
            GPS.GPSLatitudeRef: "N",
            GPS.GPSLatitude: (R(48), R(51), R(2964, 100)),
            GPS.GPSLongitudeRef: "E",
            GPS.GPSLongitude: (R(2), R(17), R(4056, 100)),
        }
    ex.get_ifd(IFD.GPSInfo).update(gps)
    return ex


def _dms(value: float) -> tuple[R, R, R]:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round((value - degrees - minutes / 60) * 3600 * 100)
    return R(degrees), R(minutes), R(seconds, 100)


def gps(latitude: float, longitude: float) -> dict[int, object]:
    """A GPS IFD for a position, as a phone writes it."""
    return {
        GPS.GPSLatitudeRef: "N" if latitude >= 0 else "S",
        GPS.GPSLatitude: _dms(latitude),
        GPS.GPSLongitudeRef: "E" if longitude >= 0 else "W",
        GPS.GPSLongitude: _dms(longitude),
    }


def taken_photo(
    source: Path,
    target: Path,
    *,
    taken: datetime | None = None,
    offset: str | None = "+02:00",
    position: tuple[float, float] | None = None,
    make: str | None = "Apple",
    model: str | None = "iPhone 15 Pro",
) -> Path:
    """A copy of the photo ``source`` saved at ``target`` (format from the suffix) with the
    EXIF of a phone: when, with which offset, where and with what it was taken."""
    image = Image.open(source).convert("RGB")
    tags = exif(
        date=taken.strftime("%Y:%m:%d %H:%M:%S") if taken else None,
        subsec=None,
        offset=offset if taken else None,
        gps=gps(*position) if position else {},
        make=make,
        model=model,
        orientation=1,
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, exif=tags.tobytes())
    return target
