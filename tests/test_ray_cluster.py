"""A real two-node Ray cluster on this machine (a head and a second raylet with its own ports,
joined with `ray start --address` and the token shared through RAY_AUTH_TOKEN, as the README
says), an ingest with `--ray --address`, the worker node's raylet killed mid-run: the run, or
its rerun on a cluster whose worker came back, equals a plain ingest."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from conftest import assert_same_catalog, catalog_snapshot

from e5v_search.engine import Engine

ray = pytest.importorskip("ray", reason="Ray is the optional extra e5v-search[ray]")
psutil = pytest.importorskip("psutil")

RAY = str(Path(sys.executable).with_name("ray"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster():
    temp = tempfile.mkdtemp(prefix="/tmp/rc")  # Ray's socket paths must stay short
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    head = f"127.0.0.1:{_port()}"
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    start = [RAY, "start", "--head", "--port", head.split(":")[1], "--temp-dir", temp]
    start += ["--include-dashboard", "false", "--node-ip-address", "127.0.0.1", *common]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)

    def join() -> int:
        port = _port()
        command = [RAY, "start", "--address", head, "--node-manager-port", str(port)]
        command += ["--node-ip-address", "127.0.0.1", *common]
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=120)
        return port

    try:
        yield head, env, join
    finally:
        _stop(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _stop(temp: str) -> None:
    """This cluster's processes (their command lines name its temp dir), not every Ray on the
    machine as `ray stop` would: other Ray users may share it."""
    ours = [
        p
        for p in psutil.process_iter(["cmdline"])
        if any(temp in part for part in p.info["cmdline"] or [])
    ]
    for process in ours:
        process.terminate()
    _, alive = psutil.wait_procs(ours, timeout=20)
    for process in alive:
        process.kill()


def _raylet(port: int):
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "raylet" in (process.info["name"] or "") and f"--node_manager_port={port}" in cmdline:
            return process
    raise AssertionError(f"no raylet with node manager port {port}")


def test_a_cluster_ingest_survives_its_worker_node_killed(tmp_path, tiny_dir, cluster):
    from e5v_search.testing import make_sample_corpus

    head, env, join = cluster
    worker_port = join()
    corpus = make_sample_corpus(tmp_path / "corpus")
    notes = tmp_path / "notes.txt"  # chunks enough that the run outlasts its first shard
    notes.write_text("".join(f"note {i}: a shape of colour {i % 7}\n" for i in range(1500)))
    sources = [str(corpus["images"]), str(corpus["captions"]), str(notes)]
    env = dict(env, E5V_MODEL=str(tiny_dir), E5V_DEVICE="cpu")
    command = [sys.executable, "-m", "e5v_search.cli", "ingest", *sources, "--quiet"]
    command += ["--ray", "--address", head, "--index", str(tmp_path / "cluster")]
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    shards, deadline = tmp_path / "cluster" / "ray-shards", time.time() + 240
    while time.time() < deadline and run.poll() is None:
        if shards.is_dir() and any(shards.glob("*.npz")):  # the first chunk is back
            break
        time.sleep(0.01)
    assert run.poll() is None, "the run ended before the worker node could be killed"
    _raylet(worker_port).send_signal(signal.SIGKILL)
    try:
        run.wait(timeout=120)
    except subprocess.TimeoutExpired:  # one node cannot hold both actors: stop, rerun
        run.send_signal(signal.SIGKILL)
        run.wait()
    if run.returncode != 0:
        join()  # the worker node back, then the same command again
        rerun = subprocess.run(command, env=env, capture_output=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
    with Engine.open(tmp_path / "plain", model=str(tiny_dir), device="cpu", create=True) as e:
        e.ingest(sources, progress=False)
    assert_same_catalog(
        catalog_snapshot(tmp_path / "cluster"), catalog_snapshot(tmp_path / "plain")
    )
