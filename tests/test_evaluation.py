"""Retrieval metrics against hand-computed values, and the eval commands end to end."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from e5v_search import evaluation as ev
from e5v_search.cli import cli
from e5v_search.errors import InputError
from e5v_search.testing import make_sample_corpus


def _rank(scores, ids, k):
    from e5v_search.storage.faiss_ops import top_k

    return top_k(scores, ids, k)[1].tolist()


def test_recall_on_a_known_ranking_with_the_any_caption_rule_and_ties():
    # 3 images (ids 10, 11, 12) with 2 captions each (ids 0..5: 0,1 -> 10; 2,3 -> 11; 4,5 -> 12).
    image_ids, caption_ids = np.array([10, 11, 12]), np.array([0, 1, 2, 3, 4, 5])
    owner = {0: 10, 1: 10, 2: 11, 3: 11, 4: 12, 5: 12}
    t2i_scores = np.array(
        [
            [0.9, 0.1, 0.0],  # caption 0: its image first            -> hit@1
            [0.2, 0.5, 0.1],  # caption 1: its image second           -> hit@2
            [0.3, 0.3, 0.3],  # caption 2: a three-way tie, id order  -> image 10, 11, 12: hit@2
            [0.0, 0.1, 0.8],  # caption 3: its image second           -> hit@2
            [0.1, 0.2, 0.3],  # caption 4: first                      -> hit@1
            [0.5, 0.4, 0.2],  # caption 5: last                       -> hit@3
        ]
    )
    ranked = _rank(t2i_scores, image_ids, 3)
    assert ranked[2] == [10, 11, 12]
    relevant = [{owner[c]} for c in caption_ids]
    assert ev.recall_at_k(ranked, relevant, ks=(1, 2, 3)) == {
        1: pytest.approx(100 * 2 / 6),
        2: pytest.approx(100 * 5 / 6),
        3: 100.0,
    }
    # image -> text: a hit when ANY of its captions is in the top k.
    i2t_scores = np.array(
        [
            [
                0.1,
                0.2,
                0.9,
                0.0,
                0.0,
                0.0,
            ],  # image 10: caption 2 (not its own) first, caption 1 second
            [0.0, 0.0, 0.1, 0.9, 0.0, 0.0],  # image 11: its caption 3 first
            [
                0.5,
                0.5,
                0.5,
                0.5,
                0.5,
                0.5,
            ],  # image 12: all tied, id order: its captions 5th and 6th
        ]
    )
    ranked = _rank(i2t_scores, caption_ids, 6)
    relevant = [{0, 1}, {2, 3}, {4, 5}]
    assert ev.recall_at_k(ranked, relevant, ks=(1, 2, 5)) == {
        1: pytest.approx(100 / 3),
        2: pytest.approx(200 / 3),
        5: 100.0,
    }


def test_karpathy_and_row_formats_load(tmp_path):
    karpathy = {
        "dataset": "flickr30k",
        "images": [
            {
                "filename": "a.jpg",
                "split": "test",
                "sentences": [{"raw": f"a {i}"} for i in range(6)],
            },
            {"filename": "b.jpg", "split": "train", "sentences": [{"raw": "b"}]},
        ],
    }
    (tmp_path / "k.json").write_text(json.dumps(karpathy))
    pairs = ev.load_pairs(tmp_path / "k.json")
    assert pairs.images == ["a.jpg"] and len(pairs.captions) == 5 and pairs.dataset == "flickr30k"
    (tmp_path / "c.csv").write_text("image,caption\nx.png,one\ny.png,two\nx.png,three\n")
    pairs = ev.load_pairs(tmp_path / "c.csv")
    assert pairs.images == ["x.png", "y.png"] and pairs.caption_image == [0, 1, 0]
    (tmp_path / "bad.jsonl").write_text('{"image": "x.png"}\n')
    with pytest.raises(InputError, match="row 1: needs 'image' and 'caption'"):
        ev.load_pairs(tmp_path / "bad.jsonl")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    corpus = make_sample_corpus(root)
    rows = []
    for line in corpus["captions"].read_text().splitlines():
        record = json.loads(line)
        name = record["image"].removeprefix("images/")
        rows.append({"image": name, "caption": record["text"]})
        rows.append(
            {"image": name, "caption": f"A picture of a {record['color']} {record['shape']}."}
        )
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    triples = [
        {
            "reference": "grey/red-circle-grey.png",
            "text": "make it blue",
            "target": "grey/blue-circle-grey.png",
        },
        {
            "reference": "pale/red-square-pale.png",
            "text": "make it a circle",
            "target": "pale/red-circle-pale.png",
        },
    ]
    (root / "triples.jsonl").write_text("".join(json.dumps(t) + "\n" for t in triples))
    return root


def test_retrieval_command_end_to_end_matches_brute_force(tmp_path, tiny_dir, dataset):
    env = {"E5V_MODEL": str(tiny_dir), "E5V_DEVICE": "cpu"}
    index = tmp_path / "ix"
    args = [
        "eval",
        "retrieval",
        "--images",
        str(dataset / "images"),
        "--paper",
        "flickr30k",
        "--captions",
        str(dataset / "captions.jsonl"),
        "--index",
        str(index),
    ]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| direction | queries | R@1 | R@5 | R@10 | paper R@1 |")
    t2i = lines[2].split("|")
    assert t2i[1].strip() == "text->image" and t2i[2].strip() == "96" and t2i[6].strip() == "79.5"
    assert lines[3].split("|")[2].strip() == "48"

    # The same numbers from the stored vectors by brute force.
    from e5v_search.storage.store import Store

    store = Store.open(index)
    images, texts = store.catalog.ids("image"), store.catalog.ids("text")
    image_of = {r["source"]: r["id"] for r in store.catalog.get(images)}
    owners = [
        image_of[str(dataset / "images" / r["metadata"]["image"])] for r in store.catalog.get(texts)
    ]
    ranked = _rank(store.catalog.vectors(texts) @ store.catalog.vectors(images).T, images, 10)
    expected = ev.recall_at_k(ranked, [{o} for o in owners])
    shown = [float(v) for v in t2i[3:6]]
    assert shown == pytest.approx([round(expected[k], 1) for k in (1, 5, 10)], abs=0.051)


def test_composed_and_index_commands(tmp_path, tiny_dir, dataset):
    env = {"E5V_MODEL": str(tiny_dir), "E5V_DEVICE": "cpu"}
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            "composed",
            "--images",
            str(dataset / "images"),
            "--triples",
            str(dataset / "triples.jsonl"),
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    row = result.stdout.splitlines()[2].split("|")
    assert row[1].strip() == "composed->image" and row[2].strip() == "2"
    assert all(0 <= float(v) <= 100 for v in row[3:6])

    index = tmp_path / "ix"
    CliRunner().invoke(cli, ["ingest", str(dataset / "images"), "--index", str(index)], env=env)
    result = CliRunner().invoke(cli, ["eval", "index", "--index", str(index), "--sample", "20"])
    assert result.exit_code == 0, result.output
    assert "recall@10 image->image (Flat): 1.000" in result.stdout


def test_composed_embeds_the_gallery_with_the_cirr_prompt_and_matches_brute_force(
    tmp_path, tiny_dir, dataset
):
    from e5v_search.engine import Engine
    from e5v_search.model.prompts import CIRR_GALLERY_PROMPT

    images = dataset / "images"
    names = sorted(str(p.relative_to(images)) for p in images.rglob("*.png"))[:16]
    rows = [
        {"reference": names[i], "text": f"change number {i}", "target": names[(i * 5 + 3) % 16]}
        for i in range(16)
    ]
    triples = ev.Triples(*([r[f] for r in rows] for f in ("reference", "text", "target")))
    with Engine.open(tmp_path / "ix", model=str(tiny_dir), device="cpu", create=True) as engine:
        report = ev.evaluate_composed(engine, triples, images)
        encoder = engine.encoder
        gallery_names = sorted(set(triples.references) | set(triples.targets))
        paths = [images / n for n in gallery_names]
        gallery = encoder.embed_images(paths, prompt=CIRR_GALLERY_PROMPT)
        retrieval = encoder.embed_images(paths)
        queries = encoder.embed_composed([images / r for r in triples.references], triples.texts)
        assert engine.info()["counts"]["image"] == 0  # the engine's own index is not touched
        again = ev.evaluate_composed(engine, triples, images)  # the gallery index is reused
    assert np.abs(np.sum(gallery * retrieval, axis=1)).max() < 0.9999  # another prompt
    from e5v_search.storage.store import Store

    with Store.open(tmp_path / "ix" / "cirr-gallery") as store:
        stored = store.catalog.vectors(store.catalog.ids("image"))
        assert store.catalog.spec()["prompt_version"].endswith("/cirr-gallery")
    assert np.abs(stored - gallery).max() <= 1e-5  # in name order, embedded with CIRR's prompt
    scores = queries @ gallery.T
    for row, reference in enumerate(triples.references):
        scores[row, gallery_names.index(reference)] = -np.inf  # the reference is excluded
    ranked = _rank(scores, np.arange(len(paths)), 10)
    expected = ev.recall_at_k(ranked, [{gallery_names.index(t)} for t in triples.targets])
    assert report.recalls["composed->image"] == pytest.approx(expected)
    assert again.recalls == report.recalls


def test_eval_index_name_is_the_same_index_every_command_opens(
    tmp_path, tiny_dir, dataset, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("E5V_INDEX_HOME", str(tmp_path / "home"))
    env = {"E5V_MODEL": str(tiny_dir), "E5V_DEVICE": "cpu"}
    args = [
        "eval",
        "composed",
        "--images",
        str(dataset / "images"),
        "--triples",
        str(dataset / "triples.jsonl"),
        "--index",
        "photos",
    ]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    # a bare name is a named index, in the index home
    assert (tmp_path / "home" / "photos" / "cirr-gallery" / "catalog.sqlite").is_file()
    assert not (tmp_path / "photos").exists()
    args = [
        "eval",
        "retrieval",
        "--images",
        str(dataset / "images"),
        "--captions",
        str(dataset / "captions.jsonl"),
        "--index",
        "photos",
    ]
    assert CliRunner().invoke(cli, args, env=env).exit_code == 0
    info = CliRunner().invoke(cli, ["info", "--index", "photos", "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["counts"] == {"image": 48, "text": 96}
