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

from e5v_search.distributed import RayOptions
from e5v_search.engine import Engine
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
        command + ["--index", str(killed)], env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
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
