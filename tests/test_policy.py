"""The index type follows the collection (storage/policy.py), on synthetic vectors."""

import numpy as np

from e5v_search.spec import Spec
from e5v_search.storage import ondisk, segments
from e5v_search.storage.store import Store
from e5v_search.testing import clustered_vectors

DIM = 64
SPEC = Spec(model="m", dim=DIM, dtype="float32", prompt_version="e5v-1")
BUDGET = 480_000  # Flat to ~1,700 vectors of 64-d, SQ8 to ~5,400, then IVF-PQ on disk


def _add(store, start, n):
    items = [{"modality": "image", "source": str(i)} for i in range(start, start + n)]
    vectors = clustered_vectors(n, DIM, seed=start)
    return store.add(items, vectors, SPEC), vectors


def test_the_type_switches_at_the_thresholds_and_search_stays_right(tmp_path, monkeypatch):
    store = Store.open(tmp_path / "ix", create=True)
    kinds = []
    for start, n in ((0, 200), (200, 3800), (4000, 8000)):
        ids, vectors = _add(store, start, n)
        changes = store.follow_policy(BUDGET)
        entry = store.manifest.indexes["image"]
        kinds.append((entry.factory, bool(entry.ondisk), len(changes)))
        assert entry.rerank == (None if entry.factory == "Flat" else ondisk.RERANK)
        assert store.indexes["image"].ntotal == store.catalog.count("image") == start + n
        found = store.search(vectors[:20], k=1, modality="image")
        assert np.mean([row[0].id == i for row, i in zip(found, ids[:20], strict=True)]) >= 0.8
    assert kinds == [("Flat", False, 0), ("SQ8", False, 1), ("OPQ8_64,IVF512,PQ8", True, 1)]
    info = store.info()["indexes"]["image"]
    assert info["chosen_by"] == "policy" and info["on_disk"]
    assert info["reason"].endswith("; OPQ8_64,IVF512,PQ8 ~0.4 MiB")
    store.close()
    reopened = Store.open(tmp_path / "ix")  # what the policy built was saved
    assert reopened.repairs == [] and reopened.indexes["image"].ntotal == 12000
    assert reopened.manifest.indexes["image"].rerank == ondisk.RERANK
    # Growth within the kind: adds go to the delta and are sealed into segments with the
    # trained structure of the switch; nothing is rebuilt.
    monkeypatch.setattr(segments, "SEAL_BYTES", 2000 * 16)
    _add(reopened, 12000, 1000)
    assert reopened.follow_policy(BUDGET) == []
    _add(reopened, 13000, 3000)
    assert reopened.follow_policy(BUDGET) == []
    assert len(reopened.indexes["image"].sealed) == 2
    assert reopened.indexes["image"].ntotal == 16000
    assert reopened.manifest.indexes["image"].factory == "OPQ8_64,IVF512,PQ8"


def test_a_type_the_user_chose_is_left_alone(tmp_path):
    store = Store.open(tmp_path / "ix", create=True)
    _add(store, 0, 500)
    store.rebuild("HNSW32")
    _add(store, 500, 4000)
    assert store.follow_policy(BUDGET) == []
    assert store.manifest.indexes["image"].factory == "HNSW32"
    store.rebuild(max_memory=BUDGET)  # a budget given to rebuild: later ingests keep to it
    assert store.manifest.max_memory == BUDGET
    assert store.manifest.indexes["image"].chosen_by == "policy"
