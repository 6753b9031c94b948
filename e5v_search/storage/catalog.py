"""The catalog: one SQLite file (sqlite-utils, WAL) that is the source of truth of an index.

It holds every item (modality, source, text, content hash, image size, user metadata), its
vector (in the blob format of blobs.py), the embedding spec the vectors were made with, and the
ingest errors. The FAISS files beside it are derived from it and can always be rebuilt from it
without re-encoding. Its schema changes only through the named migrations of migrations.py, run
when a writer opens it.

Every write is one transaction that takes the next value of a change counter (`seq`) and stamps
it on the items it writes (and on the ids it deletes, in `deleted`), so an index file that
missed some changes knows exactly which ones (see store.py). Ids are never reused; after each
commit `commits.json` remembers the counter, so a commit SQLite loses is named (commits.py).

Each row carries its CRC-32s (blobs.py), written in the same transaction: a vector read for a
rebuild, a re-ranking or a filtered search is checked first, and a damaged one is named and
skipped (in `damaged_rows`), never indexed or scored. Readers open the file read-only
(`Catalog(path, writable=False)`), so they write nothing, even on read-only media; all they
call is in catalog_reads.py, the base of `Catalog`.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import sqlite_utils

from ..closing import Closing
from ..errors import IndexWriteError, InputError
from ..spec import Spec
from . import commits
from .blobs import (
    CHECKED_FIELDS,
    HALF_DTYPES,
    decode_vectors,
    encode_vectors,
    item_checksum,
    stored_dtype,
)
from .catalog_reads import MODALITIES, CatalogReads, chunks
from .migrations import migrate

ITEM_FIELDS = (*CHECKED_FIELDS, "file_size", "file_mtime_ns")  # and the file state


UNIT_TOLERANCE = 1e-2  # float16 storage and float32 sums stay far inside it


class Catalog(CatalogReads, Closing):
    def __init__(self, path: str | Path, writable: bool = True):
        self.path = Path(path)
        self.writable = writable
        self.migrations_applied: list[str] = []
        self.damaged_rows: dict[int, str] = {}  # item id -> what is wrong with its row
        self._connect()

    def _connect(self) -> None:
        if not self.writable:
            self.conn = _read_only(self.path)
            self.db = sqlite_utils.Database(self.conn)
            return
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), so one
        # batch of items and its vectors land together or not at all.
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash of the process loses nothing
        conn.execute("PRAGMA foreign_keys=ON")
        self.conn = conn
        self.migrations_applied = migrate(conn)

    def make_writable(self) -> None:
        """Reopen for writing (a writer that opened as a reader, under the writer lock)."""
        if not self.writable:
            self.conn.close()
            self.writable = True
            self._connect()

    def close(self) -> None:
        self.conn.close()

    # -- meta: spec, counters, losses ----------------------------------------------------------

    def _set_meta(self, key: str, value) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    def record_loss(self, lost: dict, seq: int, next_id: int) -> None:
        """Keep a loss until it is acknowledged, and take the counters past what was given."""
        with transaction(self.conn):
            self._set_meta("lost", [*self.lost(), {**lost, "found_at": now()}])
            self._set_meta("seq", max(self.seq, seq))
            self._set_meta("next_id", max(self.next_id, next_id))
        self.remember()

    def acknowledge_loss(self) -> list[dict]:
        lost = self.lost()
        if lost:
            with transaction(self.conn):
                self.conn.execute("DELETE FROM meta WHERE key = 'lost'")
        return lost

    def set_shape(self, shape: dict) -> None:
        if shape != self.shape():
            with transaction(self.conn):
                self._set_meta("index_shape", shape)

    def record_model_repairs(self, repairs: list[str]) -> None:
        if list(repairs) != self.model_repairs():
            with transaction(self.conn):
                self._set_meta("model_repairs", list(repairs))

    def remember(self) -> None:
        commits.remember(self.path.parent, **self.state())

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

    # -- writes --------------------------------------------------------------------------------

    def add(self, items: list[dict], vectors: np.ndarray, spec: Spec) -> list[int]:
        """Insert items and their vectors in one transaction; return their new ids."""
        self._check_batch(items, vectors, spec)
        with transaction(self.conn):
            self._record_spec(spec)
            seq, first = self.seq + 1, self._meta("next_id", 1)
            ids = list(range(first, first + len(items)))
            stamp = now()
            rows = [
                (i, item["modality"], *values, stamp, stamp, seq, _checksum_of(item, values))
                for i, item in zip(ids, items, strict=True)
                for values in [_item_values(item)]
            ]
            try:
                self.conn.executemany(
                    "INSERT INTO items (id, modality, source, locator, text, content_hash, "
                    "width, height, metadata, file_size, file_mtime_ns, added_at, updated_at, "
                    "seq, checksum) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
            except sqlite3.IntegrityError as error:
                raise InputError(
                    f"an item from the same source and locator is already in the catalog "
                    f"({error}): update it instead of adding it again"
                ) from error
            blobs = encode_vectors(vectors, stored_dtype(spec))
            self.conn.executemany(
                "INSERT INTO vectors (item_id, vector, checksum) VALUES (?, ?, ?)",
                [(i, b, zlib.crc32(b)) for i, b in zip(ids, blobs, strict=True)],
            )
            self._set_meta("next_id", first + len(items))
            self._set_meta("seq", seq)
        self.remember()
        return ids

    def update(self, ids: list[int], items: list[dict], vectors: np.ndarray, spec: Spec) -> None:
        """Replace the fields and vectors of existing items (a changed source file)."""
        self._check_batch(items, vectors, spec)
        with transaction(self.conn):
            self._record_spec(spec)
            seq, stamp = self.seq + 1, now()
            self.conn.executemany(
                "UPDATE items SET source=?, locator=?, text=?, content_hash=?, width=?, "
                "height=?, metadata=?, file_size=?, file_mtime_ns=?, updated_at=?, seq=?, "
                "checksum=? WHERE id=?",
                [
                    (*values, stamp, seq, _checksum_of(item, values), i)
                    for i, item in zip(ids, items, strict=True)
                    for values in [_item_values(item)]
                ],
            )
            blobs = encode_vectors(vectors, stored_dtype(spec))
            self.conn.executemany(
                "UPDATE vectors SET vector=?, checksum=? WHERE item_id=?",
                [(b, zlib.crc32(b), i) for b, i in zip(blobs, ids, strict=True)],
            )
            self._set_meta("seq", seq)
        self.remember()

    def delete(self, ids) -> int:
        """Delete items (and their vectors); their ids are kept in `deleted` for the index."""
        ids = [int(i) for i in ids]
        removed = 0
        with transaction(self.conn):
            seq = self.seq + 1
            for chunk in chunks(ids):
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
        self.remember()
        return removed

    def touch(self, item_id: int, **fields) -> None:
        """Change fields that do not change the vector (metadata, file state): no re-indexing."""
        values = dict(zip(ITEM_FIELDS, _item_values(fields), strict=True))
        sets = {k: values[k] for k in fields}
        with transaction(self.conn):
            if set(sets) & set(CHECKED_FIELDS):  # the row's checksum covers it: recompute
                row = self.db.execute(
                    f"SELECT modality, {', '.join(CHECKED_FIELDS)} FROM items WHERE id = ?",
                    [item_id],
                ).fetchone()
                if row is not None:
                    stored = dict(zip(("modality", *CHECKED_FIELDS), row, strict=True))
                    sets["checksum"] = item_checksum({**stored, **sets})
            assignments = ", ".join(f"{k} = ?" for k in sets)
            self.conn.execute(
                f"UPDATE items SET {assignments}, updated_at = ? WHERE id = ?",
                [*sets.values(), now(), item_id],
            )

    def forget_content(self, ids) -> int:
        """Clear the content hash and file state of these items, so the next ingest of their
        sources embeds them again and rewrites their rows (a damaged row's mend)."""
        ids = [int(i) for i in ids]
        with transaction(self.conn):
            for chunk in chunks(ids):
                marks = ",".join("?" * len(chunk))
                self.conn.execute(
                    "UPDATE items SET content_hash = NULL, file_size = NULL, "
                    f"file_mtime_ns = NULL WHERE id IN ({marks})",
                    chunk,
                )
        return len(ids)

    def compact_vectors(self, batch: int = 5000) -> int:
        """Rewrite float32 blobs as float16 when the catalog's model computes in half precision
        (catalogs written before blobs could be float16); a transaction per batch, each blob
        valid either way, so an interrupted run just leaves some to do. A damaged blob is left
        as it is (and named). Returns how many were rewritten."""
        spec, dim = self.spec(), self.dim
        if not spec or spec.get("dtype") not in HALF_DTYPES:
            return 0
        done, after = 0, 0
        while True:
            rows = self.conn.execute(
                "SELECT item_id, vector, checksum FROM vectors WHERE length(vector) = ? "
                "AND item_id > ? ORDER BY item_id LIMIT ?",
                (4 * dim, after, batch),
            ).fetchall()
            if not rows:
                return done
            after = rows[-1][0]
            rows = self._whole(rows)
            blobs = encode_vectors(decode_vectors([r[1] for r in rows], dim), "<f2")
            with transaction(self.conn):
                self.conn.executemany(
                    "UPDATE vectors SET vector=?, checksum=? WHERE item_id=?",
                    [(b, zlib.crc32(b), r[0]) for b, r in zip(blobs, rows, strict=True)],
                )
            done += len(rows)

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

    def prune_deleted(self, upto_seq: int) -> None:
        """Forget deletions that every index file has applied."""
        with transaction(self.conn):
            self.conn.execute("DELETE FROM deleted WHERE seq <= ?", (upto_seq,))

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
        for item in items:
            _ensure_utf8(item)
        finite = np.isfinite(np.asarray(vectors, dtype=np.float32)).all(axis=1)
        if len(vectors) and not finite.all():
            bad = [item.get("source") for item, ok in zip(items, finite, strict=True) if not ok]
            raise InputError(f"non-finite vectors are never stored (items from {bad[:3]})")
        norms = np.linalg.norm(np.asarray(vectors, dtype=np.float32), axis=1)
        off = np.abs(norms - 1) > UNIT_TOLERANCE
        if len(vectors) and off.any():
            bad = [item.get("source") for item, wrong in zip(items, off, strict=True) if wrong]
            raise InputError(
                f"vectors must be unit length, as E5-V's are (searches check scores against it): "
                f"norms {norms[off][:3].round(4).tolist()} for items from {bad[:3]}"
            )


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception (autocommit connections)."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *exc):
        if not exc_type:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:  # SQLite rolls back itself on a full disk (SQLITE_FULL)
            self.conn.execute("ROLLBACK")
        return False


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


def _checksum_of(item: dict, values: tuple) -> int:
    return item_checksum(
        {"modality": item["modality"], **dict(zip(ITEM_FIELDS, values, strict=True))}
    )


def _ensure_utf8(item: dict) -> None:
    try:
        for value in _item_values(item):
            if isinstance(value, str):
                value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(
            f"item from {item.get('source')} ({item.get('locator') or 'no locator'}): its text "
            f"or metadata cannot be stored as UTF-8 ({error.reason})"
        ) from error


def _read_only(path: Path) -> sqlite3.Connection:
    """A connection that never writes. On media that cannot be written (a read-only mount, a
    folder of another account) SQLite cannot make the -shm file it reads a WAL with: when
    there is no -wal file (so nothing is in one) the file is opened as immutable instead."""
    uri = path.resolve().as_uri()
    try:
        return _connected(uri + "?mode=ro")
    except sqlite3.OperationalError as error:
        if Path(f"{path}-wal").exists():
            raise IndexWriteError(
                f"{path} cannot be read here ({error}): its folder must be writable, or hold "
                f"no {path.name}-wal file (open it once where it can be written)"
            ) from error
    return _connected(uri + "?immutable=1")


def _connected(uri: str) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        conn.close()
        raise
    return conn
