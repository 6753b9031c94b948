"""The command line, run in-process with click's runner on the tiny checkpoint."""

import json
import re
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from e5v_search.cli import cli

ROOT = Path(__file__).resolve().parent.parent


def test_similarity_prints_the_text_by_image_cosine_matrix(tiny_dir, shaped_images):
    from e5v_search import E5VEncoder

    texts, images = ["a dog", "a cat"], [str(shaped_images[0]), str(shaped_images[1])]
    args = ["similarity", "--model", str(tiny_dir), "--device", "cpu"]
    args += ["-t", texts[0], "-t", texts[1], "-i", images[0], "-i", images[1]]
    result = CliRunner().invoke(cli, args + ["--json"])
    assert result.exit_code == 0, result.output
    matrix = np.array(json.loads(result.stdout)["similarity"])
    encoder = E5VEncoder.from_pretrained(str(tiny_dir), device="cpu")
    expected = encoder.embed_texts(texts) @ encoder.embed_images(images).T
    assert matrix.shape == (2, 2) and np.abs(matrix - expected).max() < 1e-5
    table = CliRunner().invoke(cli, args)
    assert table.exit_code == 0
    printed = [float(v) for v in re.findall(r"-?\d\.\d{4}", table.stdout)]
    assert np.abs(np.array(printed).reshape(2, 2) - expected).max() <= 5e-5  # rows are texts


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


def test_readme_architecture_matches_the_layout():
    """Every module the README's architecture section names exists and every module exists
    there; each subpackage's docstring names its modules."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    package = ROOT / "e5v_search"
    modules = {p.relative_to(package).as_posix() for p in package.rglob("*.py")}
    modules -= {m for m in modules if m.rsplit("/", 1)[-1] in ("__init__.py", "__main__.py")}
    named, folder = set(), ""
    for line in section.split("```")[1].splitlines()[2:]:
        match = re.match(r"^( +)(\S+)", line)
        if not match or len(match.group(1)) not in (2, 4):
            continue
        name = match.group(2)
        if len(match.group(1)) == 2:
            folder = name if name.endswith("/") else ""
            if name.endswith(".py"):
                named.add(name)
        elif name.endswith(".py"):
            named.add(folder + name)
    assert named == modules
    for init in package.glob("*/__init__.py"):
        doc = init.read_text()
        for module in init.parent.glob("*.py"):
            assert module.stem in doc or module.name == "__init__.py", (init, module.stem)


def test_bad_numbers_and_filters_are_refused_at_the_edge(tmp_path, tiny_dir):
    from fastapi.testclient import TestClient

    from e5v_search.engine import Engine
    from e5v_search.serving.app import create_app

    index = tmp_path / "ix"
    (tmp_path / "t.txt").write_text("one\ntwo\nthree\n")
    env = {"E5V_MODEL": str(tiny_dir), "E5V_DEVICE": "cpu"}
    assert (
        CliRunner()
        .invoke(cli, ["ingest", str(tmp_path / "t.txt"), "--index", str(index)], env=env)
        .exit_code
        == 0
    )
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
        with TestClient(app, base_url="http://127.0.0.1") as client:
            for url in (
                f"/api/items/{2**64}",
                f"/api/search?like={2**70}",
                "/api/items/0",
                f"/thumbs/{2**64}.jpg",
            ):
                assert client.get(url).status_code == 422, url
        app.state.worker.close()
