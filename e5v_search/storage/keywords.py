"""The keyword side of search: the catalog's FTS5 index, ranked by BM25, and its fusion with
the vector ranking (reciprocal rank fusion).

The index (`items_fts`, made by migration m006 and kept by its triggers in the transaction of
every write to `items`) holds one document per item: a text's text, an image's file path (its
name and folder words) and the values of the item's metadata (an image's photo metadata among
them). It is tokenised by FTS5's unicode61 with `remove_diacritics 2`: case and diacritics are
folded ("Malmö" finds "malmo") and a code such as `XK-2291-B` becomes the tokens xk 2291 b.

A user's text is never FTS5 syntax: every whitespace-separated word is quoted (a `"` inside
doubled), so `AND`, `NOT`, `*`, `:` or a stray `"` are words to find, and a word that holds
punctuation is matched as a phrase (`"XK-2291-B"`: xk, 2291, b in that order, so XK-2291-C is
not a match). The matches are the items that hold every word of the query; only when none
does (within the filters) are they the items that hold any of them, ranked by BM25 (the most of
the rarest words first). So in a hybrid search an item that holds one common word of a name
(a given name thirty notes share) gets no keyword rank when one item holds the whole name:
rank fusion sees ranks, not how much better the whole match is, and would otherwise let the
vectors' first, holding one word, beat the only item holding them all.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

from ..config import HYBRID_CANDIDATES, HYBRID_WEIGHT, RRF_K
from ..errors import InputError
from ..filters import one_expression
from .migrations import KEYWORD_DOCUMENT, KEYWORD_FILL, KEYWORD_TABLE, pending_migrations
from .search import Hit, search


def match_expression(text: str, joiner: str = "OR") -> str | None:
    """The FTS5 query of a user's text: each word quoted, joined by `joiner` (AND: items
    holding every word; OR: any of them); None when there are no words."""
    words = ['"' + word.replace('"', '""') + '"' for word in str(text).split()]
    return f" {joiner} ".join(words) or None


def keyword_search(
    catalog, text: str, k: int, modality=None, where=None, params=(), among=None
) -> list:
    """The k best items for `text` by BM25 (score: -bm25, so higher is better), of `modality`
    (both if None), among the items `where` (SQL on items) selects and, given, the ids
    `among`; ties by id. The items holding every word if any of the selected does, else those
    holding any word (the module's docstring says why). BM25's statistics are the whole
    index's, whatever is selected."""
    if len(str(text).split()) > 1:
        found = _matching(catalog, match_expression(text, "AND"), k, modality, where, params, among)
        if found:
            return found
    expression = match_expression(text)
    if expression is None:
        return []
    return _matching(catalog, expression, k, modality, where, params, among)


def _matching(catalog, expression, k, modality, where, params, among) -> list:
    sql = (
        "SELECT items.id, -bm25(items_fts), items.modality FROM items_fts "
        "JOIN items ON items.id = items_fts.rowid WHERE items_fts MATCH ?"
    )
    args = [expression]
    if modality:
        sql, args = sql + " AND items.modality = ?", [*args, modality]
    if where:
        sql, args = sql + f" AND ({one_expression(where)})", [*args, *params]
    if among is not None:  # one parameter, whatever the number of ids
        sql += " AND items.id IN (SELECT value FROM json_each(?))"
        args.append(json.dumps([int(i) for i in among]))
    sql += " ORDER BY bm25(items_fts), items.id LIMIT ?"
    try:
        rows = catalog.conn.execute(sql, [*args, int(k)]).fetchall()
    except sqlite3.OperationalError as error:
        if where:
            raise InputError(f"bad filter {where!r}: {error}") from error
        raise
    return [Hit(int(i), float(score), modality) for i, score, modality in rows]


def pooled(store, query, text: str, k: int, modality, where, params):
    """The two rankings a hybrid search fuses, over one pool of candidates: each side's best
    `candidates(k)`, then every pooled item ranked by its exact cosine (from its stored vector,
    so an item only the words found still gets its place on the vector side) and, if it is a
    keyword match (keyword_search), by BM25. A damaged stored vector leaves its item off the vector
    side (named in the catalog's damaged_rows)."""
    depth = candidates(k)
    found = search(store, query, depth, modality, where, params, None)[0]
    found += keyword_search(store.catalog, text, depth, modality, where, params)
    modality_of = {hit.id: hit.modality for hit in found}
    ids, vectors = store.catalog.readable_vectors(sorted(modality_of))
    cosines = (vectors @ np.asarray(query, dtype=np.float32)).tolist() if len(ids) else []
    by_vector = sorted(zip(ids.tolist(), cosines, strict=True), key=lambda p: (-p[1], p[0]))
    vector_side = [Hit(i, score, modality_of[i]) for i, score in by_vector]
    word_side = keyword_search(
        store.catalog, text, len(modality_of), modality, where, params, among=modality_of
    )
    return vector_side, word_side


def candidates(k: int) -> int:
    """How many candidates each side gives a hybrid search of k: deep enough that an item
    ranked well by one side only is still seen by the fusion."""
    return max(HYBRID_CANDIDATES, 4 * k)


def fuse(vector_hits, keyword_hits, k: int, weight: float = HYBRID_WEIGHT, rrf_k: int = RRF_K):
    """Reciprocal rank fusion of two rankings (best first): an item's score is
    (rrf_k + 1) * (weight / (rrf_k + vector rank) + (1 - weight) / (rrf_k + keyword rank)),
    a side that does not rank it adding nothing. The factor rrf_k + 1 (it changes no order)
    puts the scale at 1.0 for an item first on both sides, `weight` for one first on the
    vector side only. Ties by id."""
    scores, modality_of = {}, {}
    for hits, share in ((vector_hits, weight), (keyword_hits, 1.0 - weight)):
        if share <= 0:
            continue
        for rank, hit in enumerate(hits, start=1):
            scores[hit.id] = scores.get(hit.id, 0.0) + share * (rrf_k + 1) / (rrf_k + rank)
            modality_of[hit.id] = hit.modality
    best = sorted(scores, key=lambda i: (-scores[i], i))[:k]
    return [Hit(i, scores[i], modality_of[i]) for i in best]


def keyword_damage(conn, path: Path) -> tuple[list[str], bool]:
    """What is wrong with the keyword index of the catalog at `path`, read through `conn`, one
    line each (verify): items it has no document for, documents of no item or that differ from
    their item's (out of step with the items), and FTS5's own integrity-check of its inverted
    index against its documents; and whether that check ran. The check is a command written
    as an INSERT (it changes nothing, but needs a connection that may write: a reader's is
    read-only), so it runs on a connection of its own, and not on read-only media."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'items_fts'").fetchone():
        if "m006_keywords" in pending_migrations(conn):
            return [], True  # made before keyword search: its first writer builds it
        return ["catalog.sqlite: the keyword index (items_fts) is missing"], True
    document = KEYWORD_DOCUMENT.format(r="items")
    counts = {
        "items without a keyword document": (
            "SELECT count(*) FROM items WHERE id NOT IN (SELECT rowid FROM items_fts)"
        ),
        "keyword documents of no item": (
            "SELECT count(*) FROM items_fts WHERE rowid NOT IN (SELECT id FROM items)"
        ),
        "keyword documents that differ from their item's": (
            "SELECT count(*) FROM items JOIN items_fts ON items_fts.rowid = items.id "
            f"WHERE items_fts.doc IS NOT ({document})"
        ),
    }
    lines = []
    try:
        for what, sql in counts.items():
            if found := conn.execute(sql).fetchone()[0]:
                lines.append(f"catalog.sqlite: {found:,} {what}")
        checker = sqlite3.connect(
            Path(path).resolve().as_uri() + "?mode=rw", uri=True, isolation_level=None, timeout=60
        )
        try:
            checker.execute("INSERT INTO items_fts (items_fts) VALUES ('integrity-check')")
        finally:
            checker.close()
    except sqlite3.DatabaseError as error:
        if "readonly" in str(error) or "unable to open" in str(error):
            return lines, False
        return [*lines, f"catalog.sqlite: the keyword index is damaged ({error})"], True
    return lines, True


def rebuild_keywords(conn) -> int:
    """The keyword index made anew from the items, in one transaction (repair): dropped
    rather than emptied, since a damaged FTS5 index may not even delete. Its triggers are on
    `items` and stay. Returns the documents written."""
    from .catalog import transaction

    with transaction(conn):
        conn.execute("DROP TABLE IF EXISTS items_fts")
        conn.execute(KEYWORD_TABLE)
        return conn.execute(KEYWORD_FILL).rowcount
