"""The catalog's schema, changed only through these named migrations, applied in order, once.

sqlite-utils' `Migrations` runs them: each one in a transaction with the row that records it in
`_sqlite_migrations` (set "e5v_search.catalog"), so an error or a crash leaves the catalog
before or after it, never half-way. Never edit a migration that has shipped: add a new one.

Catalogs made before these ran on sqlite-utils recorded the same migrations in `_migrations`
(name, applied_at). `migrate` adopts that history first: those names are recorded as applied
in `_sqlite_migrations`, with their times, and are not run again. `_migrations` is left as it
is (an earlier release opening the catalog still finds its history there).
"""

from __future__ import annotations

import sqlite3

import sqlite_utils
from sqlite_utils import Migrations

LEGACY_TABLE = "_migrations"
catalog_migrations = Migrations("e5v_search.catalog")


@catalog_migrations()
def m001_base(db) -> None:
    db.executescript(
        """
        CREATE TABLE items (
            id INTEGER PRIMARY KEY,
            modality TEXT NOT NULL CHECK (modality IN ('image', 'text')),
            source TEXT,
            locator TEXT NOT NULL DEFAULT '',
            text TEXT,
            content_hash TEXT,
            width INTEGER,
            height INTEGER,
            metadata TEXT NOT NULL DEFAULT '{}',
            added_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE UNIQUE INDEX items_origin ON items (source, locator);
        CREATE INDEX items_hash ON items (content_hash);
        CREATE INDEX items_modality ON items (modality);
        CREATE TABLE vectors (
            item_id INTEGER PRIMARY KEY REFERENCES items (id) ON DELETE CASCADE,
            vector BLOB NOT NULL
        );
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE errors (
            id INTEGER PRIMARY KEY,
            source TEXT NOT NULL,
            locator TEXT NOT NULL DEFAULT '',
            reason TEXT NOT NULL,
            occurred_at TEXT NOT NULL
        );
        """
    )


@catalog_migrations()
def m002_change_tracking(db) -> None:
    """A change counter stamped on every written item and a record of deleted ones, so an index
    that missed changes (a crash between the catalog commit and the index save) can catch up
    without a rebuild."""
    db.executescript(
        """
        ALTER TABLE items ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX items_seq ON items (seq);
        CREATE TABLE deleted (
            item_id INTEGER PRIMARY KEY,
            modality TEXT NOT NULL,
            seq INTEGER NOT NULL
        );
        """
    )


@catalog_migrations()
def m003_file_state_and_unique_errors(db) -> None:
    """The size and mtime of an image file, so a rerun skips an unchanged file without reading
    it; and one error row per input (the latest), so reruns do not pile up duplicates."""
    db.executescript(
        """
        ALTER TABLE items ADD COLUMN file_size INTEGER;
        ALTER TABLE items ADD COLUMN file_mtime_ns INTEGER;
        DELETE FROM errors WHERE id NOT IN (
            SELECT max(id) FROM errors GROUP BY source, locator
        );
        CREATE UNIQUE INDEX errors_input ON errors (source, locator);
        """
    )


@catalog_migrations()
def m004_counts(db) -> None:
    """Items per modality kept by triggers in the same transaction as each write: opening a
    2M-item index asked `count(*)` three times, 0.12 s each at 500k (O(n)); now O(1)."""
    db.executescript(
        """
        CREATE TABLE counts (modality TEXT PRIMARY KEY, n INTEGER NOT NULL);
        INSERT INTO counts (modality, n) VALUES ('image', 0), ('text', 0);
        UPDATE counts SET n = (SELECT count(*) FROM items WHERE modality = counts.modality)
        """
    )
    for trigger in (  # whole statements (the runner they shipped with split at every ";")
        "CREATE TRIGGER items_counted AFTER INSERT ON items BEGIN "
        "UPDATE counts SET n = n + 1 WHERE modality = NEW.modality; END",
        "CREATE TRIGGER items_uncounted AFTER DELETE ON items BEGIN "
        "UPDATE counts SET n = n - 1 WHERE modality = OLD.modality; END",
        "CREATE TRIGGER items_recounted AFTER UPDATE OF modality ON items BEGIN "
        "UPDATE counts SET n = n - 1 WHERE modality = OLD.modality; "
        "UPDATE counts SET n = n + 1 WHERE modality = NEW.modality; END",
    ):
        db.conn.execute(trigger)


@catalog_migrations()
def m005_checksums(db) -> None:
    """A CRC-32 per vector blob and per item row, written with them: a vector damaged on disk
    is found when it is read (for a rebuild, a re-ranking) and by `verify`, never indexed.
    Rows written before stay NULL (unchecked) until they are written again."""
    db.executescript(
        """
        ALTER TABLE vectors ADD COLUMN checksum INTEGER;
        ALTER TABLE items ADD COLUMN checksum INTEGER
        """
    )


# An item's keyword document, computed in SQL from its row `{r}` (NEW in a trigger): a text's
# text, an image's file path, the metadata values but not their keys. sqlite-utils'
# `enable_fts` (columns copied as they are) cannot express it. verify checks the index against
# it and repair fills the index anew with it (KEYWORD_TABLE, KEYWORD_FILL).
KEYWORD_DOCUMENT = (
    "coalesce({r}.text, '') || ' ' || "
    "CASE {r}.modality WHEN 'image' THEN coalesce({r}.source, '') ELSE '' END || ' ' || "
    "CASE WHEN json_valid({r}.metadata) THEN coalesce((SELECT group_concat(atom, ' ') "
    "FROM json_tree({r}.metadata) WHERE type IN ('text', 'integer', 'real')), '') "
    "ELSE '' END"
)
KEYWORD_TABLE = (
    "CREATE VIRTUAL TABLE items_fts USING fts5(doc, tokenize = 'unicode61 remove_diacritics 2')"
)
KEYWORD_FILL = (
    f"INSERT INTO items_fts (rowid, doc) SELECT id, {KEYWORD_DOCUMENT.format(r='items')} FROM items"
)


@catalog_migrations()
def m006_keywords(db) -> None:
    """The keyword index (FTS5, storage/keywords.py): one document per item
    (KEYWORD_DOCUMENT), kept in step by triggers in the transaction of every write to `items`,
    so no crash can leave the two apart; filled here from the items a catalog already holds.
    The FTS table keeps its own copy of each document, so a delete never has to reproduce what
    was indexed."""
    new = KEYWORD_DOCUMENT.format(r="NEW")
    for statement in (
        KEYWORD_TABLE,
        "CREATE TRIGGER items_fts_added AFTER INSERT ON items BEGIN "
        f"INSERT INTO items_fts (rowid, doc) VALUES (NEW.id, {new}); END",
        "CREATE TRIGGER items_fts_removed AFTER DELETE ON items BEGIN "
        "DELETE FROM items_fts WHERE rowid = OLD.id; END",
        "CREATE TRIGGER items_fts_changed AFTER UPDATE OF modality, source, text, metadata "
        "ON items BEGIN DELETE FROM items_fts WHERE rowid = OLD.id; "
        f"INSERT INTO items_fts (rowid, doc) VALUES (NEW.id, {new}); END",
        KEYWORD_FILL,
    ):
        db.conn.execute(statement)


def migrate(
    conn, upto: str | None = None, migrations: Migrations = catalog_migrations
) -> list[str]:
    """Adopt the history of `_migrations`, then apply the pending migrations (up to and
    including `upto`); return the names applied (not the adopted ones)."""
    db = sqlite_utils.Database(conn)
    _adopt_history(db, migrations)
    pending = [m.name for m in migrations.pending(db)]
    stop = None
    if upto is not None:
        later = pending[pending.index(upto) + 1 :] if upto in pending else pending
        stop = later[:1]
    migrations.apply(db, stop_before=stop)
    applied = {m.name for m in migrations.applied(db)}
    return [name for name in pending if name in applied]


def pending_migrations(conn, migrations: Migrations = catalog_migrations) -> list[str]:
    """The migrations a catalog still needs (all of them for a new file), read through any
    connection, a read-only one included: opening a catalog that needs none writes nothing. A
    catalog whose history is still in `_migrations` needs none of the names found there."""
    db = sqlite_utils.Database(conn)
    try:
        adopted = dict(_legacy_history(db))
        return [m.name for m in migrations.pending(db) if m.name not in adopted]
    except sqlite3.Error:  # unreadable here: as a new one, so a writer opens it
        return [m.name for m in migrations.pending(sqlite_utils.Database(memory=True))]


def _legacy_history(db) -> list[tuple[str, str]]:
    """(name, applied_at) of the migrations recorded in `_migrations`, in the order applied."""
    if not db[LEGACY_TABLE].exists():
        return []
    return db.execute(f"SELECT name, applied_at FROM {LEGACY_TABLE} ORDER BY rowid").fetchall()


def _adopt_history(db, migrations: Migrations) -> None:
    """Record the migrations `_migrations` names as applied, without running them, in one
    transaction with the creation of `_sqlite_migrations`. Reads only when there is nothing
    to adopt."""
    table = db[migrations.migrations_table]
    recorded = {m.name for m in migrations.applied(db)}
    adopted = [(name, at) for name, at in _legacy_history(db) if name not in recorded]
    if table.exists() and not adopted:
        return
    with db.atomic():
        migrations.ensure_migrations_table(db)
        table.insert_all(
            {"migration_set": migrations.name, "name": name, "applied_at": at}
            for name, at in adopted
        )
