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


def test_paths_prints_image_files_only_one_a_line(tmp_path, env):
    photos = _photos(tmp_path / "photos")
    (tmp_path / "t.txt").write_text("a red picture\n")
    ingest = ["ingest", str(photos), str(tmp_path / "t.txt"), "-q"]
    assert CliRunner().invoke(cli, ingest, env=env).exit_code == 0
    result = CliRunner().invoke(cli, ["search", "red", "--type", "any", "--paths"], env=env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all((photos / line).is_file() for line in lines)
    assert "1 text results left out" in result.stderr
    both = CliRunner().invoke(cli, ["search", "red", "--paths", "--json"], env=env)
    assert both.exit_code == 2 and "--json or --paths" in both.output


def test_like_takes_a_records_key(tmp_path, env):
    notes = tmp_path / "notes.jsonl"
    rows = ['{"key": "cat-1", "text": "a cat"}', '{"key": 42, "text": "a dog"}']
    notes.write_text("\n".join([*rows, '{"key": "dup", "text": "x"}']) + "\n")
    (tmp_path / "more.jsonl").write_text('{"key": "dup", "text": "y"}\n')
    args = ["ingest", str(notes), str(tmp_path / "more.jsonl"), "--id-field", "key", "-q"]
    assert CliRunner().invoke(cli, args, env=env).exit_code == 0
    with Engine.open(tmp_path / "ix") as engine:
        cat, dog = engine.like_id("cat-1"), engine.like_id("id=42")
        assert (
            engine.items([cat])[0]["text"] == "a cat" and engine.items([dog])[0]["text"] == "a dog"
        )
        assert engine.like_id(2) == engine.like_id("2") == 2  # a number is an item id
    found = CliRunner().invoke(cli, ["search", "--like", "cat-1", "--json"], env=env)
    assert found.exit_code == 0, found.output
    assert "a cat" not in found.stdout and "a dog" in found.stdout
    missing = CliRunner().invoke(cli, ["search", "--like", "nope"], env=env)
    assert missing.exit_code == 2 and "no item has the key 'nope'" in missing.output
    twice = CliRunner().invoke(cli, ["search", "--like", "dup"], env=env)
    assert twice.exit_code == 2 and "2 items have the key 'dup' (in more.jsonl, notes.jsonl)" in (
        twice.output
    )
