"""Reading corpora: folders, globs, text files, and every bad input named."""

import os

from PIL import Image

from e5v_search.ingest.sources import SourceError, SourceItem, scan, scope_of


def _names(entries):
    return [os.path.basename(e.source) for e in entries if isinstance(e, SourceItem)]


def test_folders_are_walked_recursively_for_images_of_any_case(tmp_path):
    for rel in ["a.JPG", "b.png", "sub/c.webp", "sub/deeper/d.TiFF", "e.gif", "f.bmp", "g.jpeg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / rel, format=None if "." in rel else "PNG")
    (tmp_path / "notes.txt").write_text("not from a folder")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / ".cache").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / ".cache" / "h.png")
    names = _names(scan([tmp_path]))
    assert sorted(names) == ["a.JPG", "b.png", "c.webp", "d.TiFF", "e.gif", "f.bmp", "g.jpeg"]
    assert _names(scan([tmp_path])) == names  # a stable order


def test_a_symlink_loop_does_not_hang_the_walk(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.png")
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    assert _names(scan([tmp_path])) == ["x.png"]


def test_text_files_give_one_item_per_line_row_or_record(tmp_path):
    (tmp_path / "t.txt").write_text("first line\n\n  second  \n")
    (tmp_path / "c.jsonl").write_text('{"text": "a dog", "tag": 1}\n{"caption": "x"}\n[1]\n{bad\n')
    (tmp_path / "r.csv").write_text("id,caption,extra\n7,a cat,z\n8,,y\n")
    entries = list(scan([tmp_path / "t.txt", tmp_path / "c.jsonl"]))
    items = [e for e in entries if isinstance(e, SourceItem)]
    assert [(i.locator, i.text) for i in items] == [
        ("line 1", "first line"),
        ("line 3", "second"),
        ("line 1", "a dog"),
    ]
    assert items[2].metadata == {"tag": 1}
    reasons = {e.locator: e.reason for e in entries if isinstance(e, SourceError)}
    assert "no 'text' field" in reasons["line 2"]
    assert reasons["line 3"] == "not a JSON object"
    assert reasons["line 4"].startswith("not valid JSON")
    rows = list(scan([tmp_path / "r.csv"], text_field="caption", id_field="id"))
    assert rows[0].locator == "id=7" and rows[0].metadata == {"id": "7", "extra": "z"}
    assert isinstance(rows[1], SourceError) and rows[1].reason == "blank text"


def test_bad_files_and_paths_are_named(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"fine\n\xff\xfe broken\n")
    (tmp_path / "plain.csv").write_text("caption\nx\n")
    (tmp_path / "doc.pdf").write_bytes(b"%PDF")
    entries = list(
        scan(
            [
                tmp_path / "bad.txt",
                tmp_path / "plain.csv",
                tmp_path / "doc.pdf",
                tmp_path / "missing",
                str(tmp_path / "*.nothing"),
            ]
        )
    )
    errors = [str(e) for e in entries if isinstance(e, SourceError)]
    assert any("bad.txt (line 2): not valid UTF-8" in e for e in errors)
    assert any(
        "plain.csv: no 'text' column (columns: caption; use --text-field)" in e for e in errors
    )
    assert any("doc.pdf: not a file type it reads" in e for e in errors)
    assert any("missing: no such file, folder or pattern" in e for e in errors)
    assert any("*.nothing: the pattern matches no file" in e for e in errors)


def test_globs_and_scope(tmp_path):
    for name in ["a.png", "b.png", "c.jpg"]:
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    assert _names(scan([str(tmp_path / "*.png")])) == ["a.png", "b.png"]
    scope = scope_of([tmp_path, tmp_path / "a.png"])
    assert scope == [str(tmp_path) + os.sep, str(tmp_path / "a.png")]
