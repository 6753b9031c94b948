"""Files written so that a crash leaves the old one or the whole new one, files read only when
they are regular files, and content hashes.

Every file the package writes in place (index files, masks, the manifest, Ray shards,
thumbnails) goes through `replacing`: a temporary file in the same folder (named `*.tmp`, which a
writer's clean-up recognises), fsynced, moved over the target with `os.replace`, then the folder
fsynced so the rename itself survives a power cut.

Every user's file the package reads (images, text files, the bytes it hashes) is opened with
`open_regular`: a fifo would block the reader until some writer comes, and a device such as
/dev/zero never ends, so either (or a symbolic link to one) is refused before it is opened.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import NotRegularFileError

_KINDS = {
    stat.S_IFIFO: "a fifo",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}
# O_NONBLOCK: opening a fifo swapped in after the check returns at once instead of waiting for a
# writer; O_NOCTTY: a terminal opened so never becomes this process's controlling terminal.
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)


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


def check_regular(path: str | Path, status: os.stat_result) -> None:
    """Raise unless `status` (of `path`, links followed) is a regular file's: IsADirectoryError
    for a folder, NotRegularFileError naming the kind for a fifo, device or socket."""
    if stat.S_ISREG(status.st_mode):
        return
    if stat.S_ISDIR(status.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    kind = _KINDS.get(stat.S_IFMT(status.st_mode), "not a file")
    raise NotRegularFileError(path, kind, link=os.path.islink(path))


def open_regular(path: str | Path) -> BinaryIO:
    """`path` open for reading (binary, buffered, blocking) if it is a regular file or a link to
    one; else it raises as `check_regular` does, before opening it. The opened file is checked
    again, so a file swapped for a fifo between the check and the open is refused too."""
    check_regular(path, os.stat(path))
    fd = os.open(path, _READ_FLAGS)
    try:
        check_regular(path, os.fstat(fd))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a regular file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open_regular(path) as f:
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
