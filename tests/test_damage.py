"""Damaged files are named, never a signal or a traceback: real CLI subprocesses on index
directories of synthetic vectors (no model needed: `search --like`, `info`, `rebuild`)."""

import os
import subprocess
import sys

import pytest

from e5v_search.errors import IndexDamagedError
from e5v_search.spec import Spec
from e5v_search.storage import ondisk
from e5v_search.storage.commits import describe
from e5v_search.storage.store import Store
from e5v_search.testing import clustered_vectors, index_file

DIM = 64
SPEC = Spec(
    **{"model": "m", "revision": None, "dim": DIM, "dtype": "float32", "prompt_version": "e5v-1"}
)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "e5v_search.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory):
    """6,000 images in IVF-PQ lists on disk (the budget admits nothing else), 200 texts Flat;
    built once (training takes a while), copied for each test."""
    path = tmp_path_factory.mktemp("on-disk") / "ix"
    return path, _on_disk_index(path)


def _copy(on_disk, tmp_path):
    import shutil

    source, stem = on_disk
    shutil.copytree(source, tmp_path / "ix")
    return tmp_path / "ix", stem


def _on_disk_index(path):
    with Store.open(path, create=True) as store:
        n = 6000
        items = [
            {"modality": "image" if i < n else "text", "source": str(i)} for i in range(n + 200)
        ]
        store.add(items, clustered_vectors(n + 200, DIM, seed=1), SPEC)
        budget = 500_000 + 200 * (DIM * 4 + ondisk.FLAT_OVERHEAD)
        store.rebuild(max_memory=budget)
        entry = store.manifest.indexes["image"]
        assert entry.ondisk
        return entry.segments[0]


def _assert_named(result, name, code=1):
    assert result.returncode == code, (result.returncode, result.stderr)
    assert name in result.stderr and "Traceback" not in result.stderr


def test_a_truncated_ivfdata_is_named_not_a_bus_error_and_rebuild_fixes_it(tmp_path, on_disk):
    path, stem = _copy(on_disk, tmp_path)
    lists = path / f"{stem}.ivfdata"
    with open(lists, "r+b") as f:
        f.truncate(lists.stat().st_size // 3)
    result = _cli("search", "--like", "1", "--index", path)
    _assert_named(result, f"{stem}.ivfdata is damaged")
    assert "e5v-search rebuild" in result.stderr
    info = _cli("info", "--index", path)
    assert info.returncode == 0 and "DAMAGED" in info.stdout
    assert _cli("search", "--like", "6001", "--index", path).returncode == 0  # texts still work
    rebuilt = _cli("rebuild", "--max-memory", "1MB", "--index", path)
    assert rebuilt.returncode == 0, rebuilt.stderr
    found = _cli("search", "--like", "1", "--type", "image", "-k", "3", "--index", path)
    assert found.returncode == 0 and len(found.stdout.splitlines()) == 1 + 3  # a header, 3 rows


@pytest.mark.parametrize("part", ["masks", "delta"])
def test_a_zero_byte_mask_or_delta_is_named(tmp_path, on_disk, part):
    path, stem = _copy(on_disk, tmp_path)
    with Store.open(path) as store:
        store.delete([1, 2])  # writes the mask and the delta
    file = index_file(path, "image", part)
    file.write_bytes(b"")
    _assert_named(_cli("search", "--like", "3", "--index", path), f"{file.name} is damaged")


@pytest.mark.parametrize("damage", ["empty", "half"])
def test_a_damaged_catalog_is_named_and_never_overwritten(tmp_path, damage):
    path = tmp_path / "ix"
    with Store.open(path, create=True) as store:
        store.add(
            [{"modality": "text", "source": str(i)} for i in range(3000)],
            clustered_vectors(3000, DIM),
            SPEC,
        )
    catalog = path / "catalog.sqlite"
    for suffix in ("-wal", "-shm"):
        (path / f"catalog.sqlite{suffix}").unlink(missing_ok=True)
    data = catalog.read_bytes()
    catalog.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    before = catalog.read_bytes()
    for args in (["info"], ["search", "--like", "1"], ["delete", "--id", "1"]):
        _assert_named(_cli(*args, "--index", path), "catalog.sqlite is damaged")
    assert catalog.read_bytes() == before
    with pytest.raises(IndexDamagedError, match="never overwritten"):
        Store.open(path)


def test_a_changed_flat_file_is_rebuilt_from_the_catalog_and_named(tmp_path):
    path = tmp_path / "ix"
    with Store.open(path, create=True) as store:
        store.add(
            [{"modality": "text", "source": str(i)} for i in range(50)],
            clustered_vectors(50, DIM),
            SPEC,
        )
    delta = index_file(path, "text")
    data = bytearray(delta.read_bytes())
    data[-8:] = b"\x00" * 8  # the same size, other bytes: only the checksum can tell
    delta.write_bytes(bytes(data))
    with Store.open(path) as store:
        assert any("checksum" in line for line in store.repairs)
        hits = store.search(store.catalog.vectors([50]), k=1)
        assert hits[0][0].id == 50 and hits[0][0].score == pytest.approx(1.0, abs=1e-5)


def test_a_plain_rebuild_keeps_each_modality_on_disk(tmp_path, on_disk):
    path, _ = _copy(on_disk, tmp_path)
    result = _cli("rebuild", "--index", path)
    assert result.returncode == 0, result.stderr
    with Store.open(path) as store:
        assert store.manifest.indexes["image"].ondisk
        assert store.manifest.indexes["text"].factory == "Flat"


def test_leftovers_of_a_killed_writer_are_removed_by_the_next(tmp_path):
    path = tmp_path / "ix"
    with Store.open(path, create=True) as store:
        store.add([{"modality": "text", "source": "a"}], clustered_vectors(1, DIM), SPEC)
    (path / "text.faiss.x1y2.tmp").write_bytes(b"half")
    (path / "image.g9.shards.abc").mkdir()
    (path / "image.g9.shards.abc" / "0.index").write_bytes(b"shard")
    with Store.open(path) as store:
        assert (path / "text.faiss.x1y2.tmp").exists()  # a reader leaves them
        store.delete([1])
    assert not list(path.glob("*.tmp")) and not list(path.glob("*.shards.*"))


def test_a_truncated_weight_file_is_a_load_error(tmp_path, tiny_dir):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    weights = next(model.glob("*.safetensors"))
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (20, 20)).save(image)
    result = _cli("similarity", "--model", model, "--device", "cpu", "-t", "a", "-i", image)
    _assert_named(result, "cannot load an E5-V model")
    assert "incomplete" in result.stderr


def test_a_catalog_that_lost_its_last_writes_is_named_and_ids_are_never_reused(tmp_path):
    import shutil

    path = tmp_path / "ix"
    with Store.open(path, create=True) as store:
        store.add(
            [{"modality": "text", "source": str(i)} for i in range(10)],
            clustered_vectors(10, DIM),
            SPEC,
        )
    shutil.copy(path / "catalog.sqlite", tmp_path / "old.sqlite")  # closed: WAL checkpointed
    with Store.open(path) as store:
        later = store.add(
            [{"modality": "text", "source": f"later{i}"} for i in range(5)],
            clustered_vectors(5, DIM, seed=3),
            SPEC,
        )
    shutil.copy(tmp_path / "old.sqlite", path / "catalog.sqlite")  # the last writes are lost
    with Store.open(path) as store:
        assert "the catalog lost its last 1 commit" in describe(store.lost)
        assert store.repairs == [
            "text index rebuilt from 10 stored vectors: they hold commits the catalog lost"
        ]
        assert store.indexes["text"].ntotal == 10
        new = store.add([{"modality": "text", "source": "new"}], clustered_vectors(1, DIM), SPEC)
    assert new[0] > max(later)  # the id of a lost item is never given to another
    with Store.open(path) as store:
        assert store.repairs == [] and store.indexes["text"].ntotal == 11
        assert store.lost is None and len(store.catalog.lost()) == 1  # kept until acknowledged
