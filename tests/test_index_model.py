"""The index's model is the default (issue 23): search and serve use the model, revision and
precision an index records unless told otherwise; a recorded directory that is gone is named;
an unreachable or offline hub fails in seconds, not minutes of retries."""

import shutil
import time

import pytest
from click.testing import CliRunner

from e5v_search.cli import cli
from e5v_search.engine import Engine
from e5v_search.errors import ModelLoadError

QUERY = "A red circle on a grey background."


@pytest.fixture
def built(tmp_path, tiny_dir):
    """An index of two captions built with a copy of the tiny checkpoint in bfloat16."""
    model = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, model)
    (tmp_path / "t.txt").write_text(f"{QUERY}\nA green square.\n")
    args = ["ingest", str(tmp_path / "t.txt"), "--index", str(tmp_path / "ix"), "-q"]
    options = ["--model", str(model), "--device", "cpu", "--dtype", "bfloat16"]
    result = CliRunner().invoke(cli, [*args, *options])
    assert result.exit_code == 0, result.output
    return tmp_path, model


def test_search_uses_the_model_the_index_records(built):
    tmp_path, model = built
    with Engine.open(tmp_path / "ix", device="cpu") as engine:
        assert (engine.choice.model, engine.choice.dtype) == (str(model), "bfloat16")
        assert engine.search(QUERY, modality="text", k=1)[0].text == QUERY
        assert not [n for n in engine.notices() if "precision" in n]  # the same precision
    args = ["search", QUERY, "--type", "text", "-k", "1", "--index", str(tmp_path / "ix")]
    result = CliRunner().invoke(cli, [*args, "--device", "cpu"])  # no --model, no E5V_MODEL
    assert result.exit_code == 0, result.output
    assert QUERY in result.stdout


def test_a_recorded_model_directory_that_is_gone_is_named(built):
    tmp_path, model = built
    shutil.rmtree(model)
    index = ["--index", str(tmp_path / "ix")]
    result = CliRunner().invoke(cli, ["search", QUERY, *index, "--device", "cpu"])
    assert result.exit_code == 1
    assert f"this index was built with {model}, which no longer exists; pass --model" in (
        result.output
    )
    assert CliRunner().invoke(cli, ["info", *index]).exit_code == 0  # no model needed
    assert CliRunner().invoke(cli, ["search", "--like", "1", *index]).exit_code == 0


def test_an_unreachable_hub_fails_in_seconds(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    started = time.perf_counter()
    with Engine.open(tmp_path / "ix", model="someone/not-cached", device="cpu", create=True) as e:
        with pytest.raises(ModelLoadError, match="did not answer within 3 s, and it is not in"):
            e.embed_texts(["x"])
    assert time.perf_counter() - started < 10


def test_offline_fails_at_once_with_what_to_do(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    args = ["similarity", "-t", "x", "-i", "y.png", "--model", "someone/not-cached"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "HF_HUB_OFFLINE is set, and it is not in the local cache" in result.output
    assert "--model DIR" in result.output
