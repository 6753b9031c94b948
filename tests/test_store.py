"""Catalog + FAISS index on synthetic vectors (no model): exactness, filters, drift, deletes."""

import json
import sqlite3
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from e5v_search.errors import IndexBuildError, IndexNotFoundError, InputError, SpecMismatchError
from e5v_search.spec import Spec
from e5v_search.storage import faiss_ops as fx
from e5v_search.storage import search as search_module
from e5v_search.storage import segments
from e5v_search.storage.catalog import Catalog
from e5v_search.storage.migrations import migrate
from e5v_search.storage.store import Store
from e5v_search.testing import clustered_vectors, index_file

DIM = 64
SPEC = Spec(
    **{
        "model": "test/model",
        "revision": "abc",
        "dim": DIM,
        "dtype": "float32",
        "prompt_version": "e5v-1",
        "transformers": "5.0",
    }
)


def _items(n, modality="image", start=0):
    return [
        {
            "modality": modality,
            "source": f"/data/{modality}/{'a' if i % 2 else 'b'}/{start + i}.x",
            "text": f"text {start + i}" if modality == "text" else None,
            "metadata": {"group": (start + i) % 7, "name": f"n{start + i}"},
        }
        for i in range(n)
    ]


def _fill(path, n_image=600, n_text=400, factory=None, seed=0):
    vectors = clustered_vectors(n_image + n_text, DIM, seed=seed)
    store = Store.open(path, create=True)
    items = _items(n_image, "image") + _items(n_text, "text", start=n_image)
    ids = store.add(items, vectors, SPEC)
    if factory:
        store.rebuild(factory)
    store.save()
    return store, np.array(ids), vectors, np.array([i["modality"] for i in items])


def _brute(queries, vectors, ids, k):
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def test_flat_top_k_equals_numpy_brute_force(tmp_path):
    store, ids, vectors, modality = _fill(tmp_path / "ix")
    queries = clustered_vectors(20, DIM, seed=9)
    for mod in ("image", "text", None):
        mask = modality == mod if mod else np.ones(len(ids), bool)
        scores, expected = _brute(queries, vectors[mask], ids[mask], 10)
        hits = store.search(queries, k=10, modality=mod)
        assert [[h.id for h in row] for row in hits] == expected.tolist()
        got_scores = np.array([[h.score for h in row] for row in hits])
        assert np.allclose(got_scores, scores, atol=1e-5)


@pytest.mark.parametrize(
    ("factory", "floor"),
    [("HNSW32", 0.95), ("IVF16,Flat", 0.95), ("SQfp16", 0.99), ("IVF16,PQ64x4", 0.7)],
)
def test_approximate_types_keep_recall_above_a_floor(tmp_path, factory, floor):
    store, ids, vectors, modality = _fill(
        tmp_path / "ix", n_image=3000, n_text=300, factory=factory
    )
    queries = clustered_vectors(50, DIM, seed=11)
    mask = modality == "image"
    _, expected = _brute(queries, vectors[mask], ids[mask], 10)
    found = np.array([[h.id for h in row] for row in store.search(queries, 10, "image")])
    assert fx.neighbour_recall(found, expected) >= floor
    recall = store.recall(k=10, sample=50)
    assert set(recall) == {"image->image", "image->text", "text->image", "text->text"}
    assert min(recall.values()) >= floor - 0.1


def test_modality_search_is_exact_in_count_on_a_1_percent_modality(tmp_path):
    store, ids, vectors, modality = _fill(tmp_path / "ix", n_image=1980, n_text=20)
    queries = clustered_vectors(3, DIM, seed=3)
    for row in store.search(queries, k=10, modality="text"):
        assert len(row) == 10 and {h.modality for h in row} == {"text"}
    assert all(len(row) == 20 for row in store.search(queries, k=50, modality="text"))
    assert all(len(row) == 50 for row in store.search(queries, k=50))


@pytest.mark.parametrize("exact_limit", [4096, 10])  # scored directly, or a FAISS id selector
@pytest.mark.parametrize("factory", [None, "HNSW32", "IVF8,Flat"])
def test_filters_apply_during_the_search(tmp_path, monkeypatch, exact_limit, factory):
    monkeypatch.setattr(search_module, "EXACT_CANDIDATES", exact_limit)
    store, ids, vectors, modality = _fill(tmp_path / "ix", factory=factory)
    groups = np.array([i % 7 for i in range(len(ids))])
    queries = clustered_vectors(5, DIM, seed=5)
    where = "json_extract(metadata, '$.group') = ?"
    hits = store.search(queries, k=15, modality="image", where=where, params=[3])
    mask = (modality == "image") & (groups == 3)
    _, expected = _brute(queries, vectors[mask], ids[mask], 15)
    found = np.array([[h.id for h in row] for row in hits])
    assert found.shape == (5, 15)  # k results although the group is a seventh of the images
    assert set(found.ravel()) <= set(ids[mask])
    assert fx.neighbour_recall(found, expected) >= (1.0 if factory is None else 0.9)


def test_a_bad_filter_is_named(tmp_path):
    store, *_ = _fill(tmp_path / "ix", 10, 10)
    with pytest.raises(InputError, match="bad filter"):
        store.search(clustered_vectors(1, DIM), where="no_such_column = 1")


def test_a_crash_between_commit_and_index_save_is_repaired_on_open(tmp_path):
    path = tmp_path / "ix"
    store, ids, vectors, _ = _fill(path)
    new = clustered_vectors(5, DIM, seed=42)
    with pytest.raises(KeyboardInterrupt), store.writing():  # committed, never saved
        new_ids = store.add(_items(5, "image", start=5000), new, SPEC)
        store.delete(ids[:3])
        store.update([int(ids[10])], _items(1, "image", start=10), new[:1] * -1, SPEC)
        raise KeyboardInterrupt  # the process dies here: the index files are the old ones
    store.close()

    manifest = (path / "manifest.json").read_bytes()
    reopened = Store.open(path)
    # A reader catches up in memory; committed changes not yet saved are a state (an ingest
    # may be running), not a repair: `info` says so, the writer that saves them says it once.
    assert reopened.repairs == [] and reopened.info()["unsaved_changes"] == 3
    assert (path / "manifest.json").read_bytes() == manifest  # a reader repairs in memory
    hits = reopened.search(new, k=1, modality="image")
    assert [row[0].id for row in hits] == new_ids
    everything = reopened.search(vectors[:3], k=1000)
    assert not {h.id for row in everything for h in row} & set(ids[:3].tolist())
    assert reopened.search(-new[:1], k=1, modality="image")[0][0].id == ids[10]
    with reopened.writing():
        pass  # the next writer saves the repair
    assert any("missed 3 change(s)" in line for line in reopened.repairs)
    reopened.close()
    assert Store.open(path).repairs == []


def test_a_killed_writer_process_is_repaired_on_open(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "ix"
    _fill(path)[0].close()
    code = (
        "import os, sys, numpy as np\n"
        "from e5v_search.storage.store import Store\n"
        "from e5v_search.testing import clustered_vectors\n"
        f"s = Store.open({str(path)!r})\n"
        "from e5v_search.spec import Spec\nspec = Spec(**s.catalog.spec())\n"
        "with s.writing():\n"
        "    s.add([{'modality': 'text', 'source': 'late'}], clustered_vectors(1, 64, seed=77),"
        " spec)\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    reopened = Store.open(path)
    assert reopened.repairs == [] and reopened.info()["unsaved_changes"] == 1
    assert reopened.catalog.count("text") == 401
    assert reopened.indexes["text"].ntotal == 401
    with reopened.writing():
        pass
    assert reopened.repairs == [
        "the index files missed 1 change(s) of a writer that stopped before saving them "
        "(killed?): caught up from the catalog and saved now"
    ]


@pytest.mark.parametrize("damage", ["delete", "garbage", "manifest", "one-manifest-copy"])
def test_a_missing_or_broken_index_file_is_rebuilt_and_reported(tmp_path, damage):
    path = tmp_path / "ix"
    store, ids, vectors, _ = _fill(path)
    before = store.search(vectors[:5], k=10)
    store.close()
    if damage == "delete":
        index_file(path, "image").unlink()
    elif damage == "garbage":
        index_file(path, "image").write_bytes(b"not a faiss index")
    elif damage == "manifest":  # both copies
        (path / "manifest.json").unlink()
        (path / "manifest.backup.json").unlink()
    else:
        (path / "manifest.json").write_text("{}")  # its checksum is gone with it
    reopened = Store.open(path)
    if damage == "one-manifest-copy":
        assert reopened.repairs == [
            "manifest.json is damaged (it has lost its checksum): its copy manifest.backup.json "
            "was used"
        ]
    else:
        assert any("rebuilt" in line for line in reopened.repairs)
    after = reopened.search(vectors[:5], k=10)
    assert [[h.id for h in r] for r in after] == [[h.id for h in r] for r in before]


@pytest.mark.parametrize("factory", [None, "HNSW32", "IVF8,Flat"])
def test_deleted_items_never_come_back(tmp_path, factory):
    store, ids, vectors, modality = _fill(tmp_path / "ix", factory=factory)
    assert store.delete(ids[:5]) == 5
    assert store.delete_where("json_extract(metadata, '$.group') = ?", [2]) > 0
    assert store.delete_source_prefix("/data/text/a/") > 0
    items = _items(600, "image") + _items(400, "text", start=600)  # as _fill made them
    gone = {
        int(i)
        for n, (i, item) in enumerate(zip(ids, items, strict=True))
        if n < 5 or item["metadata"]["group"] == 2 or item["source"].startswith("/data/text/a/")
    }
    hits = store.search(vectors, k=20)
    returned = {h.id for row in hits for h in row}
    assert not returned & gone
    rows = store.catalog.get(list(returned))
    assert all(r["metadata"]["group"] != 2 for r in rows)
    assert not any(r["source"].startswith("/data/text/a/") for r in rows)
    assert not store.catalog.get(list(gone))  # every item the three deletes chose is gone
    assert store.catalog.count() == 1000 - len(gone)
    store.save()
    for modality_name, index in store.indexes.items():
        assert index.ntotal == store.catalog.count(modality_name)


def test_flat_rebuild_gives_the_same_results(tmp_path):
    store, ids, vectors, _ = _fill(tmp_path / "ix")
    before = store.search(vectors[:10], k=10)
    stats = store.rebuild("Flat")
    assert {s["modality"] for s in stats} == {"image", "text"}
    after = store.search(vectors[:10], k=10)
    assert [[(h.id, round(h.score, 5)) for h in r] for r in after] == [
        [(h.id, round(h.score, 5)) for h in r] for r in before
    ]


def test_rebuild_needs_enough_vectors_to_train(tmp_path):
    store, *_ = _fill(tmp_path / "ix", n_image=50, n_text=20)
    with pytest.raises(IndexBuildError, match="cannot train 'IVF256,Flat' on 50 vectors"):
        store.rebuild("IVF256,Flat")
    with pytest.raises(IndexBuildError, match="cannot make FAISS index 'NoSuchIndex99'"):
        store.rebuild("NoSuchIndex99")
    store, *_ = _fill(tmp_path / "ix2", n_image=2000, n_text=20)
    stats = {s["modality"]: s for s in store.rebuild("IVF32,Flat")}
    assert stats["image"]["factory"] == "IVF32,Flat"
    assert stats["text"]["factory"] == "Flat" and "too few" in stats["text"]["note"]
    assert store.info()["indexes"]["text"]["factory"] == "Flat"


def test_a_query_or_ingest_with_another_spec_is_refused(tmp_path):
    store, *_ = _fill(tmp_path / "ix", 10, 10)
    other = replace(SPEC, model="someone/else", prompt_version="e5v-2")
    with pytest.raises(SpecMismatchError, match="model: index 'test/model', ingest 'someone/else'"):
        store.add(_items(1), clustered_vectors(1, DIM), other)
    with pytest.raises(SpecMismatchError, match="prompt_version"):
        store.catalog.check_spec(other)
    notes = store.catalog.check_spec(replace(SPEC, dtype="float16"))
    assert notes == [
        "precision: index vectors in float32, query in float16: close, not equal "
        "(`e5v-search check --dtype/--quantize` measures how close)"
    ]
    notes = store.catalog.check_spec(replace(SPEC, dtype="bfloat16", quantization="int8"))
    assert len(notes) == 1 and "query in bfloat16 + int8" in notes[0]


def test_a_catalog_of_the_previous_schema_migrates(tmp_path):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, upto="m001_base") == ["m001_base"]
    conn.execute(
        "INSERT INTO items (id, modality, source, added_at, updated_at) "
        "VALUES (1, 'text', 'old.txt', 'then', 'then')"
    )
    conn.close()
    catalog = Catalog(path)
    assert catalog.migrations_applied == [
        "m002_change_tracking",
        "m003_file_state_and_unique_errors",
        "m004_counts",
        "m005_checksums",
        "m006_keywords",
    ]
    assert catalog.get([1])[0]["source"] == "old.txt" and catalog.get([1])[0]["seq"] == 0
    assert (catalog.count("text"), catalog.count("image"), catalog.count()) == (1, 0, 1)
    assert Catalog(path).migrations_applied == []


def test_counts_follow_every_write(tmp_path):
    store, ids, vectors, modality = _fill(tmp_path / "ix", n_image=30, n_text=20)
    store.delete(ids[:5])  # images
    store.update([int(ids[40])], _items(1, "text", start=40), vectors[40:41], SPEC)
    with pytest.raises(InputError):  # a rolled-back write counts nothing
        store.add(_items(2, "text", start=30), vectors[:2], SPEC)
    sql = "SELECT count(*) FROM items WHERE modality = ?"
    for name in ("image", "text"):
        truth = store.catalog.conn.execute(sql, (name,)).fetchone()[0]
        assert store.catalog.count(name) == truth
    assert (store.catalog.count("image"), store.catalog.count()) == (25, 45)


def test_opening_a_missing_index_says_how_to_create_it(tmp_path):
    with pytest.raises(IndexNotFoundError, match="e5v-search ingest SOURCES --index"):
        Store.open(tmp_path / "nothing")


def test_saves_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ix"
    store, ids, vectors, _ = _fill(path)
    saved = index_file(path, "image")
    good = saved.read_bytes()

    def dies_half_way(index, filename):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(fx.faiss, "write_index", dies_half_way)
    with pytest.raises(InputError, match="already in the catalog"):
        store.add(_items(1), clustered_vectors(1, DIM, seed=8), SPEC)
    with pytest.raises(OSError, match="disk full"):  # committed; the save dies half-way
        store.add(_items(1, start=9000), clustered_vectors(1, DIM, seed=8), SPEC)
    assert index_file(path, "image") == saved and saved.read_bytes() == good
    assert not list(path.glob("*.tmp"))
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["indexes"]["image"]["count"] == 600


def test_info_reports_counts_types_and_sizes(tmp_path):
    store, *_ = _fill(tmp_path / "ix", 30, 20)
    info = store.info()
    assert info["counts"] == {"image": 30, "text": 20}
    assert info["indexes"]["image"]["vectors"] == 30 and info["indexes"]["image"]["bytes"] > 0
    assert info["spec"]["model"] == "test/model"


@pytest.mark.gpu
def test_gpu_search_matches_cpu(tmp_path):
    if fx.faiss.get_num_gpus() < 1:
        pytest.skip("FAISS sees no GPU")
    store, ids, vectors, _ = _fill(tmp_path / "ix")
    gpu = store.search(vectors[:10], k=10, modality="image")
    cpu_scores, cpu_ids = store.indexes["image"].search(vectors[:10], 10)
    assert [[h.id for h in r] for r in gpu] == cpu_ids.tolist()


def test_a_repair_that_cannot_train_falls_back_to_flat(tmp_path):
    path = tmp_path / "ix"
    store, ids, vectors, modality = _fill(path, n_image=600, n_text=10, factory="IVF16,Flat")
    store.close()
    with Catalog(path / "catalog.sqlite") as catalog:  # items deleted behind the index's back
        catalog.delete(ids[modality == "image"][10:])
    index_file(path, "image", "segment").unlink()  # and the file lost: a rebuild from 10
    reopened = Store.open(path)
    assert any("Flat instead" in line for line in reopened.repairs)
    assert reopened.info()["indexes"]["image"]["factory"] == "Flat"
    assert reopened.indexes["image"].ntotal == 10


def test_a_reader_maps_the_segments_and_changes_go_to_the_delta(tmp_path):
    """Opening maps the sealed segments (O(1)); they are never changed (a mapped FAISS index
    would abort the process): a write in the reading process, and a catch-up with commits
    another writer has not saved yet, go to the delta."""
    path = tmp_path / "ix"
    writer, ids, vectors, modality = _fill(path)
    writer.rebuild()  # one sealed segment per modality
    writer.close()
    reader = Store.open(path)
    assert all(info["mapped"] for info in reader.info()["indexes"].values())
    queries = clustered_vectors(5, DIM, seed=5)
    scores, expected = _brute(queries, vectors[modality == "text"], ids[modality == "text"], 5)
    assert [[h.id for h in r] for r in reader.search(queries, 5, "text")] == expected.tolist()
    other = Store.open(path)  # a second writer commits, and does not save yet
    with other.writing():
        (late,) = other.add(_items(1, "text", start=5000), queries[:1], SPEC)
        assert reader.refresh()  # caught up in memory, in the delta
        assert reader.search(queries[:1], 1, "text")[0][0].id == late
        assert reader.indexes["text"].delta.ntotal == 1
    other.close()
    reader.refresh()  # the new files
    with reader.writing():  # the reader writes: the sealed segment is masked, not changed
        reader.delete([late, int(ids[modality == "text"][0])])
    assert reader.indexes["text"].sealed[0].masked.tolist() == [int(ids[modality == "text"][0])]
    assert Store.open(path).catalog.count("text") == 399


ADD_ONE_TEXT = """
import sys
import numpy as np
from e5v_search.spec import Spec
from e5v_search.storage.store import Store
with Store.open(sys.argv[1]) as store:
    spec = Spec.from_dict(store.catalog.spec())
    store.add([{"modality": "text", "source": "late"}], np.eye(spec.dim)[:1], spec)
"""


def test_a_reader_that_meets_files_a_writer_just_replaced_reads_the_new_ones(tmp_path, monkeypatch):
    """A reader reads the manifest; before it opens the files, another process saves, and
    the delta file the reader's manifest names is gone: it takes the new manifest, no repair."""
    path = tmp_path / "ix"
    _fill(path)[0].close()
    load, saved = segments.load, []

    def load_after_another_save(folder, entry):
        if not saved:  # the image index is read; then the writer saves the text index
            saved.append(subprocess.run([sys.executable, "-c", ADD_ONE_TEXT, str(path)]))
        return load(folder, entry)

    monkeypatch.setattr(segments, "load", load_after_another_save)
    reader = Store.open(path)
    assert saved[0].returncode == 0
    assert reader.repairs == [] and reader.indexes["text"].ntotal == 401
    assert reader.search(np.eye(DIM)[:1], 1, "text")[0][0].id == 1001


def test_a_large_file_is_checked_by_its_probe(tmp_path, monkeypatch):
    from e5v_search.storage import integrity

    monkeypatch.setattr(integrity, "PROBE_WHOLE", 4096)  # this 100 KB file counts as large
    path = tmp_path / "ix"
    _fill(path, n_image=0, n_text=400)[0].close()
    record = json.loads((path / "manifest.json").read_text())["indexes"]["text"]["files"]
    delta = index_file(path, "text")
    assert record[delta.name]["probe"].startswith("probe:")
    data = bytearray(delta.read_bytes())
    data[10:18] = b"\xff" * 8  # inside the first probed block, the size unchanged
    delta.write_bytes(bytes(data))
    reopened = Store.open(path)
    assert any("checksum" in line for line in reopened.repairs)
    assert reopened.indexes["text"].ntotal == 400


def test_half_precision_vectors_are_stored_as_float16_and_older_ones_compacted(tmp_path):
    """A float16/bfloat16 model's vectors take 2 bytes a value; the index holds what the
    catalog gives back, so a rebuild changes nothing; float32 blobs written before are read
    beside them and rewritten by a rebuild."""
    half = replace(SPEC, dtype="bfloat16")
    vectors = clustered_vectors(300, DIM, seed=4).astype(np.float32)
    store = Store.open(tmp_path / "ix", create=True)
    ids = store.add(_items(300), vectors, half)
    with sqlite3.connect(tmp_path / "ix" / "catalog.sqlite") as db:
        assert {r[0] for r in db.execute("SELECT length(vector) FROM vectors")} == {2 * DIM}
        older = vectors[:100].astype("<f4")  # as a catalog saved before float16 blobs
        rows = [(v.tobytes(), i) for v, i in zip(older, ids[:100], strict=True)]
        db.executemany("UPDATE vectors SET vector=?, checksum=NULL WHERE item_id=?", rows)
    stored = store.catalog.vectors(ids)
    assert np.array_equal(stored[:100], vectors[:100])
    assert np.array_equal(stored[100:], vectors[100:].astype(np.float16).astype(np.float32))
    assert np.abs(stored - vectors).max() < 1e-3
    queries = clustered_vectors(10, DIM, seed=5)
    before = store.search(queries, k=10)
    (stats,) = store.rebuild()
    assert stats["note"] == "100 stored vectors rewritten as float16"
    with sqlite3.connect(tmp_path / "ix" / "catalog.sqlite") as db:
        assert {r[0] for r in db.execute("SELECT length(vector) FROM vectors")} == {2 * DIM}
    after = store.search(queries, k=10)
    assert [[h.id for h in r] for r in after[:5]] == [[h.id for h in r] for r in before[:5]]
    assert store.rebuild()[0].get("note") is None  # nothing left to rewrite


def test_one_write_block_is_one_save_and_one_generation(tmp_path, monkeypatch):
    from e5v_search.storage.manifest import Manifest

    store, ids, vectors, _ = _fill(tmp_path / "ix")
    before, writes = store.save_id, []
    real = Manifest.write
    monkeypatch.setattr(Manifest, "write", lambda self, folder: writes.append(real(self, folder)))
    with store.writing("ingest"):
        store.add(_items(3, start=5000), clustered_vectors(3, DIM, seed=8), SPEC)
        store.save()  # inside the block: the block's end saves
        store.delete(ids[:2])
        store.rebuild()
        assert writes == [] and store.save_id == before
    assert len(writes) == 1 and store.save_id != before
