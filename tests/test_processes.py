"""Many processes on one index directory, as users run them (two terminals, a cron ingest, a
server, a rebuild at night): real subprocesses of the CLI on the tiny checkpoint."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from e5v_search.engine import Engine
from e5v_search.serving.app import create_app
from e5v_search.spec import Spec
from e5v_search.storage.store import Store
from e5v_search.testing import make_sample_corpus


def _cli(*args, env, **options):
    command = [sys.executable, "-m", "e5v_search.cli", *map(str, args)]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options
    )


def _run(*args, env, timeout=240):
    process = _cli(*args, env=env)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def _lines(path, n, prefix):
    path.write_text("".join(f"{prefix} line number {i} about a dog and a cat\n" for i in range(n)))
    return path


def _items(path):
    """What is stored, by origin (ids depend on who ran first), with each vector."""
    with Store.open(path) as store:
        ids = store.catalog.ids()
        rows = store.catalog.get(ids)
        vectors = store.catalog.vectors(ids)
    return {
        (r["source"], r["locator"], r["content_hash"]): v
        for r, v in zip(rows, vectors, strict=True)
    }


def _assert_every_item_finds_itself(path):
    with Store.open(path) as store:
        assert store.repairs == []  # the files on disk are complete: nothing to catch up
        for modality in ("image", "text"):
            ids = store.catalog.ids(modality)
            if not len(ids):
                continue
            hits = store.search(store.catalog.vectors(ids), k=1, modality=modality)
            assert [row[0].id for row in hits] == ids.tolist()
            assert min(row[0].score for row in hits) > 0.9999


@pytest.fixture
def env(tiny_dir):
    return dict(os.environ, E5V_MODEL=str(tiny_dir), E5V_DEVICE="cpu")


def test_opening_a_catalog_another_process_is_creating_waits_for_it(tmp_path):
    """The creator holds the writer lock while catalog.sqlite is still empty: an opener that
    sees the empty file waits for the lock instead of calling the catalog damaged."""
    path = tmp_path / "ix"
    code = (
        "import sys, time\nfrom pathlib import Path\n"
        "from e5v_search.storage.catalog import Catalog\n"
        "from e5v_search.storage.locking import CreationHold, WriterLock\n"
        f"path = Path({str(path)!r})\npath.mkdir()\n"
        "hold = CreationHold(path)\n"  # as Store.open(create=True) does, until its close
        "with WriterLock(path, 'creation'):\n"
        "    (path / 'catalog.sqlite').write_bytes(b'')\n"
        "    print('empty', flush=True)\n"
        "    time.sleep(2)\n"
        "    (path / 'catalog.sqlite').unlink()\n"
        "    Catalog(path / 'catalog.sqlite').close()\n"
        "sys.stdin.readline()\n"
    )
    creator = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert creator.stdout.readline().strip() == "empty"
    with Store.open(path) as store:  # waited for the creator, then found a whole catalog
        assert store.catalog.count() == 0
    creator.stdin.close()
    assert creator.wait(timeout=30) == 0


def test_two_ingests_at_once_equal_one_sequential_run(tmp_path, env):
    corpus = make_sample_corpus(tmp_path / "corpus")
    shared = _lines(tmp_path / "shared.txt", 400, "shared")
    first = [corpus["images"], corpus["captions"], shared, _lines(tmp_path / "a.txt", 300, "a")]
    second = [shared, corpus["captions"], _lines(tmp_path / "b.txt", 300, "b")]
    together = tmp_path / "together"
    a = _cli("ingest", *first, "--index", together, "--quiet", env=env)
    b = _cli("ingest", *second, "--index", together, "--quiet", env=env)
    for process in (a, b):
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err
        assert "Traceback" not in err
    sequential = tmp_path / "sequential"
    for sources in (first, second):
        assert _run("ingest", *sources, "--index", sequential, "--quiet", env=env)[0] == 0
    got, want = _items(together), _items(sequential)
    assert got.keys() == want.keys() and len(got) == 48 + 48 + 1000
    assert max(np.abs(got[key] - want[key]).max() for key in got) <= 1e-5
    _assert_every_item_finds_itself(together)


WRITERS_OWN = ("catalog.sqlite", "commits.json")  # what the running ingest writes per commit


def test_a_reader_during_an_ingest_writes_nothing(tmp_path, env):
    index = tmp_path / "ix"
    assert (
        _run(
            "ingest",
            _lines(tmp_path / "seed.txt", 20, "seed"),
            "--index",
            index,
            "--quiet",
            env=env,
        )[0]
        == 0
    )
    writer = _cli(
        "ingest", _lines(tmp_path / "big.txt", 8000, "big"), "--index", index, "--quiet", env=env
    )
    catalog = sqlite3.connect(index / "catalog.sqlite")
    deadline = time.time() + 120
    while catalog.execute("SELECT count(*) FROM items").fetchone()[0] <= 20:
        assert writer.poll() is None and time.time() < deadline, "the ingest ended too soon"
        time.sleep(0.1)
    before = {
        p.name: (p.stat().st_mtime_ns, p.stat().st_size)
        for p in index.glob("*.*")
        if not p.name.startswith(WRITERS_OWN)
    }
    code, out, err = _run("info", "--index", index, env=env)  # it sees changes the files lack
    assert code == 0, err
    code, out, err = _run(
        "search", "big line number 3", "--type", "text", "-k", "1", "--index", index, env=env
    )
    assert code == 0, err
    assert writer.poll() is None, "the ingest ended while the readers ran: use more lines"
    after = {
        p.name: (p.stat().st_mtime_ns, p.stat().st_size)
        for p in index.glob("*.*")
        if not p.name.startswith(WRITERS_OWN)
    }
    assert after == before
    writer.communicate(timeout=240)
    assert writer.returncode == 0
    _assert_every_item_finds_itself(index)


def test_a_second_writer_waits_names_the_holder_and_a_killed_holder_frees_the_lock(tmp_path, env):
    index = tmp_path / "ix"
    assert (
        _run("ingest", _lines(tmp_path / "t.txt", 5, "t"), "--index", index, "--quiet", env=env)[0]
        == 0
    )
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom e5v_search.storage.locking import WriterLock\n"
            f"with WriterLock({str(index)!r}, 'ingest'):\n"
            "    print('held', flush=True)\n    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    code, out, err = _run("delete", "--id", "1", "--lock-timeout", "1", "--index", index, env=env)
    assert code == 1
    assert "waiting for the ingest started at" in err and f"pid {holder.pid}" in err
    assert "gave up after 1 s" in err and "Traceback" not in err
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    code, out, err = _run("delete", "--id", "1", "--lock-timeout", "5", "--index", index, env=env)
    assert code == 0, err
    _assert_every_item_finds_itself(index)


WRITERS = {
    "ingest": ["ingest", "u.txt", "--quiet"],
    # (resolved against tmp_path below; every item when it runs first: --all, and --yes)
    "delete": ["delete", "--source-prefix", "t.txt", "--all", "--yes"],
    "rebuild-ivf": ["rebuild", "--type", "IVF4,Flat"],
    "rebuild-budget": ["rebuild", "--max-memory", "1MB"],
    "rebuild-flat": ["rebuild", "--type", "Flat"],
}


@pytest.mark.parametrize(
    "first, second, texts",
    [
        ("ingest", "rebuild-ivf", 1200),
        ("ingest", "rebuild-budget", 1200),
        ("ingest", "delete", 600),
        ("delete", "rebuild-ivf", 0),
        ("delete", "rebuild-flat", 0),
    ],
)
def test_two_writers_at_once_both_land(tmp_path, env, first, second, texts):
    index = tmp_path / "ix"
    assert (
        _run("ingest", _lines(tmp_path / "t.txt", 600, "t"), "--index", index, "--quiet", env=env)[
            0
        ]
        == 0
    )
    _lines(tmp_path / "u.txt", 600, "u")

    def command(name):
        args = [str(tmp_path / a) if a.endswith(".txt") else a for a in WRITERS[name]]
        return _cli(*args, "--index", index, env=env)

    processes = [command(first), command(second)]
    for process in processes:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err
        assert "Traceback" not in err
    with Store.open(index) as store:
        assert store.catalog.count("text") == texts
        if texts:
            assert store.indexes["text"].ntotal == texts
    if texts:
        _assert_every_item_finds_itself(index)


def test_a_server_follows_a_cli_ingest_and_delete(tmp_path, env, tiny_dir):
    index = tmp_path / "ix"
    assert (
        _run("ingest", _lines(tmp_path / "t.txt", 10, "t"), "--index", index, "--quiet", env=env)[0]
        == 0
    )
    engine = Engine.open(index, model=str(tiny_dir), device="cpu")
    app = create_app(engine)
    new = "A brand new sentence about a horse."
    with TestClient(app, base_url="http://127.0.0.1") as client:
        client.get("/api/search", params={"q": "t line", "type": "text", "k": 3})
        generation = client.get("/api/info").json()["generation"]
        (tmp_path / "new.txt").write_text(new + "\n")
        assert _run("ingest", tmp_path / "new.txt", "--index", index, "--quiet", env=env)[0] == 0
        body = client.get("/api/search", params={"q": new, "type": "text", "k": 3}).json()
        assert body["results"][0]["text"] == new
        assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert client.get("/api/info").json()["generation"] != generation
        gone = body["results"][0]["id"]
        assert _run("delete", "--id", gone, "--index", index, env=env)[0] == 0
        after = client.get("/api/search", params={"q": new, "type": "text", "k": 3}).json()
        assert gone not in [r["id"] for r in after["results"]] and len(after["results"]) == 3
    app.state.worker.close()
    engine.close()


def test_an_on_disk_rebuild_beside_a_delete_and_an_add(tmp_path):
    """Synthetic vectors, so the budget can force IVF-PQ lists on disk; three processes."""
    from e5v_search.storage import ondisk
    from e5v_search.testing import clustered_vectors

    index, dim = tmp_path / "ix", 64
    spec = Spec(
        **{
            "model": "m",
            "revision": None,
            "dim": dim,
            "dtype": "float32",
            "prompt_version": "e5v-1",
        }
    )
    with Store.open(index, create=True) as store:
        items = [{"modality": "image", "source": str(i)} for i in range(6000)]
        store.add(items, clustered_vectors(6000, dim, seed=1), spec)
    budget = 500_000 + ondisk.FLAT_OVERHEAD
    code = (
        "import sys\nfrom e5v_search.spec import Spec\n"
        "from e5v_search.storage.store import Store\n"
        "from e5v_search.testing import clustered_vectors\n"
        f"s = Store.open({str(index)!r})\n"
    )
    rebuild = code + f"print(s.rebuild(max_memory={budget})[0]['factory'])\n"
    add = code + (
        "s.add([{'modality': 'image', 'source': f'new{i}'} for i in range(100)],"
        " clustered_vectors(100, 64, seed=5), Spec(**s.catalog.spec()))\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", rebuild],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
        _cli("delete", *[f"--id={i}" for i in range(1, 51)], "--index", index, env=os.environ),
        subprocess.Popen([sys.executable, "-c", add], stderr=subprocess.PIPE, text=True),
    ]
    for process in processes:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, err
        assert "Traceback" not in (err or "")
    with Store.open(index) as store:
        assert store.manifest.indexes["image"].ondisk
        assert store.repairs == []
        stored = set(store.catalog.ids("image").tolist())
        assert len(stored) == 6000 - 50 + 100
        assert set(store.indexes["image"].ids().tolist()) == stored
