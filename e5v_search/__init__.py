"""e5v-search: multimodal vector search with E5-V.

Importing the package stays light (no torch, no transformers): heavy modules load on first use.
"""

from .errors import (
    E5VSearchError,
    EmbeddingError,
    IndexBuildError,
    IndexBusyError,
    IndexDamagedError,
    IndexNotFoundError,
    IndexWriteError,
    InputError,
    ModelLoadError,
    NotRegularFileError,
    ServeError,
    SpecMismatchError,
)

__version__ = "0.1.0"
__all__ = [
    "E5VEncoder",
    "E5VSearchError",
    "EmbeddingError",
    "Engine",
    "IndexBuildError",
    "IndexBusyError",
    "IndexDamagedError",
    "IndexNotFoundError",
    "IndexWriteError",
    "InputError",
    "ModelLoadError",
    "NotRegularFileError",
    "ServeError",
    "SpecMismatchError",
    "__version__",
]


def __getattr__(name):
    if name == "E5VEncoder":
        from .model.encoder import E5VEncoder

        return E5VEncoder
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(f"module 'e5v_search' has no attribute {name!r}")
