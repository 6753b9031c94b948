"""The maintenance and benchmark scripts run end to end on small inputs."""

import subprocess
import sys
from pathlib import Path

from e5v_search.spec import Spec
from e5v_search.storage.store import Store
from e5v_search.testing import clustered_vectors

ROOT = Path(__file__).resolve().parent.parent
SPEC = Spec(
    **{"model": "m", "revision": None, "dim": 32, "dtype": "float32", "prompt_version": "e5v-1"}
)


def _run(*args):
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_rebuild_script_rebuilds_and_reports_recall(tmp_path):
    store = Store.open(tmp_path / "ix", create=True)
    items = [{"modality": "image" if i % 4 else "text", "source": str(i)} for i in range(400)]
    store.add(items, clustered_vectors(400, 32), SPEC)
    store.save()
    store.close()
    result = _run("scripts/rebuild_index.py", str(tmp_path / "ix"), "--type", "HNSW32")
    assert result.returncode == 0, result.stderr
    assert "image: HNSW32, 300 vectors" in result.stdout
    assert "recall@10 text->image" in result.stdout and "recall@10 image->text" in result.stdout
    assert Store.open(tmp_path / "ix").info()["indexes"]["image"]["factory"] == "HNSW32"


def test_rebuild_script_names_what_is_wrong(tmp_path):
    result = _run("scripts/rebuild_index.py", str(tmp_path / "none"))
    assert result.returncode == 1 and "no index at" in result.stderr


def test_build_tiny_model_script_writes_a_checkpoint(tmp_path):
    result = _run("scripts/build_tiny_model.py", str(tmp_path / "m"), "--legacy")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "model.safetensors").exists()


def test_rebuild_script_chooses_a_type_for_a_memory_budget(tmp_path):
    store = Store.open(tmp_path / "ix", create=True)
    items = [{"modality": "image", "source": str(i)} for i in range(3000)]
    store.add(items, clustered_vectors(3000, 32), SPEC)
    store.save()
    store.close()
    result = _run("scripts/rebuild_index.py", str(tmp_path / "ix"), "--max-memory", "200KB")
    assert result.returncode == 0, result.stderr
    assert "image: SQ8," in result.stdout and "Flat needs" in result.stdout
    assert "recall@10 image->image" in result.stdout


def test_bench_hybrid_runs_at_a_tiny_size(tmp_path, tiny_dir):
    result = _run(
        "scripts/bench_hybrid.py",
        "--sizes",
        "300",
        "--queries",
        "5",
        "--notes",
        "6",
        "--no-shapes",
        "--model",
        str(tiny_dir),
    )
    assert result.returncode == 0, result.stderr
    assert "| rare terms: code | 6 |" in result.stdout
    for mode in ("vector", "keyword", "hybrid"):
        assert f"| 300 | {mode} |" in result.stdout
    assert "bytes per item" in result.stdout


def test_bench_switch_runs_the_trainings_asked_for_at_a_small_size():
    args = ["--n", "3000", "--dim", "64", "--factory", "IVF16,PQ8"]
    result = _run("scripts/bench_switch.py", *args, "--variants", "one-thread", "bounded")
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 64 points")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| 64 points a centroid, one thread (before)",
        "| 64 points a centroid, every thread (now)",
    ]
    assert "every thread (now): " in result.stdout and "x the speed of 64 points" in result.stdout
    result = _run("scripts/bench_switch.py", *args, "--variants", "bounded")
    assert result.returncode == 0 and "the speed of" not in result.stdout  # a ratio needs two
