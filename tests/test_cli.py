"""The command line, run in-process with click's runner on the tiny checkpoint."""

import json
import re
from pathlib import Path

from click.testing import CliRunner

from e5v_search.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def test_similarity_prints_a_text_by_image_matrix(tiny_dir, shaped_images):
    args = ["similarity", "--model", str(tiny_dir), "--device", "cpu"]
    args += ["-t", "a dog", "-t", "a cat", "-i", str(shaped_images[0]), "-i", str(shaped_images[1])]
    result = CliRunner().invoke(cli, args + ["--json"])
    assert result.exit_code == 0, result.output
    matrix = json.loads(result.stdout)["similarity"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    assert all(-1.0 <= v <= 1.0 for row in matrix for v in row)
    table = CliRunner().invoke(cli, args)
    assert table.exit_code == 0
    assert len(re.findall(r"-?\d\.\d{4}", table.stdout)) == 4


def test_model_comes_from_the_environment(tiny_dir, shaped_images):
    args = ["similarity", "-t", "x", "-i", str(shaped_images[0]), "--json"]
    result = CliRunner().invoke(cli, args, env={"E5V_MODEL": str(tiny_dir), "E5V_DEVICE": "cpu"})
    assert result.exit_code == 0, result.output


def test_errors_name_the_input_and_exit_non_zero(tiny_dir, tmp_path):
    base = ["similarity", "--model", str(tiny_dir), "--device", "cpu", "-t", "x"]
    result = CliRunner().invoke(cli, base + ["-i", str(tmp_path / "nope.jpg")])
    assert result.exit_code == 2 and "nope.jpg: no such file" in result.output
    result = CliRunner().invoke(cli, base)
    assert result.exit_code == 2 and "at least one --text and one --image" in result.output
    result = CliRunner().invoke(cli, ["similarity", "--model", str(tmp_path), "-t", "x", "-i", "y"])
    assert result.exit_code == 1 and "cannot load an E5-V model" in result.output


def test_readme_commands_exist():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    for command in re.findall(r"^\$ e5v-search (\S+)", readme, re.M):
        assert command in cli.commands, f"README shows `e5v-search {command}`, which does not exist"


def test_bad_numbers_and_filters_are_refused_at_the_edge(tmp_path, tiny_dir):
    from fastapi.testclient import TestClient

    from e5v_search.engine import Engine
    from e5v_search.server import create_app

    index = tmp_path / "ix"
    (tmp_path / "t.txt").write_text("one\ntwo\nthree\n")
    env = {"E5V_MODEL": str(tiny_dir), "E5V_DEVICE": "cpu"}
    assert CliRunner().invoke(cli, ["ingest", str(tmp_path / "t.txt"), "--index", str(index)],
                              env=env).exit_code == 0  # fmt: skip
    refused = [
        ["rebuild", "--ef-search", "-5"],
        ["rebuild", "--nprobe", "-1"],
        ["rebuild", "--max-memory", "0"],
        ["search", "one", "-k", "1000000000"],
        ["search", "one", "-k", "0"],
        ["eval", "index", "-k", "-3"],
        ["eval", "index", "--sample", "-1"],
        ["delete", "--where", "0) UNION SELECT id FROM items --"],
        ["search", "one", "--type", "text", "--where", "1); DROP TABLE items; --"],
    ]
    for args in refused:
        result = CliRunner().invoke(cli, [*args, "--index", str(index)], env=env)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
    with Engine.open(index, model=str(tiny_dir), device="cpu") as engine:
        assert engine.info()["counts"]["text"] == 3  # nothing was deleted or saved
        app = create_app(engine)
        with TestClient(app) as client:
            for url in (f"/api/items/{2**64}", f"/api/search?like={2**70}", "/api/items/0",
                        f"/thumbs/{2**64}.jpg"):  # fmt: skip
                assert client.get(url).status_code == 422, url
        app.state.worker.close()
