import os

import pytest

# Tests never reach a model hub: a hub id must fail at once, not after network retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from e5v_search.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-clean"))


@pytest.fixture(scope="session")
def legacy_dir(tmp_path_factory):
    from e5v_search.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-legacy"), legacy=True)


@pytest.fixture(scope="session")
def real_geometry_dir(tmp_path_factory):
    from e5v_search.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-real"), real_geometry=True)


@pytest.fixture(scope="session")
def encoder(tiny_dir):
    from e5v_search import E5VEncoder

    return E5VEncoder.from_pretrained(str(tiny_dir), device="cpu")


@pytest.fixture(scope="session")
def recipe_model(tiny_dir):
    """The model card's objects: the full ConditionalGeneration model and the processor."""
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor

    model = LlavaNextForConditionalGeneration.from_pretrained(str(tiny_dir)).eval()
    processor = LlavaNextProcessor.from_pretrained(str(tiny_dir), backend="pil")
    return model, processor


@pytest.fixture(scope="session")
def shaped_images(tmp_path_factory):
    """Image files whose anyres tiling at the tiny geometry gives 3, 4 and 5 crops."""
    from PIL import Image, ImageDraw

    folder = tmp_path_factory.mktemp("images")
    sizes = [(120, 60), (60, 120), (170, 55), (55, 170), (100, 100), (90, 70), (640, 480)]
    paths = []
    for i, (w, h) in enumerate(sizes):
        image = Image.new("RGB", (w, h), (30 * i % 255, 90, 200 - 20 * i))
        ImageDraw.Draw(image).ellipse([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=(250, i, 9))
        path = folder / f"img{i}_{w}x{h}.png"
        image.save(path)
        paths.append(path)
    return paths


TEXTS = [
    "A dog sitting in the grass.",
    "A cat standing in the snow.",
    "red",
    "Two people riding horses next to a river near a large forest under a blue sky.",
    "a",
]


@pytest.fixture
def texts():
    return list(TEXTS)
