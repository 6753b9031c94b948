"""Defaults shared by the library, the CLI and the scripts, each overridable by the environment."""

import os
from pathlib import Path

DEFAULT_MODEL = "royokong/e5-v"


def cache_home() -> Path:
    """Where built artefacts (tiny test checkpoints, thumbnails) live: $E5V_SEARCH_CACHE."""
    env = os.environ.get("E5V_SEARCH_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "e5v-search"
