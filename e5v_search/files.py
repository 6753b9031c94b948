"""Files written so that a crash leaves the old one or the whole new one, and content hashes.

Every file the package writes in place (index files, masks, the manifest, Ray shards,
thumbnails) goes through `replacing`: a temporary file in the same folder (named `*.tmp`, which a
writer's clean-up recognises), fsynced, moved over the target with `os.replace`, then the folder
fsynced so the rename itself survives a power cut.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path to write the new `path` to; it replaces `path` when the block succeeds
    and is removed when it fails."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    # mkstemp makes the file private (0600): the new file gets the mode any file made here
    # would have, so another account that may read the index can still read its files.
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def write_bytes(path: str | Path, write) -> None:
    """Replace `path` with what `write(file)` writes to a binary file object."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        write(f)


def write_json(path: str | Path, data) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


def _fsync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
