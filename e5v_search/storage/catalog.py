"""The catalog: one SQLite file (sqlite-utils, WAL) that is the source of truth of an index.

It holds every item (modality, source, text, content hash, image size, user metadata), its
vector, the embedding spec the vectors were made with, and the ingest errors. The FAISS files
beside it are derived from it and can always be rebuilt from it without re-encoding.

Vector blob format (`vectors.vector`): the embedding as `dim` little-endian values, nothing
else, at the precision the model computed it: float32 (`dim * 4` bytes; 16 KiB for E5-V's 4096)
from a float32 model, float16 (8 KiB) from a float16 or bfloat16 one (E5-V on a GPU): float16
keeps every bit a float16 model had and more than bfloat16's, at half the disk and half the
reads of a rebuild or a re-ranking. A blob's length says which, so a catalog can hold both
(`compact_vectors` rewrites older float32 blobs of a half-precision catalog).

Every write is one transaction that takes the next value of a change counter (`seq`) and stamps
it on the items it writes (and on the ids it deletes, in `deleted`), so an index file that
missed some changes knows exactly which ones (see store.py). Ids are never reused.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sqlite_utils

from ..errors import InputError
from ..spec import Spec, check
from .migrations import migrate, transaction

MODALITIES = ("image", "text")
ITEM_FIELDS = (
    "source", "locator", "text", "content_hash", "width", "height", "metadata",
    "file_size", "file_mtime_ns",
)  # fmt: skip
_CHUNK = 5000  # ids per IN (...) list: well under SQLite's variable limit
_METADATA_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


HALF_DTYPES = ("float16", "bfloat16")  # models whose vectors are stored as float16


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


def parse_filters(pairs) -> dict:
    """["album=2024", "color=red"] -> {"album": "2024", "color": "red"} (CLI and HTTP)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"filter {pair!r}: write KEY=VALUE")
        out[key] = value
    return out


def one_expression(where: str) -> str:
    """`where` if it is one SQL expression: parentheses that never close more than they open,
    no statement separator and no comment outside quotes. Otherwise a filter such as
    `0) UNION SELECT id FROM items --` would step out of the parentheses it is put in."""
    depth, quote, i = 0, None, 0
    while i < len(where):
        char = where[i]
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"`[":
            quote = "]" if char == "[" else char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise InputError(f"bad filter {where!r}: a ')' closes more than it opened")
        elif char == ";" or where.startswith(("--", "/*"), i):
            raise InputError(f"bad filter {where!r}: one condition, without ';' or comments")
        i += 1
    if depth or quote:
        raise InputError(f"bad filter {where!r}: unbalanced parentheses or quotes")
    return where


def metadata_filter(filters: dict) -> tuple[str, list]:
    """{"label": "dog", "size.w": 3} -> an SQL condition on the metadata JSON and its params."""
    clauses, params = [], []
    for key, value in filters.items():
        if not _METADATA_KEY.match(key):
            raise InputError(f"metadata key {key!r}: use letters, digits, _ and dots")
        clauses.append(f"json_extract(metadata, '$.{key}') = ?")
        params.append(value)
    return " AND ".join(clauses) or "1", params


class Catalog:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), so one
        # batch of items and its vectors land together or not at all.
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash of the process loses nothing
        conn.execute("PRAGMA foreign_keys=ON")
        self.conn = conn
        self.migrations_applied = migrate(conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- meta: spec, counters --------------------------------------------------------------

    def _meta(self, key: str, default=None):
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def _set_meta(self, key: str, value) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    @property
    def seq(self) -> int:
        return self._meta("seq", 0)

    def spec(self) -> dict | None:
        return self._meta("spec")

    @property
    def dim(self) -> int | None:
        spec = self.spec()
        return spec["dim"] if spec else None

    def check_spec(self, spec: Spec, purpose: str = "query") -> list[str]:
        """spec.check against this catalog's spec: raises on a mismatch, returns notes."""
        return check(self.spec(), spec, purpose)

    # -- writes ----------------------------------------------------------------------------

    @property
    def next_id(self) -> int:
        return self._meta("next_id", 1)

    def never_reuse_below(self, next_id: int) -> None:
        """Ids below `next_id` were given before (the index files say so) even if this catalog
        lost them (a lost -wal file, a restored backup): never give them again."""
        with transaction(self.conn):
            if self._meta("next_id", 1) < next_id:
                self._set_meta("next_id", next_id)

    def _record_spec(self, spec: Spec) -> None:
        """The first write records the spec; a later one by the same model fills in the
        fingerprint an index made before fingerprints lacks (check_spec compared names)."""
        stored = self.spec()
        if stored is None:
            self._set_meta("spec", spec.to_dict())
        elif not stored.get("fingerprint") and spec.fingerprint:
            self._set_meta("spec", {**stored, "fingerprint": spec.fingerprint})

    def add(self, items: list[dict], vectors: np.ndarray, spec: Spec) -> list[int]:
        """Insert items and their vectors in one transaction; return their new ids."""
        self._check_batch(items, vectors, spec)
        with transaction(self.conn):
            self._record_spec(spec)
            seq, first = self.seq + 1, self._meta("next_id", 1)
            ids = list(range(first, first + len(items)))
            stamp = now()
            rows = [
                (i, item["modality"], *_item_values(item), stamp, stamp, seq)
                for i, item in zip(ids, items, strict=True)
            ]
            try:
                self.conn.executemany(
                    "INSERT INTO items (id, modality, source, locator, text, content_hash, "
                    "width, height, metadata, file_size, file_mtime_ns, added_at, updated_at, "
                    "seq) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
            except sqlite3.IntegrityError as error:
                raise InputError(
                    f"an item from the same source and locator is already in the catalog "
                    f"({error}): update it instead of adding it again"
                ) from error
            self.conn.executemany(
                "INSERT INTO vectors (item_id, vector) VALUES (?, ?)",
                zip(ids, encode_vectors(vectors, stored_dtype(spec)), strict=True),
            )
            self._set_meta("next_id", first + len(items))
            self._set_meta("seq", seq)
        return ids

    def update(self, ids: list[int], items: list[dict], vectors: np.ndarray, spec: Spec) -> None:
        """Replace the fields and vectors of existing items (a changed source file)."""
        self._check_batch(items, vectors, spec)
        with transaction(self.conn):
            self._record_spec(spec)
            seq, stamp = self.seq + 1, now()
            self.conn.executemany(
                "UPDATE items SET source=?, locator=?, text=?, content_hash=?, width=?, "
                "height=?, metadata=?, file_size=?, file_mtime_ns=?, updated_at=?, seq=? "
                "WHERE id=?",
                [(*_item_values(item), stamp, seq, i) for i, item in zip(ids, items, strict=True)],
            )
            self.conn.executemany(
                "UPDATE vectors SET vector=? WHERE item_id=?",
                zip(encode_vectors(vectors, stored_dtype(spec)), ids, strict=True),
            )
            self._set_meta("seq", seq)

    def delete(self, ids) -> int:
        """Delete items (and their vectors); their ids are kept in `deleted` for the index."""
        ids = [int(i) for i in ids]
        removed = 0
        with transaction(self.conn):
            seq = self.seq + 1
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                self.conn.execute(
                    f"INSERT OR REPLACE INTO deleted (item_id, modality, seq) "
                    f"SELECT id, modality, {seq} FROM items WHERE id IN ({marks})",
                    chunk,
                )
                removed += self.conn.execute(
                    f"DELETE FROM items WHERE id IN ({marks})", chunk
                ).rowcount
            self._set_meta("seq", seq)
        return removed

    def record_error(self, source: str, reason: str, locator: str = "") -> None:
        """Keep the latest error of an input (a rerun replaces it rather than adding one)."""
        with transaction(self.conn):
            self.conn.execute(
                "INSERT INTO errors (source, locator, reason, occurred_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (source, locator) DO UPDATE SET reason = excluded.reason, "
                "occurred_at = excluded.occurred_at",
                (str(source), locator, reason, now()),
            )

    def clear_errors(self, keys: list[tuple[str, str]]) -> None:
        """Forget the errors of inputs that have now been ingested."""
        if keys:
            with transaction(self.conn):
                self.conn.executemany("DELETE FROM errors WHERE source = ? AND locator = ?", keys)

    def touch(self, item_id: int, **fields) -> None:
        """Change fields that do not change the vector (metadata, file state): no re-indexing."""
        values = dict(zip(ITEM_FIELDS, _item_values(fields), strict=True))
        sets = {k: values[k] for k in fields}
        assignments = ", ".join(f"{k} = ?" for k in sets)
        with transaction(self.conn):
            self.conn.execute(
                f"UPDATE items SET {assignments}, updated_at = ? WHERE id = ?",
                [*sets.values(), now(), item_id],
            )

    def _check_batch(self, items, vectors, spec) -> None:
        if len(items) != len(vectors):
            raise InputError(f"{len(items)} items but {len(vectors)} vectors")
        bad = [item.get("modality") for item in items if item.get("modality") not in MODALITIES]
        if bad:
            raise InputError(f"modality must be 'image' or 'text', got {bad[0]!r}")
        self.check_spec(spec, purpose="ingest")
        if len(vectors) and np.shape(vectors)[1] != spec.dim:
            raise InputError(
                f"vectors have {np.shape(vectors)[1]} values, the spec says {spec.dim}"
            )
        finite = np.isfinite(np.asarray(vectors, dtype=np.float32)).all(axis=1)
        if len(vectors) and not finite.all():
            bad = [item.get("source") for item, ok in zip(items, finite, strict=True) if not ok]
            raise InputError(f"non-finite vectors are never stored (items from {bad[:3]})")

    # -- reads -----------------------------------------------------------------------------

    def count(self, modality: str | None = None) -> int:
        """Items of a modality, or all: O(1), from the counts the triggers keep (m004)."""
        if modality is None:
            return self.conn.execute("SELECT sum(n) FROM counts").fetchone()[0]
        row = self.conn.execute("SELECT n FROM counts WHERE modality = ?", (modality,)).fetchone()
        return row[0] if row else 0

    def ids(self, modality: str | None = None, where: str | None = None, params=()) -> np.ndarray:
        """Ids of the items of `modality` (all if None) that satisfy the SQL condition `where`
        (on the items table; metadata through json_extract(metadata, '$.key'))."""
        sql, args = "SELECT id FROM items WHERE 1", []
        if modality:
            sql, args = sql + " AND modality = ?", [modality]
        if where:
            sql += f" AND ({one_expression(where)})"
            args += list(params)
        try:
            rows = self.conn.execute(sql + " ORDER BY id", args).fetchall()
        except sqlite3.Error as error:
            raise InputError(f"bad filter {where!r}: {error}") from error
        return np.array([r[0] for r in rows], dtype=np.int64)

    def get(self, ids) -> list[dict]:
        """Item rows (metadata decoded) in the order of `ids`; unknown ids are skipped."""
        found = {}
        for chunk in _chunks([int(i) for i in ids]):
            marks = ",".join("?" * len(chunk))
            for row in self.db.query(f"SELECT * FROM items WHERE id IN ({marks})", chunk):
                row["metadata"] = json.loads(row["metadata"])
                found[row["id"]] = row
        return [found[int(i)] for i in ids if int(i) in found]

    def vectors(self, ids) -> np.ndarray:
        """Stored vectors in the order of `ids` (all must exist). Decoded a chunk at a time
        into the result: memory holds the result and one chunk (a rebuild's training sample is
        up to 2 GiB)."""
        ids = [int(i) for i in ids]
        unique = list(dict.fromkeys(ids))
        row = {i: n for n, i in enumerate(unique)}
        out = np.empty((len(unique), self.dim or 0), dtype=np.float32)
        seen = set()
        for chunk in _chunks(unique):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT item_id, vector FROM vectors WHERE item_id IN ({marks})"
            rows = self.conn.execute(sql, chunk).fetchall()
            if rows:
                out[[row[r[0]] for r in rows]] = decode_vectors([r[1] for r in rows], out.shape[1])
            seen.update(r[0] for r in rows)
        if len(seen) < len(unique):
            missing = [i for i in unique if i not in seen]
            raise KeyError(f"no stored vector for item ids {missing[:5]}")
        return out if len(unique) == len(ids) else out[[row[i] for i in ids]]

    def iter_vectors(self, modality: str, batch: int = 20000, since_seq: int | None = None):
        """(ids, vectors) chunks of one modality in id order, optionally only items written
        after `since_seq`; memory stays at one chunk."""
        sql = (
            "SELECT v.item_id, v.vector FROM vectors v JOIN items i ON i.id = v.item_id "
            "WHERE i.modality = ?"
        )
        args = [modality]
        if since_seq is not None:
            sql, args = sql + " AND i.seq > ?", args + [since_seq]
        cursor = self.conn.execute(sql + " ORDER BY v.item_id", args)
        while rows := cursor.fetchmany(batch):
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            yield ids, decode_vectors([r[1] for r in rows], self.dim)

    def compact_vectors(self, batch: int = 5000) -> int:
        """Rewrite float32 blobs as float16 when the catalog's model computes in half precision
        (catalogs written before blobs could be float16); a transaction per batch, each blob
        valid either way, so an interrupted run just leaves some to do. Returns how many."""
        spec, dim = self.spec(), self.dim
        if not spec or spec.get("dtype") not in HALF_DTYPES:
            return 0
        done = 0
        while True:
            rows = self.conn.execute(
                "SELECT item_id, vector FROM vectors WHERE length(vector) = ? LIMIT ?",
                (4 * dim, batch),
            ).fetchall()
            if not rows:
                return done
            vectors = decode_vectors([r[1] for r in rows], dim)
            with transaction(self.conn):
                self.conn.executemany(
                    "UPDATE vectors SET vector=? WHERE item_id=?",
                    zip(encode_vectors(vectors, "<f2"), [r[0] for r in rows], strict=True),
                )
            done += len(rows)

    def lookup(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """The stored rows of these (source, locator) keys, by key."""
        found = {}
        for start in range(0, len(keys), _CHUNK // 2):
            chunk = keys[start : start + _CHUNK // 2]
            marks = " OR ".join(["(source = ? AND locator = ?)"] * len(chunk))
            args = [value for key in chunk for value in key]
            for row in self.db.query(f"SELECT * FROM items WHERE {marks}", args):
                row["metadata"] = json.loads(row["metadata"])
                found[(row["source"], row["locator"])] = row
        return found

    def find_hash(self, modality: str, content_hash: str) -> int | None:
        """An item of this modality with this content: its vector can be reused."""
        row = self.conn.execute(
            "SELECT id FROM items WHERE modality = ? AND content_hash = ? LIMIT 1",
            (modality, content_hash),
        ).fetchone()
        return row[0] if row else None

    def keys_in(self, scope: list[str]) -> dict[tuple[str, str], int]:
        """(source, locator) -> id of the items whose source is, or lies under, a scope entry."""
        found = {}
        for entry in scope:
            sql = "SELECT id, source, locator FROM items WHERE "
            if entry.endswith(os.sep):  # a folder: everything below it
                rows = self.conn.execute(sql + "substr(source, 1, ?) = ?", (len(entry), entry))
            else:
                rows = self.conn.execute(sql + "source = ?", (entry,))
            found.update({(source, locator): i for i, source, locator in rows})
        return found

    def deleted_since(self, seq: int) -> dict[str, np.ndarray]:
        out = {m: [] for m in MODALITIES}
        for item_id, modality in self.conn.execute(
            "SELECT item_id, modality FROM deleted WHERE seq > ?", (seq,)
        ):
            out[modality].append(item_id)
        return {m: np.array(v, dtype=np.int64) for m, v in out.items()}

    def prune_deleted(self, upto_seq: int) -> None:
        """Forget deletions that every index file has applied."""
        with transaction(self.conn):
            self.conn.execute("DELETE FROM deleted WHERE seq <= ?", (upto_seq,))

    def errors(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM errors ORDER BY id"))

    def sample_ids(self, modality: str, n: int, seed: int = 0) -> np.ndarray:
        ids = self.ids(modality)
        if len(ids) <= n:
            return ids
        return np.sort(np.random.default_rng(seed).choice(ids, size=n, replace=False))


def _item_values(item: dict) -> tuple:
    metadata = item.get("metadata") or {}
    return (
        None if item.get("source") is None else str(item["source"]),
        str(item.get("locator") or ""),
        item.get("text"),
        item.get("content_hash"),
        item.get("width"),
        item.get("height"),
        json.dumps(metadata, ensure_ascii=False, sort_keys=True, default=str),
        item.get("file_size"),
        item.get("file_mtime_ns"),
    )


def _chunks(ids: list[int]):
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]
