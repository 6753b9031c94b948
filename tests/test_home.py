"""Where indexes live (issue 23): a bare name is always a named index in the index home, never
a folder of the working directory; an index is never made in, or read from, a user's folders;
a failed first ingest leaves nothing behind; and the Python API refuses what it cannot use."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from e5v_search.cli import cli
from e5v_search.config import index_home, index_path
from e5v_search.engine import Engine
from e5v_search.errors import InputError
from e5v_search.storage.store import Store


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A working folder holding a `photos` folder of two images, and an index home of its own."""
    monkeypatch.setenv("E5V_INDEX_HOME", str(tmp_path / "home"))
    work = tmp_path / "work"
    (work / "photos").mkdir(parents=True)
    for i, colour in enumerate([(200, 10, 10), (10, 200, 10)]):
        Image.new("RGB", (64, 48), colour).save(work / "photos" / f"p{i}.png")
    monkeypatch.chdir(work)
    return tmp_path


def _env(tiny_dir):
    return {"E5V_MODEL": str(tiny_dir), "E5V_DEVICE": "cpu", "E5V_SEARCH_INDEX": None}


def test_a_bare_name_is_a_named_index_never_the_folder_of_that_name(home, tiny_dir):
    assert index_home() == home / "home"
    assert index_path("photos") == home / "home" / "photos"
    assert index_path("./photos") == Path("photos") and index_path("a/b") == Path("a/b")
    assert index_path("~/x") == Path.home() / "x"
    result = CliRunner().invoke(cli, ["ingest", "photos", "--index", "photos"], env=_env(tiny_dir))
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir("photos")) == ["p0.png", "p1.png"]  # nothing written beside them
    assert (home / "home" / "photos" / "catalog.sqlite").is_file()
    os.chdir(home)  # the same name from another folder finds the same index
    info = CliRunner().invoke(cli, ["info", "--index", "photos"])
    assert info.exit_code == 0 and "2 images" in info.stdout


def test_no_index_in_a_folder_of_files_or_inside_its_own_source(home, tiny_dir):
    env = _env(tiny_dir)
    refused = CliRunner().invoke(cli, ["ingest", "photos", "--index", "./photos"], env=env)
    assert refused.exit_code == 2 and "a folder with files in it but not an index" in refused.output
    assert sorted(os.listdir("photos")) == ["p0.png", "p1.png"]
    inside = CliRunner().invoke(cli, ["ingest", "photos", "--index", "photos/ix"], env=env)
    assert inside.exit_code == 2 and "is inside the source" in inside.output
    assert sorted(os.listdir("photos")) == ["p0.png", "p1.png"]


def test_an_index_folder_inside_a_source_is_never_read(home, tiny_dir):
    env = _env(tiny_dir)
    made = CliRunner().invoke(cli, ["ingest", "photos", "--index", "./shelf/ix"], env=env)
    assert made.exit_code == 0, made.output
    thumbs = Path("shelf/ix/thumbnails")
    thumbs.mkdir()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(thumbs / "t.png")
    other = CliRunner().invoke(cli, ["ingest", "shelf", "photos", "--index", "other"], env=env)
    assert other.exit_code == 0, other.output
    with Engine.open(index_path("other")) as engine:
        assert engine.counts()["image"] == 2
        sources = {r["source"] for r in engine.items(range(1, 10))}
    assert not any("shelf" in s for s in sources)


def test_a_failed_first_ingest_leaves_nothing_behind(home, tiny_dir):
    env = _env(tiny_dir)
    typo = CliRunner().invoke(cli, ["ingest", "fotos", "--index", "new"], env=env)
    assert typo.exit_code == 2 and "fotos: no such file, folder or pattern" in typo.output
    broken = {**env, "E5V_MODEL": str(home / "no-model")}
    failed = CliRunner().invoke(cli, ["ingest", "photos", "--index", "./deep/new"], env=broken)
    assert failed.exit_code == 1 and "cannot load an E5-V model" in failed.output
    assert not (home / "home").exists() and not Path("deep").exists()
    assert sorted(os.listdir()) == ["photos"]


# A process that creates an index and is killed (SIGKILL) before its first commit.
CREATOR = (
    "import sys, time\n"
    "from e5v_search.storage.store import Store\n"
    "store = Store.open(sys.argv[1], create=True)\n"
    "print('created', flush=True)\n"
    "time.sleep(600)\n"
)


def _killed_creator(path: Path) -> None:
    creator = subprocess.Popen(
        [sys.executable, "-c", CREATOR, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert creator.stdout.readline() == "created\n"
        with Store.open(path) as store:  # its creator is alive: an empty index, left alone
            assert store.catalog.count() == 0
        assert (path / "catalog.sqlite").is_file()
    finally:
        creator.kill()
        creator.wait(30)
    assert (path / "catalog.sqlite").is_file()  # nothing could remove it


def test_an_index_whose_creator_was_killed_before_a_commit_is_gone_at_the_next_open(home, tiny_dir):
    _killed_creator(index_path("killed"))
    info = CliRunner().invoke(cli, ["info", "--index", "killed"])
    assert info.exit_code != 0 and "no index at" in info.output, info.output
    assert not index_path("killed").exists()
    mine = home / "mine"  # a folder the user made: left as it was, empty, and usable
    mine.mkdir()
    _killed_creator(mine)
    made = CliRunner().invoke(cli, ["ingest", "photos", "--index", str(mine)], env=_env(tiny_dir))
    assert made.exit_code == 0, made.output
    info = CliRunner().invoke(cli, ["info", "--index", str(mine)])
    assert info.exit_code == 0 and "2 images" in info.stdout


def test_a_creator_giving_up_leaves_the_index_another_is_creating(home):
    """Two first ingests into one new index: one fails at once (a typo) while the other is
    still loading its model; the index stays for the other, and the last one out takes it."""
    path = index_path("shared")
    creator = subprocess.Popen(
        [sys.executable, "-c", CREATOR, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert creator.stdout.readline() == "created\n"
        Store.open(path, create=True).close()  # the one that gave up
        assert (path / "catalog.sqlite").is_file()
    finally:
        creator.kill()
        creator.wait(30)
    Store.open(path, create=True).close()
    assert not path.exists()


def test_an_index_in_the_old_place_is_still_found_and_said_where(home, tiny_dir):
    env = _env(tiny_dir)
    old = CliRunner().invoke(cli, ["ingest", "photos", "--index", "./indexes/legacy"], env=env)
    assert old.exit_code == 0, old.output
    info = CliRunner().invoke(cli, ["info", "--index", "legacy"])
    assert info.exit_code == 0 and "2 images" in info.stdout
    assert "found where earlier versions kept named indexes" in info.stderr
    assert str(Path("indexes/legacy").resolve()) in info.stderr


def test_the_api_expands_home_and_refuses_a_missing_source(home, tiny_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(home / "work"))
    path = home / "api-ix"
    with Engine.open(path, model=str(tiny_dir), device="cpu", create=True) as engine:
        with pytest.raises(InputError, match="mooon: no such file, folder or pattern"):
            engine.ingest(["~/photos", "~/mooon"], progress=False)
        report = engine.ingest(["~/photos"], progress=False)
        assert report.added == 2 and not engine.errors()
    conn = sqlite3.connect(path / "catalog.sqlite")
    sources = [row[0] for row in conn.execute("SELECT source FROM items")]
    conn.close()
    assert all(s.startswith(str(home / "work" / "photos")) for s in sources)


def test_a_term_that_looks_like_an_image_path_must_be_a_file(home, tiny_dir):
    with Engine.open(home / "ix", model=str(tiny_dir), device="cpu", create=True) as engine:
        engine.ingest(["photos"], progress=False)
        for term in ["mooon.png", "./photos/p9.jpg", "photos/p9"]:
            with pytest.raises(InputError, match="looks like an image path but there is no such"):
                engine.search("a red square", add=[term])
        with pytest.raises(InputError, match="is a file but not an image"):
            Path("notes.txt").write_text("x")
            engine.search("a red square", subtract=["./notes.txt"])
        assert engine.search("a red square", add=["photos/p0.png", "and/or green"], k=1)
    result = CliRunner().invoke(
        cli,
        ["search", "red", "--add", "mooon.png", "--index", str(home / "ix")],
        env=_env(tiny_dir),
    )
    assert result.exit_code == 2 and "'mooon.png' looks like an image path" in result.output
