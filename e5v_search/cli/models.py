"""`similarity` and `check`: the encoder alone, no index."""

from __future__ import annotations

import json

import click

from . import cli
from .options import (
    errors_to_click,
    model_options,
)


@cli.command()
@click.option("--text", "-t", "texts", multiple=True, help="A sentence (repeatable).")
@click.option(
    "--image",
    "-i",
    "images",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="An image file (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the matrix as JSON.")
@model_options
@errors_to_click
def similarity(texts, images, as_json, choice):
    """Cosine similarity of every TEXT with every IMAGE, as the E5-V model card prints it.

    \b
    Example:
      e5v-search similarity -t "A dog sitting in the grass." -t "A cat in the snow." \\
          -i dog.jpg -i cat.jpg
    """
    if not texts or not images:
        raise click.UsageError("give at least one --text and one --image")
    encoder = choice.load()
    matrix = encoder.embed_texts(list(texts)) @ encoder.embed_images(list(images)).T
    if as_json:
        rows = {"texts": list(texts), "images": list(images), "similarity": matrix.tolist()}
        click.echo(json.dumps(rows))
        return
    names = [click.format_filename(path, shorten=True) for path in images]
    width = max(8, *(len(n) for n in names))
    click.echo(" " * 40 + "".join(f"{n[:width]:>{width + 2}}" for n in names))
    for text, row in zip(texts, matrix, strict=True):
        label = text if len(text) <= 38 else text[:35] + "..."
        click.echo(f"{label:<40}" + "".join(f"{v:>{width + 2}.4f}" for v in row))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@model_options
@errors_to_click
def check(as_json, choice):
    """Check that this machine and these weights give E5-V's vectors. Run it first.

    The model card's recipe and the engine embed the same texts and images (odd and even sizes,
    EXIF-rotated JPEGs) with one model in the chosen device and dtype; per item it prints the
    token counts, the cosine and max |diff| between the two, and whether both are finite, then
    items/s and peak memory per path. Exit status 1 when any vector is non-finite, token counts
    differ, or an item is off (max |diff| > 1e-5 in float32, cosine < 0.999 in float16/bfloat16).

    \b
    Example:
      e5v-search check --model royokong/e5-v --device cuda --dtype bfloat16
    """
    from dataclasses import asdict

    from ..model.check import run_check

    report = run_check(choice.for_index(None))
    if as_json:
        click.echo(json.dumps({**asdict(report), "rule": report.rule, "ok": not report.failures}))
    else:
        click.echo("\n".join(report.lines()))
    if report.failures:
        raise click.ClickException(
            f"{len(report.failures)} of {len(report.items)} items are not E5-V's vectors here "
            f"(first: {report.failures[0].name}); see the table above"
        )
    if not as_json:
        click.echo(f"ok: all {len(report.items)} items agree with the model card's recipe")
