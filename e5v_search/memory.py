"""Measuring the memory a block of work adds (used by `check` and the benchmark scripts)."""

from __future__ import annotations

import re
from pathlib import Path


class PeakMemory:
    """Peak memory a block adds: CUDA allocator peak on a GPU, else the process's peak RSS
    (Linux's VmHWM, reset through /proc/self/clear_refs so each block is measured alone; 0
    where /proc is not there)."""

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
            self.bytes = max(_status_kb("VmHWM") * 1024 - self.start, 0)
        return False


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _status_kb(field: str) -> int:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(found.group(1)) if found else 0


def gib(n_bytes: float) -> str:
    if n_bytes < 2**30:
        return f"{n_bytes / 2**20:.0f} MiB"
    return f"{n_bytes / 2**30:.2f} GiB"
