"""On a CUDA GPU (skipped elsewhere; scripts/gpu_check.sh runs these): in float16 and bfloat16,
mixed-length batches of texts and of images give every item the vector it has alone, and no
vector is non-finite. Imports nothing beyond torch, transformers, numpy and Pillow, so it runs
on a GPU machine without FAISS."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

SIZES = [(500, 375), (640, 480), (336, 336), (300, 1000), (801, 601), (1000, 300)]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_mixed_length_batches_equal_the_items_alone(dtype, real_geometry_dir, texts, tmp_path):
    from e5v_search.model.encoder import E5VEncoder
    from e5v_search.model.samples import pattern_image

    encoder = E5VEncoder.from_pretrained(str(real_geometry_dir), device="cuda", dtype=dtype)
    assert str(encoder.dtype) == f"torch.{dtype}"
    paths = []
    for width, height in SIZES:
        paths.append(tmp_path / f"{width}x{height}.png")
        pattern_image(width, height).save(paths[-1])
    many_texts = texts + [" ".join(texts * n) for n in (2, 5)]
    for embed, items in [(encoder.embed_texts, many_texts), (encoder.embed_images, paths)]:
        batched = embed(items)
        alone = np.concatenate([embed([item]) for item in items])
        assert np.isfinite(batched).all() and np.isfinite(alone).all()
        cosines = np.sum(batched * alone, axis=1)
        assert cosines.min() >= 0.999, cosines
