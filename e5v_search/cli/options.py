"""What the commands share: the model options (each also from the environment) given to a
command as one ModelChoice, --index, --lock-timeout, the engine opened, library errors turned
into click's messages and exit codes (1, or 2 for bad input), and how a result is described."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from ..config import DEFAULT_MODEL, LOCK_TIMEOUT, MAX_BATCH_TOKENS, index_path
from ..errors import E5VSearchError, InputError


def model_options(command):
    """Options every command that loads the model shares, each also read from the environment;
    the command gets them as one ModelChoice, its `choice` argument."""

    @functools.wraps(command)
    def with_choice(*args, **kwargs):
        from dataclasses import fields

        from ..model.loading import ModelChoice

        choice = ModelChoice(**{f.name: kwargs.pop(f.name) for f in fields(ModelChoice)})
        return command(*args, choice=choice, **kwargs)

    options = [
        click.option(
            "--model",
            envvar="E5V_MODEL",
            help="Hub id or local directory of the E5-V checkpoint [the one the index records "
            f"(its revision and precision too), else {DEFAULT_MODEL}; env: E5V_MODEL].",
        ),
        click.option(
            "--revision", envvar="E5V_REVISION", help="Hub revision (commit or tag) [the index's]."
        ),
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
            help="Default: the index's; for a new index float16 on a GPU, float32 on a CPU "
            "[env: E5V_DTYPE].",
        ),
        click.option(
            "--quantize",
            envvar="E5V_QUANTIZE",
            type=click.Choice(["int8", "nf4"]),
            help="Load the language model's linear layers in 8 bits (int8) or 4 (nf4) with "
            "bitsandbytes, GPU or CPU: about 1/2 or 1/3 of float16's memory [env: E5V_QUANTIZE].",
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
            default=MAX_BATCH_TOKENS,
            show_default=True,
            help="Token budget of one forward pass (padded tokens; an image is 1,176-2,928).",
        ),
    ]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), with_choice)


def index_option(command):
    return click.option(
        "--index",
        envvar="E5V_SEARCH_INDEX",
        default="default",
        show_default=True,
        help="A name, kept in the index home ($E5V_INDEX_HOME, else e5v-search/indexes in the "
        "user data folder), or a directory path such as ./ix [env: E5V_SEARCH_INDEX].",
    )(command)


def lock_option(command):
    """How long a writing command waits for another process's write to the same index."""

    def remember(ctx, param, value):
        ctx.meta["lock_timeout"] = value

    return click.option(
        "--lock-timeout",
        envvar="E5V_LOCK_TIMEOUT",
        type=click.FloatRange(min=0),
        default=LOCK_TIMEOUT,
        show_default=True,
        expose_value=False,
        callback=remember,
        help="Seconds to wait while another process writes this index [env: E5V_LOCK_TIMEOUT].",
    )(command)


def open_engine(index, create=False, choice=None, encoder=None):
    """The engine of an index; `encoder`: a model already loaded (serve's second index)."""
    from ..engine import Engine

    meta = click.get_current_context().meta
    path = index_path(index, notify=lambda line: click.echo(f"note: {line}", err=True))
    return Engine.open(
        path,
        create=create,
        lock_timeout=meta.get("lock_timeout"),
        on_wait=lambda message: click.echo(f"{message} ...", err=True),
        choice=choice,
        encoder=encoder,
    )


def errors_to_click(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except InputError as error:
            raise click.UsageError(str(error)) from error
        except E5VSearchError as error:
            raise click.ClickException(str(error)) from error

    return wrapper


def describe_row(row) -> str:
    if row["modality"] == "text" and row["text"] is not None:
        where = f" ({Path(row['source']).name}, {row['locator']})" if row["locator"] else ""
        return f"{row['text'][:70]}{where}"
    return str(row["source"])


def describe(result) -> str:
    where = f" ({Path(result.source).name}, {result.locator})" if result.locator else ""
    if result.modality == "text" and result.text is not None:  # (items added through Store
        text = result.text if len(result.text) <= 80 else result.text[:77] + "..."  # may lack it)
        return f"{text}{where}"
    return str(result.source)


def echo_notices(engine) -> None:
    """What the engine learnt (repairs, notes), each line once, on stderr."""
    for line in engine.notices():
        click.echo(line, err=True)
