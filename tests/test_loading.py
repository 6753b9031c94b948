"""model/loading.py: the one dtype rule, ModelChoice, and how the choice reaches the engine."""

import pytest
import torch
from transformers import LlavaNextConfig

from e5v_search.engine import Engine
from e5v_search.errors import InputError
from e5v_search.model import loading
from e5v_search.model.loading import ModelChoice, choose_dtype


def test_the_dtype_rule():
    config = LlavaNextConfig()  # E5-V's shape: 8B parameters
    assert choose_dtype("bfloat16", "cuda", "int8") == torch.bfloat16  # asked for: wins
    assert choose_dtype(None, "cpu", "nf4") == torch.bfloat16  # quantized on a CPU
    assert choose_dtype(None, "cuda", "int8") == torch.float16  # quantized on a GPU
    assert choose_dtype(None, "cuda", config=config) == torch.float16  # the model card's
    assert choose_dtype(None, "cpu") == torch.float32  # no config to measure: exact
    with pytest.raises(ValueError, match="unknown dtype"):
        choose_dtype("int4", "cpu")


def test_a_cpu_short_of_memory_gets_bfloat16_and_the_log_says_why(monkeypatch, caplog):
    config = LlavaNextConfig()
    monkeypatch.setattr(loading, "available_memory", lambda: 16 * 2**30)
    assert choose_dtype(None, "cpu", config=config) == torch.bfloat16
    assert not caplog.records  # only a load says it
    assert choose_dtype(None, "cpu", config=config, log_as="big") == torch.bfloat16
    assert "loading big in bfloat16 on the CPU" in caplog.text
    monkeypatch.setattr(loading, "available_memory", lambda: 128 * 2**30)
    assert choose_dtype(None, "cpu", config=config) == torch.float32


def test_the_spec_read_from_the_config_is_the_loaded_encoders(tiny_dir):
    choice = ModelChoice(str(tiny_dir), device="cpu")
    assert choice.spec_on("cpu") == choice.load().spec()


def test_the_engine_takes_a_model_choice_or_its_options_not_both(tmp_path):
    choice = ModelChoice("some/model", device="cpu", batch_size=4)
    with Engine.open(tmp_path / "ix", create=True, choice=choice) as engine:
        assert engine.choice == choice
    assert not (tmp_path / "ix").exists()  # nothing committed: the new index is not kept
    options = {"model": "some/model", "device": "cpu", "batch_size": 4}
    with Engine.open(tmp_path / "ix", create=True, **options) as engine:
        assert engine.choice == choice
    with pytest.raises(InputError, match="not both"):
        Engine.open(tmp_path / "ix", choice=choice, device="cpu")
