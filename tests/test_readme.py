"""The README's examples run as written, from a user's home folder: its `$ e5v-search` lines
(read from the README, so they cannot drift from it) and its Python example, on a home of
photos, captions and notes like the ones they name. Only the model is the tiny checkpoint
(E5V_MODEL; `--model royokong/e5-v --device cuda` becomes it on the CPU) and `serve` gets a free
port: the hub and a GPU are not here."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from e5v_search.testing import COLORS, SHAPES, draw_shape

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    """The `$ e5v-search ...` lines of the block under "Using it on your own data"."""
    section = README.split("## Using it on your own data", 1)[1]
    block = section.split("```", 2)[1]
    return [line[2:] for line in block.splitlines() if line.startswith("$ e5v-search")]


def python_example() -> str:
    section = README.split("From Python (the CLI is a thin shell over this):", 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def _photo(path: Path, color: str, shape: str, background: str = "pale") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_shape(color, shape, background).convert("RGB").save(path, quality=90)


@pytest.fixture
def home(tmp_path):
    """A home folder: ~/photos (cat.jpg, street.jpg, old/ among them), captions.jsonl and
    notes.csv with a `caption` field, dog.jpg and cat.jpg, a Flickr30K-shaped test split."""
    home = tmp_path / "me"
    photos = home / "photos"
    for i, (color, shape) in enumerate((c, s) for c in COLORS for s in SHAPES):
        _photo(photos / ("old" if i % 6 == 0 else "2024") / f"{color}-{shape}.jpg", color, shape)
    _photo(photos / "cat.jpg", "red", SHAPES[0])
    _photo(photos / "street.jpg", "blue", SHAPES[1], "grey")
    shutil.copy(photos / "cat.jpg", home / "cat.jpg")
    _photo(home / "dog.jpg", "green", SHAPES[2])
    captions = [{"caption": f"A {c} {s}.", "album": "shapes"} for c in COLORS for s in SHAPES]
    (home / "captions.jsonl").write_text("".join(json.dumps(c) + "\n" for c in captions))
    notes = ["caption,kind", "Invoice XK-2291-B from Lindqvist Trading AB,invoice"]
    notes += [f"Note {i} on a dog at the beach,note" for i in range(40)]
    (home / "notes.csv").write_text("\n".join(notes) + "\n")
    flickr = home / "flickr30k-images"
    entries = []
    for i, color in enumerate(COLORS):
        _photo(flickr / f"{i}.jpg", color, SHAPES[i % len(SHAPES)])
        sentences = [{"raw": f"A {color} {SHAPES[i % len(SHAPES)]}, take {j}."} for j in range(5)]
        entries.append({"filename": f"{i}.jpg", "split": "test", "sentences": sentences})
    (home / "dataset_flickr30k.json").write_text(
        json.dumps({"dataset": "flickr30k", "images": entries})
    )
    return home


def _env(home: Path, model: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E5V_", "XDG_"))}
    bin_dir = str(Path(sys.executable).parent)  # where this venv's `e5v-search` is
    return dict(
        env,
        HOME=str(home),
        PATH=bin_dir + os.pathsep + env.get("PATH", ""),
        E5V_MODEL=str(model),
        E5V_DEVICE="cpu",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(line: str, home: Path, env: dict) -> None:
    """`serve` as written, on a free port: it answers a search, then stops on SIGTERM."""
    port = _free_port()
    process = subprocess.Popen(
        ["bash", "-c", f"exec {line} --port {port}"],
        cwd=home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/search?q=a+dog+on+a+beach&k=3"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url, timeout=10) as answer:
                    assert len(json.load(answer)["results"]) == 3
                break
            except OSError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "serve did not answer in 120 s"
                time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(30)


def test_the_readme_commands_run_as_written_from_home(home, tiny_dir):
    env = _env(home, tiny_dir)
    commands = readme_commands()
    assert len(commands) > 15 and commands[1].startswith("e5v-search ingest ~/photos")
    outputs = {}
    for line in commands:
        line = line.replace(
            "--model royokong/e5-v --device cuda", f"--model {tiny_dir} --device cpu"
        )
        if line.startswith("e5v-search serve"):
            _serve(line, home, env)
            continue
        ran = subprocess.run(
            ["bash", "-c", line], cwd=home, env=env, capture_output=True, text=True, timeout=600
        )
        assert ran.returncode == 0, f"{line}\n{ran.stdout}\n{ran.stderr}"
        outputs[line] = ran.stdout
    # The index went to the index home, never into the photo folder it indexes.
    index = home / ".local/share/e5v-search/indexes/photos"
    assert (index / "catalog.sqlite").is_file()
    assert list(home.rglob("catalog.sqlite")) == [index / "catalog.sqlite"]
    assert [p for p in home.rglob("thumbnails") if index not in p.parents] == []
    keyword = next(out for line, out in outputs.items() if "XK-2291-B" in line)
    assert "XK-2291-B" in keyword.splitlines()[1], keyword  # the invoice is the first result
    dry_run = next(out for line, out in outputs.items() if "--dry-run" in line)
    assert "photos/old/" in dry_run and "2024" not in dry_run
    evaluation = next(out for line, out in outputs.items() if "eval retrieval" in line)
    assert "R@1" in evaluation


def test_the_readme_python_example_runs_as_written(home, tiny_dir):
    code = python_example().replace('"royokong/e5-v"', repr(str(tiny_dir)))
    assert code.count(repr(str(tiny_dir))) == 2
    ran = subprocess.run(
        [sys.executable, "-c", code],
        cwd=home,
        env=_env(home, tiny_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr
    scores = [float(line.split()[0]) for line in ran.stdout.splitlines()]
    assert len(scores) == 10 and scores == sorted(scores, reverse=True)
    assert (home / ".local/share/e5v-search/indexes/photos/catalog.sqlite").is_file()
