"""Ingest on a local Ray Data pipeline (CPU actors, the tiny checkpoint) against the plain one."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import assert_same_catalog, catalog_snapshot
from PIL import Image

from e5v_search.engine import Engine
from e5v_search.ingest import ray_backend, threads
from e5v_search.ingest.ray_backend import RayOptions
from e5v_search.testing import make_sample_corpus

ray = pytest.importorskip("ray", reason="Ray is the optional extra e5v-search[ray]")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-corpus")
    paths = make_sample_corpus(root)
    (paths["images"] / "broken.png").write_bytes(b"\x89PNG not really")
    return paths


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_a_local_ray_pipeline_gives_the_plain_ingests_catalog(tmp_path, trained_dir, corpus):
    sources = [corpus["images"], corpus["captions"]]
    with Engine.open(tmp_path / "plain", model=str(trained_dir), device="cpu", create=True) as e:
        plain = e.ingest(sources, progress=False)
    with Engine.open(tmp_path / "ray", model=str(trained_dir), device="cpu", create=True) as e:
        report = e.ingest(sources, progress=False, ray=RayOptions())
        assert e._encoder is None  # the driver never loaded the model
        again = e.ingest(sources, progress=False, ray=RayOptions())
    assert (report.added, report.failed) == (plain.added, plain.failed) == (96, 1)
    assert (again.added, again.unchanged) == (0, 96)
    assert_same_catalog(catalog_snapshot(tmp_path / "ray"), catalog_snapshot(tmp_path / "plain"))
    assert not list((tmp_path / "ray" / "ray-shards").iterdir())  # committed, then cleaned up
    # The trained model: what Ray stored lets captions find their pictures (measured 44 of 48).
    records = [json.loads(line) for line in corpus["captions"].read_text().splitlines()]
    with Engine.open(tmp_path / "ray", model=str(trained_dir), device="cpu") as e:
        found = sum(
            e.search(r["text"], k=1, modality="image")[0].source
            == str(corpus["images"].parent / r["image"])
            for r in records
        )
    assert found >= 36, found


def test_a_killed_ray_driver_resumes_without_loss_or_duplicates(tmp_path, tiny_dir, corpus):
    images = tmp_path / "many"
    originals = sorted(p for p in corpus["images"].rglob("*.png") if p.name != "broken.png")
    for i in range(4):  # 192 distinct images and 48 captions
        for src in originals:
            target = images / str(i) / src.name
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.open(src).rotate(20 * i).save(target)
    sources = [str(images), str(corpus["captions"])]
    command = [sys.executable, "-m", "e5v_search.cli", "ingest", *sources, "--quiet", "--ray"]
    env = dict(os.environ, E5V_MODEL=str(tiny_dir), E5V_DEVICE="cpu")
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        command + ["--index", str(killed)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 180
    shards = killed / "ray-shards"
    while time.time() < deadline and process.poll() is None:
        if shards.is_dir() and any(shards.glob("*.npz")):  # the first chunk is back
            os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray it started
            break
        time.sleep(0.005)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    conn = sqlite3.connect(killed / "catalog.sqlite")
    assert conn.execute("SELECT count(*) FROM items").fetchone()[0] < 192 + 48  # mid-run
    conn.close()

    rerun = subprocess.run(command + ["--index", str(killed)], env=env, capture_output=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    with Engine.open(tmp_path / "plain", model=str(tiny_dir), device="cpu", create=True) as e:
        e.ingest(sources, progress=False)
    assert_same_catalog(catalog_snapshot(killed), catalog_snapshot(tmp_path / "plain"))


def test_both_backends_follow_one_dedupe_rule(tmp_path, tiny_dir, corpus, monkeypatch):
    """Identical content (two files with the same bytes, the same line twice, content stored
    by an earlier run) is embedded once and copied, by the thread and the Ray backend alike."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    originals = sorted(p for p in corpus["images"].rglob("*.png") if p.name != "broken.png")
    for name, src in (("a.png", 0), ("b.png", 0), ("c.png", 1)):
        (folder / name).write_bytes(originals[src].read_bytes())
    (folder / "lines.txt").write_text("A red circle.\nA blue square.\nA red circle.\n")
    later = tmp_path / "later"
    later.mkdir()
    (later / "d.png").write_bytes(originals[1].read_bytes())
    (later / "more.txt").write_text("A blue square.\n")
    handed = []  # what each backend was given to embed (the real functions still run)
    monkeypatch.setattr(ray_backend, "_to_row", _counting(ray_backend._to_row, handed))
    monkeypatch.setattr(threads, "embed_each", _counting(threads.embed_each, handed, 1))
    snapshots = {}
    for name, backend in (("plain", None), ("ray", RayOptions())):
        path = tmp_path / name
        with Engine.open(path, model=str(tiny_dir), device="cpu", create=True) as engine:
            sources = [folder, folder / "lines.txt"]
            assert engine.ingest(sources, progress=False, ray=backend).added == 6
        assert len(handed) == 4, (name, handed)  # a.png, c.png and the two distinct lines
        handed.clear()
        # A new run of content stored already: copied, so the model is not even loaded.
        with Engine.open(path, model=str(tiny_dir), device="cpu") as engine:
            sources = [later, later / "more.txt"]
            assert engine.ingest(sources, progress=False, ray=backend).added == 2
            assert engine._encoder is None and handed == []
        snapshots[name] = catalog_snapshot(path)
    assert_same_catalog(snapshots["ray"], snapshots["plain"], tolerance=0.0)
    rows, _ = snapshots["ray"]
    by_name = {(os.path.basename(r[2]), r[3]): vector for r, vector in rows}
    assert by_name[("a.png", "")].tobytes() == by_name[("b.png", "")].tobytes()
    assert by_name[("c.png", "")].tobytes() == by_name[("d.png", "")].tobytes()
    assert by_name[("lines.txt", "line 1")].tobytes() == by_name[("lines.txt", "line 3")].tobytes()
    assert by_name[("more.txt", "line 1")].tobytes() == by_name[("lines.txt", "line 2")].tobytes()
    sizes = {(os.path.basename(r[2])): (r[5], r[6]) for r, _ in rows}
    assert sizes["b.png"] == sizes["a.png"] and sizes["d.png"] == sizes["c.png"] != (None, None)


def _counting(function, seen: list, argument: int = 2):
    """`function`, noting the sources of the outcomes it is given (its `argument`-th)."""

    def wrapper(*args, **kwargs):
        given = args[argument]
        for outcome in given if isinstance(given, list) else [given]:
            seen.append(outcome.item.source)
        return function(*args, **kwargs)

    return wrapper
