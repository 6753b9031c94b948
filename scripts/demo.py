"""The README's main job: build the tiny checkpoint, draw a few images, and run
`e5v-search similarity` on them, printing the matrix the E5-V model card prints.

With the tiny checkpoint (random weights) the numbers are structurally right but mean nothing;
with `--model royokong/e5-v` on a GPU the matching pairs score highest.
"""

import shlex
import subprocess
import sys
from pathlib import Path

from e5v_search.config import cache_home
from e5v_search.testing import cached_tiny_checkpoint, make_sample_images

TEXTS = [
    "A red circle on a white background.",
    "A green circle in a wide picture.",
    "A blue circle in a tall picture.",
    "A yellow circle in a very wide picture.",
]


def main() -> None:
    model = cached_tiny_checkpoint(legacy=True)
    images = make_sample_images(cache_home() / "demo-images")
    command = [
        str(Path(sys.executable).with_name("e5v-search")),
        "similarity",
        "--model",
        str(model),
    ]
    for text in TEXTS:
        command += ["--text", text]
    for image in images:
        command += ["--image", str(image)]
    print("Tiny E5-V checkpoint (random weights, the real checkpoint's traps):", model)
    print("$", shlex.join(["e5v-search"] + command[1:]), "\n", flush=True)
    subprocess.run(command, check=True)
    print(
        "\nWith random weights these scores mean nothing; run the same command with "
        "--model royokong/e5-v (a GPU with 16 GB) for real ones."
    )


if __name__ == "__main__":
    main()
