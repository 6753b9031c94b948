"""The exceptions the library raises; the CLI turns them into messages and exit codes."""


class E5VSearchError(Exception):
    """Base class: every error the library raises on purpose."""


class ModelLoadError(E5VSearchError):
    """The model or processor could not be loaded from the given id or directory."""


class InputError(E5VSearchError):
    """An input (image, text, file) cannot be used; the message names it and says why."""


class NotRegularFileError(InputError):
    """A fifo, device or socket (or a link to one) where a file is read: refused before it is
    opened, since reading one can wait for a writer forever or never end."""

    def __init__(self, path, kind: str, link: bool = False):
        self.path = str(path)
        self.reason = f"is {'a link to ' if link else ''}{kind}, not a regular file"
        super().__init__(f"{path}: {self.reason}")


class EmbeddingError(E5VSearchError):
    """The model gave a non-finite vector for some inputs, even when each was embedded alone.

    `indices` are those inputs' positions; `vectors` holds every row, the good ones usable."""

    def __init__(self, message: str, indices: list[int], vectors):
        super().__init__(message)
        self.indices = indices
        self.vectors = vectors


class SpecMismatchError(E5VSearchError):
    """Vectors made with another model, revision, size or prompt than the index holds."""


class IndexNotFoundError(E5VSearchError):
    """No index at the given directory."""


class IndexDamagedError(E5VSearchError):
    """A file of the index is damaged in a way that cannot be repaired on the spot."""


class IndexBusyError(E5VSearchError):
    """Another process holds the index's writer lock for longer than we may wait."""


class IndexWriteError(E5VSearchError):
    """The index directory cannot be written now (a full disk, read-only media); nothing
    committed before was lost."""


class IndexBuildError(E5VSearchError):
    """The index type cannot be built from these vectors (bad factory string, too few vectors)."""


class ServeError(E5VSearchError):
    """The server cannot listen where it was asked to (the port is in use or not permitted)."""
