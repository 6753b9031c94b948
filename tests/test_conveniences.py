"""What rclip's and llm's users reach for (issue 23): --exclude, .tsv, standard input, paths
only for xargs, --like by a record's own key."""

import pytest
from click.testing import CliRunner
from PIL import Image

from e5v_search.cli import cli
from e5v_search.engine import Engine
from e5v_search.errors import InputError


@pytest.fixture
def env(tmp_path, tiny_dir):
    return {
        "E5V_MODEL": str(tiny_dir),
        "E5V_DEVICE": "cpu",
        "E5V_SEARCH_INDEX": str(tmp_path / "ix"),
    }


def _photos(folder):
    for sub, colour in [("keep", (200, 10, 10)), ("thumbs", (10, 200, 10)), ("keep", (9, 9, 200))]:
        (folder / sub).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), colour).save(folder / sub / f"{sub}-{colour[2]}.png")
    Image.new("RGB", (40, 30), (5, 5, 5)).save(folder / "keep" / "x.tmp.png")
    return folder


def test_exclude_leaves_out_folders_and_files_by_glob(tmp_path, env):
    photos = _photos(tmp_path / "photos")
    args = ["ingest", str(photos), "--exclude", "thumbs", "--exclude", "*.tmp.png", "-q"]
    assert CliRunner().invoke(cli, args, env=env).exit_code == 0
    with Engine.open(tmp_path / "ix") as engine:
        names = sorted(r["source"].rsplit("/", 1)[1] for r in engine.items(range(1, 20)))
    assert names == ["keep-10.png", "keep-200.png"]


def test_tsv_and_stdin_inputs(tmp_path, env):
    tsv = tmp_path / "notes.tsv"
    tsv.write_text(
        'key\tcaption\tyear\nk1\tA "quoted" red circle.\t2024\nk2\tGreen things.\t2023\n'
    )
    args = ["ingest", str(tsv), "--text-field", "caption", "--id-field", "key", "-q"]
    assert CliRunner().invoke(cli, args, env=env).exit_code == 0
    lines = CliRunner().invoke(
        cli, ["ingest", "-", "-q"], input="one line\n\nanother line\n", env=env
    )
    assert lines.exit_code == 0, lines.output
    records = '{"text": "a stdin record", "tag": "s"}\n'
    args = ["ingest", "-", "--stdin-format", "jsonl", "-q"]
    assert CliRunner().invoke(cli, args, input=records, env=env).exit_code == 0
    again = CliRunner().invoke(cli, ["ingest", "-"], input="one line\n\nanother line\n", env=env)
    assert "added 0, updated 0, unchanged 2" in again.stderr
    with Engine.open(tmp_path / "ix") as engine:
        rows = engine.items(range(1, 10))
    texts = {(r["source"], r["locator"]): r["text"] for r in rows}
    assert texts[(str(tsv), "id=k1")] == 'A "quoted" red circle.'
    from_stdin = sorted(text for (source, _), text in texts.items() if source == "<stdin>")
    assert from_stdin == ["a stdin record", "another line", "one line"]  # none overwritten
    assert next(r for r in rows if r["text"] == "a stdin record")["metadata"] == {"tag": "s"}


def test_stdin_is_read_once(tmp_path, tiny_dir):
    with Engine.open(tmp_path / "ix", model=str(tiny_dir), device="cpu", create=True) as engine:
        with pytest.raises(InputError, match="standard input"):
            engine.ingest(["-", "-"], progress=False)
