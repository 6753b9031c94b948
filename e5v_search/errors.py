"""The exceptions the library raises; the CLI turns them into messages and exit codes."""


class E5VSearchError(Exception):
    """Base class: every error the library raises on purpose."""


class ModelLoadError(E5VSearchError):
    """The model or processor could not be loaded from the given id or directory."""


class InputError(E5VSearchError):
    """An input (image, text, file) cannot be used; the message names it and says why."""
