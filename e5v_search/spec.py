"""What a vector depends on: the spec an index records and every query and ingest must match.

One frozen type, made by the model layer (`model.loading.vector_spec`, from a loaded encoder or
from a checkpoint's config alone), stored in the catalog as a JSON object, and compared by
`check` (the only place the rules live). Light on purpose: it imports nothing of the model, and
the storage layer uses it without one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .errors import SpecMismatchError

# Fields that change the vector space: a query or an ingest must match them exactly. When both
# sides carry a fingerprint of the weights, it replaces the model's name and revision (labels).
STRICT_FIELDS = ("model", "revision", "dim", "prompt_version")
FINGERPRINTED_FIELDS = ("fingerprint", "dim", "prompt_version")


@dataclass(frozen=True)
class Spec:
    model: str
    dim: int
    dtype: str
    prompt_version: str
    revision: str | None = None
    fingerprint: str | None = None  # of the weights: checkpoint.fingerprint
    transformers: str | None = None
    quantization: str | None = None  # int8, nf4: how the language model's weights were loaded

    @classmethod
    def from_dict(cls, data: dict) -> Spec:
        """The spec a catalog recorded (one written before a field existed lacks it)."""
        return cls(**{f: data.get(f) for f in cls.__dataclass_fields__})

    def with_prompt(self, version: str) -> Spec:
        """The same model's vectors made with another prompt (CIRR's gallery prompt)."""
        return replace(self, prompt_version=version)

    def to_dict(self) -> dict:
        return asdict(self)


def check(stored: dict | None, spec: Spec, purpose: str = "query") -> list[str]:
    """Refuse `spec` if it differs from the `stored` one in a field that changes the vector
    space (SpecMismatchError, saying what to use instead); return notes on harmless differences
    (dtype, transformers version, the same weights under another name)."""
    if stored is None:
        return []
    given = spec.to_dict()
    known = stored.get("fingerprint") and spec.fingerprint
    strict = FINGERPRINTED_FIELDS if known else STRICT_FIELDS
    differ = [f for f in strict if stored.get(f) != given.get(f)]
    if differ:
        said = ", ".join(
            f"weights: index {stored['fingerprint']} ({stored.get('model')}), {purpose} "
            f"{spec.fingerprint} ({spec.model})"
            if f == "fingerprint"
            else f"{f}: index {stored.get(f)!r}, {purpose} {given.get(f)!r}"
            for f in differ
        )
        raise SpecMismatchError(
            f"this index was built with other embeddings ({said}). Use the index's model "
            f"(--model {stored.get('model')}"
            + (f" --revision {stored['revision']}" if stored.get("revision") else "")
            + ") or a new index."
        )
    labels = ("model", "revision") if known else ()
    notes = [
        f"{f}: index {stored.get(f)!r}, {purpose} {given.get(f)!r}"
        + (" (the same weights)" if f in labels else "")
        for f in (*labels, "transformers")
        if stored.get(f) != given.get(f)
    ]
    if precision(stored) != precision(given):
        notes.append(
            f"precision: index vectors in {precision(stored)}, {purpose} in {precision(given)}: "
            "close, not equal (`e5v-search check --dtype/--quantize` measures how close)"
        )
    return notes


def precision(spec: dict) -> str:
    """The dtype, and the quantization when there is one: 'bfloat16', 'bfloat16 + int8'."""
    quantization = spec.get("quantization")
    return f"{spec.get('dtype')}" + (f" + {quantization}" if quantization else "")
