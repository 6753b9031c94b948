"""The README's main job, end to end on this machine with no download: build the tiny E5-V
checkpoint, generate a small corpus (48 images in folders, a captions.jsonl), ingest it into
indexes/demo, then search text -> image and image -> text, printing each command and its output.

With the tiny checkpoint (random weights) rankings are structurally right but not meaningful: an
item's own text or image comes back first with score 1.0, the rest is noise. With
`--model royokong/e5-v` on a GPU the same commands give E5-V's real rankings.
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from e5v_search.config import cache_home
from e5v_search.testing import cached_tiny_checkpoint, make_sample_corpus

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("e5v-search"))


def run(*args: str, env: dict) -> None:
    print(f"\n$ e5v-search {shlex.join(args)}", flush=True)
    subprocess.run([CLI, *args], check=True, env=env, cwd=ROOT)


def main() -> None:
    model = cached_tiny_checkpoint(legacy=True)
    corpus = cache_home() / "demo-corpus"
    if not (corpus / "captions.jsonl").exists():
        make_sample_corpus(corpus)
    index = ROOT / "indexes" / "demo"
    shutil.rmtree(index, ignore_errors=True)
    env = dict(os.environ, E5V_MODEL=str(model), E5V_SEARCH_INDEX="demo")
    print(f"Tiny E5-V checkpoint (random weights, the real checkpoint's traps): {model}")
    print(f"Sample corpus: {corpus}")
    run("ingest", str(corpus / "images"), str(corpus / "captions.jsonl"), env=env)
    run("info", env=env)
    run("search", "A red circle on a grey background.", "-k", "5", env=env)
    run("search", "A red circle on a grey background.", "--type", "text", "-k", "3", env=env)
    run("search", "--image", str(corpus / "images/pale/blue-square-pale.png"), "-k", "3", env=env)
    run("search", "a shape", "--type", "text", "--meta", "color=green", "-k", "3", env=env)
    print(
        "\nWith the tiny checkpoint's random weights, only exact matches (score 1.0) mean "
        "anything. Run the same commands with --model royokong/e5-v on a GPU (16 GB) for "
        "E5-V's real rankings."
    )


if __name__ == "__main__":
    main()
