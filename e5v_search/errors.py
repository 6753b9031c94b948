"""The exceptions the library raises; the CLI turns them into messages and exit codes."""


class E5VSearchError(Exception):
    """Base class: every error the library raises on purpose."""


class ModelLoadError(E5VSearchError):
    """The model or processor could not be loaded from the given id or directory."""


class InputError(E5VSearchError):
    """An input (image, text, file) cannot be used; the message names it and says why."""


class EmbeddingError(E5VSearchError):
    """The model gave a non-finite vector for some inputs, even when each was embedded alone.

    `indices` are those inputs' positions; `vectors` holds every row, the good ones usable."""

    def __init__(self, message: str, indices: list[int], vectors):
        super().__init__(message)
        self.indices = indices
        self.vectors = vectors
