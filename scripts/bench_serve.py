"""Search and embedding latency through the HTTP server against calling the engine directly.

    python scripts/bench_serve.py [--requests 200] [--record]

Builds the sample corpus index with the tiny checkpoint (or `--model`), starts `e5v-search serve`
in its own process, and times text searches: the engine called in this process, then the server
with 1 and with 8 concurrent clients (every query a new text, so each one embeds), then repeated
texts (served from the server's cache). Then embeddings: `engine.embed_texts` of 1 and of 32 new
texts against `POST /v1/embeddings` of the same sizes (base64, what the openai SDK asks for by
default, and float), called in turn. Then clip-retrieval's `POST /knn-service` (a text, 40
images, deduplicated and not) against `engine.search` (and `engine.collapse`) of the same
query, called in turn. Reports p50/p95 latency, throughput and the server's overhead over the
direct call.
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


def http_embed(base: str, encoding: str):
    def call(texts):
        body = json.dumps({"input": texts, "encoding_format": encoding}).encode()
        request = urllib.request.Request(
            f"{base}/v1/embeddings", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert len(json.load(response)["data"]) == len(texts)

    return call


def http_knn(base: str, deduplicate: bool):
    def call(texts):
        body = {"text": texts[0], "modality": "image", "num_images": 40, "deduplicate": deduplicate}
        # no content type, as ClipClient sends it
        request = urllib.request.Request(f"{base}/knn-service", data=json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=60) as response:
            assert json.load(response)

    return call


def in_turn(calls: dict, sizes, requests: int) -> dict:
    """Latencies per batch size of each path, one call of each in turn, so that a change in
    the machine's load meets them alike; every call embeds texts never seen before."""
    rows = {}
    for size in sizes:
        count = requests if size == 1 else max(requests // 4, 4)
        rows[size] = {name: [] for name in calls}
        for i in range(count):
            for name, call in calls.items():
                texts = [f"{name} {size} text {i} {j}" for j in range(size)]
                started = time.perf_counter()
                call(texts)
                rows[size][name].append(time.perf_counter() - started)
    return rows


def embedding_rows(engine, base: str, requests: int) -> dict:
    """`engine.embed_texts` of 1 and 32 texts against `/v1/embeddings` in each encoding."""
    calls = {
        "`engine.embed_texts`": engine.embed_texts,
        "`POST /v1/embeddings`, base64": http_embed(base, "base64"),
        "`POST /v1/embeddings`, float": http_embed(base, "float"),
    }
    return in_turn(calls, (1, 32), requests)


def knn_rows(engine, base: str, requests: int) -> dict:
    """A text's 40 nearest images: `engine.search` (and `engine.collapse`, as `deduplicate`
    does) against `POST /knn-service`."""

    def direct(texts, collapse=False):
        results = engine.search(text=texts[0], k=40, modality="image")
        return engine.collapse(results) if collapse else results

    calls = {
        "`engine.search`": direct,
        "`POST /knn-service`, deduplicate false": http_knn(base, False),
        "`engine.search` + `engine.collapse`": lambda texts: direct(texts, collapse=True),
        "`POST /knn-service`, deduplicate true": http_knn(base, True),
    }
    return in_turn(calls, (1,), requests)


def table(rows: dict, title: str, per_call: str, pairs: bool = False) -> list[str]:
    """Rows of paths, each against the direct call above it (`pairs`: the one just above)."""
    lines = [
        f"\n{title}\n",
        f"| path | {per_call} | p50 ms | p95 ms | per second | p50 against the direct call |",
        "|---|---|---|---|---|---|",
    ]
    for size, paths in rows.items():
        direct = None
        for n, (name, latencies) in enumerate(paths.items()):
            p50 = percentile(latencies, 50)
            if pairs and n % 2 == 0:
                direct = None
            versus = "-" if direct is None else f"{p50 / direct:.2f}x ({p50 - direct:+.1f} ms)"
            direct = direct or p50
            rate = size * len(latencies) / sum(latencies)
            lines.append(
                f"| {name} | {size} | {p50:.1f} | {percentile(latencies, 95):.1f} | "
                f"{rate:.0f} | {versus} |"
            )
    return lines


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
    engine = Engine.open(work / "ix", model=model, device=args.device, create=True)
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
        http_embed(base, "float")(["warm up"])
        embeddings = embedding_rows(engine, base, args.requests)
        http_knn(base, True)(["warm up"])
        knn = knn_rows(engine, base, args.requests)
    finally:
        server.terminate()
        server.wait(10)
        engine.close()
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
    lines += table(
        embeddings,
        "Embeddings, one client, new texts each call, the three paths called in turn:",
        "texts a call",
    )
    lines += table(
        knn,
        "clip-retrieval's /knn-service: a new text each call, its 40 nearest images, one "
        "client, the four paths called in turn (each route against the direct call above it):",
        "texts a call",
        pairs=True,
    )
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
