"""What the engine answers with: search results and ingest reports (plain data, on the base
floor, so any shell may hold them), which modality a query finds unless told, the search modes
a query may use and the score threshold's cut."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .config import SEARCH_MODES
from .errors import InputError

# What a query returns when its caller does not say: the other modality (a text finds images);
# "more like" a stored item returns items of its own modality.
TARGET_OF = {"text": "image", "image": "text", "composed": "image"}


@dataclass
class Result:
    id: int
    score: float
    modality: str
    source: str | None
    locator: str
    text: str | None
    metadata: dict = field(default_factory=dict)

    @classmethod
    def of(cls, hit, row: dict) -> Result:
        """A search hit (id, score, modality) with its catalog row."""
        return cls(
            hit.id,
            hit.score,
            hit.modality,
            row["source"],
            row["locator"],
            row["text"],
            row["metadata"],
        )

    def to_dict(self) -> dict:
        return asdict(self)


class Results(list):
    """Search results, best first; `cut`: how many of the k best a score threshold removed
    (`min_score`), so that fewer than k came back."""

    def __init__(self, results=(), cut: int = 0):
        super().__init__(results)
        self.cut = cut


def check_mode(mode: str, text) -> None:
    """InputError unless `mode` is a search mode and a keyword or hybrid one has words."""
    if mode not in SEARCH_MODES:
        raise InputError(f"search mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
    if mode != "vector" and (text is None or not str(text).strip()):
        raise InputError(
            f"a {mode} search needs a query text (its words are matched): an image alone or "
            "a stored item (like) has none; use mode vector"
        )


def above(min_score, results: list[Result]) -> Results:
    """The results scoring at least `min_score`, with how many were cut."""
    if min_score is None:
        return Results(results)
    try:
        threshold = float(min_score)
    except (TypeError, ValueError):
        threshold = math.nan
    if not math.isfinite(threshold):
        raise InputError(f"min_score must be a finite number, got {min_score!r}")
    kept = [r for r in results if r.score >= threshold]
    return Results(kept, cut=len(results) - len(kept))


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    pruned: int = 0
    refreshed: int = 0  # items whose metadata changed without a new vector
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    index_changes: list[str] = field(default_factory=list)  # types the policy switched, and why

    @property
    def items_per_second(self) -> float:
        done = self.added + self.updated + self.unchanged
        return done / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "items_per_second": round(self.items_per_second, 2)}
