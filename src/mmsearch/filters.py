"""Filters on the facts of a photo: when and where it was taken, the camera, the label,
the shape. One model for the CLI options, the API's parameters and what a query names
("海边 2023年7月", "beach in Paris"), turned into one Milvus expression.

Dates are wall-clock times where the photo was taken (EXIF ``DateTimeOriginal``), stored
as seconds since 1970-01-01 00:00 *as if it were UTC*: "July 2023" means July where the
photo was taken, whatever the time zone. Places are gazetteer entries (``places.py``) and
filter by their code, so 巴黎 and Paris are the same filter.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

#: The three levels a place filter can name.
PLACE_KINDS = ("city", "region", "country")
ORIENTATIONS = ("landscape", "portrait", "square")


@dataclass(frozen=True)
class Place:
    """A gazetteer entry a filter can name: ``code`` is the geonames id of a city, the
    geonames admin1 code of a region ("FR.11"), or the ISO country code ("FR")."""

    kind: str
    code: str
    name: str  # English
    name_zh: str = ""
    country_code: str = ""
    latitude: float = 0.0
    longitude: float = 0.0


@dataclass(frozen=True)
class Near:
    """Within ``radius_km`` of a point (great-circle distance)."""

    latitude: float
    longitude: float
    radius_km: float


@dataclass(frozen=True)
class Filters:
    """What results must satisfy; empty fields filter nothing."""

    taken_from: datetime | None = None  # inclusive, wall-clock (naive)
    taken_until: datetime | None = None  # exclusive, wall-clock (naive)
    places: tuple[Place, ...] = ()  # any of them
    near: Near | None = None
    camera: str | None = None  # the start of the make or the model, any case
    label: str | None = None
    orientation: str | None = None
    #: Where each came from, for display: ("date", "2023年7月"), ("place", "Paris")...
    understood: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def __bool__(self) -> bool:
        return any(
            (self.taken_from, self.taken_until, self.places, self.near, self.camera)
            + (self.label, self.orientation)
        )

    def merged(self, other: Filters) -> Filters:
        """``other``'s fields where it sets them, ours elsewhere (explicit options win
        over what a query's words implied)."""
        changes = {
            name: getattr(other, name)
            for name in ("taken_from", "taken_until", "places", "near", "camera")
            + ("label", "orientation")
            if getattr(other, name)
        }
        understood = self.understood + other.understood
        return replace(self, **changes, understood=understood)


def wall_clock_seconds(moment: datetime) -> int:
    """Seconds since 1970-01-01 00:00 of a wall-clock time (its time zone ignored)."""
    return calendar.timegm(moment.replace(tzinfo=None).timetuple())


def literal(value: str) -> str:
    """A Milvus string literal; the value never becomes part of the expression."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def expression(filters: Filters) -> str:
    """The Milvus boolean expression for ``filters`` ("" when they filter nothing)."""
    parts = []
    if filters.taken_from is not None:
        parts.append(f"taken_at >= {wall_clock_seconds(filters.taken_from)}")
    if filters.taken_until is not None:
        parts.append(f"taken_at < {wall_clock_seconds(filters.taken_until)}")
    if filters.taken_from is not None or filters.taken_until is not None:
        parts.append("taken_at != 0")
    if filters.places:
        parts.append("(" + " or ".join(_place(p) for p in filters.places) + ")")
    if filters.near is not None:
        parts.append(_box(filters.near))
    if filters.camera:
        word = literal(filters.camera.lower().replace("%", "") + "%")
        parts.append(f"(camera_make_key like {word} or camera_model_key like {word})")
    if filters.label:
        parts.append(f"label == {literal(filters.label)}")
    if filters.orientation:
        parts.append(_orientation(filters.orientation))
    return " and ".join(parts)


def _place(place: Place) -> str:
    if place.kind == "city":
        return f"place_city_id == {int(place.code)}"
    column = "place_region_code" if place.kind == "region" else "place_country_code"
    return f"{column} == {literal(place.code)}"


def _box(near: Near) -> str:
    """A latitude/longitude box around the circle (Milvus has no geo functions); the exact
    distance is checked on the results (``within``)."""
    dlat = near.radius_km / 111.195
    cos = max(math.cos(math.radians(near.latitude)), 1e-6)
    dlon = min(near.radius_km / (111.195 * cos), 180.0)
    lat = f"latitude >= {near.latitude - dlat} and latitude <= {near.latitude + dlat}"
    west, east = near.longitude - dlon, near.longitude + dlon
    if west < -180 or east > 180:  # the box crosses the antimeridian
        west, east = (west + 360) % 360 - 180, (east + 180) % 360 - 180
        lon = f"(longitude >= {west} or longitude <= {east})"
    else:
        lon = f"longitude >= {west} and longitude <= {east}"
    return f"has_gps == true and {lat} and {lon}"


def _orientation(kind: str) -> str:
    if kind == "landscape":
        return "width > height"
    if kind == "portrait":
        return "height > width"
    return "width == height"


def within(near: Near, latitude: float, longitude: float) -> bool:
    """Whether a point is within ``near`` (haversine, Earth radius 6371 km)."""
    p1, p2 = math.radians(near.latitude), math.radians(latitude)
    dp, dl = p2 - p1, math.radians(longitude - near.longitude)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(min(1.0, math.sqrt(a))) <= near.radius_km


class FilterError(ValueError):
    """A filter option that cannot be understood; the message says which and why."""


def parse_date(text: str) -> datetime:
    """An ISO date or date-time ("2023-07-01", "2023-07-01T18:30"), or a year ("2019") or a
    month ("2023-07"): the moment it starts."""
    value = text.strip()
    try:
        if len(value) == 4 and value.isdigit():
            return datetime(int(value), 1, 1)
        if len(value) == 7 and value[4] == "-":
            return datetime(int(value[:4]), int(value[5:]), 1)
        return datetime.fromisoformat(value).replace(tzinfo=None)
    except ValueError:
        raise FilterError(f"not a date: {text!r} (use 2023-07-01, 2023-07 or 2023)") from None


def parse_near(text: str) -> Near:
    """ "LAT,LON,RADIUS" with the radius in km or m ("48.85,2.35,5km", "35.7,139.7,500m")."""
    try:
        lat, lon, radius = (p.strip().lower() for p in text.split(","))
        if radius.endswith("km"):
            km = float(radius[:-2])
        elif radius.endswith("m"):
            km = float(radius[:-1]) / 1000
        else:
            km = float(radius)
        near = Near(float(lat), float(lon), km)
    except ValueError:
        raise FilterError(f"not LAT,LON,RADIUS: {text!r} (e.g. 48.85,2.35,5km)") from None
    if not (-90 <= near.latitude <= 90 and -180 <= near.longitude <= 180 and near.radius_km > 0):
        raise FilterError(f"out of range: {text!r}")
    return near


def build(
    *,
    after: str | None = None,
    before: str | None = None,
    place: str | None = None,
    near: str | None = None,
    camera: str | None = None,
    label: str | None = None,
    orientation: str | None = None,
    find_place: Callable[[str], list[Place]] | None = None,
) -> Filters:
    """Filters from the CLI's options or the API's parameters (strings as the user typed
    them); a place name is looked up with ``find_place`` (the gazetteer's ``find``)."""
    places: tuple[Place, ...] = ()
    if place:
        found = find_place(place) if find_place is not None else []
        if not found:
            raise FilterError(f"unknown place: {place!r}")
        places = (found[0],)
    if orientation and orientation not in ORIENTATIONS:
        raise FilterError(f"orientation must be one of {', '.join(ORIENTATIONS)}")
    understood = tuple(
        (kind, value)
        for kind, value in (("after", after), ("before", before), ("place", place))
        + (("near", near), ("camera", camera), ("label", label), ("orientation", orientation))
        if value
    )
    return Filters(
        taken_from=parse_date(after) if after else None,
        taken_until=parse_date(before) if before else None,
        places=places,
        near=parse_near(near) if near else None,
        camera=camera.strip().lower() or None if camera else None,
        label=label or None,
        orientation=orientation or None,
        understood=understood,
    )


def as_dict(filters: Filters) -> dict[str, object]:
    """The filters as JSON-ready data (what the CLI's --json and the API return)."""
    return {
        "taken_from": filters.taken_from.isoformat() if filters.taken_from else None,
        "taken_until": filters.taken_until.isoformat() if filters.taken_until else None,
        "places": [
            {"kind": p.kind, "code": p.code, "name": p.name, "name_zh": p.name_zh}
            for p in filters.places
        ],
        "near": (
            {
                "latitude": filters.near.latitude,
                "longitude": filters.near.longitude,
                "radius_km": filters.near.radius_km,
            }
            if filters.near
            else None
        ),
        "camera": filters.camera,
        "label": filters.label,
        "orientation": filters.orientation,
        "understood": [{"kind": kind, "text": text} for kind, text in filters.understood],
    }
