"""Long index work says what it does (storage/phases.py), and PQ codebooks are trained on a
bounded sample (faiss_ops.Training; on one thread too) without losing what the index finds."""

import re

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from e5v_search.cli import cli
from e5v_search.spec import Spec
from e5v_search.storage import faiss_ops as fx
from e5v_search.storage import rebuild
from e5v_search.storage.phases import Phases
from e5v_search.storage.store import Store
from e5v_search.testing import clustered_vectors

DIM = 64
SPEC = Spec(model="m", dim=DIM, dtype="float32", prompt_version="e5v-1")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_phase_is_named_timed_and_its_progress_throttled():
    clock, lines = Clock(), []
    phases = Phases(lines.append, every=10, clock=clock)
    with phases.phase("add", "image: adding 1,000"):
        for done in (100, 200, 300, 1000):
            clock.now += 5
            phases.progress("image: adding 1,000", done, 1000)
    assert lines == [
        "image: adding 1,000 ...",
        "image: adding 1,000: 200/1,000 (20%), 10.0 s, about 40.0 s left",
        "image: adding 1,000: done in 20.0 s",
    ]
    assert phases.seconds == {"add": 20.0}


def test_a_phase_that_fails_says_no_done_and_silence_still_times():
    lines = []
    phases = Phases(lines.append)
    with pytest.raises(RuntimeError), phases.phase("train", "training"):
        raise RuntimeError("too few")
    assert lines == ["training ..."]
    quiet = Phases()
    with quiet.phase("train", "training"):
        pass
    assert "train" in quiet.seconds


def _store(tmp_path, n=3000):
    store = Store.open(tmp_path / "ix", create=True)
    items = [{"modality": "image", "source": str(i)} for i in range(n)]
    store.add(items, clustered_vectors(n, DIM), SPEC)
    store.save()
    return store


def test_an_on_disk_build_says_each_phase_in_order(tmp_path):
    store, lines = _store(tmp_path), []
    with store.writing("test"):
        built = rebuild.build(
            store.path,
            store.catalog,
            store.manifest,
            "image",
            "IVF32,PQ8",
            on_disk=True,
            release=lambda: store.drop_index("image"),
            say=lines.append,
        )
        store.install(built)
    starts = [line for line in lines if line.endswith(" ...")]
    assert starts[:3] == [
        "image: reading 3,000 of 3,000 stored vectors to train on ...",
        "image: training IVF32,PQ8 on 3,000 vectors ...",
        "image: adding 3,000 vectors to IVF32,PQ8 ...",
    ]
    assert re.fullmatch(
        r"(image\.s\d+): merging 1 shards' lists into \1\.ivfdata \.\.\.", starts[3]
    )
    assert len(starts) == 4
    assert sum(": done in " in line for line in lines) == 4
    assert set(built.stats["phases"]) == {"sample", "train", "add", "merge"}
    store.close()


def test_the_cli_rebuild_prints_the_phases_on_stderr(tmp_path):
    _store(tmp_path).close()
    result = CliRunner().invoke(
        cli, ["rebuild", "--index", str(tmp_path / "ix"), "--type", "IVF32,PQ8", "--no-recall"]
    )
    assert result.exit_code == 0, result.output
    assert "image: training IVF32,PQ8 on 3,000 vectors ..." in result.stderr
    assert "image: adding 3,000 vectors to IVF32,PQ8: done in" in result.stderr
    assert " ..." not in result.stdout  # the phases stay off what a script reads


@pytest.mark.parametrize("factory", ["IVF32,PQ16", "OPQ8_32,IVF32,PQ8"])
def test_bounded_codebooks_find_what_faiss_own_training_finds(factory):
    vectors = clustered_vectors(3000, DIM, seed=1)
    queries = clustered_vectors(100, DIM, seed=2)
    _, exact = fx.exact_search(queries, [(np.arange(3000), vectors)], 10)
    recalls = {}
    threads = faiss.omp_get_max_threads()
    trainings = ("faiss", fx.FAISS_TRAINING), ("bounded", fx.TRAINING), ("one", fx.ONE_THREAD)
    for name, training in trainings:
        index = fx.make(factory, DIM)
        fx.train(index, vectors, factory, training)
        assert index.is_trained and faiss.omp_get_max_threads() == threads
        pq = faiss.downcast_index(fx.ivf_of(index)).pq
        assert pq.cp.max_points_per_centroid == training.codebook_points
        fx.add(index, np.arange(3000), vectors)
        recalls[name] = fx.neighbour_recall(fx.search(index, queries, 10)[1], exact)
    assert recalls["bounded"] >= recalls["faiss"] - 0.05, recalls
    assert recalls["bounded"] > 0.2 and recalls["one"] > 0.2, recalls
