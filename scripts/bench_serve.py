"""Search latency through the HTTP server against calling the engine directly, side by side.

    python scripts/bench_serve.py [--requests 200] [--record]

Builds the sample corpus index with the tiny checkpoint (or `--model`), starts `e5v-search serve`
in its own process, and times text searches: the engine called in this process, then the server
with 1 and with 8 concurrent clients (every query a new text, so each one embeds), then repeated
texts (served from the server's cache). Reports p50/p95 latency, throughput and the server's
overhead over the direct call.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchlib import machine, record

from e5v_search.engine import Engine
from e5v_search.testing import cached_tiny_checkpoint, make_sample_corpus


def percentile(values, q) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def timed_calls(call, queries, clients: int):
    def one(query):
        started = time.perf_counter()
        call(query)
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(one, queries))
    return latencies, len(queries) / (time.perf_counter() - started)


def http_search(base: str):
    def call(text):
        url = f"{base}/api/search?" + urllib.parse.urlencode({"q": text, "k": 10})
        with urllib.request.urlopen(url, timeout=60) as response:
            body = json.load(response)
        assert len(body["results"]) == 10

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--model", help="default: the tiny checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    model = args.model or str(cached_tiny_checkpoint())
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    corpus = make_sample_corpus(work / "corpus")
    with Engine.open(work / "ix", model=model, device=args.device, create=True) as engine:
        engine.ingest([corpus["images"], corpus["captions"]], progress=False)
        direct_queries = [f"a query about shape number {i}" for i in range(args.requests)]
        engine.search(text="warm up")
        direct, direct_qps = timed_calls(lambda t: engine.search(text=t, k=10), direct_queries, 1)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cli = str(Path(sys.executable).with_name("e5v-search"))
    server = subprocess.Popen(
        [cli, "serve", "--index", str(work / "ix"), "--port", str(port)],
        env=dict(os.environ, E5V_MODEL=model, E5V_DEVICE=args.device),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(base)
        call = http_search(base)
        call("warm up")
        rows = [("engine, direct call", 1, direct, direct_qps)]
        for clients in (1, 8):
            queries = [f"client query {clients} {i}" for i in range(args.requests)]
            rows.append(("server, new texts", clients, *timed_calls(call, queries, clients)))
        repeated = [f"client query 8 {i % 10}" for i in range(args.requests)]
        rows.append(("server, repeated texts (cache)", 8, *timed_calls(call, repeated, 8)))
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    overhead = percentile(rows[1][2], 50) - percentile(direct, 50)
    lines = [
        f"Text searches (k=10) over the sample corpus (96 items), model "
        f"{'tiny checkpoint' if not args.model else args.model} on {args.device}, "
        f"{args.requests} requests per row.\nMachine: {machine(args.device)}.\n"
        f"Command: `python scripts/bench_serve.py {' '.join(sys.argv[1:])}`\n",
        "| path | clients | p50 ms | p95 ms | requests/s |",
        "|---|---|---|---|---|",
        *[
            f"| {name} | {clients} | {percentile(lat, 50):.1f} | {percentile(lat, 95):.1f} | "
            f"{qps:.0f} |"
            for name, clients, lat, qps in rows
        ],
        f"\nServer overhead over the direct call (p50, 1 client): **{overhead:.1f} ms**.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.record:
        record("serve", text)


def _wait_for(base: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(base + "/api/health", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server at {base} did not start")


if __name__ == "__main__":
    main()
