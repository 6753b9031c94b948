"""The `e5v-search` command: parse flags, call the library, print. No logic lives here.

Heavy imports (torch, transformers) happen inside commands, so `e5v-search --help` stays fast.
"""

from __future__ import annotations

import functools
import json

import click

from .config import DEFAULT_MODEL
from .errors import E5VSearchError, InputError


def model_options(command):
    """Options every command that loads the model shares, each also read from the environment."""
    options = [
        click.option(
            "--model",
            envvar="E5V_MODEL",
            default=DEFAULT_MODEL,
            show_default=True,
            help="Hub id or local directory of the E5-V checkpoint [env: E5V_MODEL].",
        ),
        click.option("--revision", envvar="E5V_REVISION", help="Hub revision (commit or tag)."),
        click.option(
            "--device",
            envvar="E5V_DEVICE",
            default="auto",
            show_default=True,
            help="cpu, cuda, cuda:N or auto (a GPU when there is one) [env: E5V_DEVICE].",
        ),
        click.option(
            "--dtype",
            envvar="E5V_DTYPE",
            type=click.Choice(["float16", "bfloat16", "float32"]),
            help="Default: float16 on a GPU, float32 on a CPU [env: E5V_DTYPE].",
        ),
        click.option(
            "--batch-size",
            envvar="E5V_BATCH_SIZE",
            type=click.IntRange(min=1),
            help="Most items in one forward pass (default: only the token budget limits).",
        ),
        click.option(
            "--max-batch-tokens",
            envvar="E5V_MAX_BATCH_TOKENS",
            type=click.IntRange(min=1),
            default=16384,
            show_default=True,
            help="Token budget of one forward pass (padded tokens; an image is 1,176-2,928).",
        ),
    ]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


def _load_encoder(model, revision, device, dtype, batch_size, max_batch_tokens):
    from .encoder import E5VEncoder

    return E5VEncoder.from_pretrained(
        model,
        revision=revision,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
    )


def _errors_to_click(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except InputError as error:
            raise click.UsageError(str(error)) from error
        except E5VSearchError as error:
            raise click.ClickException(str(error)) from error

    return wrapper


@click.group()
@click.version_option(package_name="e5v-search")
def cli():
    """Multimodal search over images and texts with E5-V."""


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
@_errors_to_click
def similarity(texts, images, as_json, **model_args):
    """Cosine similarity of every TEXT with every IMAGE, as the E5-V model card prints it.

    \b
    Example:
      e5v-search similarity -t "A dog sitting in the grass." -t "A cat in the snow." \\
          -i dog.jpg -i cat.jpg
    """
    if not texts or not images:
        raise click.UsageError("give at least one --text and one --image")
    encoder = _load_encoder(**model_args)
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
