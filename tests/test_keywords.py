"""Keyword and hybrid search: the catalog's FTS5 index kept in step with the items (triggers,
a migration for catalogs made before it, SIGKILL mid-ingest), user text never FTS5 syntax,
BM25 ranking, reciprocal rank fusion, filters inside both sides and the score threshold;
through the store, the engine, the CLI and HTTP."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from e5v_search.cli import cli
from e5v_search.engine import Engine
from e5v_search.errors import InputError
from e5v_search.spec import Spec
from e5v_search.storage.keywords import fuse, match_expression
from e5v_search.storage.search import Hit
from e5v_search.storage.store import Store
from e5v_search.testing import clustered_vectors

DIM = 32
FIXTURES = Path(__file__).parent / "fixtures"
SPEC = Spec(model="m", revision=None, dim=DIM, dtype="float32", prompt_version="e5v-1")
NOTES = [
    "Invoice XK-2291-B from Lindqvist Trading AB",
    "Invoice XK-2291-C from Lindqvist Trading AB",
    "Invoice XK-2290-B from Lindqvist Trading AB",
    "Receipt B 2291 XK for the Malmö café",
    "cats and dogs, not birds",
    "A note about nothing in particular",
]


def _store(path, notes=NOTES, images=()):
    store = Store.open(path, create=True)
    items = [
        {"modality": "text", "source": "/notes.jsonl", "locator": f"line {i}", "text": text}
        for i, text in enumerate(notes, start=1)
    ]
    items[0]["metadata"] = {"client": "Åström", "year": 2023, "tags": ["urgent", "paid"]}
    items += [{"modality": "image", "source": path_, "metadata": meta} for path_, meta in images]
    store.add(items, clustered_vectors(len(items), DIM, seed=1), SPEC)
    store.save()
    return store


def _ids(hits):
    return [h.id for h in hits]


def _in_step(path) -> None:
    """Every item has exactly its document in the FTS table, which passes FTS5's own check."""
    conn = sqlite3.connect(path / "catalog.sqlite")
    conn.execute("INSERT INTO items_fts (items_fts) VALUES ('integrity-check')")
    fts = conn.execute("SELECT rowid FROM items_fts ORDER BY rowid").fetchall()
    items = conn.execute("SELECT id FROM items ORDER BY id").fetchall()
    conn.close()
    assert fts == items


def test_a_code_finds_its_note_first_and_nothing_that_only_looks_like_it(tmp_path):
    store = _store(tmp_path / "ix")
    assert _ids(store.search_keywords("XK-2291-B", k=10)) == [1]  # not -C, -2290-B or "B 2291"
    assert _ids(store.search_keywords("invoice XK-2291-B", k=3))[0] == 1
    assert _ids(store.search_keywords("xk-2291-b", k=10)) == [1]  # case folded


def test_case_and_diacritics_fold_and_metadata_values_are_words(tmp_path):
    store = _store(tmp_path / "ix")
    assert _ids(store.search_keywords("MALMO cafe", k=5)) == [4]
    assert _ids(store.search_keywords("astrom", k=5)) == [1]  # a metadata value
    assert _ids(store.search_keywords("urgent", k=5)) == [1]  # inside a list
    assert _ids(store.search_keywords("2023", k=5)) == [1]  # a number
    assert store.search_keywords("client", k=5) == []  # keys are not words of the item


@pytest.mark.parametrize(
    "text, found",
    [
        ('"', []),
        ('""', []),
        ('"cats', [5]),
        ("cats AND", [5]),  # "and" is a word of note 5, not an operator
        ("NOT birds", [5]),  # not a negation: "not" and "birds" are words to find
        ("dogs*", [5]),
        ("NEAR(cats dogs)", [5]),
        ("text: cats", [5]),
        ("^cats", [5]),
        ("-", []),
        ("( ) OR AND", [5]),
    ],
)
def test_user_text_is_never_fts5_syntax(tmp_path, text, found):
    store = _store(tmp_path / "ix")
    assert _ids(store.search_keywords(text, k=10)) == found


def test_the_match_expression_quotes_every_word():
    assert match_expression('a "b" AND c*') == '"a" OR """b""" OR "AND" OR "c*"'
    assert match_expression("  ") is None


def test_the_keyword_index_follows_every_write(tmp_path):
    path = tmp_path / "ix"
    images = [("/photos/Summer 2023/IMG_0042.jpg", {"camera": "Canon EOS R6"})]
    store = _store(path, images=images)
    image_id = len(NOTES) + 1
    assert _ids(store.search_keywords("summer img_0042", k=5)) == [image_id]  # path words
    assert _ids(store.search_keywords("canon", k=5, modality="image")) == [image_id]
    assert store.search_keywords("notes", k=5) == []  # a text's file is not its words
    store.catalog.touch(image_id, metadata={"camera": "FUJIFILM X-T4"})
    assert store.search_keywords("canon", k=5) == []
    assert _ids(store.search_keywords("fujifilm", k=5)) == [image_id]
    item = {"modality": "text", "source": "/notes.jsonl", "locator": "line 1", "text": "Paid."}
    store.update([1], [item], clustered_vectors(1, DIM, seed=4), SPEC)
    assert 1 not in _ids(store.search_keywords("lindqvist", k=10))
    assert _ids(store.search_keywords("paid", k=10)) == [1]
    store.delete([4])
    assert store.search_keywords("malmo", k=5) == []
    _in_step(path)


def test_filters_apply_inside_the_keyword_and_the_vector_side(tmp_path):
    store = _store(tmp_path / "ix")
    where = "json_extract(metadata, '$.client') = ?"
    assert _ids(store.search_keywords("invoice", 10, "text", where, ["Åström"])) == [1]
    query = store.catalog.vectors([3])[0]
    fused = store.search_hybrid(query, "invoice", 10, "text", "id != ?", [3])
    assert 3 not in _ids(fused) and set(_ids(fused)) <= {1, 2, 4, 5, 6}
    with pytest.raises(InputError, match="bad filter"):
        store.search_keywords("invoice", 5, None, "no_such_column = 1")


def test_fusion_is_reciprocal_rank_with_a_weight():
    vector = [Hit(1, 0.9, "text"), Hit(2, 0.8, "text"), Hit(3, 0.7, "text")]
    words = [Hit(3, 9.0, "text"), Hit(4, 5.0, "text")]
    fused = fuse(vector, words, k=4)  # rrf_k 60, weight 0.5
    scores = {h.id: h.score for h in fused}
    assert scores[3] == pytest.approx(61 * (0.5 / 63 + 0.5 / 61))
    assert scores[1] == pytest.approx(0.5) and scores[4] == pytest.approx(61 * 0.5 / 62)
    assert _ids(fused) == [3, 1, 2, 4]  # 2 and 4 are both second on one side: ties by id
    assert fuse([Hit(1, 1, "text")], [Hit(1, 1, "text")], k=1)[0].score == pytest.approx(1.0)
    assert _ids(fuse(vector, words, k=4, weight=1.0)) == [1, 2, 3]  # the keywords weigh 0
    assert _ids(fuse(vector, words, k=2, weight=0.0)) == [3, 4]
    assert _ids(fuse(vector, words, k=4, rrf_k=1))[0] == 3


def test_hybrid_finds_the_rare_code_the_vectors_miss(tmp_path):
    store = _store(tmp_path / "ix")
    query = store.catalog.vectors([6])[0]  # a query whose vector is note 6's
    assert store.search(query, k=1)[0][0].id == 6
    fused = store.search_hybrid(query, "XK-2291-B", k=2)
    assert sorted(_ids(fused)) == [1, 6]  # each first on one side
    with pytest.raises(InputError, match="weight"):
        store.search_hybrid(query, "x", k=2, weight=1.5)


def _as_the_release_before(path) -> None:
    """The catalog as the release before this index made it: no FTS table, no triggers, no
    record of m006."""
    conn = sqlite3.connect(path / "catalog.sqlite")
    for trigger in ("items_fts_added", "items_fts_removed", "items_fts_changed"):
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("DROP TABLE items_fts")
    conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm006_keywords'")
    conn.commit()
    conn.close()


def test_the_migration_indexes_a_catalog_made_before_it(tmp_path):
    path = tmp_path / "ix"
    _store(path).close()
    before = sqlite3.connect(path / "catalog.sqlite").execute("SELECT * FROM vectors").fetchall()
    _as_the_release_before(path)
    with Store.open(path) as store:  # a reader: migrated under the writer lock, then read
        assert store.catalog.migrations_applied == ["m006_keywords"]
        assert _ids(store.search_keywords("XK-2291-B", k=5)) == [1]
        assert store.search(store.catalog.vectors([2]), k=1)[0][0].id == 2
    after = sqlite3.connect(path / "catalog.sqlite").execute("SELECT * FROM vectors").fetchall()
    assert after == before
    _in_step(path)


def test_a_writer_killed_mid_ingest_leaves_the_keyword_index_in_step(tmp_path, tiny_dir):
    path, notes = tmp_path / "ix", tmp_path / "notes.txt"
    notes.write_text(
        "".join(f"note number {i} code QZ{i:05d}\n" for i in range(4000))
    )  # no run ends between two looks
    env = dict(os.environ, E5V_MODEL=str(tiny_dir), E5V_DEVICE="cpu")
    command = [sys.executable, "-m", "e5v_search.cli", "ingest", str(notes), "--index", str(path)]
    writer = subprocess.Popen([*command, "--quiet"], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and writer.poll() is None:
        time.sleep(0.2)
        try:
            with sqlite3.connect(f"{(path / 'catalog.sqlite').as_uri()}?mode=ro", uri=True) as c:
                if c.execute("SELECT count(*) FROM items").fetchone()[0] >= 128:
                    break
        except sqlite3.Error:
            continue  # not created yet
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    _in_step(path)
    with Store.open(path) as store:
        stored = store.catalog.count()
        assert 128 <= stored < 4000
        last = store.catalog.get([stored])[0]
        code = last["text"].split()[-1]
        assert [r.id for r in store.search_keywords(code, k=3)] == [stored]
    assert subprocess.run([*command, "--quiet"], env=env, timeout=300).returncode == 0
    _in_step(path)
    with Store.open(path) as store:
        assert store.catalog.count() == 4000
        assert [h.id for h in store.search_keywords("QZ03999", k=3)] == [4000]


# -- the engine, the CLI, HTTP ----------------------------------------------------------------


@pytest.fixture
def notes_index(tmp_path, tiny_dir):
    notes = tmp_path / "notes.txt"
    notes.write_text("\n".join(NOTES) + "\n")
    path = tmp_path / "ix"
    with Engine.open(path, model=str(tiny_dir), device="cpu", create=True) as engine:
        engine.ingest([notes], progress=False)
    return path


def test_engine_modes_scores_and_the_threshold(notes_index, tiny_dir):
    # keyword mode needs no model: a model that cannot load is never loaded
    with Engine.open(notes_index, model=str(notes_index / "no-model")) as engine:
        found = engine.search("XK-2291-B", mode="keyword")
        assert [r.text for r in found] == [NOTES[0]] and found.cut == 0
        assert found[0].score > 0  # -bm25: higher is better
        cut = engine.search("invoice lindqvist", mode="keyword", min_score=found[0].score * 10)
        assert list(cut) == [] and cut.cut == 3
    with Engine.open(notes_index, model=str(tiny_dir), device="cpu") as engine:
        hybrid = engine.search("XK-2291-B", mode="hybrid", modality="text", k=3)
        assert hybrid[0].text == NOTES[0] and 0 < hybrid[0].score <= 1
        vector = engine.search("XK-2291-B", modality="text", k=6)
        kept = engine.search("XK-2291-B", modality="text", k=6, min_score=vector[2].score)
        assert [r.id for r in kept] == [r.id for r in vector[:3]] and kept.cut == 3


@pytest.mark.parametrize(
    "options, message",
    [
        ({"mode": "keyword", "like": 1}, "needs a query text"),
        ({"mode": "hybrid", "like": 1}, "needs a query text"),
        ({"mode": "fuzzy", "text": "x"}, "search mode must be one of"),
        ({"mode": "keyword", "text": "x", "add": ["y"]}, "keyword search matches the words"),
        ({"text": "x", "min_score": float("nan")}, "min_score must be a finite number"),
        ({"text": "x", "min_score": "high"}, "min_score must be a finite number"),
        ({"text": "x", "mode": "hybrid", "weight": 2}, "weight must be between 0 and 1"),
    ],
)
def test_engine_refuses_what_a_mode_cannot_do(notes_index, tiny_dir, options, message):
    with Engine.open(notes_index, model=str(tiny_dir), device="cpu") as engine:
        with pytest.raises(InputError, match=message):
            engine.search(**options)


def test_cli_modes_and_min_score(notes_index, tiny_dir):
    env = {"E5V_MODEL": str(tiny_dir), "E5V_DEVICE": "cpu"}
    runner = CliRunner()
    base = ["search", "--index", str(notes_index)]
    result = runner.invoke(cli, [*base, "XK-2291-B", "--mode", "keyword", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert '"Invoice XK-2291-B from Lindqvist Trading AB"' in result.stdout.splitlines()[0]
    result = runner.invoke(
        cli,
        [*base, "lindqvist", "--mode", "hybrid", "--type", "text", "--min-score", "0.6"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # the table's header, then 3 results
    assert len(lines) == 4 and "cut: 3 of the best 10" in result.stderr
    result = runner.invoke(cli, [*base, "--like", "1", "--mode", "keyword"], env=env)
    assert result.exit_code == 2 and "needs a query text" in result.output
    result = runner.invoke(cli, [*base, "x", "--mode", "fuzzy"], env=env)
    assert result.exit_code == 2 and "fuzzy" in result.output


def test_http_mode_min_score_and_cut(notes_index, tiny_dir):
    from fastapi.testclient import TestClient

    from e5v_search.serving.app import create_app

    with Engine.open(notes_index, model=str(tiny_dir), device="cpu") as engine:
        client = TestClient(create_app(engine), base_url="http://127.0.0.1")
        reply = client.get("/api/search", params={"q": "XK-2291-B", "mode": "keyword"})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["cut"] == 0 and body["results"][0]["text"] == NOTES[0]
        params = {"q": "lindqvist", "mode": "hybrid", "type": "text", "min_score": 0.6}
        body = client.get("/api/search", params=params).json()
        assert len(body["results"]) == 3 and body["cut"] == 3
        assert client.get("/api/search", params={"q": "x"}).json()["cut"] == 0
        refused = client.get("/api/search", params={"like": 1, "mode": "hybrid"})
        assert refused.status_code == 400 and "needs a query text" in refused.json()["detail"]
        assert client.get("/api/search", params={"q": "x", "mode": "fuzzy"}).status_code == 422
        bad = client.get("/api/search", params={"q": "x", "min_score": "nan"})
        assert bad.status_code == 422
        image = _png()
        upload = {"file": ("a.png", image, "image/png")}
        alone = client.post("/api/search/image", files=upload, data={"mode": "keyword"})
        assert alone.status_code == 400 and "needs a query text" in alone.json()["detail"]
        data = {"mode": "hybrid", "text": "XK-2291-B", "type": "text", "min_score": "0.1"}
        composed = client.post("/api/search/image", files=upload, data=data)
        assert composed.status_code == 200, composed.text
        assert composed.json()["results"][0]["text"] == NOTES[0]


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), 120, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_an_item_only_the_words_find_still_gets_its_vector_rank(tmp_path):
    """The rare code's note is the farthest of 300 from the query vector, far below the vector
    side's 100 candidates: pooled, it is ranked on both sides and beats the item the vectors
    put first, which holds none of the words (without the pool the two would tie at 0.5)."""
    store = Store.open(tmp_path / "ix", create=True)
    vectors = clustered_vectors(301, DIM, seed=3)
    vectors[300] = -vectors[0]
    items = [
        {"modality": "text", "source": "/n.txt", "locator": str(i), "text": f"filler {i}"}
        for i in range(300)
    ]
    items.append({"modality": "text", "source": "/n.txt", "locator": "code", "text": NOTES[0]})
    store.add(items, vectors, SPEC)
    fused = store.search_hybrid(vectors[0], "XK-2291-B", k=2)
    assert _ids(fused) == [301, 1]
    assert fused[0].score == pytest.approx(0.5 + 0.5 * 61 / (60 + 101))


def test_the_keyword_side_is_the_items_holding_every_word_when_any_does(tmp_path):
    """A name: its given name is in thirty notes, the whole name in one. The notes holding
    only "Åke" are no keyword match while one holds "Åke Lindqvist", so the note the vectors
    put first (holding "Åke") cannot outrank it by fusion; words that no item holds together
    still find the items holding any of them."""
    notes = [f"Invoice from Åke {surname}" for surname in ("Berg", "Holm", "Ek") * 10]
    notes.append("Invoice from Åke Lindqvist")
    store = _store(tmp_path / "ix", notes=notes)
    query = store.catalog.vectors([1])[0]  # the vectors put note 1 (Åke Berg) first
    assert store.search(query, k=1)[0][0].id == 1
    assert _ids(store.search_keywords("Åke Lindqvist", k=5)) == [31]
    assert _ids(store.search_hybrid(query, "ake lindqvist", k=2)) == [31, 1]
    assert len(store.search_keywords("Åke Nilsson", k=50)) == 31  # no note holds both: any
    weighted = store.search_hybrid(query, "Åke Lindqvist", k=1, weight=0.9)
    assert _ids(weighted) == [1]  # a weight toward the vectors still lets them lead


@pytest.mark.parametrize("damage", ["a document dropped", "a document changed", "the index"])
def test_verify_names_a_keyword_index_out_of_step_and_repair_makes_it_anew(tmp_path, damage):
    path = tmp_path / "ix"
    _store(path).close()
    assert Store.open(path).verify()["ok"]
    conn = sqlite3.connect(path / "catalog.sqlite")  # what no write of the engine does
    if damage == "a document dropped":
        conn.execute("DELETE FROM items_fts WHERE rowid = 1")
    elif damage == "a document changed":
        conn.execute("UPDATE items_fts SET doc = 'something else' WHERE rowid = 4")
    else:  # the inverted index's blocks, not the documents
        conn.execute("UPDATE items_fts_data SET block = zeroblob(length(block)) WHERE id > 10")
    conn.commit()
    conn.close()
    want = {
        "a document dropped": "1 items without a keyword document",
        "a document changed": "1 keyword documents that differ from their item's",
        "the index": "the keyword index is damaged",
    }[damage]
    result = CliRunner().invoke(cli, ["verify", "--index", str(path)])
    assert result.exit_code == 1 and f"DAMAGED: catalog.sqlite: {want}" in result.output
    repaired = CliRunner().invoke(cli, ["repair", "--index", str(path)])
    assert repaired.exit_code == 0, repaired.output
    assert "keyword index: made anew from the items (6 documents)" in repaired.output
    _in_step(path)
    with Store.open(path) as store:
        assert store.verify()["ok"]
        assert _ids(store.search_keywords("XK-2291-B", k=3)) == [1]
        assert _ids(store.search_keywords("malmo", k=3)) == [4]
        new = [{"modality": "text", "source": "/n", "text": "a new XK-2291-B"}]
        store.add(new, clustered_vectors(1, DIM, seed=9), SPEC)  # the triggers still work
    _in_step(path)


def test_an_index_made_by_the_release_before_is_migrated(tmp_path):
    """A real index of the release before keyword search (tests/fixtures, its README says how
    it was made): the first open indexes its items, the CLI finds them by words, verify finds
    it whole."""
    path = tmp_path / "old"
    shutil.copytree(FIXTURES / "index-before-keywords", path)
    conn = sqlite3.connect(path / "catalog.sqlite")
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'items_fts'").fetchone()
    conn.close()
    runner = CliRunner()
    for query, source in (("XK-2291-B", "/notes.txt"), ("canon summer", "red-boat.jpg")):
        args = ["search", query, "--mode", "keyword", "--json", "--index", str(path)]
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output.splitlines()[0])["source"].endswith(source)
    _in_step(path)
    assert runner.invoke(cli, ["verify", "--index", str(path)]).exit_code == 0
