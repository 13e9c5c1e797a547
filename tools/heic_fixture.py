"""Print the small HEIC that ``tests/unit/test_metadata.py`` embeds (``HEIC_B64``).

The tests only decode HEIC, which the run-time dependency pi-heif does; encoding needs
pillow-heif, whose wheels bundle the GPL x265 encoder, so it is kept out of the project's
dependencies and the fixture is made once here:

    .venv/bin/pip install pillow-heif==1.8.1
    .venv/bin/python tools/heic_fixture.py

The image is 64x32, its left quarter red and the rest blue, stored with EXIF orientation 6
(viewed rotated 90° clockwise: 32 wide, 64 tall, red on top), taken 2024-05-01 09:15:30.25
at +08:00 by an "iPhone 15 Pro", at West Lake, Hangzhou.
"""

from __future__ import annotations

import base64
import io
import textwrap

from PIL import Image
from PIL.ExifTags import GPS, IFD, Base
from PIL.TiffImagePlugin import IFDRational


def exif() -> Image.Exif:
    ex = Image.Exif()
    ex[Base.Orientation] = 6
    ex[Base.Make] = "Apple"
    ex[Base.Model] = "iPhone 15 Pro"
    main = ex.get_ifd(IFD.Exif)
    main[Base.DateTimeOriginal] = "2024:05:01 09:15:30"
    main[Base.SubsecTimeOriginal] = "25"
    main[Base.OffsetTimeOriginal] = "+08:00"
    gps = ex.get_ifd(IFD.GPSInfo)
    gps[GPS.GPSLatitudeRef] = "N"
    gps[GPS.GPSLatitude] = (IFDRational(30), IFDRational(14), IFDRational(3050, 100))
    gps[GPS.GPSLongitudeRef] = "E"
    gps[GPS.GPSLongitude] = (IFDRational(120), IFDRational(9), IFDRational(0))
    return ex


def main() -> None:
    from pillow_heif import register_heif_opener

    register_heif_opener()
    img = Image.new("RGB", (64, 32), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 16, 32))
    buf = io.BytesIO()
    img.save(buf, "HEIF", quality=30, exif=exif().tobytes())
    print("\n".join(textwrap.wrap(base64.b64encode(buf.getvalue()).decode(), 88)))


if __name__ == "__main__":
    main()
