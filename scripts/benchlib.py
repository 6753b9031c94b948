"""Helpers shared by the benchmark scripts: memory peaks, the machine's name, the report file."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from e5v_search.memory import PeakMemory, gib  # noqa: F401 - the scripts import them from here

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    text = f"{os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}"
    if str(device).startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        text = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), " + text
    return text


def record(section: str, markdown: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the block between this section's markers in docs/benchmarks.md."""
    begin, end = f"<!-- {section}: begin -->", f"<!-- {section}: end -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
