"""Reaching the Hugging Face hub in seconds, or not at all.

huggingface_hub asks the hub about every file a checkpoint loads (a HEAD request each, with a
10 s timeout, HF_HUB_ETAG_TIMEOUT, and up to 60 s with retries and back-off on network errors)
before it falls back to its cache, so an offline machine waits minutes, then fails on the
processor. Before a hub id loads, `hub_options` decides once per process: HF_HUB_OFFLINE (or
TRANSFORMERS_OFFLINE) set, or the endpoint not answering within HUB_PROBE_SECONDS, means the
cache alone (`local_files_only`), and a model that is not in it is one ModelLoadError saying
what to do. A local directory never touches the network.
"""

from __future__ import annotations

import functools
from pathlib import Path

from ..errors import ModelLoadError

HUB_PROBE_SECONDS = 3.0


def hub_options(model: str, revision: str | None = None) -> dict:
    """The from_pretrained options for `model`: {} to ask the hub, {"local_files_only": True}
    to read the cache alone; ModelLoadError when neither can give it."""
    path = Path(str(model)).expanduser()
    if path.is_dir():
        return {}
    if str(model).startswith(("/", ".", "~")) or path.exists():  # a path, not a hub id
        raise ModelLoadError(
            f"cannot load an E5-V model from {model!r}: no such directory. Give a hub id "
            "(royokong/e5-v) or a local directory with config.json, the weights and the "
            "processor files"
        )
    from huggingface_hub import constants

    offline = constants.is_offline_mode()
    if not offline and _reachable(constants.ENDPOINT):
        return {}
    if _cached(model, revision):
        return {"local_files_only": True}
    why = (
        "HF_HUB_OFFLINE is set"
        if offline
        else f"the hub ({constants.ENDPOINT}) did not answer within {HUB_PROBE_SECONDS:g} s"
    )
    raise ModelLoadError(
        f"cannot load {model!r}: {why}, and it is not in the local cache (HF_HOME). Download it "
        "once where the hub can be reached (`hf download "
        f"{model}`), or pass --model DIR of a local copy (E5-V is royokong/e5-v)"
    )


@functools.lru_cache(maxsize=4)
def _reachable(endpoint: str) -> bool:
    """Whether the hub answers at all (any HTTP status), through huggingface_hub's own
    session, so its proxy and certificate settings apply."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=HUB_PROBE_SECONDS)
    except Exception:  # noqa: BLE001 - any failure to connect means: not reachable now
        return False
    return True


def _cached(model: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(str(model), "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - a name the hub would refuse (a typo'd path): not cached
        return False
    return isinstance(found, str)
