"""`e5v-search check` on the tiny legacy checkpoint (the real one's traps), on the CPU."""

import json

import numpy as np
from click.testing import CliRunner

from e5v_search.cli import cli
from e5v_search.model.encoder import E5VEncoder


def test_check_passes_on_the_tiny_checkpoint(legacy_dir):
    result = CliRunner().invoke(cli, ["check", "--model", str(legacy_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "float32; pass: max |diff| <= 1e-05" in lines[0]
    assert any("embedding table" in line for line in lines)  # the repairs are shown
    rows = [line for line in lines if line.startswith(("text ", "image ", "rotated image "))]
    assert len(rows) == 11 and sum(r.startswith("rotated image") for r in rows) == 2
    assert all(r.split()[-1] == "yes" for r in rows)
    assert "items/s" in result.stdout and lines[-1].startswith("ok: all 11 items")


def test_check_reports_in_json_and_fails_when_the_engine_drifts(legacy_dir, monkeypatch):
    args = ["check", "--model", str(legacy_dir), "--device", "cpu", "--json"]
    report = json.loads(CliRunner().invoke(cli, args).stdout)
    assert report["ok"] and report["dtype"] == "float32" and len(report["items"]) == 11
    assert all(i["tokens"] == i["recipe_tokens"] and i["finite"] for i in report["items"])
    assert max(i["max_diff"] for i in report["items"]) <= 1e-5

    forward = E5VEncoder._forward

    def drifted(self, inputs):  # what a wrong pixel, prompt or kernel would look like
        out = forward(self, inputs) + np.float32(1e-3)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    monkeypatch.setattr(E5VEncoder, "_forward", drifted)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "are not E5-V's vectors here" in result.output
    assert not json.loads(result.stdout.splitlines()[0])["ok"]
