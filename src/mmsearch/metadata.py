"""The facts a photo's metadata states: when and where it was taken, with which camera.

Read with Pillow alone (``Image.getexif``), which reads EXIF from JPEG, TIFF, PNG, WebP,
HEIC and AVIF alike. EXIF in the wild is often broken: dates of "0000:00:00 00:00:00" or
blank, rationals of 0/0, coordinates past the poles, strings padded with NULs, numbers
where text belongs. Each fact is read on its own and whatever cannot be read is None, so
one bad tag never costs the others and reading never raises: ingest must not lose a photo
over its metadata.

``taken_at`` is the wall-clock time where the photo was taken (what the camera's clock
showed), naive, because that is what "July 2023" or "at 6 pm" means to the person searching
(``filters.py`` stores it that way). The UTC offset, when known, is kept beside it.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from PIL import Image
from PIL.ExifTags import GPS, IFD, Base

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Photography is younger than this; camera clocks reset to 0000 or 1970 are caught by
#: the parser (0000) or accepted (1970 is a real date; nothing tells it apart).
_FIRST_YEAR = 1826
#: (date tag, sub-second tag, UTC offset tag), best first: when the shutter opened, when it
#: was digitised (scans), when the file was last written.
_DATE_TAGS = (
    (Base.DateTimeOriginal, Base.SubsecTimeOriginal, Base.OffsetTimeOriginal),
    (Base.DateTimeDigitized, Base.SubsecTimeDigitized, Base.OffsetTimeDigitized),
    (Base.DateTime, Base.SubsecTime, Base.OffsetTime),
)
_DATE = re.compile(
    r"(\d{4})[:\-/.](\d{1,2})[:\-/.](\d{1,2})(?:[ T]+(\d{1,2}):(\d{1,2})(?::(\d{1,2}))?)?"
)
_OFFSET = re.compile(r"^([+-])(\d{1,2}):?(\d{2})$")
#: Corporate words dropped from a maker's name ("NIKON CORPORATION" -> "Nikon").
_MAKER_NOISE_WORDS = (
    "corporation corp corp. co co. ltd ltd. inc inc. company imaging optical digital "
    "electronics co.,ltd co.,ltd. co,ltd gmbh ag s.a. limited "
)
_MAKER_NOISE = frozenset(_MAKER_NOISE_WORDS.split())


#: Pillow's format names as people know them: iPhone and camera JPEGs with a depth map or a
#: preview are "MPO" to Pillow.
_FORMAT_NAMES = {"MPO": "JPEG"}


@dataclass(frozen=True)
class PhotoFacts:
    """What a photo's metadata says about it; None where it says nothing usable."""

    taken_at: datetime | None = None  # naive wall clock where the photo was taken
    taken_at_source: str | None = None  # "exif" or "mtime"
    utc_offset_minutes: int | None = None
    latitude: float | None = None
    longitude: float | None = None
    camera_make: str | None = None  # "Apple", "Nikon"
    camera_model: str | None = None  # "iPhone 15 Pro", "D750" (the make not repeated)
    file_format: str | None = None  # Pillow's format name: "JPEG", "HEIF", "AVIF", "PNG"

    @property
    def has_gps(self) -> bool:
        return self.latitude is not None and self.longitude is not None

    @property
    def taken_at_utc(self) -> datetime | None:
        """The moment as an aware UTC datetime, when the offset is known."""
        if self.taken_at is None or self.utc_offset_minutes is None:
            return None
        return (self.taken_at - timedelta(minutes=self.utc_offset_minutes)).replace(tzinfo=UTC)


def read_facts(image: Image.Image, *, mtime: float | None = None) -> PhotoFacts:
    """The facts of an opened image (read before ``exif_transpose``, which rewrites EXIF).

    ``mtime`` (the file's modification time, seconds since the epoch) dates a photo whose
    EXIF has no usable date, as this machine's local wall-clock time: screenshots, edited
    exports and scans usually keep their date only there."""
    exif = _safe(image.getexif, None)
    main = _safe(lambda: exif.get_ifd(IFD.Exif), {}) if exif is not None else {}
    gps = _safe(lambda: exif.get_ifd(IFD.GPSInfo), {}) if exif is not None else {}
    tags: dict[int, Any] = {}
    if exif is not None:
        tags.update(_safe(lambda: dict(exif), {}))
    tags.update(main or {})
    taken = _safe(lambda: _exif_date(tags), None)
    source = "exif" if taken else None
    if taken is None and mtime is not None:
        taken = _safe(lambda: _local_wall_clock(mtime), None)
        source = "mtime" if taken else None
    taken_at, offset = taken if taken else (None, None)
    if source == "exif" and offset is None and gps:
        offset = _safe(lambda: _offset_from_gps_time(taken_at, gps), None)
    latitude, longitude = _safe(lambda: _gps_position(gps), None) or (None, None)
    make = _safe(lambda: _clean_make(tags.get(Base.Make)), None)
    model = _safe(lambda: _clean_model(tags.get(Base.Model), tags.get(Base.Make)), None)
    return PhotoFacts(
        taken_at=taken_at,
        taken_at_source=source,
        utc_offset_minutes=offset,
        latitude=latitude,
        longitude=longitude,
        camera_make=make,
        camera_model=model,
        file_format=_FORMAT_NAMES.get(image.format or "", image.format or None),
    )


def _safe(read: Callable[[], T], default: T) -> T:
    """``read()``, or ``default`` if it fails in any way. EXIF parsers fail with struct
    errors, SyntaxError, ValueError, TypeError, UnicodeDecodeError, ZeroDivisionError,
    OverflowError and more, on data anyone can write; a photo is never lost over it."""
    try:
        return read()
    except Exception as exc:  # anything: see the docstring
        log.debug("unreadable metadata: %s: %s", type(exc).__name__, exc)
        return default


def _text(value: Any) -> str | None:
    """An EXIF string without its NUL and space padding; None for non-text or empty."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    value = " ".join(value.replace("\x00", " ").split())
    return value or None


def _exif_date(tags: dict[int, Any]) -> tuple[datetime, int | None] | None:
    """The first usable (wall-clock time, UTC offset in minutes) among the date tags."""
    for date_tag, subsec_tag, offset_tag in _DATE_TAGS:
        moment = _parse_datetime(_text(tags.get(date_tag)))
        if moment is None:
            continue
        micro = _safe(lambda t=subsec_tag: _subsec_micros(_text(tags.get(t))), 0)
        offset = _safe(lambda t=offset_tag: _parse_offset(_text(tags.get(t))), None)
        return moment.replace(microsecond=micro), offset
    return None


def _parse_datetime(text: str | None) -> datetime | None:
    """ "YYYY:MM:DD HH:MM:SS" (and the dashes, slashes and missing seconds seen in the
    wild); None for blanks, zeros and impossible or future dates."""
    if not text:
        return None
    m = _DATE.match(text)
    if m is None:
        return None
    year, month, day = int(m[1]), int(m[2]), int(m[3])
    hour, minute, second = (int(m[i]) if m[i] else 0 for i in (4, 5, 6))
    if not _FIRST_YEAR <= year <= date.today().year + 1:
        return None
    if second == 60:  # a leap second, or a sloppy writer
        second = 59
    try:
        return datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None


def _subsec_micros(text: str | None) -> int:
    """SubsecTime is the digits after the decimal point: "123" is 0.123 s."""
    digits = (text or "").strip()
    if not digits.isdigit() or not digits.isascii():
        return 0
    return int(digits[:6].ljust(6, "0"))


def _parse_offset(text: str | None) -> int | None:
    """ "+02:00" -> 120; None for anything else or outside the world's -12:00..+14:00."""
    m = _OFFSET.match(text or "")
    if m is None:
        return None
    if int(m[3]) >= 60:
        return None
    minutes = (int(m[2]) * 60 + int(m[3])) * (-1 if m[1] == "-" else 1)
    return minutes if -12 * 60 <= minutes <= 14 * 60 else None


def _local_wall_clock(mtime: float) -> tuple[datetime, int | None]:
    """A file time as this machine's local wall clock, with that clock's UTC offset."""
    local = datetime.fromtimestamp(mtime).astimezone()
    offset = local.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else None
    return local.replace(tzinfo=None), minutes


def _number(value: Any) -> float:
    """An EXIF rational (Pillow's IFDRational, a (num, den) pair or a plain number) as a
    float; ValueError for 0/0, infinities and anything else that is not a number."""
    if isinstance(value, tuple) and len(value) == 2:
        value = value[0] / value[1]
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def _degrees(value: Any) -> float:
    """(degrees, minutes, seconds) rationals, or a single rational, as decimal degrees."""
    if isinstance(value, tuple | list) and len(value) == 3:
        d, m, s = (_number(v) for v in value)
        return d + m / 60 + s / 3600
    if isinstance(value, tuple | list) and len(value) == 1:
        return _number(value[0])
    return _number(value)


def _gps_position(gps: dict[int, Any]) -> tuple[float, float] | None:
    """(latitude, longitude) in signed decimal degrees; None when missing, void, out of
    range, or exactly (0, 0) (what devices write before they have a fix)."""
    if not gps or _text(gps.get(GPS.GPSStatus)) == "V":
        return None
    lat, lon = _degrees(gps[GPS.GPSLatitude]), _degrees(gps[GPS.GPSLongitude])
    if (_text(gps.get(GPS.GPSLatitudeRef)) or "N").upper().startswith("S"):
        lat = -abs(lat)
    if (_text(gps.get(GPS.GPSLongitudeRef)) or "E").upper().startswith("W"):
        lon = -abs(lon)
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        return None
    return round(lat, 7), round(lon, 7)


def _offset_from_gps_time(local: datetime | None, gps: dict[int, Any]) -> int | None:
    """The UTC offset implied by the GPS clock (always UTC) against the camera's clock,
    rounded to 15 minutes: cameras and older phones that write no OffsetTime often write
    GPSDateStamp/GPSTimeStamp. None if the two disagree by more than any time zone."""
    if local is None:
        return None
    day = _parse_datetime(_text(gps.get(GPS.GPSDateStamp)))
    stamp = gps.get(GPS.GPSTimeStamp)
    if day is None or not isinstance(stamp, tuple | list) or len(stamp) != 3:
        return None
    hours, minutes, seconds = (_number(v) for v in stamp)
    utc = day + timedelta(hours=hours, minutes=minutes, seconds=seconds)
    offset = round((local - utc).total_seconds() / 900) * 15
    return offset if -12 * 60 <= offset <= 14 * 60 else None


def _clean_make(value: Any) -> str | None:
    """ "NIKON CORPORATION" -> "Nikon", "OLYMPUS IMAGING CORP." -> "Olympus", "Apple" kept:
    corporate words dropped, shouted names (more than three letters) put in title case."""
    text = _text(value)
    if text is None:
        return None
    words = [w for w in text.replace(",", ", ").split() if w.lower().strip(",") not in _MAKER_NOISE]
    words = [w.strip(",") for w in words if w.strip(",")] or text.split()
    return " ".join(w.title() if w.isupper() and len(w) > 3 else w for w in words)[:128]


def _clean_model(value: Any, make: Any) -> str | None:
    """The model without the make repeated in front ("Canon EOS R5" -> "EOS R5",
    "NIKON D750" -> "D750"); "iPhone 15 Pro" as written."""
    model = _text(value)
    if model is None:
        return None
    raw_make = _text(make) or ""
    prefixes = {raw_make.lower(), (_clean_make(make) or "").lower()}
    prefixes.add(raw_make.split()[0].lower() if raw_make else "")
    for prefix in sorted((p for p in prefixes if p), key=len, reverse=True):
        if model.lower().startswith(prefix + " ") or model.lower().startswith(prefix + "-"):
            model = model[len(prefix) + 1 :].strip() or model
            break
    return model[:128]
