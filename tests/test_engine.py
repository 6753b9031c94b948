"""Ingest and search end to end, with the real encoder on the tiny checkpoint."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_same_catalog, catalog_snapshot
from PIL import Image

from e5v_search.cli import cli
from e5v_search.engine import Engine
from e5v_search.testing import make_sample_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    paths = make_sample_corpus(root)
    csv = root / "notes.csv"
    csv.write_text("id,caption,album\nn1,A note about a red circle.,2024\nn2,Green things.,2023\n")
    paths["csv"] = csv
    return paths


@pytest.fixture
def engine(tmp_path, tiny_dir):
    with Engine.open(tmp_path / "ix", model=str(tiny_dir), device="cpu", create=True) as engine:
        yield engine


def _ingest_all(engine, corpus, **options):
    sources = [corpus["images"], corpus["captions"]]
    report = engine.ingest(sources, progress=False, **options)
    report_csv = engine.ingest([corpus["csv"]], text_field="caption", id_field="id", progress=False)
    return report, report_csv


def test_a_folder_a_jsonl_and_a_csv_become_searchable(engine, corpus):
    report, report_csv = _ingest_all(engine, corpus)
    assert (report.added, report.failed, report_csv.added) == (96, 0, 2)
    assert engine.info()["counts"] == {"image": 48, "text": 50}

    hit = engine.search("A red circle on a grey background.", k=3, modality="text")[0]
    assert hit.text == "A red circle on a grey background." and hit.score == pytest.approx(
        1.0, abs=1e-4
    )
    assert hit.metadata == {
        "color": "red",
        "image": "images/grey/red-circle-grey.png",
        "shape": "circle",
    }
    image = corpus["images"] / "pale" / "blue-square-pale.png"
    top = engine.search(image=image, k=5, modality="image")
    assert top[0].source == str(image) and top[0].score == pytest.approx(1.0, abs=1e-4)

    assert {r.modality for r in engine.search("a dog", k=20)} == {"image"}  # text -> images
    assert {r.modality for r in engine.search(image=image, k=20)} == {"text"}  # image -> texts
    assert len({r.modality for r in engine.search("a dog", k=98, modality="any")}) == 2
    greens = engine.search("a shape", k=10, modality="text", where={"color": "green"})
    assert len(greens) == 8 and all(r.metadata["color"] == "green" for r in greens)
    album = engine.search("x", modality="text", where="json_extract(metadata, '$.album') = '2024'")
    assert [r.locator for r in album] == ["id=n1"]


def test_a_text_with_an_image_is_e5vs_composed_query_not_either_part(engine, corpus):
    _ingest_all(engine, corpus)
    image = corpus["images"] / "grey" / "red-circle-grey.png"
    composed = engine.search("make it blue", image=image, k=5, modality="image")
    query = engine.encoder.embed_composed([image], ["make it blue"])[0]  # the composed prompt
    expected = engine.search_vector(query, target="image", k=5)
    assert [(r.id, round(r.score, 5)) for r in composed] == [
        (r.id, round(r.score, 5)) for r in expected
    ]
    alone = engine.encoder.embed_images([image])[0]
    text = engine.encoder.embed_texts(["make it blue"])[0]
    assert float(query @ alone) < 0.999 and float(query @ text) < 0.999


def test_more_like_a_stored_item_and_mixed_queries(engine, corpus):
    _ingest_all(engine, corpus)
    first = engine.search("A red circle on a grey background.", k=1, modality="text")[0]
    like = engine.search(like=first.id, k=5)
    assert len(like) == 5 and first.id not in [r.id for r in like]
    assert {r.modality for r in like} == {"text"}
    mixed = engine.search("a circle", k=5, add=["red"], subtract=[("blue", 0.5)])
    circle, red, blue = engine.encoder.embed_texts(["a circle", "red", "blue"])
    query = circle + red - 0.5 * blue
    expected = engine.search_vector(query / np.linalg.norm(query), target="image", k=5)
    assert [(r.id, round(r.score, 5)) for r in mixed] == [
        (r.id, round(r.score, 5)) for r in expected
    ]
    plain = engine.search("a circle", k=5)
    assert [r.id for r in plain] != [r.id for r in mixed] or [r.score for r in plain] != [
        r.score for r in mixed
    ]


def test_reingesting_embeds_and_adds_nothing(tmp_path, tiny_dir, corpus):
    path = tmp_path / "ix"
    with Engine.open(path, model=str(tiny_dir), device="cpu", create=True) as engine:
        _ingest_all(engine, corpus)
    with Engine.open(path, model=str(tiny_dir), device="cpu") as engine:
        report, report_csv = _ingest_all(engine, corpus)
        assert (report.added, report.updated, report.unchanged) == (0, 0, 96)
        assert report_csv.unchanged == 2
        assert engine._encoder is None  # nothing to embed: the model was never loaded


def test_a_changed_file_is_updated_in_place_and_prune_removes(tmp_path, tiny_dir, corpus):
    images = tmp_path / "images"
    shutil.copytree(corpus["images"], images)
    with Engine.open(tmp_path / "ix", model=str(tiny_dir), device="cpu", create=True) as engine:
        engine.ingest([images], progress=False)
        target = images / "grey" / "red-circle-grey.png"
        before = engine.search(image=target, k=1, modality="image")[0]
        Image.new("RGB", (90, 200), (0, 0, 255)).save(target)  # new content, same path
        os.utime(images / "pale" / "red-circle-pale.png")  # touched, same content
        report = engine.ingest([images], progress=False)
        assert (report.added, report.updated, report.unchanged) == (0, 1, 47)
        after = engine.search(image=target, k=1, modality="image")[0]
        assert after.id == before.id and after.score == pytest.approx(1.0, abs=1e-4)
        stored = engine.store.catalog.get([after.id])[0]
        assert (stored["width"], stored["height"]) == (90, 200)
        assert engine.info()["counts"]["image"] == 48

        (images / "pale" / "red-circle-pale.png").unlink()
        shutil.rmtree(images / "grey")
        report = engine.ingest([images], prune=True, progress=False)
        assert report.pruned == 25 and engine.info()["counts"]["image"] == 23
        gone = str(images / "grey")
        assert not any(r.source.startswith(gone) for r in engine.search("x", k=48))


def test_identical_content_is_embedded_once(tmp_path, tiny_dir, corpus, monkeypatch):
    folder = tmp_path / "dupes"
    folder.mkdir()
    source = corpus["images"] / "grey" / "red-circle-grey.png"
    for name in ("one.png", "two.png"):
        shutil.copy(source, folder / name)
    with Engine.open(tmp_path / "ix", model=str(tiny_dir), device="cpu", create=True) as engine:
        engine.ingest([source.parent], progress=False)
        embedded = []
        original = engine.encoder.embed_prepared
        monkeypatch.setattr(
            engine.encoder,
            "embed_prepared",
            lambda p, **kw: embedded.extend(p) or original(p, **kw),
        )
        assert engine.ingest([folder], progress=False).added == 2
        assert embedded == []  # both copies reuse the stored vector
        catalog = engine.store.catalog
        ids = catalog.ids(where="source LIKE '%red-circle-grey.png' OR source LIKE '%dupes%'")
        vectors = catalog.vectors(ids)
        assert len(ids) == 3 and np.abs(vectors - vectors[0]).max() == 0


def test_the_dedupe_lookup_is_one_in_per_chunk(tmp_path, tiny_dir, monkeypatch):
    """Content stored already, or by an earlier item of the run, is looked up with one
    `IN (...)` per chunk of the run, not one query per item, and copied as before."""
    from e5v_search.ingest.run import CHUNK

    distinct = [f"Caption number {i}." for i in range(10)]
    (tmp_path / "first.txt").write_text("\n".join(distinct[:5]) + "\n")
    lines = [distinct[i % 10] for i in range(5 * CHUNK)]
    (tmp_path / "many.txt").write_text("\n".join(lines) + "\n")
    with Engine.open(tmp_path / "ix", model=str(tiny_dir), device="cpu", create=True) as engine:
        engine.ingest([tmp_path / "first.txt"], progress=False)
        embedded = []
        original = engine.encoder.embed_texts
        monkeypatch.setattr(
            engine.encoder,
            "embed_texts",
            lambda texts, **kw: embedded.extend(texts) or original(texts, **kw),
        )
        statements = []
        engine.store.catalog.conn.set_trace_callback(statements.append)
        report = engine.ingest([tmp_path / "many.txt"], progress=False)
        engine.store.catalog.conn.set_trace_callback(None)
        catalog = engine.store.catalog
        rows = catalog.get(catalog.ids("text"))
        vectors = catalog.vectors([row["id"] for row in rows])
    lookups = [sql for sql in statements if "content_hash" in sql and "FROM items" in sql]
    # One per chunk when planned; one more when a chunk copies content an earlier chunk of the
    # run, still being committed when it was planned, embeds.
    assert 5 <= len(lookups) <= 10 and all("content_hash IN (" in sql for sql in lookups)
    assert report.added == len(lines) and sorted(embedded) == distinct[5:]  # each once
    first = {}
    for row, vector in zip(rows, vectors, strict=True):
        first.setdefault(row["text"], vector)
        assert np.array_equal(vector, first[row["text"]])  # a copy: the same bytes
    assert len(rows) == 5 + len(lines) and set(first) == set(distinct)


def _bad_inputs(folder):
    folder.mkdir()
    good = Image.new("RGB", (60, 40), (9, 9, 9))
    good.save(folder / "good.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a jpeg")
    good.save(folder / "cut.png")
    (folder / "cut.png").write_bytes((folder / "cut.png").read_bytes()[:80])
    texts = folder / "texts"
    texts.mkdir()
    (texts / "bad.txt").write_bytes(b"good line\n\xff\xfe\n")
    (texts / "c.jsonl").write_text('{"text": "fine"}\n{"text": "   "}\n{not json\n')
    return [folder, texts / "bad.txt", texts / "c.jsonl", str(folder / "nope*.png")]


def test_bad_inputs_are_named_recorded_and_skipped(tmp_path, tiny_dir):
    sources = _bad_inputs(tmp_path / "in")
    seen = []
    with Engine.open(tmp_path / "ix", model=str(tiny_dir), device="cpu", create=True) as engine:
        report = engine.ingest(sources, on_error=seen.append, progress=False)
        assert (report.added, report.failed) == (3, 7)
        recorded = {
            (os.path.basename(e["source"]), e["locator"]): e["reason"] for e in engine.errors()
        }
    assert recorded[("empty.png", "")].startswith("not an image")
    assert recorded[("text.jpg", "")].startswith("not an image")
    assert "cannot decode image" in recorded[("cut.png", "")]
    assert recorded[("bad.txt", "line 2")].startswith("not valid UTF-8")
    assert recorded[("c.jsonl", "line 2")] == "blank text"
    assert recorded[("c.jsonl", "line 3")].startswith("not valid JSON")
    assert recorded[("nope*.png", "")] == "the pattern matches no file"
    assert len(seen) == 7


def test_cli_ingest_search_info_errors_delete(tmp_path, tiny_dir, corpus):
    runner = CliRunner()
    env = {
        "E5V_MODEL": str(tiny_dir),
        "E5V_DEVICE": "cpu",
        "E5V_SEARCH_INDEX": str(tmp_path / "ix"),
    }
    result = runner.invoke(cli, ["ingest", str(corpus["images"]), str(corpus["captions"])], env=env)
    assert result.exit_code == 0, result.output
    assert "added 96, updated 0, unchanged 0, failed 0" in result.stderr

    result = runner.invoke(
        cli,
        ["search", "A red circle on a grey background.", "--type", "text", "-k", "3", "--json"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3
    assert set(rows[0]) == {"id", "modality", "score", "source", "locator", "text", "metadata"}
    assert rows[0]["text"] == "A red circle on a grey background."
    table = runner.invoke(cli, ["search", "red", "--meta", "color=red", "--type", "text"], env=env)
    assert table.exit_code == 0 and len(table.stdout.splitlines()) == 1 + 8  # a header, 8 rows

    info = runner.invoke(cli, ["info"], env=env)
    assert "48 images, 48 texts" in info.stdout
    assert "image:   Flat, 48 vectors (0 segments + 48 in the delta)" in info.stdout

    bad = _bad_inputs(tmp_path / "bad")
    result = runner.invoke(
        cli, ["ingest", *map(str, bad), "--quiet", "--max-pixels", "1000"], env=env
    )
    assert result.exit_code == 3
    assert "good.png: 60x40 is over the cap of 1,000 pixels" in result.stderr
    assert "skipped" in result.stderr and "c.jsonl (line 2): blank text" in result.stderr
    errors = runner.invoke(cli, ["errors"], env=env)
    assert "nope*.png: the pattern matches no file" in errors.stdout

    deleted = runner.invoke(cli, ["delete", "--meta", "color=red"], env=env)
    assert deleted.exit_code == 0 and "deleted 8 items" in deleted.stderr
    rebuilt = runner.invoke(cli, ["rebuild", "--type", "HNSW32"], env=env)
    assert rebuilt.exit_code == 0 and "image: HNSW32" in rebuilt.stdout
    missing = runner.invoke(cli, ["info", "--index", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "no index at" in missing.output
    refused = runner.invoke(cli, ["search", "x", "--model", str(tmp_path)], env=env)
    assert refused.exit_code == 1 and "cannot load" in refused.output


def test_a_query_with_another_model_is_refused(tmp_path, tiny_dir, legacy_dir, corpus):
    with Engine.open(tmp_path / "ix", model=str(tiny_dir), device="cpu", create=True) as engine:
        engine.ingest([corpus["captions"]], progress=False)
    with Engine.open(tmp_path / "ix", model=str(legacy_dir), device="cpu") as engine:
        with pytest.raises(Exception, match="weights: index sha256:"):
            engine.search("a dog")


def test_a_model_is_known_by_its_weights_not_its_name(tmp_path, tiny_dir, corpus, monkeypatch):
    """A copy of the checkpoint at another path is accepted; other weights under the same name
    (`--model ckpt` from another folder) are refused, for search and for ingest."""
    import shutil

    from e5v_search.errors import SpecMismatchError
    from e5v_search.testing import build_tiny_checkpoint

    shutil.copytree(tiny_dir, tmp_path / "copy" / "ckpt")
    build_tiny_checkpoint(tmp_path / "other" / "ckpt", seed=1)  # same shapes, other weights
    with Engine.open(tmp_path / "ix", model=str(tiny_dir), device="cpu", create=True) as engine:
        engine.ingest([corpus["captions"]], progress=False)
        expected = engine.search("A red circle on a grey background.", k=3, modality="text")
    monkeypatch.chdir(tmp_path / "copy")
    with Engine.open(tmp_path / "ix", model="ckpt", device="cpu") as engine:
        got = engine.search("A red circle on a grey background.", k=3, modality="text")
        assert [(r.id, round(r.score, 5)) for r in got] == [
            (r.id, round(r.score, 5)) for r in expected
        ]
        notices = engine.notices()
        assert any(n.startswith("note:") and "the same weights" in n for n in notices)
        assert engine.notices() == []  # each said once
    monkeypatch.chdir(tmp_path / "other")
    with Engine.open(tmp_path / "ix", model="ckpt", device="cpu") as engine:
        with pytest.raises(SpecMismatchError, match="weights: index sha256:"):
            engine.search("a dog")
        with pytest.raises(SpecMismatchError):
            engine.ingest([corpus["csv"]], text_field="caption", progress=False)
    with Engine.open(tmp_path / "ix", model=str(tiny_dir), device="cpu") as engine:
        assert engine.info()["counts"]["text"] == 48  # nothing from the other weights


def test_an_index_made_before_fingerprints_gets_one_on_its_next_write(tmp_path, tiny_dir, corpus):
    import json
    import sqlite3

    with Engine.open(tmp_path / "ix", model=str(tiny_dir), device="cpu", create=True) as engine:
        engine.ingest([corpus["captions"]], progress=False)
    conn = sqlite3.connect(tmp_path / "ix" / "catalog.sqlite")
    spec = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'spec'").fetchone()[0])
    fingerprint = spec.pop("fingerprint")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'spec'", (json.dumps(spec),))
    conn.commit()
    with Engine.open(tmp_path / "ix", model=str(tiny_dir), device="cpu") as engine:
        assert engine.search("a dog", k=1, modality="text")  # compared by name, as before
        assert "fingerprint" not in engine.store.catalog.spec()  # a reader writes nothing
        engine.ingest([corpus["csv"]], text_field="caption", progress=False)
        assert engine.store.catalog.spec()["fingerprint"] == fingerprint


def test_an_ingest_killed_mid_run_resumes_to_the_same_catalog(tmp_path, tiny_dir, corpus):
    images = tmp_path / "many"
    for i in range(6):  # 288 distinct images: long enough to be killed in the middle
        for src in sorted(corpus["images"].rglob("*.png")):
            target = images / str(i) / src.name
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(src).rotate(15 * i).save(target)
    sources = [str(images), str(corpus["captions"])]
    command = [
        sys.executable,
        "-m",
        "e5v_search.cli",
        "ingest",
        *sources,
        "--quiet",
        "--workers",
        "2",
    ]
    env = dict(os.environ, E5V_MODEL=str(tiny_dir), E5V_DEVICE="cpu")

    killed = tmp_path / "killed"
    process = subprocess.Popen(command + ["--index", str(killed)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        try:
            conn = sqlite3.connect(killed / "catalog.sqlite", timeout=0.1)
            count = conn.execute("SELECT count(*) FROM items").fetchone()[0]
            conn.close()
        except sqlite3.Error:
            count = 0
        if count >= 64:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert len(catalog_snapshot(killed)[0]) < 288 + 48

    rerun = subprocess.run(command + ["--index", str(killed)], env=env, capture_output=True)
    assert rerun.returncode == 0, rerun.stderr
    whole = tmp_path / "whole"
    assert subprocess.run(command + ["--index", str(whole)], env=env).returncode == 0

    assert_same_catalog(catalog_snapshot(killed), catalog_snapshot(whole))
    with Engine.open(killed, model=str(tiny_dir), device="cpu") as engine:
        info = engine.info()
        assert info["indexes"]["image"]["vectors"] == info["counts"]["image"] == 288
