"""The catalog's vector blob format, and the CRC-32s that every catalog row carries.

Vector blob format (`vectors.vector`): the embedding as `dim` little-endian values, nothing
else, at the precision the model computed it: float32 (`dim * 4` bytes; 16 KiB for E5-V's 4096)
from a float32 model, float16 (8 KiB) from a float16 or bfloat16 one (E5-V on a GPU): float16
keeps every bit a float16 model had and more than bfloat16's, at half the disk and half the
reads of a rebuild or a re-ranking. A blob's length says which, so a catalog can hold both
(`Catalog.compact_vectors` rewrites older float32 blobs of a half-precision catalog).

Each row carries a CRC-32 (`vectors.checksum` of the blob, `items.checksum` of the item's
fields, see `item_checksum`), written in the same transaction: a vector read for a rebuild, a
re-ranking or a filtered search is checked first (`vector_damage`), and a damaged one is named
and skipped, never indexed or scored. Rows written before checksums (NULL) are read as they are.
"""

from __future__ import annotations

import json
import zlib

import numpy as np

from ..spec import Spec

HALF_DTYPES = ("float16", "bfloat16")  # models whose vectors are stored as float16
CHECKED_FIELDS = ("source", "locator", "text", "content_hash", "width", "height", "metadata")


def stored_dtype(spec: Spec) -> str:
    return "<f2" if spec.dtype in HALF_DTYPES else "<f4"


def as_stored(vectors: np.ndarray, spec: Spec) -> np.ndarray:
    """The vectors as the catalog will give them back (float32 values): what an index built
    now must hold to equal one rebuilt from the catalog later."""
    return np.asarray(vectors, dtype=stored_dtype(spec)).astype(np.float32)


def encode_vectors(vectors: np.ndarray, dtype: str = "<f4") -> list[bytes]:
    return [row.tobytes() for row in np.ascontiguousarray(vectors, dtype=dtype)]


def decode_vectors(blobs: list[bytes], dim: int) -> np.ndarray:
    if not blobs:
        return np.empty((0, dim), dtype=np.float32)
    widths = {len(blob) for blob in blobs}
    if len(widths) == 1:
        dtype = "<f2" if widths == {2 * dim} else "<f4"
        return (
            np.frombuffer(b"".join(blobs), dtype=dtype).reshape(len(blobs), dim).astype(np.float32)
        )
    return np.concatenate([decode_vectors([blob], dim) for blob in blobs])


def vector_damage(blob, checksum, dim) -> str | None:
    """What is wrong with a stored vector blob, or None (NULL checksum: written before them)."""
    if blob is None:
        return "missing"
    if dim and len(blob) not in (2 * dim, 4 * dim):
        return f"{len(blob)} bytes, not {2 * dim} or {4 * dim}"
    if checksum is not None and zlib.crc32(blob) != checksum:
        return "its checksum differs from the one written with it"
    return None


def item_checksum(row: dict) -> int:
    """CRC-32 of what an item is (not of its file state or time stamps, which may change)."""
    values = [row.get("modality"), *(row.get(f) for f in CHECKED_FIELDS)]
    return zlib.crc32(json.dumps(values, ensure_ascii=False).encode("utf-8", "surrogatepass"))
