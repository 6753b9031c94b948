"""Helpers shared by the benchmark scripts: memory peaks, the machine's name, the report file."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


class PeakMemory:
    """Peak memory a block adds: CUDA allocator peak on a GPU, else the process's peak RSS
    (Linux's VmHWM, reset through /proc/self/clear_refs so each block is measured alone)."""

    def __init__(self, device: str):
        self.cuda = str(device).startswith("cuda")
        self.bytes = 0

    def __enter__(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            _reset_peak_rss()
            self.start = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.start
        else:
            self.bytes = _status_kb("VmHWM") * 1024 - self.start
        return False


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


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


def gib(n_bytes: float) -> str:
    if n_bytes < 2**30:
        return f"{n_bytes / 2**20:.0f} MiB"
    return f"{n_bytes / 2**30:.2f} GiB"
