"""Record what E5-V's own image pipeline (transformers 4.41.2) makes of images of many sizes.

    python scripts/make_pixel_fixture.py [--out tests/fixtures]

E5-V was trained and evaluated with transformers 4.41.2, so its `LlavaNextImageProcessor` (real
geometry: 336-px crops, the real pinpoints, bicubic, CLIP mean and std) is the truth for pixels.
This script builds a throwaway venv with transformers==4.41.2, runs that processor there on
`model.samples.pattern_image` at each size below, and writes:

- anyres-4.41.2.json: per size, the number of crops and a SHA-256 per crop of its pixels as
  uint8 (normalisation undone: the crops are resized uint8 images, so this is exact);
- anyres-4.41.2.npz: every crop of one size in full, to report max |diff| when they differ.

tests/test_pixels.py compares the engine's Preprocessor with both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSION = "4.41.2"
# (width, height): Flickr30K / COCO sizes, odd remainders, sizes that matched, and extremes.
SIZES = [
    (500, 375),
    (500, 333),
    (640, 427),
    (427, 640),
    (375, 500),
    (333, 500),
    (801, 601),
    (700, 467),
    (1000, 300),
    (300, 1000),
    (640, 480),
    (480, 640),
    (336, 336),
    (1024, 899),
    (1920, 1080),
    (4000, 300),
    (337, 335),
    (1023, 767),
]
FULL_SIZE = (500, 375)  # the size whose crops are kept whole
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def to_uint8(crops, mean=MEAN, std=STD):
    """Normalised crops (n, 3, h, w) back to the uint8 pixels they were made from."""
    import numpy as np

    values = (
        np.asarray(crops, dtype=np.float64) * np.array(std)[:, None, None]
        + np.array(mean)[:, None, None]
    ) * 255.0
    rounded = np.rint(values)
    if np.abs(values - rounded).max() > 0.01:
        raise ValueError("crops are not normalised uint8 pixels")
    return rounded.astype(np.uint8)


def digests(crops) -> list[str]:
    return [hashlib.sha256(crop.tobytes()).hexdigest() for crop in to_uint8(crops)]


def record(out: Path) -> None:
    """Run inside the 4.41.2 venv."""
    import numpy as np
    import transformers
    from transformers import LlavaNextImageProcessor

    sys.path.insert(0, str(ROOT))
    from e5v_search.model.samples import pattern_image

    assert transformers.__version__ == VERSION, transformers.__version__
    processor = LlavaNextImageProcessor(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_grid_pinpoints=PINPOINTS,
        image_mean=MEAN,
        image_std=STD,
        resample=3,  # bicubic
    )
    table, full = [], None
    for width, height in SIZES:
        crops = processor(images=[pattern_image(width, height)])["pixel_values"][0]
        table.append(
            {"width": width, "height": height, "crops": len(crops), "sha256": digests(crops)}
        )
        if (width, height) == FULL_SIZE:
            full = to_uint8(crops)
        print(f"{width}x{height}: {len(crops)} crops", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"transformers": VERSION, "pinpoints": PINPOINTS, "crop": 336, "sizes": table}
    (out / "anyres-4.41.2.json").write_text(json.dumps(meta, indent=1) + "\n")
    np.savez_compressed(
        out / "anyres-4.41.2.npz", width=FULL_SIZE[0], height=FULL_SIZE[1], crops=full
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        record(args.out.resolve())
        return
    with tempfile.TemporaryDirectory(prefix="tf441-") as venv:
        python = Path(venv) / "bin" / "python"
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        # numpy<2: 4.41.2 predates numpy 2. No torch: the image processor needs none.
        subprocess.run(
            [python, "-m", "pip", "install", "-q", f"transformers=={VERSION}", "numpy<2", "pillow"],
            check=True,
        )
        subprocess.run([python, __file__, "--inside", "--out", str(args.out.resolve())], check=True)


if __name__ == "__main__":
    main()
