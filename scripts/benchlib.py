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


_ALLOCATION_FAILURES = (
    "out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "cudaErrorMemoryAllocation",
    "CUDA error: out of memory",
)


def is_allocation_failure(error: BaseException) -> bool:
    """A failure to allocate device memory, whichever way CUDA, cuBLAS or cuDNN reports it
    (only the first arrives as torch.cuda.OutOfMemoryError)."""
    try:
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:
        pass
    return isinstance(error, RuntimeError) and any(s in str(error) for s in _ALLOCATION_FAILURES)
