"""Opening images for the encoder: files are read with their EXIF orientation applied."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError

# EXIF orientations 5-8 rotate by 90 or 270 degrees: width and height swap.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


def image_size(source) -> tuple[int, int]:
    """(height, width) as the encoder will see it, reading little more than the file's header."""
    if isinstance(source, Image.Image):
        return source.height, source.width
    with _open(source) as image:
        width, height = image.size
        orientation = _read(source, lambda: image.getexif().get(_EXIF_ORIENTATION))
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return height, width


def load_image(source) -> Image.Image:
    """An RGB image from a PIL image (used as given) or a path (EXIF orientation applied)."""
    if isinstance(source, Image.Image):
        return source if source.mode == "RGB" else source.convert("RGB")
    with _open(source) as image:
        return _read(source, lambda: ImageOps.exif_transpose(image).convert("RGB"))


def _read(source, action):
    try:
        return action()
    except (OSError, ValueError, SyntaxError) as error:
        raise InputError(f"{source}: cannot decode image ({error})") from error


def _open(source):
    if not isinstance(source, (str, Path)):
        raise InputError(f"expected an image path or a PIL image, got {type(source).__name__}")
    try:
        return Image.open(source)
    except FileNotFoundError as error:
        raise InputError(f"{source}: no such file") from error
    except UnidentifiedImageError as error:
        raise InputError(f"{source}: not an image PIL can read") from error
    except Image.DecompressionBombError as error:
        raise InputError(f"{source}: too many pixels ({error})") from error
    except OSError as error:
        raise InputError(f"{source}: cannot open image ({error})") from error
