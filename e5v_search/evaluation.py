"""Retrieval evaluation through the normal engine path: the paper's Recall@K table, composed
(CIRR-style) retrieval, and the recall an approximate index keeps against exact search.

Recall@K as CLIP_benchmark and E5-V's retrieval.py define it: text -> image counts a hit when the
caption's image is among the top K images; image -> text counts a hit when ANY of the image's
captions is among the top K texts. Ties keep the index's order (FAISS returns equal scores in id
order for Flat), the same rule `rank()` applies for brute-force scores.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .records import SourceError, read_records

KS = (1, 5, 10)
# E5-V's zero-shot results (paper, table 1): R@1 and R@5, percent.
PAPER = {
    "flickr30k": {"text->image": {1: 79.5}, "image->text": {1: 88.2}},
    "coco": {"text->image": {1: 52.0, 5: 76.5}, "image->text": {1: 62.0, 5: 83.6}},
}


@dataclass
class Pairs:
    """A captioned image set: image file names (in a folder) and, per caption, its image."""

    images: list[str]
    captions: list[str]
    caption_image: list[int]  # index into `images` for each caption
    dataset: str | None = None


@dataclass
class Triples:
    references: list[str]
    texts: list[str]
    targets: list[str]


@dataclass
class Report:
    recalls: dict[str, dict[int, float]] = field(default_factory=dict)  # direction -> k -> %
    counts: dict[str, int] = field(default_factory=dict)
    paper: str | None = None

    def table(self) -> str:
        paper = PAPER.get(self.paper or "", {})
        head = "| direction | queries | " + " | ".join(f"R@{k}" for k in KS)
        head += " | paper R@1 | paper R@5 |" if paper else " |"
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        for direction, values in self.recalls.items():
            row = f"| {direction} | {self.counts[direction]} | "
            row += " | ".join(f"{values[k]:.1f}" for k in KS)
            if paper:
                ref = paper.get(direction, {})
                row += " | " + " | ".join(f"{ref[k]:.1f}" if k in ref else "" for k in (1, 5))
            lines.append(row + " |")
        return "\n".join(lines)


def recall_at_k(ranked: list[list[int]], relevant: list[set[int]], ks=KS) -> dict[int, float]:
    """Percent of queries with at least one relevant id among their first k ranked ids."""
    if not ranked:
        return {k: 0.0 for k in ks}
    return {
        k: 100.0
        * float(np.mean([bool(set(r[:k]) & rel) for r, rel in zip(ranked, relevant, strict=True)]))
        for k in ks
    }


def load_pairs(path: str | Path, split: str = "test", image_field="image", caption_field="caption"):
    """Captions from Karpathy's split file (dataset_flickr30k.json, dataset_coco.json: the split
    the paper's numbers use), or a .jsonl / .csv with an image file name and a caption per row
    (several rows per image)."""
    path = Path(path)
    if path.suffix == ".json":
        return _karpathy(path, split)
    rows = _rows(path)
    images: dict[str, int] = {}
    captions, owners = [], []
    for number, row in enumerate(rows, start=1):
        name, caption = row.get(image_field), row.get(caption_field)
        if not name or not isinstance(caption, str) or not caption.strip():
            raise InputError(f"{path} row {number}: needs {image_field!r} and {caption_field!r}")
        owners.append(images.setdefault(name, len(images)))
        captions.append(caption.strip())
    return Pairs(list(images), captions, owners)


def load_triples(path: str | Path) -> Triples:
    """(reference image, modification text, target image) rows: .jsonl or .csv with the fields
    reference, text, target (CIRR's own files converted to these three fields)."""
    rows = _rows(Path(path))
    missing = [
        i
        for i, r in enumerate(rows, 1)
        if not all(r.get(f) for f in ("reference", "text", "target"))
    ]
    if missing:
        raise InputError(f"{path} row {missing[0]}: needs reference, text and target")
    return Triples(
        [r["reference"] for r in rows], [r["text"] for r in rows], [r["target"] for r in rows]
    )


def _rows(path: Path) -> list[dict]:
    """Every record of a .jsonl / .csv file; the first bad one stops the evaluation."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix.lower() not in (".jsonl", ".csv"):
        raise InputError(f"{path}: use a .jsonl, .csv or Karpathy .json file")
    rows = []
    for row in read_records(str(path)):
        if isinstance(row, SourceError):
            raise InputError(str(row))
        rows.append(row[1])
    return rows


def _karpathy(path: Path, split: str) -> Pairs:
    data = json.loads(path.read_text())
    images, captions, owners = [], [], []
    for entry in data["images"]:
        if entry.get("split") != split:
            continue
        name = (
            f"{entry['filepath']}/{entry['filename']}"
            if entry.get("filepath")
            else entry["filename"]
        )
        for sentence in entry["sentences"][:5]:
            captions.append(sentence["raw"].strip())
            owners.append(len(images))
        images.append(name)
    if not images:
        raise InputError(f"{path}: no images in split {split!r}")
    return Pairs(images, captions, owners, dataset=data.get("dataset"))


# -- runs ------------------------------------------------------------------------------------


def open_index(index, choice):
    """The engine for an evaluation with the model `choice` (a ModelChoice): an index (a name
    for indexes/NAME or a directory, as every command takes it; kept, so reruns skip embedding)
    or a throwaway one in a temporary directory."""
    from .config import index_path
    from .engine import Engine

    path = index_path(index) if index else Path(tempfile.mkdtemp(prefix="e5v-eval-"))
    return Engine.open(path, create=True, choice=choice)


def evaluate_retrieval(engine, pairs: Pairs, images_dir: str | Path, progress=None) -> Report:
    """Ingest the images and captions through the normal path, then text->image and
    image->text Recall@1/5/10 over exactly this set."""
    images_dir = Path(images_dir)
    image_paths = [str((images_dir / name).resolve()) for name in pairs.images]
    missing = [p for p in image_paths if not Path(p).is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} images of the captions file are not in {images_dir}: {missing[0]}"
        )
    captions_file = engine.path / "eval-captions.jsonl"
    captions_file.write_text(
        "".join(
            json.dumps({"text": c, "n": i, "image": pairs.images[o]}) + "\n"
            for i, (c, o) in enumerate(zip(pairs.captions, pairs.caption_image, strict=True))
        )
    )
    report = engine.ingest(image_paths + [str(captions_file)], id_field="n", progress=progress)
    if report.failed:
        raise InputError(f"{report.failed} inputs could not be ingested: {report.errors[0]}")
    image_ids = engine.ids_of([(p, "") for p in image_paths])
    source = str(captions_file.resolve())
    caption_ids = engine.ids_of([(source, f"id={i}") for i in range(len(pairs.captions))])
    caption_image_ids = [image_ids[o] for o in pairs.caption_image]
    k = max(KS)
    # `among` restricts each search to this dataset's items, in an index that holds others too.
    t2i = engine.search_vectors(engine.vectors(caption_ids), k, "image", among=image_ids)
    i2t = engine.search_vectors(engine.vectors(image_ids), k, "text", among=caption_ids)
    captions_of: dict[int, set[int]] = {i: set() for i in image_ids}
    for caption_id, image_id in zip(caption_ids, caption_image_ids, strict=True):
        captions_of[image_id].add(caption_id)
    out = Report(paper=pairs.dataset)
    out.recalls["text->image"] = recall_at_k(
        [[h.id for h in r] for r in t2i], [{i} for i in caption_image_ids]
    )
    out.recalls["image->text"] = recall_at_k(
        [[h.id for h in r] for r in i2t], [captions_of[i] for i in image_ids]
    )
    out.counts = {"text->image": len(caption_ids), "image->text": len(image_ids)}
    return out


def evaluate_composed(engine, triples: Triples, images_dir: str | Path, progress=None) -> Report:
    """CIRR as E5-V's retrieval.py runs it: the gallery embedded with E5-V's CIRR gallery prompt
    (not the retrieval prompt, so a gallery index of its own, `cirr-gallery/` inside the index
    directory, which reruns reuse), each (reference image, text) query with the composed prompt,
    exact inner-product search, the reference image excluded from its own results."""
    images_dir = Path(images_dir)
    names = sorted(set(triples.references) | set(triples.targets))
    paths = [str((images_dir / n).resolve()) for n in names]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} images of the triples file are not in {images_dir}: {missing[0]}"
        )
    with _cirr_gallery(engine, paths, progress) as gallery:
        ids = dict(zip(names, gallery.ids_of([(p, "") for p in paths]), strict=True))
        queries = engine.embed_composed(
            [images_dir / r for r in triples.references], triples.texts, progress=progress
        )
        k = max(KS)
        hits = gallery.search_vectors(queries, k + 1, "image")
    ranked = [
        [h.id for h in row if h.id != ids[ref]][:k]
        for row, ref in zip(hits, triples.references, strict=True)
    ]
    out = Report()
    out.recalls["composed->image"] = recall_at_k(ranked, [{ids[t]} for t in triples.targets])
    out.counts = {"composed->image": len(triples.texts)}
    return out


def _cirr_gallery(engine, paths: list[str], progress):
    """The gallery index (an engine sharing the encoder), every path in it embedded with the
    CIRR gallery prompt."""
    from .engine import Engine
    from .model.prompts import CIRR_GALLERY_PROMPT, CIRR_GALLERY_VERSION

    gallery = Engine.open(engine.path / "cirr-gallery", create=True, encoder=engine.encoder)
    new = [
        p
        for p, known in zip(paths, gallery.ids_of([(p, "") for p in paths]), strict=True)
        if known is None
    ]
    if new:
        vectors = engine.embed_images(
            new, prompt=CIRR_GALLERY_PROMPT, progress=progress, workers=None
        )
        records = [{"modality": "image", "source": p} for p in new]
        gallery.add_embedded(records, vectors, CIRR_GALLERY_VERSION)
    return gallery
