"""The commands that read an index: `search`, `info`, `errors`, `verify` (no writer lock)."""

from __future__ import annotations

import json

import click

from ..config import HYBRID_WEIGHT, MAX_K, RRF_K, SEARCH_MODES
from ..filters import parse_filters
from . import cli
from .options import (
    describe,
    echo_notices,
    errors_to_click,
    index_option,
    lock_option,
    model_options,
    open_engine,
)


@cli.command()
@click.argument("query", required=False)
@click.option(
    "--image",
    "-i",
    type=click.Path(dir_okay=False),
    help="Query image (with QUERY: E5-V's composed image+text query). Alone it finds texts "
    "unless --type says otherwise; `--type image` for photos like it.",
)
@click.option(
    "--like",
    metavar="ID|KEY",
    help="A stored item, by its id or by its record's key (the --id-field value; id=KEY for "
    "a key that is a number): more like it.",
)
@click.option(
    "--type",
    "modality",
    type=click.Choice(["image", "text", "any"]),
    help="What to return [the other modality of the query].",
)
@click.option("-k", type=click.IntRange(1, MAX_K), default=10, show_default=True)
@click.option(
    "--where", help="SQL condition on items, e.g. \"json_extract(metadata, '$.album') = 'x'\"."
)
@click.option("--meta", multiple=True, help="KEY=VALUE metadata equality filter (repeatable).")
@click.option(
    "--add", "-a", "add", multiple=True, help="Move the query towards this text or image."
)
@click.option(
    "--subtract", "-s", multiple=True, help="Move the query away from this text or image."
)
@click.option(
    "--mode",
    type=click.Choice(SEARCH_MODES),
    default="vector",
    show_default=True,
    help="Rank by the vectors, by the query's words (BM25; no model), or both fused.",
)
@click.option(
    "--min-score",
    type=float,
    help="Cut results scoring below this (the mode's score: cosine, BM25 or fused).",
)
@click.option(
    "--weight",
    type=click.FloatRange(0, 1),
    default=HYBRID_WEIGHT,
    show_default=True,
    help="Hybrid: the vector side's share of the fused score (the keywords have the rest).",
)
@click.option(
    "--rrf-k",
    type=click.IntRange(min=1),
    default=RRF_K,
    show_default=True,
    help="Hybrid: reciprocal rank fusion's k.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per result line.")
@click.option(
    "--paths",
    is_flag=True,
    help="Only the file of each image result, one a line (for xargs); texts are left out.",
)
@index_option
@model_options
@errors_to_click
def search(
    query,
    image,
    like,
    modality,
    k,
    where,
    meta,
    add,
    subtract,
    as_json,
    paths,
    index,
    choice,
    **ranking,
):
    """Find the items nearest a text QUERY, an --image, both, or a stored item (--like).

    \b
    Examples:
      e5v-search search "a dog on a beach"
      e5v-search search --image cat.jpg --type image -k 5
      e5v-search search "a horse" --add "stripes" --subtract "black and white"
      e5v-search search "XK-2291-B" --mode keyword
      e5v-search search "invoice from Lindqvist" --mode hybrid --type text --min-score 0.5
      e5v-search search "a cat" --paths | xargs -d '\\n' feh
    """
    filters = parse_filters(meta)
    if where and filters:
        raise click.UsageError("use --where or --meta, not both")
    if as_json and paths:
        raise click.UsageError("use --json or --paths, not both")
    with open_engine(index, choice=choice) as engine:
        results = engine.search(
            query,
            image,
            like=like,
            k=k,
            modality=modality,
            where=where or filters or None,
            add=add,
            subtract=subtract,
            **ranking,
        )
        echo_notices(engine)
    if results.cut:
        threshold = ranking["min_score"]
        click.echo(f"cut: {results.cut} of the best {k} scored below {threshold}", err=True)
    if paths:
        _echo_paths(results)
        return
    if as_json:
        for result in results:
            click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
    elif results:
        width = max(2, *(len(str(result.id)) for result in results))
        click.echo(f"{'#':>3}  {'score':>7}  {'type':<5}  {'id':>{width}}  item")
        for rank, result in enumerate(results, start=1):
            click.echo(
                f"{rank:>3}  {result.score:>7.4f}  {result.modality:<5}  "
                f"{result.id:>{width}}  {describe(result)}"
            )
    else:
        click.echo("no results", err=True)


def _echo_paths(results) -> None:
    """Each image result's file, one a line; a text has no file of its own (its source is the
    .jsonl or .csv that holds it), so texts are left out, and stderr says how many."""
    for result in results:
        if result.modality == "image":
            click.echo(result.source)
    texts = sum(result.modality != "image" for result in results)
    if texts:
        click.echo(
            f"{texts} text results left out (they are not files: --json shows them)", err=True
        )


@cli.command()
@index_option
@click.option("--json", "as_json", is_flag=True)
@errors_to_click
def info(index, as_json):
    """Counts per modality, the embedding spec, index types and sizes."""
    with open_engine(index) as engine:
        echo_notices(engine)
        data = engine.info()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"index:   {data['path']}")
    click.echo(f"items:   {data['counts']['image']:,} images, {data['counts']['text']:,} texts")
    click.echo(f"model:   {_model_line(data['spec'])}")
    for line in data["model_repairs"]:
        click.echo(f"         the checkpoint was repaired on loading: {line}")
    for modality, entry in data["indexes"].items():
        settings = [f"{k} {entry[k]}" for k in ("nprobe", "ef_search") if k in entry]
        extra = f", {', '.join(settings)}" if settings else ""
        where = " on disk" if entry["on_disk"] else ""
        parts = f"{entry['segments']} segments + {entry['delta']} in the delta"
        click.echo(
            f"{modality + ':':<8} {entry['factory']}{where}, {entry['vectors']:,} vectors "
            f"({parts}), {entry['bytes'] / 2**20:.1f} MiB{extra}"
        )
    for modality, problem in data["damaged"].items():
        click.echo(f"{modality + ':':<8} DAMAGED: {problem}")
    for modality, ids in data["skipped_rows"].items():
        shown = ", ".join(map(str, ids[:5])) + (", ..." if len(ids) > 5 else "")
        click.echo(f"{modality + ':':<8} {len(ids)} damaged rows not indexed (ids {shown})")
    if data["unsaved_changes"] > 0:
        click.echo(
            f"files:   {data['unsaved_changes']} committed changes not saved in them yet (an "
            "ingest running, or one that stopped: the next write saves them)"
        )
    errors = (
        f"{data['errors']} ingest errors (`e5v-search errors`)"
        if data["errors"]
        else "no ingest errors"
    )
    click.echo(f"catalog: {data['catalog_bytes'] / 2**20:.1f} MiB, {errors}")


def _model_line(spec: dict | None) -> str:
    """The model an index's vectors were made with, as a person reads it."""
    from ..spec import precision

    if not spec:
        return "none yet (the first ingest records the model it embeds with)"
    revision = f" at revision {spec['revision']}" if spec.get("revision") else ""
    return (
        f"{spec['model']}{revision}: {spec['dim']:,}-d vectors in {precision(spec)}, "
        f"prompts {spec['prompt_version']} (search, serve and ingest use it unless --model)"
    )


@cli.command()
@index_option
@lock_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--clear", is_flag=True, help="Forget them all (the next ingest finds what remains).")
@errors_to_click
def errors(index, as_json, clear):
    """Inputs that could not be ingested, and why (files deleted since are left out)."""
    with open_engine(index) as engine:
        if clear:
            click.echo(f"cleared {engine.clear_errors()} recorded errors", err=True)
            return
        rows = engine.errors()
    for row in rows:
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False))
        else:
            where = f" ({row['locator']})" if row["locator"] else ""
            click.echo(f"{row['source']}{where}: {row['reason']}")


@cli.command()
@index_option
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@errors_to_click
def verify(index, as_json):
    """Read every byte of the index against what was recorded when it was written.

    Both copies of the manifest, every index file (its SHA-256), the catalog (SQLite's
    integrity check, then each row and vector against its checksum, and the keyword index
    against the items) and lost commits. Writes
    nothing (it works on read-only media); exit status 1 when anything is damaged, with what
    to run (`e5v-search repair`).
    """
    with open_engine(index) as engine:
        report = engine.verify()
    found = report["problems"]
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        whole = sum(f["whole"] and not f["problem"] for f in report["files"])
        catalog = report["catalog"]
        unchecked = catalog["unchecked_rows"]
        click.echo(f"files:   {whole} of {len(report['files'])} whole (every byte checked)")
        before = f", {unchecked:,} written before checksums" if unchecked else ""
        click.echo(f"catalog: {catalog['rows']:,} rows checked{before}")
        if not catalog["keywords_checked"]:
            click.echo(
                "keyword index: against the items only (FTS5's own check needs write access)"
            )
        click.echo(f"read {report['bytes'] / 2**20:.1f} MiB in {report['seconds']:.1f} s")
        for line in found:
            click.echo(f"DAMAGED: {line}")
    if found:
        raise click.ClickException(
            f"{len(found)} problem(s) in {report['path']}: `e5v-search repair --index "
            f"{report['path']}` mends what can be mended"
        )
