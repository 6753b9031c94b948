"""One writer at a time per index directory, across processes: an advisory lock (flock) on
`<index>/write.lock`, held by every command that writes (ingest, delete, rebuild, a repair, a
migration). Readers (search, info, serve) never take it.

The OS releases a flock when its process dies, SIGKILL included, so a lock is never left stale.
The holder writes who it is (pid, what it does, since when) into the lock file, so a second
writer can say whom it waits for and, after its timeout, name the holder in its error.

A process that opens an index to create it holds a shared flock on its folder until it closes
it (CreationHold): an index with nothing committed that no one holds was left by a creator that
died before its first commit (SIGKILL), which the next open removes; a creator that closes with
nothing committed removes the index only when it holds the folder alone.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ..config import LOCK_TIMEOUT
from ..errors import IndexBusyError, IndexWriteError

LOCK_FILE = "write.lock"
_POLL = 0.1


class WriterLock:
    def __init__(
        self, directory: str | Path, purpose: str, timeout: float | None = None, on_wait=None
    ):
        self.path = Path(directory) / LOCK_FILE
        self.purpose = purpose
        self.timeout = LOCK_TIMEOUT if timeout is None else float(timeout)
        self.on_wait = on_wait  # called once with a message when the lock is busy
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = self._open()
        deadline, told = time.monotonic() + self.timeout, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _describe(fd)
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise IndexBusyError(
                        f"{self.path.parent} is being written by {holder}; gave up after "
                        f"{self.timeout:g} s. Wait for it to finish, or give a longer "
                        "--lock-timeout (E5V_LOCK_TIMEOUT)."
                    ) from None
                if not told and self.on_wait:
                    self.on_wait(f"waiting for {holder} to finish writing {self.path.parent}")
                    told = True
                time.sleep(_POLL)
        who = {
            "pid": os.getpid(),
            "purpose": self.purpose,
            "command": " ".join(sys.argv[:3]),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(who).encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same, only its holder goes unnamed
        self._fd = fd

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except IsADirectoryError:
            raise IndexWriteError(
                f"{self.path} is a directory, not the writer lock file: remove it "
                f"(`rmdir {self.path}`) and run the command again"
            ) from None
        except OSError as error:
            raise IndexWriteError(
                f"cannot take the writer lock of {self.path.parent} ({error.strerror}): writing "
                "an index needs write access to its directory; reading it does not"
            ) from error

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _describe(fd: int) -> str:
    try:
        who = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        who = {}
    if not who:
        return "another process"
    purpose, since, pid = who.get("purpose", "write"), who.get("since"), who.get("pid")
    return f"the {purpose} started at {since} by pid {pid} ({who.get('command', '?')})"


class CreationHold:
    """A shared flock on an index folder, held while a process has it open to create it."""

    def __init__(self, directory: Path):
        self._fd: int | None = os.open(directory, os.O_RDONLY)
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def alone(self) -> bool:
        """Whether no other process holds the folder (this hold becomes exclusive if so)."""
        return _exclusive(self._fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    @staticmethod
    def held(directory: Path) -> bool:
        """Whether a process that created `directory` still has it open."""
        fd = os.open(directory, os.O_RDONLY)
        try:
            return not _exclusive(fd)
        finally:
            os.close(fd)


def _exclusive(fd: int) -> bool:
    """Take an exclusive flock on `fd` if no one else holds one; whether it was taken."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
