"""Units below the encoder: batch planning, prompts, image sizes, light imports."""

import subprocess
import sys

from PIL import Image

from e5v_search.images import image_size, load_image
from e5v_search.model import prompts
from e5v_search.model.batching import plan_batches


def test_batches_cover_every_item_once_and_fit_the_budget():
    lengths = [5, 300, 20, 20, 1200, 7, 64, 64, 64, 3]
    batches = plan_batches(lengths, max_tokens=256)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= 256 or len(batch) == 1
    assert batches[0] == [4]  # longest first: an out-of-memory shows at once


def test_batches_respect_an_item_cap():
    batches = plan_batches([10] * 7, max_tokens=10_000, max_items=3)
    assert [len(b) for b in batches] == [3, 3, 1]


def test_prompts_are_the_model_cards_byte_for_byte():
    template = (
        "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n \n"
    )
    assert prompts.IMAGE_PROMPT == template.format("<image>\nSummary above image in one word: ")
    assert prompts.text_prompt("A dog.") == template.format(
        "A dog.\nSummary above sentence in one word: "
    )
    assert prompts.composed_prompt("make it red") == template.format(
        '<image>Modify this image with "make it red", desribe modified image in one word:'
    )


def test_image_size_follows_exif_orientation(tmp_path):
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: shown as 20 wide, 40 high
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert image_size(path) == (40, 20)
    assert load_image(path).size == (20, 40)
    # The same rule for a PIL image that carries the tag (see test_exif.py).
    assert image_size(image) == (40, 20) and load_image(image).size == (20, 40)


def test_load_image_converts_to_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.new("L", (8, 8), 128).save(path)
    assert load_image(path).mode == "RGB"
    assert load_image(Image.new("RGBA", (4, 4))).mode == "RGB"


def _modules_after(code):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout


def test_import_and_help_do_not_import_torch():
    code = (
        "import sys, e5v_search\n"
        "from click.testing import CliRunner\n"
        "from e5v_search.cli import cli\n"
        "for args in [['--help']] + [[name, '--help'] for name in cli.commands]:\n"
        "    result = CliRunner().invoke(cli, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        "heavy = ('torch', 'transformers', 'faiss')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    assert _modules_after(code).strip() == "[]"


def test_every_image_mode_becomes_rgb(tmp_path):
    import numpy as np

    cases = {
        "palette.png": Image.new("P", (8, 8), 3),
        "alpha.png": Image.new("RGBA", (8, 8), (255, 0, 0, 0)),  # fully transparent red
        "cmyk.jpg": Image.new("CMYK", (8, 8), (0, 255, 255, 0)),
        "gray16.png": Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)),
        "half16.png": Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)),
        "gray.png": Image.new("L", (8, 8), 7),
        "bits.bmp": Image.new("1", (8, 8), 1),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
        rgb = load_image(tmp_path / name)
        assert rgb.mode == "RGB" and rgb.size == (8, 8), name
    assert load_image(tmp_path / "alpha.png").getpixel((0, 0)) == (255, 255, 255)  # on white
    assert load_image(tmp_path / "half16.png").getpixel((0, 0)) == (128, 128, 128)  # not clipped
    frames = [Image.new("RGB", (8, 8), c) for c in [(250, 0, 0), (0, 0, 250)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    red, _, blue = load_image(tmp_path / "anim.gif").getpixel((0, 0))
    assert red > 200 and blue < 50  # the first frame


def test_the_pixel_cap_refuses_before_decoding(tmp_path):
    import pytest

    from e5v_search.errors import InputError

    Image.new("RGB", (200, 100)).save(tmp_path / "big.png")
    with pytest.raises(InputError, match="over the cap of 10,000 pixels"):
        load_image(tmp_path / "big.png", max_pixels=10_000)
    with pytest.raises(InputError, match="is a directory"):
        load_image(tmp_path)


def test_a_checkpoint_too_big_for_fp32_in_ram_loads_in_bf16_on_a_cpu():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig

    from e5v_search.model.loading import cpu_dtype, estimated_parameters

    e5v = LlavaNextConfig(
        text_config=LlamaConfig(
            vocab_size=128256,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
        ),
        vision_config=CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
        ),
    )
    parameters = estimated_parameters(e5v)
    assert abs(parameters - 8.36e9) / 8.36e9 < 0.01  # E5-V: 8.36 B parameters
    gib = 2**30
    assert cpu_dtype(parameters, 16 * gib) == "bfloat16"  # a laptop: 33 GB of fp32 cannot fit
    assert cpu_dtype(parameters, 32 * gib) == "bfloat16"
    assert cpu_dtype(parameters, 128 * gib) == "float32"  # a server keeps exact fp32
    assert cpu_dtype(2_000_000, 1 * gib) == "float32"  # the tiny checkpoint, as the tests run it


def test_collapse_folds_copies_under_the_best_ranked_original():
    import numpy as np

    from e5v_search.engine import Engine
    from e5v_search.results import Result

    cat, cat_copy, dog, cat_rotated = np.eye(4, dtype=np.float32)[[0, 0, 1, 0]]
    cat_copy = cat_copy * 0.96 + np.eye(4, dtype=np.float32)[2] * 0.28  # cosine 0.96 to cat
    vectors = {1: cat, 2: cat_copy / np.linalg.norm(cat_copy), 3: dog, 4: cat_rotated}

    class Stored:
        def vectors(self, ids):
            return np.stack([vectors[i] for i in ids])

    results = [Result(i, 1.0 - i / 10, "image", f"/{i}.jpg", "", None) for i in (1, 3, 2, 4)]
    groups = Engine.collapse(Stored(), results)
    assert [[r.id for r in group] for group in groups] == [[1, 2, 4], [3]]
    assert [[r.id for r in g] for g in Engine.collapse(Stored(), results, 0.97)] == [
        [1, 4],
        [3],
        [2],
    ]
    assert Engine.collapse(Stored(), []) == []
