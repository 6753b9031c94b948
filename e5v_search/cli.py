"""The `e5v-search` command: parse flags, call the library, print. No logic lives here.

Heavy imports (torch, transformers) happen inside commands, so `e5v-search --help` stays fast.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from .config import (
    DEFAULT_MODEL,
    LOCK_TIMEOUT,
    MAX_BATCH_TOKENS,
    MAX_ID,
    MAX_K,
    MAX_PIXELS,
    MAX_UPLOAD_BYTES,
    index_path,
)
from .errors import E5VSearchError, InputError
from .filters import parse_filters


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
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


def index_option(command):
    return click.option(
        "--index",
        envvar="E5V_SEARCH_INDEX",
        default="default",
        show_default=True,
        help="Index directory, or a name for indexes/NAME [env: E5V_SEARCH_INDEX].",
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


def _open_engine(index, create=False, **model_args):
    from .engine import Engine

    meta = click.get_current_context().meta
    return Engine.open(
        index_path(index),
        create=create,
        lock_timeout=meta.get("lock_timeout"),
        on_wait=lambda message: click.echo(f"{message} ...", err=True),
        **model_args,
    )


def _load_encoder(**model_args):
    from .model.encoder import ModelChoice

    return ModelChoice(**model_args).load()


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


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@model_options
@_errors_to_click
def check(as_json, **model_args):
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

    from .model.check import run_check

    options = {k: model_args.pop(k) for k in ("batch_size", "max_batch_tokens")}
    report = run_check(**model_args, **options)
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


@cli.command()
@click.argument("sources", nargs=-1, required=True)
@index_option
@lock_option
@click.option("--text-field", help="Field of .jsonl / column of .csv holding the text [text].")
@click.option("--id-field", help="Field of .jsonl / .csv that identifies a row (else its number).")
@click.option("--prune", is_flag=True, help="Remove stored items of these sources that are gone.")
@click.option("--workers", type=click.IntRange(min=1), help="Image decoding threads [up to 8].")
@click.option("--max-pixels", type=click.IntRange(min=1), default=MAX_PIXELS, show_default=True,
              help="Refuse larger images (decompression bombs).")  # fmt: skip
@click.option("--max-memory", envvar="E5V_MAX_MEMORY", help="Memory the index may take (8GB, "
              "512MiB): its type follows the collection within it [half the RAM; env "
              "E5V_MAX_MEMORY].")  # fmt: skip
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no report.")
@click.option(
    "--ray", "use_ray", is_flag=True, help="Run on Ray Data (pip install e5v-search[ray])."
)
@click.option("--address", envvar="RAY_ADDRESS", help="Ray cluster to join [a local one].")
@click.option("--gpus", type=click.IntRange(min=0), help="GPU actors [every GPU Ray sees].")
@click.option("--ray-actors", type=click.IntRange(min=1), default=1, show_default=True,
              help="Embedding actors when there is no GPU.")  # fmt: skip
@model_options
@_errors_to_click
def ingest(sources, index, text_field, id_field, prune, workers, max_pixels, max_memory, quiet,
           use_ray, address, gpus, ray_actors, **model_args):  # fmt: skip
    """Embed image folders, globs and text files (.txt, .jsonl, .csv) into an index.

    Reruns embed only what is new or changed; a killed run continues where it stopped. Each
    input that cannot be used is named on stderr, recorded (see `errors`) and skipped; the exit
    status is then 3.

    \b
    Example:
      e5v-search ingest ~/photos captions.jsonl --index photos
    """

    def report_error(error):
        click.echo(f"skipped {error}", err=True)

    ray = None
    if use_ray:
        from .ingest.ray_backend import RayOptions

        ray = RayOptions(address=address, gpus=gpus, cpu_actors=ray_actors)
    elif address or gpus is not None:
        raise click.UsageError("--address and --gpus go with --ray")
    with _open_engine(index, create=True, **model_args) as engine:
        _echo_notices(engine)
        report = engine.ingest(
            sources,
            ray=ray,
            text_field=text_field,
            id_field=id_field,
            prune=prune,
            workers=workers,
            max_pixels=max_pixels,
            on_error=report_error,
            progress=False if quiet else None,
            max_memory=max_memory,
        )
        _echo_notices(engine)
    for change in report.index_changes:
        click.echo(f"index: {change}", err=True)
    if not quiet:
        click.echo(
            f"added {report.added}, updated {report.updated}, unchanged {report.unchanged}, "
            f"failed {report.failed}, pruned {report.pruned} in {report.seconds:.1f} s "
            f"({report.items_per_second:.1f} items/s)",
            err=True,
        )
    if report.failed:
        sys.exit(3)


@cli.command()
@click.argument("query", required=False)
@click.option("--image", "-i", type=click.Path(dir_okay=False), help="Query image (with QUERY: "
              "E5-V's composed image+text query).")  # fmt: skip
@click.option("--like", type=click.IntRange(1, MAX_ID), help="Id of a stored item: more like it.")
@click.option("--type", "modality", type=click.Choice(["image", "text", "any"]),
              help="What to return [the other modality of the query].")  # fmt: skip
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
@click.option("--json", "as_json", is_flag=True, help="One JSON object per result line.")
@index_option
@model_options
@_errors_to_click
def search(
    query, image, like, modality, k, where, meta, add, subtract, as_json, index, **model_args
):
    """Find the items nearest a text QUERY, an --image, both, or a stored item (--like).

    \b
    Examples:
      e5v-search search "a dog on a beach"
      e5v-search search --image cat.jpg --type image -k 5
      e5v-search search "a horse" --add "stripes" --subtract "black and white"
    """
    filters = parse_filters(meta)
    if where and filters:
        raise click.UsageError("use --where or --meta, not both")
    with _open_engine(index, **model_args) as engine:
        results = engine.search(
            query, image, like=like, k=k, modality=modality, where=where or filters or None,
            add=add, subtract=subtract,
        )  # fmt: skip
        _echo_notices(engine)
    for rank, result in enumerate(results, start=1):
        if as_json:
            click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        else:
            click.echo(f"{rank:>3}  {result.score:.4f}  {result.modality:<5}  {_describe(result)}")
    if not results and not as_json:
        click.echo("no results", err=True)


@cli.command()
@index_option
@click.option("--json", "as_json", is_flag=True)
@_errors_to_click
def info(index, as_json):
    """Counts per modality, the embedding spec, index types and sizes."""
    with _open_engine(index) as engine:
        _echo_notices(engine)
        data = engine.info()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    from .spec import precision

    spec = data["spec"] or {}
    click.echo(f"index:   {data['path']}")
    click.echo(f"items:   {data['counts']['image']} images, {data['counts']['text']} texts")
    details = ", ".join(f"{k} {spec.get(k)}" for k in ("revision", "dim", "prompt_version"))
    click.echo(f"model:   {spec.get('model')} ({details}, vectors in {precision(spec)})")
    for modality, entry in data["indexes"].items():
        settings = {k: v for k, v in entry.items() if k in ("nprobe", "ef_search")}
        extra = f" {settings}" if settings else ""
        where = " on disk" if entry["on_disk"] else ""
        parts = f"{entry['segments']} segments + {entry['delta']} in the delta"
        click.echo(f"{modality + ':':<8} {entry['factory']}{where}, {entry['vectors']} vectors "
                   f"({parts}), {entry['bytes'] / 2**20:.1f} MiB{extra}")  # fmt: skip
    for modality, problem in data["damaged"].items():
        click.echo(f"{modality + ':':<8} DAMAGED: {problem}")
    for modality, ids in data["skipped_rows"].items():
        click.echo(f"{modality + ':':<8} {len(ids)} damaged rows not indexed (ids {ids[:5]})")
    if data["unsaved_changes"] > 0:
        click.echo(
            f"files:   {data['unsaved_changes']} committed changes not saved in them yet (an "
            "ingest running, or one that stopped: the next write saves them)"
        )
    click.echo(f"catalog: {data['catalog_bytes'] / 2**20:.1f} MiB, {data['errors']} ingest errors")


@cli.command()
@index_option
@lock_option
@click.option("--type", "factory", help="FAISS factory string (Flat, HNSW32, IVF4096,PQ64...).")
@click.option("--nprobe", type=click.IntRange(min=1), help="IVF lists searched per query.")
@click.option("--ef-search", type=click.IntRange(min=1), help="HNSW search depth.")
@click.option("--max-memory", help="Choose the type to fit this budget (8GB, 512MiB): Flat if it "
              "fits, else OPQ+IVF+PQ with its lists on disk.")  # fmt: skip
@click.option("--rerank", type=click.IntRange(min=1),
              help="Rescore this many candidates exactly from the stored vectors.")  # fmt: skip
@click.option("--recall/--no-recall", default=True, help="Measure recall@10 against exact search.")
@_errors_to_click
def rebuild(index, factory, nprobe, ef_search, max_memory, rerank, recall):
    """Rebuild the FAISS indexes from the stored vectors (no model, no re-encoding)."""
    if factory and max_memory:
        raise click.UsageError("give --type or --max-memory, not both")
    if max_memory:
        from .config import parse_bytes

        if parse_bytes(max_memory) < 10**6:  # "--max-memory 8" is a typo for 8GB, not a budget
            raise click.UsageError("--max-memory: give at least 1MB (8GB, 512MiB)")
    with _open_engine(index) as engine:
        _echo_notices(engine)
        built = engine.rebuild(
            factory, nprobe=nprobe, ef_search=ef_search, max_memory=max_memory, rerank=rerank
        )
        for s in built:
            click.echo(f"{s['modality']}: {s['factory']}, {s['vectors']} vectors in "
                       f"{s['seconds']:.1f} s, {s['bytes'] / 2**20:.1f} MiB"
                       + (f" ({s['note']})" if "note" in s else ""))  # fmt: skip
        _echo_notices(engine)
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
@_errors_to_click
def delete(index, ids, source_prefix, where, meta, dry_run, yes, everything):
    """Delete items from the catalog and the index.

    A prefix or filter that selects every item is refused without --all (an unset $DIR must
    not empty an index); above 100 items it asks first (--yes does not ask).
    """
    filters = parse_filters(meta)
    with _open_engine(index) as engine:
        _echo_notices(engine)
        where = where or filters or None
        chosen = engine.to_delete(list(ids), source_prefix, where, everything=everything)
        if dry_run:
            for row in engine.items(chosen[:10]):
                click.echo(f"{row['id']:>8}  {_describe_row(row)}")
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
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@_errors_to_click
def verify(index, as_json):
    """Read every byte of the index against what was recorded when it was written.

    Both copies of the manifest, every index file (its SHA-256), the catalog (SQLite's
    integrity check, then each row and vector against its checksum) and lost commits. Writes
    nothing (it works on read-only media); exit status 1 when anything is damaged, with what
    to run (`e5v-search repair`).
    """
    from .storage.verify import problems

    with _open_engine(index) as engine:
        report = engine.verify()
    found = problems(report)
    if as_json:
        click.echo(json.dumps({**report, "problems": found}, indent=2))
    else:
        whole = sum(f["whole"] and not f["problem"] for f in report["files"])
        catalog = report["catalog"]
        unchecked = catalog["unchecked_rows"]
        click.echo(f"files:   {whole} of {len(report['files'])} whole (every byte checked)")
        before = f", {unchecked:,} written before checksums" if unchecked else ""
        click.echo(f"catalog: {catalog['rows']:,} rows checked{before}")
        click.echo(f"read {report['bytes'] / 2**20:.1f} MiB in {report['seconds']:.1f} s")
        for line in found:
            click.echo(f"DAMAGED: {line}")
    if found:
        raise click.ClickException(
            f"{len(found)} problem(s) in {report['path']}: `e5v-search repair --index "
            f"{report['path']}` mends what can be mended"
        )


@cli.command()
@index_option
@lock_option
@_errors_to_click
def repair(index):
    """Mend what `verify` finds: damaged index files rebuilt from the catalog as they were,
    damaged rows marked to be embedded again by the next ingest, lost commits acknowledged."""
    with _open_engine(index) as engine:
        _echo_notices(engine)
        for line in engine.repair():
            click.echo(line)
        _echo_notices(engine)


@cli.command()
@index_option
@click.option("--json", "as_json", is_flag=True)
@_errors_to_click
def errors(index, as_json):
    """Inputs that could not be ingested, and why."""
    with _open_engine(index) as engine:
        rows = engine.errors()
    for row in rows:
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False))
        else:
            where = f" ({row['locator']})" if row["locator"] else ""
            click.echo(f"{row['source']}{where}: {row['reason']}")


@cli.command()
@index_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0: every IPv4 interface).",
)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--allowed-host",
    "allowed",
    multiple=True,
    metavar="NAME",
    envvar="E5V_ALLOWED_HOSTS",
    help="Another name (or IP) clients may reach this server by, as sent in the Host header "
    "(repeatable) [env: E5V_ALLOWED_HOSTS, space-separated].",
)
@click.option(
    "--max-upload-mb",
    default=MAX_UPLOAD_BYTES // 2**20,
    show_default=True,
    type=click.IntRange(min=1),
)
@model_options
@_errors_to_click
def serve(index, host, port, allowed, max_upload_mb, **model_args):
    """Serve the search page and JSON API (OpenAPI docs at /docs), the model loaded once.

    Listens on localhost unless --host says otherwise. Answers only requests whose Host header
    is localhost, 127.0.0.1, [::1], the --host or an --allowed-host (others get 400, so a web
    page cannot read it through DNS rebinding). Request headers up to 8 KiB (431 beyond), each
    request's head within 10 s, about 100 connections at once (503 beyond).
    """
    from .serving.guards import LOCAL_HOSTS, WILDCARDS, allowed_hosts
    from .serving.listener import listen, run, url_for

    sockets = listen(host, port)  # before the model: a bad --host or a busy port fails at once
    try:
        if host in WILDCARDS:
            click.echo(
                f"warning: listening on every interface ({host or 'IPv4 and IPv6'}): anyone who "
                "reaches it can search; clients that use an IP address or a name other than "
                "this machine's need --allowed-host NAME",
                err=True,
            )
        elif host not in LOCAL_HOSTS:
            click.echo(
                f"warning: listening on {host}: anyone who reaches it can search; clients that "
                "use another name for it need --allowed-host NAME",
                err=True,
            )
        from .serving.app import create_app

        engine = _open_engine(index, **model_args)
        app = create_app(
            engine,
            max_upload_bytes=max_upload_mb * 2**20,
            allowed_hosts=allowed_hosts(host, allowed),
        )
        _echo_notices(engine)
        click.echo(f"e5v-search on {url_for(host, port)} (index {engine.path})", err=True)
        try:
            run(app, sockets)
        finally:
            app.state.worker.close()
            engine.close()
    finally:
        for sock in sockets:
            sock.close()


@cli.group(name="eval")
def evaluate():
    """Measure retrieval: the paper's Recall@K table, composed retrieval, index recall."""


def _eval_engine(index, model_args):
    from .evaluation import open_index

    return open_index(index, **model_args)


@evaluate.command()
@click.option("--images", required=True, type=click.Path(file_okay=False, exists=True),
              help="Folder holding the images the captions name.")  # fmt: skip
@click.option("--captions", required=True, type=click.Path(dir_okay=False, exists=True),
              help="Karpathy split .json, or .jsonl / .csv: image file name, caption.")  # fmt: skip
@click.option("--split", default="test", show_default=True, help="Karpathy split to use.")
@click.option("--image-field", default="image", show_default=True)
@click.option("--caption-field", default="caption", show_default=True)
@click.option("--paper", type=click.Choice(["flickr30k", "coco"]),
              help="Paper numbers to show (default: the Karpathy file's dataset).")  # fmt: skip
@click.option("--index", help="Keep the embeddings in this index directory (default: throwaway).")
@model_options
@_errors_to_click
def retrieval(images, captions, split, image_field, caption_field, paper, index, **model_args):
    """Text->image and image->text Recall@1/5/10 on a captioned image set (Flickr30K, COCO...).

    \b
    Example (Flickr30K 1K test, Karpathy split):
      e5v-search eval retrieval --images flickr30k-images --captions dataset_flickr30k.json
    """
    from .evaluation import evaluate_retrieval, load_pairs

    pairs = load_pairs(captions, split, image_field, caption_field)
    with _eval_engine(index, model_args) as engine:
        report = evaluate_retrieval(engine, pairs, images)
        _echo_notices(engine)
    report.paper = paper or report.paper
    click.echo(report.table())


@evaluate.command()
@click.option("--images", required=True, type=click.Path(file_okay=False, exists=True))
@click.option("--triples", required=True, type=click.Path(dir_okay=False, exists=True),
              help=".jsonl / .csv rows of reference, text, target.")  # fmt: skip
@click.option("--index", help="Keep the embeddings in this index directory (default: throwaway).")
@model_options
@_errors_to_click
def composed(images, triples, index, **model_args):
    """Composed image+text retrieval (CIRR-style) Recall@1/5/10, reference excluded."""
    from .evaluation import evaluate_composed, load_triples

    with _eval_engine(index, model_args) as engine:
        report = evaluate_composed(engine, load_triples(triples), images)
        _echo_notices(engine)
    click.echo(report.table())


@evaluate.command(name="index")
@index_option
@click.option("--sample", type=click.IntRange(min=1), default=200, show_default=True,
              help="Stored vectors used as queries.")  # fmt: skip
@click.option("-k", type=click.IntRange(1, MAX_K), default=10, show_default=True)
@_errors_to_click
def index_recall(index, sample, k):
    """Recall@k of the index against exact search, per query modality (no model needed)."""
    with _open_engine(index) as engine:
        factory = {m: e["factory"] for m, e in engine.info()["indexes"].items()}
        for pair, value in engine.recall(k=k, sample=sample).items():
            click.echo(f"recall@{k} {pair} ({factory[pair.split('->')[1]]}): {value:.3f}")


def _describe_row(row) -> str:
    if row["modality"] == "text" and row["text"] is not None:
        where = f" ({Path(row['source']).name}, {row['locator']})" if row["locator"] else ""
        return f"{row['text'][:70]}{where}"
    return str(row["source"])


def _describe(result) -> str:
    where = f" ({Path(result.source).name}, {result.locator})" if result.locator else ""
    if result.modality == "text" and result.text is not None:  # (items added through Store
        text = result.text if len(result.text) <= 80 else result.text[:77] + "..."  # may lack it)
        return f"{text}{where}"
    return str(result.source)


def _echo_notices(engine) -> None:
    """What the engine learnt (repairs, notes), each line once, on stderr."""
    for line in engine.notices():
        click.echo(line, err=True)


if __name__ == "__main__":
    cli()
