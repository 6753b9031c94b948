"""`serve`: the search page and the JSON API, the model loaded once."""

from __future__ import annotations

import click

from ..config import MAX_UPLOAD_BYTES
from . import cli
from .options import echo_notices, errors_to_click, model_options, open_engine


@cli.command()
@click.option(
    "--index",
    "indexes",
    multiple=True,
    envvar="E5V_SEARCH_INDEX",
    default=("default",),
    show_default=True,
    help="A name in the index home, or a directory path such as ./ix [env: E5V_SEARCH_INDEX]. "
    "Repeatable, one model for all: the first is the page's and /api's; clip-retrieval's "
    "clients pick any by its folder's name (indice_name).",
)
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
@click.option(
    "--cors-origin",
    "cors_origins",
    multiple=True,
    metavar="ORIGIN",
    envvar="E5V_CORS_ORIGINS",
    callback=lambda ctx, param, values: _origins(values),
    help="A web origin (https://host[:port]) whose pages may call the read routes (/v1, "
    "/api/search, /api/items, /api/info, /thumbs, /files) from a browser (repeatable; none by "
    "default) [env: E5V_CORS_ORIGINS, space-separated].",
)
@click.option(
    "--allow-remote-images",
    is_flag=True,
    help="Let /v1/embeddings and /knn-service fetch http(s) image URLs (10 s, the upload "
    "limit). Off by default: any client could make the server fetch any address it reaches.",
)
@model_options
@errors_to_click
def serve(indexes, host, port, allowed, max_upload_mb, cors_origins, allow_remote_images, choice):
    """Serve the search page and JSON API (OpenAPI docs at /docs), the model loaded once.

    Listens on localhost unless --host says otherwise. Answers only requests whose Host header
    is localhost, 127.0.0.1, [::1], the --host or an --allowed-host (others get 400, so a web
    page cannot read it through DNS rebinding). Request headers up to 8 KiB (431 beyond), each
    request's head within 10 s, about 100 connections at once (503 beyond). OpenAI-compatible
    embeddings at /v1 (GET /v1/models, POST /v1/embeddings); clip-retrieval's back end for
    its ClipClient and clip-front (POST /knn-service, POST /metadata, GET /indices-list).
    """
    from ..serving.guards import LOCAL_HOSTS, WILDCARDS, allowed_hosts
    from ..serving.listener import listen, run, url_for

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
        from ..serving.app import create_app

        engine = open_engine(indexes[0], choice=choice)
        others = [open_engine(i, choice=choice, encoder=engine.encoder) for i in indexes[1:]]
        app = create_app(
            engine,
            others=others,
            max_upload_bytes=max_upload_mb * 2**20,
            allowed_hosts=allowed_hosts(host, allowed),
            cors_origins=cors_origins,
            allow_remote_images=allow_remote_images,
        )
        _warn_of(cors_origins, allow_remote_images)
        echo_notices(engine)
        served = ", ".join(str(each.path) for each in (engine, *others))
        click.echo(f"e5v-search on {url_for(host, port)} (index {served})", err=True)
        try:
            run(app, sockets)
        finally:
            app.state.worker.close()
            for each in (engine, *others):
                each.close()
    finally:
        for sock in sockets:
            sock.close()


def _origins(values) -> tuple[str, ...]:
    if not values:
        return ()
    from ..errors import InputError
    from ..serving.cors import origin

    try:
        return tuple(origin(value) for value in values)
    except InputError as error:
        raise click.BadParameter(str(error)) from None


def _warn_of(cors_origins, allow_remote_images) -> None:
    if "*" in cors_origins:
        click.echo(
            "warning: --cors-origin '*': any web page you visit may read this server's answers "
            "(your images, their paths, your texts)",
            err=True,
        )
    if allow_remote_images:
        click.echo(
            "warning: --allow-remote-images: clients can make this server fetch any URL, "
            "addresses of its own network included",
            err=True,
        )
