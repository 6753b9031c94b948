"""Quantized loading (bitsandbytes int8 and nf4) on the CPU, on the trained tiny model."""

import sys

import numpy as np
import pytest
from click.testing import CliRunner

from e5v_search import E5VEncoder, Engine, ModelLoadError
from e5v_search.cli import cli
from e5v_search.testing import make_sample_corpus

pytest.importorskip("bitsandbytes", reason="quantization is the extra e5v-search[quantize]")

TEXTS = ["A red circle on a grey background.", "A blue square.", "green"]
# Measured on this model: int8 0.99997-0.99999, nf4 0.9993-0.9996 (`check --quantize`).
FLOOR = {"int8": 0.999, "nf4": 0.995}


@pytest.fixture(scope="module")
def full(trained_dir, shaped_images):
    encoder = E5VEncoder.from_pretrained(str(trained_dir), device="cpu")
    images = shaped_images[:3]
    return np.concatenate([encoder.embed_texts(TEXTS), encoder.embed_images(images)]), images


@pytest.mark.parametrize("quantize", ["int8", "nf4"])
def test_a_quantized_model_embeds_close_to_full_precision(trained_dir, full, quantize):
    reference, images = full
    encoder = E5VEncoder.from_pretrained(str(trained_dir), device="cpu", quantize=quantize)
    kinds = {
        type(m).__name__
        for name, m in encoder.model.named_modules()
        if name.startswith("language_model.layers")
    }
    assert {"int8": "Linear8bitLt", "nf4": "Linear4bit"}[quantize] in kinds
    assert not any("bit" in type(m).__name__ for m in encoder.model.vision_tower.modules())
    got = np.concatenate([encoder.embed_texts(TEXTS), encoder.embed_images(images)])
    assert np.isfinite(got).all() and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-3)
    cosines = (got * reference).sum(axis=1)
    assert cosines.min() >= FLOOR[quantize], cosines
    # Same order: each vector is nearest its own full-precision vector.
    assert ((got @ reference.T).argmax(axis=1) == np.arange(len(got))).all()
    spec = encoder.spec()
    assert spec.quantization == quantize and spec.dtype == "bfloat16"


def test_an_index_says_when_a_query_model_has_another_precision(tmp_path, trained_dir):
    path, model = tmp_path / "ix", str(trained_dir)
    corpus = make_sample_corpus(tmp_path / "corpus")
    with Engine.open(path, model=model, device="cpu", create=True) as engine:
        engine.ingest([corpus["captions"]], progress=False)
        notices = engine.notices()  # this legacy checkpoint's repairs, in one line
        assert len(notices) == 1 and notices[0].startswith("model: the checkpoint was repaired")
    with Engine.open(path, model=model, device="cpu", quantize="int8") as engine:
        top = engine.search(TEXTS[0], k=1, modality="text")[0]
        assert top.text == TEXTS[0] and top.score > 0.99
        notes = [n for n in engine.notices() if n.startswith("note: precision")]
        assert notes == [
            "note: precision: index vectors in float32, query in bfloat16 + int8: close, not "
            "equal (`e5v-search check --dtype/--quantize` measures how close)"
        ]
    result = CliRunner().invoke(
        cli,
        ["search", TEXTS[0], "--index", str(path), "--type", "text", "--quantize", "int8"],
        env={"E5V_MODEL": model, "E5V_DEVICE": "cpu"},
    )
    assert result.exit_code == 0 and "query in bfloat16 + int8" in result.stderr


def test_check_reports_the_drift_of_int8_against_full_precision(trained_dir):
    args = ["check", "--model", str(trained_dir), "--device", "cpu", "--quantize", "int8"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "bfloat16 + int8; pass: cosine >= 0.99 (int8 against full precision)" in result.stdout


def test_without_bitsandbytes_the_message_says_what_to_install(trained_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(ModelLoadError, match=r"pip install 'e5v-search\[quantize\]'"):
        E5VEncoder.from_pretrained(str(trained_dir), device="cpu", quantize="int8")
