"""Retrieval quality with a semantic oracle: the tiny model trained on synthetic shapes
(training.py) must let captions find their pictures and pictures their captions, through every
way an image arrives (files, odd sizes, EXIF-rotated copies, an upload). Chance is 1 in 48. The
bounds sit well below what was measured (in each comment) and far above chance, so a defect
that scrambles prompts, pixels, token counts or ids on either side fails them."""

import io
import json
import random

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from e5v_search.cli import cli
from e5v_search.engine import Engine
from e5v_search.serving.app import create_app
from e5v_search.testing import draw_shape, make_sample_corpus, rare_term_notes
from e5v_search.training import caption


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    paths = make_sample_corpus(root)
    paths["records"] = [json.loads(line) for line in paths["captions"].read_text().splitlines()]
    paths["root"] = root
    return paths


@pytest.fixture(scope="module")
def engine(tmp_path_factory, trained_dir, corpus):
    path = tmp_path_factory.mktemp("quality-ix")
    with Engine.open(path, model=str(trained_dir), device="cpu", create=True) as engine:
        engine.ingest([corpus["images"], corpus["captions"]], progress=False)
        yield engine


def _caption_top1(engine, records, image_of) -> float:
    """Share of captions whose top image is theirs (image_of maps a record to a source path)."""
    hits = [
        engine.search(r["text"], k=1, modality="image")[0].source == str(image_of(r))
        for r in records
    ]
    return float(np.mean(hits))


def test_eval_retrieval_recall_is_far_above_chance(trained_dir, corpus):
    args = [
        "eval",
        "retrieval",
        "--images",
        str(corpus["root"]),
        "--captions",
        str(corpus["captions"]),
        "--caption-field",
        "text",
    ]
    env = {"E5V_MODEL": str(trained_dir), "E5V_DEVICE": "cpu"}
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    rows = {line.split("|")[1].strip(): line.split("|") for line in result.stdout.splitlines()[2:]}
    # Measured with the cached model: text->image R@1 81.2; image->text 77.1 (chance: 2.1).
    assert float(rows["text->image"][3]) >= 75 and float(rows["text->image"][4]) >= 95
    assert float(rows["image->text"][3]) >= 75


def test_captions_find_their_images_and_images_their_captions(engine, corpus):
    root = corpus["root"]
    t2i = _caption_top1(engine, corpus["records"], lambda r: root / r["image"])
    i2t = np.mean(
        [
            engine.search(image=root / r["image"], k=1, modality="text")[0].text == r["text"]
            for r in corpus["records"]
        ]
    )
    assert t2i >= 0.75 and i2t >= 0.75, (t2i, i2t)  # measured 44 and 44 of 48


def test_hybrid_finds_at_least_what_the_vectors_find(engine, corpus):
    """Fusion with the keyword side (here the images' file and folder names) must not lose
    what the vectors already find."""
    root, records = corpus["root"], corpus["records"]
    vector = _caption_top1(engine, records, lambda r: root / r["image"])
    hybrid = np.mean(
        [
            engine.search(r["text"], k=1, modality="image", mode="hybrid")[0].source
            == str(root / r["image"])
            for r in records
        ]
    )
    assert hybrid >= vector, (vector, hybrid)


def test_held_out_combinations_are_found_too(engine, corpus):
    from e5v_search.training import HELD_OUT

    root, records = corpus["root"], corpus["records"]
    held = [r for r in records if (r["color"], r["shape"], r["image"].split("/")[1]) in HELD_OUT]
    assert len(held) == len(HELD_OUT)
    assert _caption_top1(engine, held, lambda r: root / r["image"]) >= 4 / 6  # measured 5 / 6


def test_odd_sizes_and_exif_rotated_copies_are_found_by_their_captions(
    tmp_path, trained_dir, corpus
):
    root, records = corpus["root"], corpus["records"]
    odd, rotated, sideways = tmp_path / "odd", tmp_path / "rotated", tmp_path / "sideways"
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to show": the pixels are stored turned back
    for folder in (odd, rotated, sideways):
        folder.mkdir()
    for r in records:
        name = r["image"].replace("/", "-").replace(".png", "")
        upright = Image.open(root / r["image"])
        upright.resize((333, 251), Image.Resampling.BICUBIC).save(odd / f"{name}.png")
        turned = upright.transpose(Image.Transpose.ROTATE_90)
        turned.save(rotated / f"{name}.jpg", exif=exif, quality=95)
        turned.save(sideways / f"{name}.png")  # the same pixels without the tag: a control
    scores = {}
    with Engine.open(tmp_path / "ix", model=str(trained_dir), device="cpu", create=True) as e:
        e.ingest([odd, rotated, sideways], progress=False)
        for folder, suffix in ((odd, ".png"), (rotated, ".jpg"), (sideways, ".png")):
            hits = []
            for r in records:  # each caption searches one folder's 48 images
                top = e.search(
                    r["text"], k=1, modality="image", where="source LIKE ?", params=[f"{folder}/%"]
                )
                want = folder / (r["image"].replace("/", "-").replace(".png", suffix))
                hits.append(top[0].source == str(want))
            scores[folder.name] = float(np.mean(hits))
    # Measured: odd 0.92, rotated (EXIF applied) 0.92, sideways (no tag, shapes turned) 0.33.
    assert scores["odd"] >= 0.7 and scores["rotated"] >= 0.7, scores
    assert scores["rotated"] > scores["sideways"] + 0.25, scores  # the EXIF rule finds them


def test_an_uploaded_new_drawing_finds_its_caption(engine):
    rng = random.Random(7)
    combos = [
        ("red", "circle", "grey"),
        ("blue", "square", "pale"),
        ("yellow", "stripe", "grey"),
        ("green", "triangle", "pale"),
        ("black", "circle", "pale"),
        ("white", "square", "grey"),
    ]
    app = create_app(engine)
    hits = 0
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for combo in combos:
            buffer = io.BytesIO()
            draw_shape(*combo, rng=rng).save(buffer, format="PNG")  # moved and resized: new
            body = client.post(
                "/api/search/image",
                files={"file": ("q.png", buffer.getvalue())},
                data={"type": "text", "k": "1"},
            )
            assert body.status_code == 200, body.text
            hits += body.json()["results"][0]["text"] == caption(*combo)
    app.state.worker.close()
    assert hits >= 4, hits  # measured 6 of 6


def test_rare_terms_are_found_first_by_keyword_and_hybrid(tmp_path, trained_dir):
    """Invoices holding a code, a name and an order number each (bench_hybrid.py's corpus):
    searched by one of them alone, the note holding it comes first by keyword and by hybrid
    search, which the vectors of a model that knows only shapes cannot do."""
    notes, queries = rare_term_notes(60)
    (tmp_path / "notes.txt").write_text("\n".join(notes) + "\n")
    with Engine.open(tmp_path / "ix", model=str(trained_dir), device="cpu", create=True) as e:
        e.ingest([tmp_path / "notes.txt"], progress=False)
        for mode in ("keyword", "hybrid"):
            missed = [
                (kind, text)
                for kind, text, i in queries
                if e.search(text, k=1, modality="text", mode=mode)[0].text != notes[i]
            ]
            assert not missed, (mode, missed)
        vector = [
            e.search(text, k=1, modality="text")[0].text == notes[i] for _, text, i in queries
        ]
        assert np.mean(vector) < 0.5  # the shapes model knows no invoices: words do the work
