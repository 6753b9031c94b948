"""Writes that the disk refuses, said in one line: a full disk, or media that cannot be written.

SQLite rolls a transaction back when it cannot complete it, and index files are only ever
replaced whole (files.replacing), so nothing committed is lost: the message says so, with the
free space and about how much the write needed, and running the command again continues.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from ..errors import IndexWriteError


def write_error(folder: Path, items: int, need: int, error) -> IndexWriteError | None:
    """The one-line error for `error` met while writing `folder`, or None when it is not a
    write the disk refused (or not this directory's: a source file a run reads, say)."""
    problem = kind(error)
    if problem is None and "disk i/o error" in str(error).lower():
        # SQLite says no more than this when it cannot grow its -shm or -wal file.
        problem = "full" if shutil.disk_usage(folder).free < 2**20 else None
    named = getattr(error, "filename", None)
    if problem is None or (named and folder.resolve() not in Path(named).parents):
        return None
    kept = (
        f"Nothing committed was lost: the catalog holds {items} items and the index files "
        "their last save (the next write catches up)"
    )
    if problem == "read-only":
        return IndexWriteError(
            f"{folder} cannot be written ({error}); reading it still works. {kept}."
        )
    free = shutil.disk_usage(folder).free
    needed = f"; this write needed about {size(need)} more" if need else ""
    return IndexWriteError(
        f"{folder}: its disk is full ({size(free)} free{needed}). {kept}. Free some space and "
        "run the command again: it continues where this one stopped."
    )


def kind(error) -> str | None:
    """Which refusal `error` is: "full", "read-only", or None for any other error."""
    code = getattr(error, "errno", None)
    text = str(error).lower()
    if code in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in text or "no space left" in text:
        return "full"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly database" in text:
        return "read-only"
    if "read-only file system" in text or "permission denied" in text:
        return "read-only"
    return None


def size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
