"""Opening images, for the encoder, ingest and the server alike: any mode PIL reads becomes RGB,
animations give their first frame, and a pixel cap stops decompression bombs before any pixel is
decoded. No model here: any layer may open an image.

One EXIF rule: an image is embedded upright, as a photo viewer shows it. The EXIF Orientation tag
is applied wherever the image comes from (a file, a PIL image that still carries the tag, an
upload to the server, a Ray worker, an evaluation set), so a phone photo gets one vector whichever
way it arrives. An image already turned upright (its tag removed, as `ImageOps.exif_transpose`
does) is left as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import MAX_PIXELS
from .errors import InputError
from .files import open_regular

try:  # HEIC/HEIF, the iPhone's default, through pillow-heif's opener (AVIF is Pillow's own)
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # a dependency; an install without it reads every other format
    pass

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".gif",
    ".bmp",
    ".tif",
    ".tiff",
    ".heic",
    ".heif",
    ".avif",
)
# EXIF orientations 5-8 rotate by 90 or 270 degrees: width and height swap.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
EXIF_ORIENTATION = 0x0112
_HIGH_DEPTH = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535}


def image_size(source) -> tuple[int, int]:
    """(height, width) as the encoder will see it, reading little more than the file's header."""
    if isinstance(source, Image.Image):
        width, height = source.size
        orientation = _read("the image", lambda: source.getexif().get(EXIF_ORIENTATION))
    else:
        with _open(source) as image:
            width, height = image.size
            orientation = _read(source, lambda: image.getexif().get(EXIF_ORIENTATION))
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return height, width


def load_image(source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An upright RGB image from a path or a PIL image (EXIF orientation applied to both)."""
    if isinstance(source, Image.Image):
        return _read("the image", lambda: upright_rgb(source))
    with _open(source) as image:
        if image.width * image.height > max_pixels:
            raise InputError(
                f"{source}: {image.width}x{image.height} is over the cap of {max_pixels:,} "
                "pixels (a decompression bomb?); raise the cap if the image is real"
            )
        return _read(source, lambda: upright_rgb(image))


def upright_rgb(image: Image.Image) -> Image.Image:
    """The one EXIF rule (see the module's docstring), then RGB."""
    return to_rgb(ImageOps.exif_transpose(image))


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB the way the E5-V processor makes it: transparency composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_DEPTH or image.mode in ("I", "F"):
        image = _to_8_bit(image)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_8_bit(image: Image.Image) -> Image.Image:
    # PIL's own convert("RGB") clips 16-bit values at 255: most of such an image turns white.
    values = np.asarray(image, dtype=np.float64)
    top = _HIGH_DEPTH.get(image.mode) or max(float(values.max()), 1.0)
    scaled = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def _read(source, action):
    try:
        return action()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise InputError(f"{source}: cannot decode image ({error})") from error


@contextmanager
def _open(source) -> Iterator[Image.Image]:
    """The image of a regular file, open for the block: a fifo or device is refused before it is
    opened (files.open_regular), and the file is closed after (PIL leaves a file it was handed
    open)."""
    if not isinstance(source, (str, Path)):
        raise InputError(f"expected an image path or a PIL image, got {type(source).__name__}")
    try:
        file = open_regular(source)
    except FileNotFoundError as error:
        raise InputError(f"{source}: no such file") from error
    except IsADirectoryError as error:
        raise InputError(f"{source}: is a directory, not an image") from error
    except OSError as error:
        raise InputError(f"{source}: cannot open image ({error})") from error
    with file:
        try:
            image = Image.open(file)
        except UnidentifiedImageError as error:
            raise InputError(f"{source}: not an image PIL can read") from error
        except Image.DecompressionBombError as error:
            raise InputError(f"{source}: too many pixels ({error})") from error
        except OSError as error:
            raise InputError(f"{source}: cannot open image ({error})") from error
        with image:
            yield image
