"""Photo metadata people search and filter by, read at ingest from an image file's EXIF, GPS,
IPTC and XMP with Pillow (HEIC/HEIF through pillow-heif's opener, registered by images.py).

Flat keys, each present only when the file has a sound value for it:
- `taken`: ISO 8601 from EXIF DateTimeOriginal, with OffsetTimeOriginal's offset when the file
  has one ("2023-07-04T10:15:00+02:00"), so a string comparison orders it;
- `camera`: EXIF Make and Model, the make not repeated ("Canon EOS R6", "FUJIFILM X-T4");
- `lens`: EXIF LensModel;
- `lat`, `lon`: GPS position in signed decimal degrees (south and west negative);
- `keywords`: IPTC keywords and XMP dc:subject, as a list, each once;
- `description`: XMP dc:description, else the IPTC caption, else EXIF ImageDescription;
- `orientation`: the EXIF orientation tag (1-8).

A value that cannot be read or makes no sense (a date in year 0, a latitude past 90, GPS 0/0,
a rational with a zero denominator, a string of 10k characters) is dropped for that key only:
reading metadata never fails an image.
"""

from __future__ import annotations

import math
import re
from datetime import datetime

from PIL import ExifTags, Image, IptcImagePlugin

from .. import images  # noqa: F401  (registers the HEIC/HEIF opener)
from ..files import open_regular

PHOTO_KEYS = ("taken", "camera", "lens", "lat", "lon", "keywords", "description", "orientation")
MAX_CHARS = 2000  # a longer description or keyword is junk, not something people type
MAX_KEYWORDS = 200
_DATE = re.compile(r"^(\d{4})[:-](\d\d)[:-](\d\d)[ T](\d\d):(\d\d):(\d\d)")
_OFFSET = re.compile(r"^[+-](0\d|1[0-4]):[0-5]\d$")
_MAKE, _MODEL, _ORIENTATION, _DESCRIPTION = 0x010F, 0x0110, 0x0112, 0x010E
_TAKEN, _OFFSET_TAKEN, _LENS = 0x9003, 0x9011, 0xA434
_IPTC_KEYWORDS, _IPTC_CAPTION = (2, 25), (2, 120)


def photo_metadata(path) -> dict:
    """The photo keys of the image file at `path` (see the module's docstring); {} when the
    file holds none or cannot be opened (its pixels' error is the decoder's to report)."""
    try:
        with open_regular(path) as file, Image.open(file) as image:
            return _read(image)
    except Exception:  # any failure of a parser over untrusted bytes: no metadata, no error
        return {}


def merged(stored: dict | None, photo: dict, given: dict) -> dict:
    """An image's metadata: what its file says under the photo keys, what the caller gave over
    it (the caller wins), and of what was stored before, the keys that are not photo keys."""
    kept = {k: v for k, v in (stored or {}).items() if k not in PHOTO_KEYS}
    return {**kept, **photo, **(given or {})}


def _read(image: Image.Image) -> dict:
    exif = _attempt(image.getexif) or Image.Exif()
    details = _attempt(lambda: exif.get_ifd(ExifTags.IFD.Exif)) or {}
    gps = _attempt(lambda: exif.get_ifd(ExifTags.IFD.GPSInfo)) or {}
    iptc = _attempt(lambda: IptcImagePlugin.getiptcinfo(image)) or {}
    xmp = _attempt(image.getxmp) or {}
    lat = _attempt(lambda: _degrees(gps.get(2), gps.get(1), "N", "S", 90))
    lon = _attempt(lambda: _degrees(gps.get(4), gps.get(3), "E", "W", 180))
    if lat is not None and lon is not None and (lat, lon) == (0.0, 0.0):
        lat = lon = None  # "null island": what a phone without a fix writes
    found = {
        "taken": _attempt(lambda: _taken(details.get(_TAKEN), details.get(_OFFSET_TAKEN))),
        "camera": _attempt(lambda: _camera(exif.get(_MAKE), exif.get(_MODEL))),
        "lens": _attempt(lambda: _text(details.get(_LENS))),
        "lat": lat if lon is not None else None,
        "lon": lon if lat is not None else None,
        "keywords": _attempt(lambda: _keywords(iptc.get(_IPTC_KEYWORDS), _find(xmp, "subject"))),
        "description": _attempt(
            lambda: _first(
                _find(xmp, "description"), iptc.get(_IPTC_CAPTION), exif.get(_DESCRIPTION)
            )
        ),
        "orientation": _attempt(lambda: _orientation(exif.get(_ORIENTATION))),
    }
    return {key: value for key, value in found.items() if value not in (None, "", [])}


def _attempt(read):
    """`read()`, or None when it fails: EXIF, IPTC and XMP parsers meet every kind of broken
    byte (struct errors, bad rationals, bad XML), and each failure costs one key only."""
    try:
        return read()
    except Exception:
        return None


def _text(value) -> str | None:
    """A tag's value as clean text: bytes decoded (UTF-8, else Latin-1), NULs and runs of
    white space folded, None when empty or longer than MAX_CHARS."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    value = " ".join(value.replace("\x00", " ").split())
    value = "".join(c for c in value if c.isprintable())
    value = value.encode("utf-8", "replace").decode("utf-8")  # no lone surrogate is stored
    return value if value and len(value) <= MAX_CHARS else None


def _taken(raw, offset) -> str | None:
    match = _DATE.match(_text(raw) or "")
    if not match:
        return None
    moment = datetime(*map(int, match.groups()))  # ValueError on month 13, day 0...
    if not 1826 <= moment.year <= datetime.now().year + 1:  # before photography, or future
        return None
    offset = _text(offset) or ""
    return moment.isoformat() + (offset if _OFFSET.match(offset) else "")


def _camera(make, model) -> str | None:
    make, model = _text(make), _text(model)
    if not model:
        return make
    if not make or model.lower().startswith(make.split()[0].lower()):
        return model  # "Canon" + "Canon EOS R6"; "NIKON CORPORATION" + "NIKON D750"
    return f"{make} {model}"


def _degrees(value, ref, positive: str, negative: str, limit: float) -> float | None:
    if value is None:
        return None
    parts = [float(part) for part in (value if isinstance(value, tuple) else (value,))]
    if not 1 <= len(parts) <= 3 or not all(math.isfinite(p) and p >= 0 for p in parts):
        return None
    parts += [0.0] * (3 - len(parts))
    if parts[1] >= 60 or parts[2] >= 60:
        return None
    degrees = parts[0] + parts[1] / 60 + parts[2] / 3600
    sign = {positive: 1, negative: -1}.get((_text(ref) or "").upper())
    if sign is None or degrees > limit:
        return None
    return round(sign * degrees, 6)


def _orientation(value) -> int | None:
    return value if isinstance(value, int) and 1 <= value <= 8 else None


def _keywords(*sources) -> list[str]:
    found: dict[str, str] = {}
    for source in sources:
        for value in source if isinstance(source, list) else [source]:
            word = _text(value)
            if word and word.lower() not in found and len(found) < MAX_KEYWORDS:
                found[word.lower()] = word
    return list(found.values())


def _first(*values) -> str | None:
    for value in values:
        text = _text(value[0] if isinstance(value, list) and value else value)
        if text:
            return text
    return None


def _find(xmp, key: str) -> list:
    """The text of every value under `key` anywhere in Pillow's XMP dictionary (dc:subject's
    rdf:Bag of rdf:li, dc:description's rdf:Alt of {lang, text}), in document order."""
    found, stack = [], [xmp]
    while stack:
        node = stack.pop(0)
        if isinstance(node, dict):
            if key in node:
                found += _leaves(node[key])
            stack += [v for k, v in node.items() if k != key]
        elif isinstance(node, list):
            stack += node
    return found


def _leaves(node) -> list:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        if "text" in node:
            return [node["text"]]
        return [leaf for k, v in node.items() if k not in ("lang", "about") for leaf in _leaves(v)]
    if isinstance(node, list):
        return [leaf for v in node for leaf in _leaves(v)]
    return []
