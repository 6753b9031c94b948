"""The reads of the catalog: `CatalogReads`, the base of `Catalog` and all that a reader
(a catalog opened read-only) calls. It holds no connection of its own: `Catalog` opens one.

Vectors are read a chunk at a time and checked against their CRC-32 first (blobs.py): a damaged
row is named in `damaged_rows` and left out, never indexed or scored. Lookups by id, key or
content hash send one `IN (...)` per chunk of at most CHUNK values.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import TYPE_CHECKING

import numpy as np

from ..errors import IndexDamagedError, InputError
from ..filters import one_expression
from ..spec import Spec, check
from .blobs import CHECKED_FIELDS, decode_vectors, item_checksum, vector_damage

if TYPE_CHECKING:
    import sqlite_utils

MODALITIES = ("image", "text")
CHUNK = 5000  # values per IN (...) list: well under SQLite's variable limit
READ_CHUNK = 20000  # vectors read at a time by a rebuild or a filtered search (memory: one)


class CatalogReads:
    conn: sqlite3.Connection
    db: sqlite_utils.Database
    damaged_rows: dict[int, str]  # item id -> what is wrong with its row

    # -- meta: spec, counters ------------------------------------------------------------------

    def _meta(self, key: str, default=None):
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    @property
    def seq(self) -> int:
        return self._meta("seq", 0)

    def spec(self) -> dict | None:
        return self._meta("spec")

    @property
    def dim(self) -> int | None:
        spec = self.spec()
        return spec["dim"] if spec else None

    @property
    def next_id(self) -> int:
        return self._meta("next_id", 1)

    def state(self) -> dict:
        """The change counter, the next id and the counts: what commits.json remembers."""
        counts = {m: self.count(m) for m in MODALITIES}
        return {"seq": self.seq, "next_id": self.next_id, "counts": counts}

    def lost(self) -> list[dict]:
        """Losses found and not yet acknowledged (commits.py), oldest first."""
        return self._meta("lost", [])

    def model_repairs(self) -> list[str]:
        """What loading the index's model repaired in its checkpoint, recorded by an ingest."""
        return self._meta("model_repairs", [])

    def shape(self) -> dict:
        """Each modality's index type as the last save left it (store.py), kept here too: the
        catalog survives a damaged manifest."""
        return self._meta("index_shape", {})

    def check_spec(self, spec: Spec, purpose: str = "query") -> list[str]:
        """spec.check against this catalog's spec: raises on a mismatch, returns notes."""
        return check(self.spec(), spec, purpose)

    # -- items ---------------------------------------------------------------------------------

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
        for chunk in chunks([int(i) for i in ids]):
            marks = ",".join("?" * len(chunk))
            for row in self.db.query(f"SELECT * FROM items WHERE id IN ({marks})", chunk):
                row["metadata"] = json.loads(row["metadata"])
                found[row["id"]] = row
        return [found[int(i)] for i in ids if int(i) in found]

    def lookup(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict]:
        """The stored rows of these (source, locator) keys, by key."""
        found = {}
        for start in range(0, len(keys), CHUNK // 2):
            chunk = keys[start : start + CHUNK // 2]
            marks = " OR ".join(["(source = ? AND locator = ?)"] * len(chunk))
            args = [value for key in chunk for value in key]
            for row in self.db.query(f"SELECT * FROM items WHERE {marks}", args):
                row["metadata"] = json.loads(row["metadata"])
                found[(row["source"], row["locator"])] = row
        return found

    def find_hashes(self, modality: str, hashes) -> dict[str, int]:
        """content hash -> id of an item of this modality with that content (the lowest id),
        for those of `hashes` the catalog holds: their vectors can be reused. One query per
        chunk of CHUNK hashes."""
        found = {}
        for chunk in chunks(list(dict.fromkeys(hashes))):
            marks = ",".join("?" * len(chunk))
            found.update(
                self.conn.execute(
                    "SELECT content_hash, min(id) FROM items WHERE modality = ? AND "
                    f"content_hash IN ({marks}) GROUP BY content_hash",
                    [modality, *chunk],
                )
            )
        return found

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

    def errors(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM errors ORDER BY id"))

    def sample_ids(self, modality: str, n: int, seed: int = 0) -> np.ndarray:
        ids = self.ids(modality)
        if len(ids) <= n:
            return ids
        return np.sort(np.random.default_rng(seed).choice(ids, size=n, replace=False))

    # -- vectors, checked ----------------------------------------------------------------------

    def vectors(self, ids) -> np.ndarray:
        """Stored vectors in the order of `ids` (all must exist and be whole: a damaged row
        raises IndexDamagedError naming it). Decoded a chunk at a time into the result: memory
        holds the result and one chunk (a rebuild's training sample is up to 2 GiB)."""
        found, vectors = self.readable_vectors(ids)
        wanted = list(dict.fromkeys(int(i) for i in ids))
        if len(found) < len(wanted):
            bad = [i for i in wanted if i in self.damaged_rows]
            if bad:
                raise IndexDamagedError(self.damaged_rows[bad[0]])
            missing = sorted(set(wanted) - set(found.tolist()))
            raise KeyError(f"no stored vector for item ids {missing[:5]}")
        if len(found) == len(ids) and np.array_equal(found, ids):
            return vectors
        position = {int(i): n for n, i in enumerate(found)}
        return vectors[[position[int(i)] for i in ids]]

    def readable_vectors(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of those of `ids` that are stored and whole, in the order asked
        (each once); a damaged row is left out and named in `damaged_rows`."""
        unique = list(dict.fromkeys(int(i) for i in ids))
        out = np.empty((len(unique), self.dim or 0), dtype=np.float32)
        row = {i: n for n, i in enumerate(unique)}
        good = np.zeros(len(unique), dtype=bool)
        for chunk in chunks(unique):
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT item_id, vector, checksum FROM vectors WHERE item_id IN ({marks})"
            rows = self._whole(self.conn.execute(sql, chunk).fetchall())
            if rows:
                at = [row[r[0]] for r in rows]
                out[at] = decode_vectors([r[1] for r in rows], out.shape[1])
                good[at] = True
        return np.array(unique, dtype=np.int64)[good], out[good]

    def iter_vectors(self, modality: str, batch: int = 20000, since_seq: int | None = None):
        """(ids, vectors) chunks of one modality in id order, optionally only items written
        after `since_seq`; memory stays at one chunk. Damaged rows are left out (and named in
        `damaged_rows`): never indexed."""
        sql = (
            "SELECT v.item_id, v.vector, v.checksum FROM vectors v JOIN items i "
            "ON i.id = v.item_id WHERE i.modality = ?"
        )
        args = [modality]
        if since_seq is not None:
            sql, args = sql + " AND i.seq > ?", args + [since_seq]
        cursor = self.conn.execute(sql + " ORDER BY v.item_id", args)
        while rows := cursor.fetchmany(batch):
            rows = self._whole(rows)
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            yield ids, decode_vectors([r[1] for r in rows], self.dim)

    def _whole(self, rows: list[tuple]) -> list[tuple]:
        """The (id, blob, checksum) rows whose blob is whole; the others are named."""
        dim, kept = self.dim, []
        for row in rows:
            problem = vector_damage(row[1], row[2], dim)
            if problem:
                self.damaged_rows[row[0]] = (
                    f"item {row[0]}'s stored vector is damaged ({problem}): it is skipped; "
                    "`e5v-search repair` marks it to be embedded again by the next ingest of "
                    "its source"
                )
            else:
                kept.append(row)
        return kept

    def damaged(self, batch: int = 5000):
        """Every row whose vector or item fields fail their checksum, as (id, source, what),
        and the number of rows checked and of rows written before checksums: `verify`."""
        checked = unchecked = 0
        bad = []
        after, dim = 0, self.dim
        fields = ", ".join(f"i.{f}" for f in ("modality", *CHECKED_FIELDS))
        while True:
            rows = self.conn.execute(
                f"SELECT i.id, i.checksum, v.vector, v.checksum, {fields} FROM items i "
                "LEFT JOIN vectors v ON v.item_id = i.id WHERE i.id > ? ORDER BY i.id LIMIT ?",
                (after, batch),
            ).fetchall()
            if not rows:
                return bad, checked, unchecked
            after = rows[-1][0]
            for item_id, item_sum, blob, vector_sum, *values in rows:
                checked += 1
                unchecked += item_sum is None or vector_sum is None
                record = dict(zip(("modality", *CHECKED_FIELDS), values, strict=True))
                if blob is None:
                    bad.append((item_id, record["source"], "its vector is missing"))
                elif problem := vector_damage(blob, vector_sum, dim):
                    bad.append((item_id, record["source"], f"its vector is damaged ({problem})"))
                if item_sum is not None and item_checksum(record) != item_sum:
                    bad.append((item_id, record["source"], "its fields fail their checksum"))


def chunks(values: list):
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]
