"""The inputs `e5v-search check` embeds both ways: texts, and images drawn by integer arithmetic.

- texts: the model card's two, a single word and a long sentence;
- images of odd and even sizes (odd anyres remainders, where transformers 5.x alone would give
  other pixels than E5-V's 4.41.2 pipeline), 3 to 5 crops;
- JPEGs whose EXIF says "rotated", so a missed rotation shows.

`pattern_image` draws the same pixels on every numpy and PIL version, so the pixel fixture
(scripts/make_pixel_fixture.py, in transformers 4.41.2's venv) and the tests draw them too.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..images import EXIF_ORIENTATION

TEXTS = [
    "A dog sitting in the grass.",
    "A cat standing in the snow.",
    "red",
    "Two people riding horses next to a river near a large forest under a blue sky, while a "
    "small dog runs ahead of them through the tall yellow grass towards the water.",
]
IMAGE_SIZES = [(500, 375), (640, 480), (336, 336), (300, 1000), (801, 601)]  # (width, height)
ROTATED_SIZES = [(640, 427), (500, 333)]  # stored sideways with EXIF Orientation 6


def pattern_image(width: int, height: int) -> Image.Image:
    """A textured RGB image of any size from integer arithmetic alone, so every numpy and PIL
    version draws the same pixels: gradients, a checkerboard and a fine texture, where a crop
    shifted by one pixel shows at once."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    red = x * 255 // max(width - 1, 1)
    green = y * 255 // max(height - 1, 1)
    blue = ((x // 16 + y // 16) % 2) * 160 + (x * 7 + y * 13 + (x * y) // 31) % 96
    return Image.fromarray(np.stack([red, green, blue], axis=-1).astype(np.uint8), "RGB")


def write_images(folder: Path) -> list[tuple[tuple[str, str], Path]]:
    """The check's images written to `folder`: ((kind, file name), path) each, the plain PNGs
    first, then the EXIF-rotated JPEGs."""
    out = []
    for width, height in IMAGE_SIZES:
        path = folder / f"{width}x{height}.png"
        pattern_image(width, height).save(path)
        out.append((("image", path.name), path))
    for width, height in ROTATED_SIZES:
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = 6  # shown turned 90 degrees clockwise
        path = folder / f"{width}x{height}-exif6.jpg"
        pattern_image(height, width).save(path, exif=exif, quality=95)
        out.append((("rotated image", path.name), path))
    return out
