"""`serve`: the search page and the JSON API, the model loaded once."""

from __future__ import annotations

import click

from ..config import MAX_UPLOAD_BYTES
from . import cli
from .options import echo_notices, errors_to_click, index_option, model_options, open_engine


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
@errors_to_click
def serve(index, host, port, allowed, max_upload_mb, choice):
    """Serve the search page and JSON API (OpenAPI docs at /docs), the model loaded once.

    Listens on localhost unless --host says otherwise. Answers only requests whose Host header
    is localhost, 127.0.0.1, [::1], the --host or an --allowed-host (others get 400, so a web
    page cannot read it through DNS rebinding). Request headers up to 8 KiB (431 beyond), each
    request's head within 10 s, about 100 connections at once (503 beyond).
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

        engine = open_engine(index, choice=choice)
        app = create_app(
            engine,
            max_upload_bytes=max_upload_mb * 2**20,
            allowed_hosts=allowed_hosts(host, allowed),
        )
        echo_notices(engine)
        click.echo(f"e5v-search on {url_for(host, port)} (index {engine.path})", err=True)
        try:
            run(app, sockets)
        finally:
            app.state.worker.close()
            engine.close()
    finally:
        for sock in sockets:
            sock.close()
