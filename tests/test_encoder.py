"""The encoder against the model card's recipe, on the tiny checkpoint, in fp32."""

import numpy as np
import pytest
from PIL import Image

from e5v_search import E5VEncoder, InputError
from e5v_search.model.recipe import recipe_embed_images, recipe_embed_texts

TOL = 1e-5


def test_texts_match_the_recipe(encoder, recipe_model, texts):
    model, processor = recipe_model
    expected = recipe_embed_texts(model, processor, texts, padding_side="left").numpy()
    got = encoder.embed_texts(texts)
    assert got.dtype == np.float32 and got.shape == (len(texts), encoder.dim)
    assert np.abs(got - expected).max() <= TOL


def test_images_of_3_4_and_5_crops_match_the_recipe(encoder, recipe_model, shaped_images):
    model, processor = recipe_model
    pil = [Image.open(p) for p in shaped_images]
    crops = {
        processor(text=["<image>"], images=[im], return_tensors="pt")["pixel_values"].shape[1]
        for im in pil
    }
    assert {3, 4, 5} <= crops
    expected = recipe_embed_images(model, processor, pil, padding_side="left").numpy()
    got = encoder.embed_images(shaped_images)
    assert np.abs(got - expected).max() <= TOL
    # PIL images and paths give the same vectors.
    assert np.abs(encoder.embed_images(pil) - got).max() <= TOL


def test_vectors_are_unit_length_and_tell_inputs_apart(encoder, texts, shaped_images):
    vectors = np.concatenate([encoder.embed_texts(texts), encoder.embed_images(shaped_images)])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    off_diagonal = similarity[~np.eye(len(vectors), dtype=bool)]
    assert off_diagonal.max() < 0.999  # no two different inputs collapse to one vector


def test_an_item_alone_equals_the_item_in_a_mixed_batch(encoder, texts, shaped_images):
    together = encoder.embed_texts(texts)
    alone = np.stack([encoder.embed_texts([t])[0] for t in texts])
    assert np.abs(together - alone).max() <= TOL
    together = encoder.embed_images(shaped_images)
    alone = np.stack([encoder.embed_images([p])[0] for p in shaped_images])
    assert np.abs(together - alone).max() <= TOL


def test_output_keeps_input_order_whatever_the_batching(tiny_dir, encoder, texts, shaped_images):
    small = E5VEncoder.from_pretrained(str(tiny_dir), device="cpu", max_batch_tokens=64)
    assert np.abs(small.embed_texts(texts) - encoder.embed_texts(texts)).max() <= TOL
    reordered = texts[::-1]
    assert np.abs(encoder.embed_texts(reordered) - encoder.embed_texts(texts)[::-1]).max() <= TOL
    capped = E5VEncoder.from_pretrained(str(tiny_dir), device="cpu", batch_size=2)
    assert (
        np.abs(capped.embed_images(shaped_images) - encoder.embed_images(shaped_images)).max()
        <= TOL
    )


def test_right_padding_breaks_the_recipe_but_not_the_encoder(encoder, recipe_model, texts):
    model, processor = recipe_model
    right = recipe_embed_texts(model, processor, texts, padding_side="right").numpy()
    left = recipe_embed_texts(model, processor, texts, padding_side="left").numpy()
    processor.tokenizer.padding_side = "left"
    assert np.abs(right - left).max() > 0.05
    assert np.abs(encoder.embed_texts(texts) - left).max() <= TOL


def test_composed_query_differs_from_both_parts(encoder, shaped_images):
    image, text = shaped_images[0], "make it blue"
    composed = encoder.embed_composed([image], [text])
    assert composed.shape == (1, encoder.dim)
    assert np.isclose(np.linalg.norm(composed), 1.0, atol=1e-5)
    assert np.abs(composed - encoder.embed_images([image])).max() > 0.01
    assert np.abs(composed - encoder.embed_texts([text])).max() > 0.01
    pair = encoder.embed_composed(shaped_images[:2], ["make it blue", "make it red"])
    assert np.abs(pair[0] - composed[0]).max() <= TOL
    with pytest.raises(InputError, match="one text per image"):
        encoder.embed_composed(shaped_images[:2], ["only one"])


def test_empty_input_gives_an_empty_matrix(encoder):
    assert encoder.embed_texts([]).shape == (0, encoder.dim)
    assert encoder.embed_images([]).shape == (0, encoder.dim)


def test_a_text_that_holds_the_image_placeholder_is_still_a_text(encoder):
    vector = encoder.embed_texts(["look: <image> here"])
    assert vector.shape == (1, encoder.dim)


def test_an_over_long_text_is_cut_from_its_end_with_one_warning(encoder):
    long_text = "the dog runs in the park " * 400  # ~2,400 tokens against a 1,024 context
    with pytest.warns(UserWarning, match="truncated") as caught:
        vectors = encoder.embed_texts([long_text, long_text + " and then a cat", "short"])
    assert len([w for w in caught if "truncated" in str(w.message)]) == 1
    assert "2 text(s)" in str(caught[0].message)
    assert np.isfinite(vectors).all()
    # Both keep the same start of the text and the whole prompt tail, so they pool alike.
    assert np.abs(vectors[0] - vectors[1]).max() <= TOL
    with pytest.warns(UserWarning, match="1 text"):
        prompt, ids = encoder._encode_prompts([long_text], lambda t: f"<<{t}>>", [0])[0]
    assert len(ids) <= encoder.context and prompt.endswith(">>")


def test_bad_image_inputs_are_named(encoder, tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(InputError, match="missing.png: no such file"):
        encoder.embed_images([missing])
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    with pytest.raises(InputError, match="notes.png: not an image"):
        encoder.embed_images([not_image])
    truncated = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(InputError, match="cut.png"):
        encoder.embed_images([truncated])
    with pytest.raises(InputError, match="texts\\[1\\]"):
        encoder.embed_texts(["fine", 3])


def test_spec_names_everything_a_vector_depends_on(encoder, tiny_dir):
    spec = encoder.spec()
    assert spec.model == str(tiny_dir)
    assert spec.dim == 64 and spec.dtype == "float32"
    assert spec.prompt_version and spec.transformers


def test_prepared_images_and_worker_threads_give_the_same_vectors(encoder, shaped_images):
    serial = encoder.embed_images(shaped_images, workers=0)
    threaded = encoder.embed_images(shaped_images, workers=3)
    prepared = encoder.embed_prepared([encoder.prepare_image(p) for p in shaped_images])
    assert np.abs(serial - threaded).max() <= TOL
    assert np.abs(serial - prepared).max() <= TOL
