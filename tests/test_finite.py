"""No non-finite vector is ever stored: NaN at pad positions cannot reach a pooled vector, a row
that turns NaN in a batch is embedded again alone, and one that stays NaN fails as its own
input (recorded like any bad input, the run going on)."""

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from e5v_search.engine import Engine
from e5v_search.errors import EmbeddingError

POISON = "<|reserved_special_token_7|>"  # a special token: one id, easy for a hook to spot


@contextmanager
def nan_where(encoder, rows_of):
    """Writes NaN into the token embeddings `rows_of(ids)` selects (a bool mask)."""
    seen = {}

    def remember(module, args, kwargs):
        seen["ids"] = kwargs.get("input_ids")

    def poison(module, args, out):
        out = out.clone()
        out[rows_of(seen["ids"])] = float("nan")
        return out

    hooks = [
        encoder.model.register_forward_pre_hook(remember, with_kwargs=True),
        encoder.model.language_model.embed_tokens.register_forward_hook(poison),
    ]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def test_nan_at_pad_positions_reaches_no_vector(encoder, texts):
    """With left padding (the recipe's) this spreads NaN into the shorter rows' vectors."""
    alone = np.stack([encoder.embed_texts([t])[0] for t in texts])
    pad = encoder.tokenizer.pad_token_id
    with nan_where(encoder, lambda ids: ids == pad):
        batched = encoder.embed_texts(texts)
    assert np.isfinite(batched).all()
    assert np.abs(batched - alone).max() <= 1e-5


def test_a_row_that_turns_nan_in_a_batch_is_embedded_again_alone(encoder, texts, shaped_images):
    alone = np.stack([encoder.embed_texts([t])[0] for t in texts])

    def whole_batches(ids):  # any batch of two or more rows turns NaN; a row alone does not
        return torch.full(ids.shape, len(ids) > 1)

    with nan_where(encoder, whole_batches):
        again = encoder.embed_texts(texts)
        images = encoder.embed_images(shaped_images[:3])
    assert np.abs(again - alone).max() <= 1e-5
    assert np.isfinite(images).all()


def test_a_row_that_stays_nan_fails_alone_with_a_clear_error(encoder, texts):
    poison_id = encoder.tokenizer.convert_tokens_to_ids(POISON)
    batch = texts[:2] + [f"a {POISON} b"] + texts[2:]

    def rows_with_poison(ids):
        return (ids == poison_id).any(dim=1, keepdim=True).expand_as(ids)

    with nan_where(encoder, rows_with_poison), pytest.raises(EmbeddingError) as caught:
        encoder.embed_texts(batch)
    assert caught.value.indices == [2]
    assert "non-finite" in str(caught.value) and "dtype" in str(caught.value)
    good = np.delete(caught.value.vectors, 2, axis=0)
    assert np.abs(good - encoder.embed_texts(texts)).max() <= 1e-5


def test_ingest_records_a_nan_item_as_an_error_and_stores_the_rest(tmp_path, tiny_dir):
    lines = ["A dog sitting in the grass.", f"a {POISON} b", "A cat standing in the snow."]
    source = tmp_path / "lines.txt"
    source.write_text("\n".join(lines) + "\n")
    with Engine.open(tmp_path / "ix", model=str(tiny_dir), device="cpu", create=True) as engine:
        encoder = engine.encoder
        poison_id = encoder.tokenizer.convert_tokens_to_ids(POISON)

        def rows_with_poison(ids):
            return (ids == poison_id).any(dim=1, keepdim=True).expand_as(ids)

        with nan_where(encoder, rows_with_poison):
            report = engine.ingest([source], progress=False)
        assert (report.added, report.failed) == (2, 1)
        assert "non-finite" in report.errors[0] and "line 2" in report.errors[0]
        assert engine.info()["counts"]["text"] == 2
        for text in (lines[0], lines[2]):
            hit = engine.search(text, k=1, modality="text")[0]
            assert hit.text == text and hit.score == pytest.approx(1.0, abs=1e-4)
        stored = engine.store.catalog.vectors(
            [r.id for r in engine.search("x", k=2, modality="text")]
        )
        assert np.isfinite(stored).all()
