"""The engine's pixels against E5-V's own pipeline (transformers 4.41.2), recorded by
scripts/make_pixel_fixture.py at the real geometry (336-px crops, the real pinpoints)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from e5v_search.model.preprocess import Preprocessor
from e5v_search.model.samples import pattern_image

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
from make_pixel_fixture import MEAN, STD, digests  # noqa: E402

RECORDED = json.loads((FIXTURES / "anyres-4.41.2.json").read_text())


@pytest.fixture(scope="module")
def preprocessor(tmp_path_factory):
    from e5v_search.testing import build_tiny_checkpoint

    path = build_tiny_checkpoint(tmp_path_factory.mktemp("real"), real_geometry=True, legacy=True)
    return Preprocessor.from_pretrained(str(path))


def test_the_fixture_covers_the_sizes_that_differed_and_the_extremes():
    sizes = {(row["width"], row["height"]) for row in RECORDED["sizes"]}
    named = {
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
        (4000, 300),
    }
    assert named <= sizes and len(sizes) >= 12
    assert RECORDED["transformers"] == "4.41.2"


@pytest.mark.parametrize("row", RECORDED["sizes"], ids=lambda r: f"{r['width']}x{r['height']}")
def test_crops_equal_transformers_4_41_2(preprocessor, row, tmp_path):
    path = tmp_path / "image.png"  # through a file, as ingest reads it
    pattern_image(row["width"], row["height"]).save(path)
    prepared = preprocessor.prepare_image(path)
    crops = prepared.pixel_values.numpy()
    assert prepared.size == (row["height"], row["width"])
    assert len(crops) == row["crops"]
    assert digests(crops) == row["sha256"]


def test_one_image_crop_by_crop_within_1e_3(preprocessor):
    recorded = np.load(FIXTURES / "anyres-4.41.2.npz")
    image = pattern_image(int(recorded["width"]), int(recorded["height"]))
    crops = preprocessor.prepare_image(image).pixel_values.numpy()
    mean, std = np.array(MEAN)[:, None, None], np.array(STD)[:, None, None]
    expected = (recorded["crops"] / 255.0 - mean) / std
    assert crops.shape == expected.shape
    per_crop = np.abs(crops - expected).reshape(len(crops), -1).max(axis=1)
    assert per_crop.max() <= 1e-3, per_crop


def test_transformers_own_padding_would_differ(preprocessor):
    """The defect the fixture guards against is real: 5.x's uneven padding moves the tiles."""
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    row = next(r for r in RECORDED["sizes"] if (r["width"], r["height"]) == (500, 375))
    plain = LlavaNextImageProcessorPil(**preprocessor.processor.image_processor.to_dict())
    crops = plain(images=[pattern_image(500, 375)], return_tensors="np")["pixel_values"][0]
    assert digests(crops) != row["sha256"]
