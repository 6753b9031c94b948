"""Where the time of a one-shot `e5v-search search "a red circle" --index X` goes, on this machine.

    python scripts/bench_oneshot.py [--repeats 3] [--record]

Builds an index of the sample corpus with the tiny trained checkpoint, then in fresh
subprocesses, interleaved, `--repeats` times each:
  - the bare interpreter (`python -c pass`);
  - the phases, timed in-process: CLI import, torch import, the LLaVA-NeXT import (two ways:
    `from transformers import LlavaNext...`, the top-level lazy module, or straight from
    `transformers.models.llava_next`), the engine import (FAISS, sqlite-utils), index open,
    model load, the query's forward and the search;
  - the real command, wall clock, two ways: as `e5v-search` runs it now (cli.main: os._exit
    once the output is flushed) and ending as Python does (click's group called directly, what
    the console script did before).
Medians are reported; `--record` writes the table into docs/benchmarks.md with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import machine, record

ROOT = Path(__file__).resolve().parent.parent
QUERY = "a red circle"

PROBE = r"""
import json, sys, time
marks = [("start", time.perf_counter())]
def mark(name):
    marks.append((name, time.perf_counter()))
import e5v_search.cli
mark("CLI import (click, e5v_search.cli)")
import torch
mark("torch import")
if sys.argv[2] == "direct":
    from transformers.models.llava_next import modeling_llava_next, processing_llava_next
else:
    from transformers import LlavaNextModel, LlavaNextProcessor
mark("transformers LLaVA-NeXT import")
from e5v_search.engine import Engine
mark("engine import (FAISS, sqlite-utils)")
engine = Engine.open(sys.argv[1], device="cpu")
mark("index open")
encoder = engine.encoder
mark("model load (the index's model)")
vector = encoder.embed_texts([sys.argv[3]], progress=False)[0]
mark("query forward")
engine.search_vector(vector, target="image", k=10)
mark("search")
print(json.dumps(marks))
"""

VARIANTS = ("top-level", "direct")


def build_index(folder: Path) -> Path:
    from e5v_search.engine import Engine
    from e5v_search.testing import make_sample_corpus
    from e5v_search.training import cached_trained_checkpoint

    make_sample_corpus(folder / "corpus")
    index = folder / "index"
    engine = Engine.open(index, model=str(cached_trained_checkpoint()), create=True, device="cpu")
    try:
        engine.ingest([folder / "corpus" / "images"], progress=False)
    finally:
        engine.close()
    return index


def _env() -> dict:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, E5V_DEVICE="cpu")


def _wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=_env(), capture_output=True)
    return time.perf_counter() - start


def _phases(index: Path, variant: str) -> dict[str, float]:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(index), variant, QUERY],
        check=True,
        env=_env(),
        capture_output=True,
        text=True,
    ).stdout
    wall = time.perf_counter() - start
    marks = json.loads(out.strip().splitlines()[-1])
    phases = {name: t - marks[i][1] for i, (name, t) in enumerate(marks[1:])}
    phases["outside the phases (start-up, exit)"] = wall - sum(phases.values())
    return phases


# The console entry point before os._exit: click's group, then the interpreter's own exit.
PYTHONS_EXIT = "from e5v_search.cli import cli; cli()"


def measure(index: Path, repeats: int) -> tuple[list[float], dict, dict[str, list[float]]]:
    interpreter, phases = [], {v: [] for v in VARIANTS}
    command = {"quick": [], "python": []}
    search = ["search", QUERY, "--index", str(index)]
    for _ in range(repeats):
        interpreter.append(_wall([sys.executable, "-c", "pass"]))
        for variant in VARIANTS:
            phases[variant].append(_phases(index, variant))
        command["quick"].append(_wall([sys.executable, "-m", "e5v_search.cli", *search]))
        command["python"].append(_wall([sys.executable, "-c", PYTHONS_EXIT, *search]))
    return interpreter, phases, command


def table(interpreter, phases, command, repeats: int) -> str:
    names = list(phases[VARIANTS[0]][0])
    median = {
        v: {n: statistics.median(run[n] for run in runs) for n in names}
        for v, runs in phases.items()
    }
    rows = [f"| interpreter start (`python -c pass`) | {statistics.median(interpreter):.2f} s | |"]
    for name in names:
        a, b = median[VARIANTS[0]][name], median[VARIANTS[1]][name]
        rows.append(f"| {name} | {a:.2f} s | {b:.2f} s |")
    totals = [sum(median[v].values()) for v in VARIANTS]
    rows.append(f"| **process, total** | **{totals[0]:.2f} s** | **{totals[1]:.2f} s** |")
    quick, python = (statistics.median(command[k]) for k in ("quick", "python"))
    rows.append(
        f"| `e5v-search search {QUERY!r} --index X`, wall, ending with `os._exit` (now) | "
        f"**{quick:.2f} s** (min {min(command['quick']):.2f}) | |"
    )
    rows.append(
        f"| the same, ending as Python does (before) | {python:.2f} s "
        f"(min {min(command['python']):.2f}) | |"
    )
    return (
        "A one-shot text search with the tiny trained checkpoint (so the model load and the "
        "forward are tiny; with E5-V the load is 15.6 GiB of weights and the forward ~10 s on "
        "this CPU, see the CPU full-width table), index of the 48 sample images, each "
        f"process fresh, medians of {repeats} interleaved runs. Two ways to import LLaVA-NeXT: "
        "the top-level `from transformers import LlavaNextModel, LlavaNextProcessor` (what "
        "the engine does) and straight from `transformers.models.llava_next` (the model load "
        "after it still goes through the top-level names).\n"
        f"Machine: {machine('cpu')}.\n"
        f"Command: `python scripts/bench_oneshot.py {' '.join(sys.argv[1:])}`\n\n"
        "| phase | top-level import | `transformers.models.llava_next` import |\n|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nThe one-shot search ends {python - quick:.2f} s sooner ({python / quick:.2f}x "
        "faster) since it skips the interpreter's teardown."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="write into docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        index = build_index(Path(folder))
        markdown = table(*measure(index, args.repeats), args.repeats)
    print(markdown)
    if args.record:
        record("oneshot-search", markdown)


if __name__ == "__main__":
    main()
