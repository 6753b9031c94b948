"""What the catalog committed, remembered outside it, so that commits SQLite loses are named.

SQLite drops the end of a damaged `catalog.sqlite-wal` without a word (its frames' checksums
stop the replay), a lost -wal file takes every commit not yet checkpointed with it, and a
restored backup is older than the index it is put back into. So after each commit the writer
writes `commits.json` beside the catalog: the change counter, the next id and the item counts
it reached. On open, a catalog that is behind what `commits.json` or the manifest remember has
lost commits: the ids given to them are never given again, every writer says so, and the loss
is kept in the catalog (meta `lost`) until `e5v-search repair` or `rebuild` acknowledges it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..files import write_json

COMMITS = "commits.json"


def remember(folder: Path, seq: int, next_id: int, counts: dict[str, int]) -> None:
    data = {"seq": seq, "next_id": next_id, "counts": counts}
    write_json(folder / COMMITS, {**data, "checksum": _checksum(data)})


def recalled(folder: Path) -> dict:
    """The last commit remembered, {} when none is (an index made before, or a new one) or
    the file is damaged (see `damage`)."""
    data, _ = _read(folder)
    return data


def damage(folder: Path) -> str | None:
    """What is wrong with commits.json, or None (missing is not wrong: made before it)."""
    return _read(folder)[1]


def _read(folder: Path) -> tuple[dict, str | None]:
    try:
        data = json.loads((folder / COMMITS).read_text())
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as error:
        return {}, f"{COMMITS} is damaged ({type(error).__name__}): rewritten at the next commit"
    if not isinstance(data, dict) or data.pop("checksum", None) != _checksum(data):
        return {}, f"{COMMITS} is damaged (its checksum differs): rewritten at the next commit"
    return data, None


def _checksum(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def loss(catalog_state: dict, remembered: list[dict]) -> dict | None:
    """What the catalog lost, compared with what `remembered` (commits.json, the manifest)
    say it had reached: the change counters and ids that are gone, and the items of each
    modality when the counts are known. None when it lost nothing."""
    seq = max([r.get("seq") or r.get("covered_seq") or 0 for r in remembered], default=0)
    if catalog_state["seq"] >= seq:
        return None
    next_id = max([r.get("next_id") or 1 for r in remembered], default=1)
    counts = next((r["counts"] for r in remembered if r.get("counts")), None)
    gone = None
    if counts:
        gone = {m: n - catalog_state["counts"].get(m, 0) for m, n in counts.items()}
    return {
        "seq": [catalog_state["seq"] + 1, seq],
        "ids": [catalog_state["next_id"], next_id - 1],
        "items": gone,
    }


def describe(lost: dict) -> str:
    first, last = lost["seq"]
    commits = f"{last - first + 1} commit{'s' if last > first else ''}"
    low, high = lost["ids"]
    ids = f"ids {low}-{high} were given and are not in it" if high >= low else "no new ids"
    items = ""
    if lost.get("items"):
        parts = [f"{n} {m}{'s' if n != 1 else ''}" for m, n in lost["items"].items() if n > 0]
        items = f" ({', '.join(parts)} fewer than it had)" if parts else ""
    return (
        f"the catalog lost its last {commits} (change counter {first}-{last}: a damaged or "
        f"lost catalog.sqlite-wal, a restored backup?): {ids}{items}. Those ids are never "
        "given again; run the ingests that made them again to store their items, then "
        "`e5v-search repair` to acknowledge the loss"
    )
