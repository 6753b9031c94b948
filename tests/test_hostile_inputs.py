"""A hostile corpus never hangs or stops a run: fifos and devices are refused before they are
opened, every line is read within the cap, and whatever is wrong with one record is its error.

A regression here would hang rather than fail, so each test that could runs under a deadline
that ends the session with every thread's traceback (faulthandler), and subprocesses get
`timeout=`."""

import faulthandler
import json
import os
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from e5v_search import files
from e5v_search.config import MAX_JSON_DEPTH, MAX_LINE_BYTES
from e5v_search.engine import Engine
from e5v_search.errors import InputError, NotRegularFileError
from e5v_search.images import image_size, load_image
from e5v_search.ingest.sources import SourceError, SourceItem, scan, text_hash
from e5v_search.model import encoder as encoder_module
from e5v_search.model import prompts

FIFO = "is a fifo, not a regular file"
ZERO = "is a link to a character device, not a regular file"
TOO_LONG = "longer than 1 MiB (the cap on a line): skipped"
BAD_NAME = b"caf\xe9.png"  # Latin-1, not UTF-8: Python holds the name with a surrogate


@contextmanager
def deadline(seconds=120):
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _hostile_folder(folder):
    """Two good images, a link to /dev/zero named x.png, a fifo named y.jpg, a name not UTF-8."""
    folder.mkdir(parents=True)
    for i, color in enumerate([(200, 30, 30), (30, 30, 200)]):
        Image.new("RGB", (40, 30), color).save(folder / f"good{i}.png")
    os.symlink("/dev/zero", folder / "x.png")
    os.mkfifo(folder / "y.jpg")
    Image.new("RGB", (30, 40), (30, 200, 30)).save(os.path.join(os.fsencode(folder), BAD_NAME))
    return folder


def _hostile_jsonl(path):
    """Records 1, 6 and 9 are good (9 has a long text, under the line cap); the others are not."""
    lines = [
        json.dumps({"text": "a good first record", "n": 1}),
        json.dumps({"text": "x" * 10_000_000}),  # 10 MB: over the cap
        '{"text": "a lone \\ud800 surrogate"}',
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        json.dumps({"text": "a good second record", "tags": ["x", {"y": [1, 2]}]}),
        '{"text": "fine", "note": "\\udc80 in a value"}',
        json.dumps({"text": "deep", "m": json.loads("[" * (MAX_JSON_DEPTH + 1) + "]" * 65)}),
        json.dumps({"text": " ".join(f"word{i}" for i in range(90_000))}),  # 0.9 MB: fits
        '{"text": "not a number", "v": NaN}',
        '{"text": "too big a number", "v": 1e999}',
    ]
    assert MAX_LINE_BYTES * 0.8 < len(lines[8]) < MAX_LINE_BYTES
    path.write_text("\n".join(lines) + "\n")
    return path


JSONL_ERRORS = {
    "line 2": TOO_LONG,
    "line 3": "'text' holds a lone surrogate (not valid Unicode): skipped",
    "line 4": "not valid JSON (nested too deep)",
    "line 5": "not valid JSON (nested too deep)",
    "line 7": "'note' holds a lone surrogate (not valid Unicode): skipped",
    "line 8": f"'m' is nested deeper than {MAX_JSON_DEPTH} levels: skipped",
    "line 10": "not valid JSON (NaN is not a JSON number)",
    "line 11": "not valid JSON (1e999 is too large for a JSON number)",
}


# -- opening: only regular files --------------------------------------------------------------


def test_a_fifo_or_device_is_refused_before_it_is_opened(tmp_path):
    folder = _hostile_folder(tmp_path / "in")
    with deadline():
        for path, reason in [(folder / "y.jpg", FIFO), (folder / "x.png", ZERO)]:
            with pytest.raises(NotRegularFileError) as refused:
                files.open_regular(path)
            assert str(refused.value) == f"{path}: {reason}"
            with pytest.raises(NotRegularFileError):
                files.sha256_of(path)
            with pytest.raises(InputError, match=reason):
                load_image(path)
            with pytest.raises(InputError, match=reason):
                image_size(str(path))
        with pytest.raises(IsADirectoryError):
            files.open_regular(folder)
        with pytest.raises(InputError, match="is a directory, not an image"):
            load_image(folder)
        with files.open_regular(folder / "good0.png") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert load_image(folder / "good0.png").size == (40, 30)


def test_a_file_swapped_for_a_fifo_after_the_check_is_refused_when_opened(tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "late.png")
    check = files.check_regular
    calls = []

    def passes_first(path, status):  # the stat before the open saw a regular file
        calls.append(path)
        if len(calls) > 1:
            check(path, status)

    monkeypatch.setattr(files, "check_regular", passes_first)
    with deadline(), pytest.raises(NotRegularFileError, match=FIFO):
        files.open_regular(tmp_path / "late.png")  # O_NONBLOCK: no wait for a writer
    assert len(calls) == 2


def test_the_scan_names_fifos_and_devices_in_folders_globs_and_arguments(tmp_path):
    folder = _hostile_folder(tmp_path / "in")
    os.mkfifo(tmp_path / "notes.jsonl")
    entries = list(
        scan([folder, str(folder / "*.jpg"), folder / "y.jpg", tmp_path / "notes.jsonl"])
    )
    items = sorted(os.path.basename(e.source) for e in entries if isinstance(e, SourceItem))
    assert items == ["good0.png", "good1.png"]
    errors = [str(e) for e in entries if isinstance(e, SourceError)]
    assert errors == [
        f"{folder}/caf\\xe9.png: the file name is not valid UTF-8: rename the file to ingest it",
        f"{folder}/x.png: {ZERO}",
        f"{folder}/y.jpg: {FIFO}",
        f"{folder}/y.jpg: {FIFO}",  # the glob
        f"{folder}/y.jpg: {FIFO}",  # the argument
        f"{tmp_path}/notes.jsonl: {FIFO}",
    ]


# -- reading texts: bounded lines, record-level errors ---------------------------------------


def test_a_jsonl_records_errors_are_its_own_and_the_rest_is_read(tmp_path):
    path = _hostile_jsonl(tmp_path / "c.jsonl")
    started = time.monotonic()
    entries = list(scan([path]))
    assert time.monotonic() - started < 20  # seconds; well under 1 on a laptop
    errors = {e.locator: e.reason for e in entries if isinstance(e, SourceError)}
    assert errors == JSONL_ERRORS
    items = [e for e in entries if isinstance(e, SourceItem)]
    assert [i.locator for i in items] == ["line 1", "line 6", "line 9"]
    assert items[1].metadata == {"tags": ["x", {"y": [1, 2]}]}
    for item in items:  # what the run does with an item that passed cannot fail
        text_hash(item.text)
        json.dumps(item.metadata, ensure_ascii=False, sort_keys=True, default=str).encode()


def test_lines_at_the_cap_are_read_and_longer_ones_skipped_in_every_text_format(tmp_path):
    at_cap, over = "a" * MAX_LINE_BYTES, "b" * (MAX_LINE_BYTES + 1)
    wide = "é" * (MAX_LINE_BYTES // 2 + 1)  # fewer characters than the cap, more bytes
    (tmp_path / "t.txt").write_text(f"one\r\n{at_cap}\r\n{over}\r\n{wide}\nlast\rafter cr\n")
    entries = list(scan([tmp_path / "t.txt"]))
    assert [(e.locator, len(e.text)) for e in entries if isinstance(e, SourceItem)] == [
        ("line 1", 3),
        ("line 2", MAX_LINE_BYTES),
        ("line 5", 4),
        ("line 6", 8),
    ]
    assert [(e.locator, e.reason) for e in entries if isinstance(e, SourceError)] == [
        ("line 3", TOO_LONG),
        ("line 4", TOO_LONG),
    ]

    (tmp_path / "r.csv").write_text(
        f'id,caption\n1,first\n2,{over}\n3,"a quoted\n{over}\nfield"\n\n4,last\n'
    )
    rows = list(scan([tmp_path / "r.csv"], text_field="caption", id_field="id"))
    assert [(r.locator, r.text) for r in rows if isinstance(r, SourceItem)] == [
        ("id=1", "first"),
        ("id=4", "last"),
    ]
    assert [(r.locator, r.reason) for r in rows if isinstance(r, SourceError)] == [
        ("row 2", f"line 3 is {TOO_LONG}"),
        ("row 3", f"line 5 is {TOO_LONG}"),
    ]


def test_a_csv_is_read_row_by_row_and_a_bad_row_is_that_rows_error(tmp_path):
    field = "x" * (MAX_LINE_BYTES - 10)  # past the csv module's default limit, within the cap
    (tmp_path / "r.csv").write_bytes(
        "\ufeffcaption,n\nfirst,1\n".encode()
        + b"caf\xe9,2\n"  # Latin-1
        + b"nul\x00byte,3\n"
        + b"a,b,c\n"
        + f"{field},5\n".encode()
    )
    rows = list(scan([tmp_path / "r.csv"], text_field="caption"))
    assert [(r.locator, r.text[:9]) for r in rows if isinstance(r, SourceItem)] == [
        ("row 1", "first"),
        ("row 3", "nul\x00byte"),
        ("row 5", "xxxxxxxxx"),
    ]
    assert [(r.locator, r.reason) for r in rows if isinstance(r, SourceError)] == [
        ("row 2", "not valid UTF-8 (unexpected end of data)"),  # the field ends in é's 1st byte
        ("row 4", "more fields than the header has"),
    ]
    (tmp_path / "h.csv").write_bytes(b"capti\xf3n\nx\n")
    quoted = '"' + ("y" * 1000 + "\n") * 1100 + '"'  # a field of many lines: 1.1 MB
    (tmp_path / "q.csv").write_text(f"caption\nfine\n{quoted}\nafter\n")
    entries = list(scan([tmp_path / "h.csv", tmp_path / "q.csv"], text_field="caption"))
    errors = [str(e) for e in entries if isinstance(e, SourceError)]
    assert [e.text for e in entries if isinstance(e, SourceItem)] == ["fine"]
    assert errors[0].endswith(
        "h.csv (line 1): not valid UTF-8 in the header (invalid continuation byte)"
    )
    assert errors[-1].endswith(
        "q.csv (row 1050): bad CSV (field larger than field limit (1048576))"
    )


# -- the encoder: a huge text costs what the context costs ------------------------------------


def test_a_huge_text_is_cut_by_characters_first_to_the_same_tokens(encoder, monkeypatch):
    sentence = "Some words 12 and a few more, then. "
    huge = sentence * 280_000  # 10 MB
    start = len(encoder._within_reach(huge))
    assert start < 100_000
    # Past the start by whole sentences: it ends as the start does, short enough for the old way
    long = huge[: start + len(sentence) * 1_000]
    spaced = " assistant" * 30_000  # 10 characters a token: the start must grow
    assert len(encoder._within_reach(spaced)) > start
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.monotonic()
        fast = encoder._encode_prompts([huge, spaced], prompts.text_prompt, [0, 0])
        vectors = encoder.embed_texts([huge, spaced])
        assert time.monotonic() - started < 20  # seconds; well under 1 on a laptop
    assert [str(w.message).split(" longer")[0] for w in caught] == ["2 text(s)"] * 2  # per call
    assert all(len(ids) <= encoder.context for _, ids in fast)

    monkeypatch.setattr(encoder_module, "CHARS_PER_TOKEN", 10**9)  # no cut by characters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slow = encoder._encode_prompts([long, spaced], prompts.text_prompt, [0, 0])
        np.testing.assert_allclose(vectors, encoder.embed_texts([long, spaced]), atol=1e-6)
    assert [ids for _, ids in fast] == [ids for _, ids in slow]
    assert encoder._within_reach(sentence * 10) == sentence * 10  # a text that fits: whole


# -- a whole run: the engine and the command line ---------------------------------------------


def test_an_ingest_of_a_hostile_corpus_stores_the_rest_and_names_each_bad_input(tmp_path, tiny_dir):
    folder = _hostile_folder(tmp_path / "in")
    jsonl = _hostile_jsonl(tmp_path / "c.jsonl")
    with (
        deadline(),
        Engine.open(tmp_path / "ix", model=str(tiny_dir), device="cpu", create=True) as engine,
    ):
        with pytest.warns(UserWarning, match="1 text"):  # line 9, cut to the context
            report = engine.ingest([folder, jsonl], progress=False)
        assert (report.added, report.failed) == (5, 3 + len(JSONL_ERRORS))
        recorded = {
            (os.path.basename(e["source"]), e["locator"]): e["reason"] for e in engine.errors()
        }
        assert recorded[("x.png", "")] == ZERO and recorded[("y.jpg", "")] == FIFO
        assert recorded[("caf\\xe9.png", "")].startswith("the file name is not valid UTF-8")
        assert {loc: r for (name, loc), r in recorded.items() if name == "c.jsonl"} == JSONL_ERRORS

        started = time.monotonic()
        for query in [{"image": folder / "y.jpg"}, {"image": str(folder / "x.png")}]:
            with pytest.raises(InputError, match="not a regular file"):
                engine.search(**query)
        with pytest.raises(InputError, match=FIFO):
            engine.search("a red square", add=[str(folder / "y.jpg")])
        with pytest.raises(InputError, match=FIFO):
            engine.search("make it blue", image=folder / "y.jpg")
        assert time.monotonic() - started < 20
        assert engine.search(image=folder / "good0.png", k=1, modality="image")[0].score > 0.99


def test_the_cli_ingest_and_search_name_a_fifo_and_a_device_and_go_on(tmp_path, tiny_dir):
    folder = _hostile_folder(tmp_path / "in")
    jsonl = _hostile_jsonl(tmp_path / "c.jsonl")
    env = dict(os.environ, E5V_MODEL=str(tiny_dir), E5V_DEVICE="cpu")
    command = [sys.executable, "-m", "e5v_search.cli"]
    index = ["--index", str(tmp_path / "ix")]
    run = subprocess.run(
        [*command, "ingest", str(folder), str(jsonl), *index, "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 3, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert [line for line in lines if "x.png" in line] == [f"skipped {folder}/x.png: {ZERO}"]
    assert [line for line in lines if "y.jpg" in line] == [f"skipped {folder}/y.jpg: {FIFO}"]
    for locator in JSONL_ERRORS:
        assert sum(f"c.jsonl ({locator})" in line for line in lines) == 1

    search = subprocess.run(
        [*command, "search", "--image", str(folder / "y.jpg"), *index],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert search.returncode == 2 and "Traceback" not in search.stderr
    assert f"Error: {folder}/y.jpg: {FIFO}" in search.stderr.splitlines()
