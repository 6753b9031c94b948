"""`eval retrieval`, `eval composed`, `eval index`: measured retrieval."""

from __future__ import annotations

import click

from ..config import MAX_K
from . import cli
from .options import (
    echo_notices,
    errors_to_click,
    index_option,
    model_options,
    open_engine,
)


@cli.group(name="eval")
def evaluate():
    """Measure retrieval: the paper's Recall@K table, composed retrieval, index recall."""


def _eval_engine(index, choice):
    from ..evaluation import open_index

    return open_index(index, choice)


@evaluate.command()
@click.option(
    "--images",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="Folder holding the images the captions name.",
)
@click.option(
    "--captions",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help="Karpathy split .json, or .jsonl / .csv: image file name, caption.",
)
@click.option("--split", default="test", show_default=True, help="Karpathy split to use.")
@click.option("--image-field", default="image", show_default=True)
@click.option("--caption-field", default="caption", show_default=True)
@click.option(
    "--paper",
    type=click.Choice(["flickr30k", "coco"]),
    help="Paper numbers to show (default: the Karpathy file's dataset).",
)
@click.option("--index", help="Keep the embeddings in this index directory (default: throwaway).")
@model_options
@errors_to_click
def retrieval(images, captions, split, image_field, caption_field, paper, index, choice):
    """Text->image and image->text Recall@1/5/10 on a captioned image set (Flickr30K, COCO...).

    \b
    Example (Flickr30K 1K test, Karpathy split):
      e5v-search eval retrieval --images flickr30k-images --captions dataset_flickr30k.json
    """
    from ..evaluation import evaluate_retrieval, load_pairs

    pairs = load_pairs(captions, split, image_field, caption_field)
    with _eval_engine(index, choice) as engine:
        report = evaluate_retrieval(engine, pairs, images)
        echo_notices(engine)
    report.paper = paper or report.paper
    click.echo(report.table())


@evaluate.command()
@click.option("--images", required=True, type=click.Path(file_okay=False, exists=True))
@click.option(
    "--triples",
    required=True,
    type=click.Path(dir_okay=False, exists=True),
    help=".jsonl / .csv rows of reference, text, target.",
)
@click.option("--index", help="Keep the embeddings in this index directory (default: throwaway).")
@model_options
@errors_to_click
def composed(images, triples, index, choice):
    """Composed image+text retrieval (CIRR-style) Recall@1/5/10, reference excluded."""
    from ..evaluation import evaluate_composed, load_triples

    with _eval_engine(index, choice) as engine:
        report = evaluate_composed(engine, load_triples(triples), images)
        echo_notices(engine)
    click.echo(report.table())


@evaluate.command(name="index")
@index_option
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Stored vectors used as queries.",
)
@click.option("-k", type=click.IntRange(1, MAX_K), default=10, show_default=True)
@errors_to_click
def index_recall(index, sample, k):
    """Recall@k of the index against exact search, per query modality (no model needed)."""
    with open_engine(index) as engine:
        factory = {m: e["factory"] for m, e in engine.info()["indexes"].items()}
        for pair, value in engine.recall(k=k, sample=sample).items():
            click.echo(f"recall@{k} {pair} ({factory[pair.split('->')[1]]}): {value:.3f}")
