"""Segments (storage/segments.py): sealed, merged, searched as one index, crash-safe."""

import json
import os
import signal
import subprocess
import sys
import time

import faiss
import numpy as np
import pytest

from e5v_search.spec import Spec
from e5v_search.storage import faiss_ops as fx
from e5v_search.storage import ondisk, rebuild, segments
from e5v_search.storage.manifest import IndexEntry
from e5v_search.storage.store import Store
from e5v_search.testing import clustered_vectors

DIM = 64
SPEC = Spec(model="m", dim=DIM, dtype="float32", prompt_version="e5v-1")


@pytest.fixture
def small_segments(monkeypatch):
    """Seal every ~150 Flat vectors of 64-d, so a few thousand make many segments."""
    monkeypatch.setattr(segments, "SEAL_BYTES", 150 * (DIM * 4 + 24))
    monkeypatch.setattr(segments, "MERGE_MAX_BYTES", 2000 * (DIM * 4 + 24))


def _add(store, start, n, modality="image"):
    items = [{"modality": modality, "source": str(i)} for i in range(start, start + n)]
    vectors = clustered_vectors(n, DIM, seed=start)
    return np.array(store.add(items, vectors, SPEC)), vectors


def _grow(path, factory=None, rounds=30, chunk=100, monkeypatch=None):
    """Adds in many saves, as ingests do; a trained type is built after the first 1,000 (IVF
    on disk, as the policy builds it past RAM), then segments of ~150 of its vectors."""
    store = Store.open(path, create=True)
    for start in range(0, rounds * chunk, chunk):
        _add(store, start, chunk)
        if factory and start + chunk == 1000:
            with store.writing("rebuild"):
                rebuild.switch(store, "image", factory, on_disk=factory.startswith("IVF"))
            size = store.indexes["image"]._vector_bytes()
            monkeypatch.setattr(segments, "SEAL_BYTES", 150 * size)
            monkeypatch.setattr(segments, "MERGE_MAX_BYTES", 2000 * size)
    return store


def _reference(store, modality="image"):
    """One in-memory index of the stored vectors, with the segments' trained structure."""
    index = segments.emptied(store.indexes[modality].template)
    for ids, vectors in store.catalog.iter_vectors(modality):
        fx.add(index, ids, vectors)
    return index


@pytest.mark.parametrize("factory", [None, "SQ8", "IVF32,PQ16"])
def test_searches_across_segments_equal_one_index(tmp_path, small_segments, monkeypatch, factory):
    store = _grow(tmp_path / "ix", factory, monkeypatch=monkeypatch)
    index = store.indexes["image"]
    if factory == "IVF32,PQ16":
        assert store.manifest.indexes["image"].ondisk
    assert len(index.sealed) >= 3 and index.ntotal == 3000
    queries = clustered_vectors(30, DIM, seed=99)
    expected = fx.search(_reference(store), queries, 10)
    got = index.search(queries, 10)
    assert np.array_equal(got[1], expected[1]) and np.allclose(got[0], expected[0], atol=1e-5)
    store.close()
    reopened = Store.open(tmp_path / "ix")  # mapped from the files, the same answers
    assert reopened.repairs == [] and reopened.indexes["image"].mapped
    again = reopened.indexes["image"].search(queries, 10)
    assert np.array_equal(again[1], expected[1])


def test_deletes_and_updates_hold_across_segments(tmp_path, small_segments):
    store = _grow(tmp_path / "ix", rounds=20)
    index = store.indexes["image"]
    first, last = index.sealed[0], index.sealed[-1]
    gone = [int(first.ids[0]), int(first.ids[5]), int(last.ids[-1]), 1999]  # 1999: the delta
    store.delete(gone)
    moved = int(first.ids[10])  # updated twice, sealed in between: old copies stay masked
    store.update([moved], [{"modality": "image", "source": "x"}], -np.eye(DIM)[:1], SPEC)
    _add(store, 5000, 400)  # seals and merges
    store.update([moved], [{"modality": "image", "source": "x"}], np.eye(DIM)[:1], SPEC)
    store.close()
    reopened = Store.open(tmp_path / "ix")
    index = reopened.indexes["image"]
    stored = reopened.catalog.ids("image")
    assert reopened.repairs == [] and index.ntotal == len(stored)
    assert sorted(index.ids().tolist()) == stored.tolist()
    queries = np.concatenate([clustered_vectors(20, DIM, seed=3), np.eye(DIM)[:1]])
    _, exact = fx.exact_search(queries, reopened.catalog.iter_vectors("image"), 10)
    _, found = index.search(queries, 10)
    assert np.array_equal(found, exact)
    assert found[-1, 0] == moved  # its newest vector, once
    assert list(found[-1]).count(moved) == 1
    _, among = index.search(queries[-1:], 5, among=np.array([moved, *gone]))
    assert among[0].tolist() == [moved, -1, -1, -1, -1]


def test_a_save_writes_what_changed_not_the_index(tmp_path, small_segments):
    store = _grow(tmp_path / "ix")
    before = {p.name for p in (tmp_path / "ix").iterdir()}
    _add(store, 9000, 10)
    store.delete([5])
    written = {p.name for p in (tmp_path / "ix").iterdir()} - before
    entry = store.manifest.indexes["image"]
    assert written == {entry.delta, entry.masks}  # the segments are untouched
    assert (tmp_path / "ix" / entry.delta).stat().st_size < 20 * (DIM * 4 + 24) + 2000


def test_merges_drop_masked_ids_and_keep_segments_few(tmp_path, small_segments):
    store = _grow(tmp_path / "ix", rounds=60)
    index = store.indexes["image"]
    assert len(index.sealed) <= 8  # O(log n): 40 seals of ~150 vectors
    first = index.sealed[0]
    store.delete(np.asarray(first.ids[: len(first.ids) // 2 + 1]))
    assert index.sealed[0] is not first  # more than half masked: rewritten without them
    assert all(len(s.masked) == 0 for s in index.sealed[:1])
    assert index.ntotal == store.catalog.count("image")


def test_an_index_saved_before_segments_is_read_and_converted(tmp_path):
    """A single file (a Flat index), and an on-disk base with a compressed delta, a Flat delta
    and a mask, as earlier versions saved them."""
    vectors = clustered_vectors(3000, DIM)
    ids = np.arange(1, 3001, dtype=np.int64)
    flat = fx.make("Flat", DIM)
    fx.add(flat, ids, vectors)
    fx.save(flat, tmp_path / "text.faiss")
    trained = fx.make("IVF32,PQ16", DIM)
    fx.train(trained, vectors, "IVF32,PQ16")
    ondisk.build(trained, [(ids[:2500], vectors[:2500])], tmp_path, "image.g1")
    old = fx.make("Flat", DIM)  # a Flat delta, as saved before deltas were compressed
    fx.add(old, ids[2500:], vectors[2500:])
    fx.save(old, tmp_path / "image.g1.delta.faiss")
    np.save(tmp_path / "image.g1.masked.npy", np.array([1, 2], dtype=np.int64))
    entries = {
        "text": {"factory": "Flat", "file": "text.faiss"},
        "image": {"factory": "IVF32,PQ16", "file": "image.g1.faiss", "ondisk": True},
    }
    queries = clustered_vectors(10, DIM, seed=4)
    reference = faiss.clone_index(trained)
    fx.add(reference, ids[2:], vectors[2:])
    expected = {"text": fx.search(flat, queries, 10), "image": fx.search(reference, queries, 10)}
    names = iter(range(10, 100))
    for modality, entry in entries.items():
        index = segments.load(tmp_path, IndexEntry.from_dict(entry))
        assert index.ntotal == 3000 - 2 * (modality == "image")
        assert np.array_equal(index.search(queries, 10)[1], expected[modality][1])
        names_of = index.save(tmp_path, lambda kind, m=modality: f"{m}.{kind}{next(names)}")
        again = segments.load(tmp_path, IndexEntry.from_dict({**entry, **names_of, "file": None}))
        assert np.array_equal(again.search(queries, 10)[1], expected[modality][1])


CRASHING_WRITER = """
import sys
import numpy as np
from e5v_search.spec import Spec
from e5v_search.storage import rebuild, segments
from e5v_search.storage.store import Store
from e5v_search.testing import clustered_vectors

segments.SEAL_BYTES = 150 * (64 * 4 + 24)
spec = Spec(model="m", dim=64, dtype="float32", prompt_version="e5v-1")
store = Store.open(sys.argv[1])
for start in range(5000, 9000, 100):
    items = [{"modality": "image", "source": f"new{i}"} for i in range(start, start + 100)]
    store.add(items, clustered_vectors(100, 64, seed=start), spec)
    if sys.argv[2] == "rebuilt":  # the policy's switch to IVF-PQ on disk
        with store.writing("ingest"):
            rebuild.switch(store, "image", "IVF16,PQ8", on_disk=True)
"""


@pytest.mark.parametrize("point", ["sealed", "merged", "rebuilt"])
def test_a_writer_killed_in_a_seal_merge_or_switch_loses_nothing(tmp_path, small_segments, point):
    path = tmp_path / "ix"
    _grow(path, rounds=15).close()
    env = {**os.environ, segments.FAILPOINT: point}
    writer = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(path), point],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        said = []
        while not said or said[-1] != f"failpoint {point}":
            said.append(writer.stderr.readline().strip())
            assert said[-1] or writer.poll() is None, said  # it stops there, or it exited
        time.sleep(0.2)  # files of the seal written, the manifest not yet
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    manifest = json.loads((path / "manifest.json").read_text())
    with Store.open(path) as store:  # committed items are all there, searched as before
        stored = store.catalog.ids("image")
        assert len(stored) > 1500 and store.indexes["image"].ntotal == len(stored)
        hits = store.search(store.catalog.vectors(stored[-50:]), k=1, modality="image")
        assert [row[0].id for row in hits] == stored[-50:].tolist()
        assert store.manifest.save_id == manifest["save_id"]  # a reader wrote nothing
        store.save()  # the next writer saves what it caught up with, and cleans up
    with Store.open(path) as store:
        assert store.repairs == [] and store.indexes["image"].ntotal == len(stored)
    used = {p.name for e in store.manifest.indexes.values() for p in e.paths(path)}
    left = {p.name for p in path.glob("image.*")}
    assert left == used
