"""The commands that write an index, under its writer lock: `ingest`, `rebuild`, `delete`,
`repair`."""

from __future__ import annotations

import sys

import click

from ..config import MAX_ID, MAX_PIXELS
from ..filters import parse_filters
from . import cli
from .options import (
    describe_row,
    echo_notices,
    errors_to_click,
    index_option,
    lock_option,
    model_options,
    open_engine,
)


@cli.command()
@click.argument("sources", nargs=-1, required=True)
@index_option
@lock_option
@click.option("--text-field", help="Field of .jsonl / column of .csv holding the text [text].")
@click.option("--id-field", help="Field of .jsonl / .csv that identifies a row (else its number).")
@click.option("--prune", is_flag=True, help="Remove stored items of these sources that are gone.")
@click.option(
    "--refresh-metadata",
    is_flag=True,
    help="Read the photo metadata (EXIF, GPS, IPTC, XMP) of unchanged image files again; "
    "nothing is embedded again.",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="Leave out paths this matches, whole or by a folder or file name: 'thumbs', "
    "'*.tmp.jpg' (repeatable).",
)
@click.option(
    "--stdin-format",
    type=click.Choice(["txt", "jsonl", "csv", "tsv"]),
    default="txt",
    show_default=True,
    help="How `-` reads standard input: one text a line, or records.",
)
@click.option("--workers", type=click.IntRange(min=1), help="Image decoding threads [up to 8].")
@click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=MAX_PIXELS,
    show_default=True,
    help="Refuse larger images (decompression bombs).",
)
@click.option(
    "--max-memory",
    envvar="E5V_MAX_MEMORY",
    help="Memory the index may take (8GB, "
    "512MiB): its type follows the collection within it [half the RAM; env "
    "E5V_MAX_MEMORY].",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no report.")
@click.option(
    "--ray", "use_ray", is_flag=True, help="Run on Ray Data (pip install e5v-search[ray])."
)
@click.option("--address", envvar="RAY_ADDRESS", help="Ray cluster to join [a local one].")
@click.option("--gpus", type=click.IntRange(min=0), help="GPU actors [every GPU Ray sees].")
@click.option(
    "--ray-actors",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Embedding actors when there is no GPU.",
)
@model_options
@errors_to_click
def ingest(
    sources,
    index,
    text_field,
    id_field,
    prune,
    refresh_metadata,
    exclude,
    stdin_format,
    workers,
    max_pixels,
    max_memory,
    quiet,
    use_ray,
    address,
    gpus,
    ray_actors,
    choice,
):
    """Embed image folders, globs and text files (.txt, .jsonl, .csv, .tsv) into an index;
    `-` reads standard input (see --stdin-format).

    Reruns embed only what is new or changed; a killed run continues where it stopped. A
    source that does not exist stops the run before it starts (exit 2). Each input inside a run
    that cannot be used is named on stderr, recorded (see `errors`) and skipped; the exit
    status is then 3. Index folders inside a source are never read.

    \b
    Examples:
      e5v-search ingest ~/photos captions.jsonl --index photos
      e5v-search ingest ~/photos --exclude thumbs --exclude '*.tmp.jpg'
      grep -h cat notes/*.txt | e5v-search ingest - --index notes
    """

    def report_error(error):
        click.echo(f"skipped {error}", err=True)

    def say(line):
        click.echo(line, err=True)

    ray = None
    if use_ray:
        ray = {"address": address, "gpus": gpus, "cpu_actors": ray_actors}
    elif address or gpus is not None:
        raise click.UsageError("--address and --gpus go with --ray")
    with open_engine(index, create=True, choice=choice) as engine:
        echo_notices(engine)
        report = engine.ingest(
            sources,
            ray=ray,
            text_field=text_field,
            id_field=id_field,
            prune=prune,
            exclude=exclude,
            stdin_format=stdin_format,
            workers=workers,
            max_pixels=max_pixels,
            on_error=report_error,
            progress=False if quiet else None,
            max_memory=max_memory,
            refresh_metadata=refresh_metadata,
            on_phase=None if quiet else say,
        )
        echo_notices(engine)
    for change in report.index_changes:
        click.echo(f"index: {change}", err=True)
    if not quiet:
        refreshed = f", metadata refreshed {report.refreshed}" if refresh_metadata else ""
        click.echo(
            f"added {report.added}, updated {report.updated}, unchanged {report.unchanged}, "
            f"failed {report.failed}, pruned {report.pruned}{refreshed} in "
            f"{report.seconds:.1f} s ({report.items_per_second:.1f} items/s)",
            err=True,
        )
    if report.failed:
        sys.exit(3)


@cli.command()
@index_option
@lock_option
@click.option("--type", "factory", help="FAISS factory string (Flat, HNSW32, IVF4096,PQ64...).")
@click.option("--nprobe", type=click.IntRange(min=1), help="IVF lists searched per query.")
@click.option("--ef-search", type=click.IntRange(min=1), help="HNSW search depth.")
@click.option(
    "--max-memory",
    help="Choose the type to fit this budget (8GB, 512MiB): Flat if it fits, else SQ8, else "
    "OPQ+IVF+PQ with its lists on disk.",
)
@click.option(
    "--rerank",
    type=click.IntRange(min=1),
    help="Rescore this many candidates exactly from the stored vectors.",
)
@click.option("--recall/--no-recall", default=True, help="Measure recall@10 against exact search.")
@errors_to_click
def rebuild(index, factory, nprobe, ef_search, max_memory, rerank, recall):
    """Rebuild the FAISS indexes from the stored vectors (no model, no re-encoding).

    Each phase (reading the training sample, training, adding, merging lists on disk) is
    said on stderr as it starts and ends, with progress and the time left while adding. Then
    per modality: the type, vectors, build and training time and size; the peak memory the
    rebuild added, and recall@10 of each index against exact search per query modality.
    """
    import time

    from ..memory import PeakMemory, gib

    if factory and max_memory:
        raise click.UsageError("give --type or --max-memory, not both")
    if max_memory:
        from ..config import parse_bytes

        if parse_bytes(max_memory) < 10**5:  # "--max-memory 8" is a typo for 8GB, not a budget
            raise click.UsageError("--max-memory: give at least 100KB (8GB, 512MiB)")
    with open_engine(index) as engine:
        echo_notices(engine)
        started = time.perf_counter()
        with PeakMemory("cpu") as memory:
            built = engine.rebuild(
                factory,
                nprobe=nprobe,
                ef_search=ef_search,
                max_memory=max_memory,
                rerank=rerank,
                on_phase=lambda line: click.echo(line, err=True),
            )
        for s in built:
            note = f" ({s['note']})" if "note" in s else ""
            click.echo(
                f"{s['modality']}: {s['factory']}, {s['vectors']} vectors in {s['seconds']:.1f} s "
                f"(training {s['train_seconds']:.1f} s), {s['bytes'] / 2**20:.1f} MiB{note}"
            )
        seconds = time.perf_counter() - started
        click.echo(f"rebuilt in {seconds:.1f} s, peak memory added {gib(memory.bytes)}")
        echo_notices(engine)
        if recall:
            for pair, value in engine.recall().items():
                click.echo(f"recall@10 {pair}: {value:.3f}")


DELETE_ASKS = 100  # deleting more items than this asks first (--yes answers)


@cli.command()
@index_option
@lock_option
@click.option(
    "--id", "ids", type=click.IntRange(1, MAX_ID), multiple=True, help="Item id (repeatable)."
)
@click.option("--source-prefix", help="Delete items whose source path starts with this.")
@click.option("--where", help="SQL condition on items.")
@click.option("--meta", multiple=True, help="KEY=VALUE metadata equality filter (repeatable).")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@click.option("--yes", "-y", is_flag=True, help=f"Do not ask, even above {DELETE_ASKS} items.")
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Allow a prefix or filter that selects every item of the index.",
)
@errors_to_click
def delete(index, ids, source_prefix, where, meta, dry_run, yes, everything):
    """Delete items from the catalog and the index.

    A prefix or filter that selects every item is refused without --all (an unset $DIR must
    not empty an index); above 100 items it asks first (--yes does not ask).
    """
    filters = parse_filters(meta)
    with open_engine(index) as engine:
        echo_notices(engine)
        where = where or filters or None
        chosen = engine.to_delete(list(ids), source_prefix, where, everything=everything)
        if dry_run:
            for row in engine.items(chosen[:10]):
                click.echo(f"{row['id']:>8}  {describe_row(row)}")
            more = " (the first 10 above)" if len(chosen) > 10 else ""
            click.echo(f"would delete {len(chosen)} items{more}", err=True)
            return
        if len(chosen) > DELETE_ASKS and not yes:
            question = f"Delete {len(chosen):,} items from {engine.path}?"
            if not sys.stdin.isatty():
                raise click.UsageError(f"{question} Pass --yes to delete without being asked.")
            click.confirm(question, abort=True, err=True)
        removed = engine.delete(chosen, everything=True) if chosen else 0
    click.echo(f"deleted {removed} items", err=True)


@cli.command()
@index_option
@lock_option
@errors_to_click
def repair(index):
    """Mend what `verify` finds: damaged index files rebuilt from the catalog as they were,
    damaged rows marked to be embedded again by the next ingest, lost commits acknowledged."""
    with open_engine(index) as engine:
        echo_notices(engine)
        for line in engine.repair():
            click.echo(line)
        echo_notices(engine)
