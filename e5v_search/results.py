"""What the engine answers with: search results and ingest reports (plain data, on the base
floor, so any shell may hold them), and which modality a query finds unless told."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    pruned: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    index_changes: list[str] = field(default_factory=list)  # types the policy switched, and why

    @property
    def items_per_second(self) -> float:
        done = self.added + self.updated + self.unchanged
        return done / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "items_per_second": round(self.items_per_second, 2)}
