"""The catalog's schema, changed only through these named migrations, applied in order, once.

Each migration runs in the same transaction as the row recording it, so a crash leaves the
catalog either before or after it, never half-way. Never edit a migration that has shipped: add
a new one.
"""

from __future__ import annotations

from datetime import datetime, timezone


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
    for trigger in (  # whole statements: executescript splits at every ";"
        "CREATE TRIGGER items_counted AFTER INSERT ON items BEGIN "
        "UPDATE counts SET n = n + 1 WHERE modality = NEW.modality; END",
        "CREATE TRIGGER items_uncounted AFTER DELETE ON items BEGIN "
        "UPDATE counts SET n = n - 1 WHERE modality = OLD.modality; END",
        "CREATE TRIGGER items_recounted AFTER UPDATE OF modality ON items BEGIN "
        "UPDATE counts SET n = n - 1 WHERE modality = OLD.modality; "
        "UPDATE counts SET n = n + 1 WHERE modality = NEW.modality; END",
    ):
        db.conn.execute(trigger)


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


MIGRATIONS = [
    m001_base,
    m002_change_tracking,
    m003_file_state_and_unique_errors,
    m004_counts,
    m005_checksums,
]


def migrate(conn, upto: str | None = None) -> list[str]:
    """Apply the pending migrations (up to and including `upto`); return the names applied."""
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    done = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
    applied = []
    for migration in MIGRATIONS:
        name = migration.__name__
        if name not in done:
            with transaction(conn):
                migration(_Script(conn))
                conn.execute(
                    "INSERT INTO _migrations VALUES (?, ?)",
                    (name, datetime.now(timezone.utc).isoformat()),
                )
            applied.append(name)
        if name == upto:
            break
    return applied


class _Script:
    """Runs a script statement by statement inside the caller's transaction (sqlite3's own
    executescript would commit first)."""

    def __init__(self, conn):
        self.conn = conn

    def executescript(self, script: str) -> None:
        for statement in script.split(";"):
            if statement.strip():
                self.conn.execute(statement)


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


def pending_migrations(conn) -> list[str]:
    """The migrations a catalog still needs (all of them for a new file), read through any
    connection, a read-only one included: opening a catalog that needs none writes nothing."""
    import sqlite3

    try:
        done = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
    except sqlite3.Error:
        done = set()
    return [m.__name__ for m in MIGRATIONS if m.__name__ not in done]
