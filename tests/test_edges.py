"""The edges an adversarial pass found: destructive commands that meant nothing, commits SQLite
lost, bytes flipped between the checksum probes, damaged rows, readers on read-only media, a
full disk. Real CLI processes (no model needed: `search --like`, `info`, `delete`, `verify`) on
index directories of synthetic vectors, SIGKILL, real mounts where the machine allows them."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from e5v_search.cli import cli
from e5v_search.spec import Spec
from e5v_search.storage import integrity
from e5v_search.storage.commits import describe
from e5v_search.storage.manifest import checksum
from e5v_search.storage.store import Store
from e5v_search.testing import clustered_vectors

DIM = 64
SPEC = Spec(model="m", revision=None, dim=DIM, dtype="float32", prompt_version="e5v-1")


def _cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "e5v_search.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _items(n, start=0, folder="/data/photos"):
    return [
        {"modality": "text", "source": f"{folder}/{i}.txt", "text": f"t{i}"}
        for i in range(start, start + n)
    ]


def _index(path, n=500, seed=0):
    with Store.open(path, create=True) as store:
        store.add(_items(n), clustered_vectors(n, DIM, seed=seed), SPEC)
    return path


def _one_line_error(result, code, *words):
    output = result.stdout + result.stderr if hasattr(result, "stderr") else result.output
    got = result.returncode if hasattr(result, "returncode") else result.exit_code
    assert got == code, (got, output)
    assert "Traceback" not in output, output
    for word in words:
        assert word in output, (word, output)


# -- destructive commands refuse what no one means ---------------------------------------------


def test_an_empty_prefix_deletes_nothing_and_says_why(tmp_path):
    path = _index(tmp_path / "ix")
    for prefix in ("", "   "):
        result = _cli("delete", "--source-prefix", prefix, "--index", path)
        assert result.returncode == 2 and "source prefix is empty" in result.stderr
        assert "Traceback" not in result.stderr
    runner = CliRunner()
    for args in (["--where", "1=1"], ["--where", "id > 0"], ["--source-prefix", "/data/"]):
        result = runner.invoke(cli, ["delete", *args, "--index", str(path), "--yes"])
        assert result.exit_code == 2 and "selects every item" in result.output, result.output
    assert runner.invoke(cli, ["delete", "--where", " ", "--index", str(path)]).exit_code == 2
    with Store.open(path) as store:
        assert store.catalog.count() == 500  # nothing was deleted
    everything = runner.invoke(
        cli, ["delete", "--where", "1=1", "--all", "--yes", "--index", str(path)]
    )
    assert everything.exit_code == 0 and "deleted 500 items" in everything.output


def test_dry_run_and_confirmation_above_a_hundred(tmp_path):
    path = _index(tmp_path / "ix")
    _index_more(path)
    runner = CliRunner()
    args = ["delete", "--source-prefix", "/data/photos/", "--index", str(path)]
    dry = runner.invoke(cli, [*args, "--dry-run"])
    assert dry.exit_code == 0 and "would delete 500 items" in dry.output
    assert "/data/photos/0.txt" in dry.output or "t0" in dry.output
    asked = runner.invoke(cli, args)  # not a terminal: never deletes without --yes
    assert asked.exit_code == 2 and "--yes" in asked.output
    with Store.open(path) as store:
        assert store.catalog.count() == 520
    done = runner.invoke(cli, [*args, "--yes"])
    assert done.exit_code == 0 and "deleted 500 items" in done.output
    few = runner.invoke(cli, ["delete", "--id", "501", "--id", "502", "--index", str(path)])
    assert few.exit_code == 0 and "deleted 2 items" in few.output  # a few: no question


def _index_more(path):
    with Store.open(path) as store:
        store.add(_items(20, folder="/data/notes"), clustered_vectors(20, DIM, seed=9), SPEC)


@pytest.mark.parametrize(
    "args",
    [
        ["delete", "--id", str(2**63)],
        ["search", "--like", str(2**63)],
        ["delete", "--id", "0"],
        ["search", "--like", "-1"],
    ],
)
def test_ids_past_int64_are_refused_in_one_line(tmp_path, args):
    path = _index(tmp_path / "ix", n=20)
    result = _cli(*args, "--index", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "range" in result.stderr


def test_python_delete_refuses_an_empty_prefix_and_a_filter_of_everything(tmp_path):
    from e5v_search.engine import Engine
    from e5v_search.errors import InputError

    path = _index(tmp_path / "ix", n=30)
    with Engine.open(path) as engine:
        with pytest.raises(InputError, match="empty"):
            engine.delete(source_prefix="")
        with pytest.raises(InputError, match="every item"):
            engine.delete(where="1=1")
        with pytest.raises(InputError, match="out of range"):
            engine.delete([2**63])
        assert engine.delete(where="1=1", everything=True) == 30


# -- commits SQLite lost ------------------------------------------------------------------------


def _killed_writer(path, batches=2, size=50):
    """A writer that commits `batches` chunks, then dies by SIGKILL before saving."""
    code = (
        "import os\n"
        "from e5v_search.storage.store import Store\n"
        "from e5v_search.spec import Spec\n"
        "from e5v_search.testing import clustered_vectors\n"
        f"s = Store.open({str(path)!r})\n"
        "spec = Spec(**s.catalog.spec())\n"
        "with s.writing():\n"
        f"    for c in range({batches}):\n"
        f"        items = [{{'modality': 'text', 'source': f'/late/{{c}}-{{i}}'}} for i in range({size})]\n"  # noqa: E501
        f"        s.add(items, clustered_vectors({size}, {DIM}, seed=c + 5), spec)\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False, timeout=120)


def test_commits_lost_with_a_damaged_wal_are_named_and_their_ids_never_reused(tmp_path):
    path = _index(tmp_path / "ix")
    _killed_writer(path)
    wal = path / "catalog.sqlite-wal"
    assert wal.stat().st_size > 0  # the 100 committed items are in the WAL only
    with open(wal, "r+b") as f:  # its header damaged: SQLite drops every frame, silently
        f.write(b"\0" * 32)
    info = _cli("info", "--index", path)
    assert info.returncode == 0, info.stderr
    assert "lost its last 2 commits" in info.stderr and "ids 501-600" in info.stderr
    assert "100 texts fewer" in info.stderr
    with Store.open(path) as store:
        assert store.catalog.count() == 500
        new = store.add(_items(5, start=9000), clustered_vectors(5, DIM, seed=7), SPEC)
    assert min(new) == 601  # the ids the lost items held are never given again
    # Every writer keeps saying so until it is acknowledged.
    with Store.open(path) as store:
        assert store.lost is None and len(store.catalog.lost()) == 1
    again = _cli("delete", "--id", "601", "--index", path)
    assert again.returncode == 0 and "lost its last 2 commits" in again.stderr
    repaired = _cli("repair", "--index", path)
    assert repaired.returncode == 0, repaired.stderr
    assert "acknowledged: the catalog lost its last 2 commits" in repaired.stdout
    after = _cli("info", "--index", path)
    assert after.returncode == 0 and "lost" not in after.stderr
    assert _cli("verify", "--index", path).returncode == 0


def test_a_restored_older_catalog_is_named_as_having_lost_commits(tmp_path):
    path = _index(tmp_path / "ix", n=50)
    shutil.copy(path / "catalog.sqlite", tmp_path / "backup.sqlite")
    with Store.open(path) as store:
        store.add(_items(10, start=50), clustered_vectors(10, DIM, seed=2), SPEC)
    shutil.copy(tmp_path / "backup.sqlite", path / "catalog.sqlite")
    with Store.open(path) as store:
        assert store.lost["ids"] == [51, 60] and "10 texts fewer" in describe(store.lost)
        assert store.indexes["text"].ntotal == 50  # the files were rebuilt from what it has


# -- damage found wherever it is, before it is served ----------------------------------------


def _big_flat(path, n=36000):
    """One Flat segment over 8 MiB: probed at 32 blocks, not hashed whole, on open."""
    vectors = clustered_vectors(n, DIM, seed=3).astype(np.float32)  # as the index holds them
    with Store.open(path, create=True) as store:
        store.add(_items(n), vectors, SPEC)
        store.rebuild()
        entry = store.manifest.indexes["text"]
    segment = path / f"{entry.segments[0]}.faiss"
    assert segment.stat().st_size > integrity.PROBE_WHOLE
    return vectors, segment


def _between_probes(file, vectors):
    """The id and file offset of a stored vector that lies wholly outside the probed blocks."""
    data = file.read_bytes()
    size = len(data)
    blocks = [
        (size - integrity.PROBE_BLOCK) * i // (integrity.PROBE_BLOCKS - 1)
        for i in range(integrity.PROBE_BLOCKS)
    ]
    for number in range(len(vectors) // 2, len(vectors)):
        at = data.find(vectors[number].tobytes())
        end = at + vectors[number].nbytes
        if at > 0 and all(end <= b or at >= b + integrity.PROBE_BLOCK for b in blocks):
            return number + 1, at
    raise AssertionError("no vector between the probes")


def test_bytes_flipped_between_probes_are_never_served_and_verify_finds_them(tmp_path):
    path = tmp_path / "ix"
    vectors, segment = _big_flat(path)
    item, at = _between_probes(segment, vectors)
    component = int(np.argmax(vectors[item - 1]))
    with open(segment, "r+b") as f:  # a flipped exponent: about 1e23 where ~0.3 was
        f.seek(at + 4 * component + 3)
        f.write(bytes([0x65]))
    entry = json.loads((path / "manifest.json").read_text())["indexes"]["text"]
    assert integrity.damage_of(path, entry["files"]) is None  # the probes miss it
    found = _cli("search", "--like", item, "--index", path)
    _one_line_error(found, 1, f"{segment.name} is damaged", "e5v-search rebuild")
    assert "e+" not in found.stdout  # no score of 1e23 was printed
    verified = _cli("verify", "--index", path)
    _one_line_error(verified, 1, f"DAMAGED: {segment.name} is damaged", "e5v-search repair")
    repaired = _cli("repair", "--index", path)
    assert repaired.returncode == 0 and "text: rebuilt as Flat" in repaired.stdout
    assert _cli("verify", "--index", path).returncode == 0
    again = _cli("search", "--like", item, "--json", "-k", "3", "--index", path)
    scores = [json.loads(line)["score"] for line in again.stdout.splitlines()]
    assert again.returncode == 0 and max(scores) <= 1.0001


@pytest.mark.parametrize(
    "target",
    [
        "segment",
        "template",
        "delta",
        "masks",
        "ids",
        "manifest.json",
        "manifest.backup.json",
        "commits.json",
        "vector",
        "text",
    ],
)
def test_verify_finds_a_flipped_byte_anywhere(tmp_path, target):
    path = tmp_path / "ix"
    with Store.open(path, create=True) as store:
        store.add(_items(300), clustered_vectors(300, DIM, seed=1), SPEC)
        store.rebuild()  # a sealed segment
        store.add(_items(20, start=300), clustered_vectors(20, DIM, seed=2), SPEC)  # a delta
        store.delete([5])  # masks
        entry = store.manifest.indexes["text"]
    assert _cli("verify", "--index", path).returncode == 0
    stem = entry.segments[0]
    files = {
        "segment": f"{stem}.faiss",
        "ids": f"{stem}.ids.npy",
        "template": entry.template,
        "delta": entry.delta,
        "masks": entry.masks,
    }
    if target in ("vector", "text"):
        _flip_in_catalog(path / "catalog.sqlite", target)
    else:
        file = path / files.get(target, target)
        data = bytearray(file.read_bytes())
        middle = len(data) // 2
        data[middle] = (data[middle] + 1) % 256 if target.endswith("json") else data[middle] ^ 0x10
        file.write_bytes(bytes(data))
    result = _cli("verify", "--index", path)
    _one_line_error(result, 1, "DAMAGED")


def _flip_in_catalog(catalog, target):
    """A byte changed inside a vector blob or an item's text, in the file itself (as a disk
    would), the checksums beside them untouched."""
    conn = sqlite3.connect(catalog)
    if target == "vector":
        needle = conn.execute("SELECT vector FROM vectors WHERE item_id = 77").fetchone()[0]
    else:
        needle = b"/data/photos/77.txt"
    conn.close()
    data = bytearray(catalog.read_bytes())
    at = data.find(needle)
    assert at >= 0
    data[at + len(needle) // 2] ^= 0x01
    catalog.write_bytes(bytes(data))


def test_damaged_vector_rows_are_named_and_left_out_of_a_rebuild(tmp_path):
    path = _index(tmp_path / "ix", n=400)
    with sqlite3.connect(path / "catalog.sqlite") as db:  # three blobs changed on disk
        for item in (10, 20, 30):
            blob = bytearray(
                db.execute("SELECT vector FROM vectors WHERE item_id = ?", (item,)).fetchone()[0]
            )
            blob[8] ^= 0x40
            db.execute("UPDATE vectors SET vector = ? WHERE item_id = ?", (bytes(blob), item))
    rebuilt = _cli("rebuild", "--index", path)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "3 damaged rows left out (ids [10, 20, 30])" in rebuilt.stdout
    assert "damaged: item 10's stored vector is damaged" in rebuilt.stderr
    with Store.open(path) as store:
        assert store.repairs == []  # the count is known: 397 indexed, 3 left out
        assert store.indexes["text"].ntotal == 397
        assert store.info()["skipped_rows"] == {"text": [10, 20, 30]}
        hits = store.search(clustered_vectors(400, DIM)[:40], k=1)
        for item, row in enumerate(hits, start=1):  # no damaged vector was indexed
            assert (row[0].id == item) == (item not in (10, 20, 30)), item
    verified = _cli("verify", "--index", path)
    _one_line_error(verified, 1, "item 10 (/data/photos/9.txt): its vector is damaged")
    repaired = _cli("repair", "--index", path)
    assert repaired.returncode == 0 and "the next ingest of its source" in repaired.stdout
    with Store.open(path) as store:
        assert store.catalog.get([10])[0]["content_hash"] is None  # to be embedded again


@pytest.fixture(scope="module")
def built_on_disk(tmp_path_factory):
    """6,000 texts in IVF-PQ lists on disk (the budget admits nothing else), built once."""
    path = tmp_path_factory.mktemp("on-disk") / "ix"
    with Store.open(path, create=True) as store:
        store.add(_items(6000), clustered_vectors(6000, DIM, seed=1), SPEC)
        store.rebuild(max_memory=500_000)
        entry = store.manifest.indexes["text"]
        assert entry.ondisk and "PQ" in entry.factory
    return path


@pytest.fixture
def on_disk(built_on_disk, tmp_path):
    shutil.copytree(built_on_disk, tmp_path / "ix")
    path = tmp_path / "ix"
    return path, json.loads((path / "manifest.json").read_text())["indexes"]["text"]


def test_an_emptied_manifest_keeps_the_on_disk_type_and_never_rebuilds_it_in_memory(on_disk):
    path, entry = on_disk
    factory = entry["factory"]
    (path / "manifest.json").write_text("")
    with Store.open(path) as store:  # the backup copy: nothing lost, nothing rebuilt
        assert store.indexes["text"].ntotal == 6000 and not store.damaged
        assert "manifest.backup.json was used" in store.repairs[0]
    (path / "manifest.backup.json").write_text("")
    info = _cli("info", "--index", path)
    assert info.returncode == 0 and "DAMAGED" in info.stdout and factory in info.stdout
    assert "on disk" in info.stdout and "rebuilt" not in info.stderr  # not in memory
    rebuilt = _cli("rebuild", "--no-recall", "--index", path, timeout=400)  # OPQ training
    assert rebuilt.returncode == 0, rebuilt.stderr
    with Store.open(path) as store:
        entry = store.manifest.indexes["text"]
        assert entry.factory == factory and entry.ondisk and entry.rerank == 100


def test_an_ivfdata_zeroed_in_its_second_half_is_named(on_disk):
    path, entry = on_disk
    stem = entry["segments"][0]
    lists = path / f"{stem}.ivfdata"
    size = lists.stat().st_size
    with open(lists, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\0" * (size - size // 2))
    for _ in range(3):
        result = _cli("search", "--like", "1", "--index", path)
        _one_line_error(result, 1, f"{stem}.ivfdata is damaged")
    # A manifest saved before .ivfdata files were probed: the search itself names it.
    for name in ("manifest.json", "manifest.backup.json"):
        manifest = json.loads((path / name).read_text())
        del manifest["indexes"]["text"]["files"][f"{stem}.ivfdata"]["probe"]
        manifest["checksum"] = checksum(manifest)
        (path / name).write_text(json.dumps(manifest))
    result = _cli("search", "--like", "1", "-k", "50", "--index", path)
    _one_line_error(result, 1, f"{stem}.ivfdata is damaged: a search returned id")


# -- readers on read-only media, writers on a full disk ---------------------------------------


def _mount(*args):
    result = subprocess.run(["mount", *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount here ({result.stderr.strip() or 'not root'})")


@contextmanager
def _read_only_view(source, view):
    """`source` seen through a read-only bind mount at `view`."""
    view.mkdir()
    _mount("--bind", source, view)
    try:
        _mount("-o", "remount,bind,ro", view)
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=False)


@pytest.fixture
def read_only(tmp_path):
    with _read_only_view(_index(tmp_path / "ix", n=200), tmp_path / "view") as view:
        yield view


def test_readers_work_on_a_read_only_mount_and_writers_say_why_not(read_only):
    for args in (["info"], ["search", "--like", "1"], ["verify"], ["errors"]):
        result = _cli(*args, "--index", read_only)
        assert result.returncode == 0, (args, result.stderr)
        assert "Read-only" not in result.stderr and "repaired" not in result.stderr
    checked = _cli("verify", "--index", read_only).stdout
    assert "keyword index: against the items only" in checked  # FTS5's check needs writing
    written = _cli("delete", "--id", "1", "--index", read_only)
    _one_line_error(written, 1, "writing an index needs write access")


def test_the_server_answers_from_a_read_only_index(tmp_path, tiny_dir, monkeypatch):
    from conftest import sample_engine
    from fastapi.testclient import TestClient

    from e5v_search.engine import Engine
    from e5v_search.serving.app import create_app

    sample_engine(tmp_path, tiny_dir)[0].close()
    monkeypatch.setenv("E5V_SEARCH_CACHE", str(tmp_path / "cache"))
    with _read_only_view(tmp_path / "ix", tmp_path / "view") as view:
        with Engine.open(view, model=str(tiny_dir), device="cpu") as engine:
            app = create_app(engine)
            with TestClient(app, base_url="http://127.0.0.1") as client:
                found = client.get("/api/search", params={"q": "A red circle.", "k": 3})
                assert found.status_code == 200, found.text
                first = found.json()["results"][0]["id"]
                assert client.get(f"/thumbs/{first}.jpg").status_code == 200
            app.state.worker.close()
    assert list((tmp_path / "cache" / "thumbnails").glob("*/*.jpg"))  # made in the cache


def test_another_account_reads_an_index_it_cannot_write(request):
    """A reader that may not write the directory (another user: a forked child that drops to
    nobody, with everything it needs imported first) opens, searches and verifies, and finds
    nothing to repair: the files were made readable to it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    folder = Path(tempfile.mkdtemp(prefix="e5v-shared-"))  # pytest's own folders are private
    request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))
    os.chmod(folder, 0o755)
    path = _index(folder / "ix", n=300)
    with Store.open(path) as store:
        store.add(_items(10, start=300), clustered_vectors(10, DIM, seed=4), SPEC)
    os.chmod(path, 0o555)  # nobody can write here
    with Store.open(path) as store:  # every lazy import done before the fork
        store.search(clustered_vectors(3, DIM), k=1)
        store.verify()
    listing = sorted(p.name for p in path.iterdir())
    pid = os.fork()
    if pid == 0:  # the child: another account
        code = 1
        try:
            import faiss

            signal.alarm(60)  # a hang fails the test instead of stopping the suite
            faiss.omp_set_num_threads(1)  # no OpenMP pool after a fork
            os.setgid(65534)
            os.setuid(65534)
            with Store.open(path) as store:
                ok = store.repairs == [] and store.indexes["text"].ntotal == 310
                hits = store.search(clustered_vectors(300, DIM)[:3], k=1)
                ok = ok and [row[0].id for row in hits] == [1, 2, 3]
                ok = ok and store.verify()["ok"]
                code = 0 if ok else 3
                if not ok:  # what differs, shown by pytest with the failure
                    print(store.repairs, store.info(), hits, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()  # shown by pytest with the failure
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    os.chmod(path, 0o755)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(p.name for p in path.iterdir()) == listing  # it wrote nothing


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    _mount("-t", "tmpfs", "-o", "size=3m", "tmpfs", disk)
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_full_disk_is_one_line_and_loses_nothing_committed(small_disk, tmp_path):
    path = _index(small_disk / "ix", n=200)
    before = _snapshot(path)
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # fill what is left
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    writes = [
        ["rebuild", "--type", "HNSW32"],
        ["delete", "--id", "3"],
    ]
    for args in writes:
        result = _cli(*args, "--index", path)
        _one_line_error(result, 1, "disk is full", "Nothing committed was lost")
    for args in (["info"], ["search", "--like", "1"]):  # readers need no space
        assert _cli(*args, "--index", path).returncode == 0
    code = (
        "from e5v_search.storage.store import Store\n"
        "from e5v_search.spec import Spec\nfrom e5v_search.testing import clustered_vectors\n"
        f"s = Store.open({str(path)!r})\n"
        "items = [{'modality': 'text', 'source': f'/more/{i}', 'text': 'x' * 4000} "
        "for i in range(2000)]\n"
        f"s.add(items, clustered_vectors(2000, {DIM}), Spec(**s.catalog.spec()))\n"
    )
    added = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert added.returncode == 1 and "IndexWriteError" in added.stderr
    assert "disk is full" in added.stderr and "free" in added.stderr
    filler.unlink()
    assert _snapshot(path) == before  # nothing committed was lost, nothing half-written
    assert _cli("delete", "--id", "3", "--index", path).returncode == 0
    assert _cli("verify", "--index", path).returncode == 0


def _snapshot(path):
    with Store.open(path) as store:
        ids = store.catalog.ids()
        return ids.tolist(), store.catalog.vectors(ids).round(6).tolist()


# -- the rest of the one-liners -----------------------------------------------------------------


def test_a_lock_path_that_is_a_directory_and_a_budget_too_small_are_one_line(tmp_path):
    path = _index(tmp_path / "ix", n=50)
    (path / "write.lock").unlink(missing_ok=True)
    (path / "write.lock").mkdir()
    result = _cli("delete", "--id", "1", "--index", path)
    _one_line_error(result, 1, "write.lock is a directory", "rmdir")
    (path / "write.lock").rmdir()
    with Store.open(path) as store:  # a small modality kept exact, a large one too large
        store.add(_items(80000, start=50), clustered_vectors(80000, DIM), SPEC)
        store.add([{"modality": "image", "source": "/img/1.png"}], clustered_vectors(1, DIM), SPEC)
    budget = _cli("rebuild", "--max-memory", "1100KB", "--index", path)
    _one_line_error(budget, 2, "--max-memory 1100KB", "too little")
    assert "0.0 MiB" not in budget.stderr
