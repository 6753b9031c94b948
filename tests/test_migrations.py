"""The catalog's schema migrations on sqlite-utils' `Migrations`: a new catalog, one made by the
release before them (its history in `_migrations`), and a migration that fails."""

import sqlite3

import numpy as np
import pytest
from sqlite_utils import Database, Migrations

from e5v_search.storage.catalog import Catalog
from e5v_search.storage.migrations import (
    catalog_migrations,
    m001_base,
    m002_change_tracking,
    m003_file_state_and_unique_errors,
    m004_counts,
    m005_checksums,
    m006_keywords,
    migrate,
    pending_migrations,
)

SHIPPED = [
    m001_base,
    m002_change_tracking,
    m003_file_state_and_unique_errors,
    m004_counts,
    m005_checksums,
    m006_keywords,
]
NAMES = [migration.__name__ for migration in SHIPPED]
THEN = "2025-06-01T12:00:00.000001+00:00"
VECTOR = np.array([0.6, 0.8, 0.0, 0.0], dtype="<f4")


class _Script:
    """The runner of the release before: a script split at every ";", in the caller's
    transaction."""

    def __init__(self, conn):
        self.conn = conn

    def executescript(self, script: str) -> None:
        for statement in script.split(";"):
            if statement.strip():
                self.conn.execute(statement)


def _made_by_the_release_before(path, applied: int) -> None:
    """A catalog as the release before made it: its first `applied` migrations, each run by its
    runner in one transaction with its row in `_migrations`; then an item and its vector."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    for migration in SHIPPED[:applied]:
        conn.execute("BEGIN IMMEDIATE")
        migration(_Script(conn))
        conn.execute("INSERT INTO _migrations VALUES (?, ?)", (migration.__name__, THEN))
        conn.execute("COMMIT")
    conn.execute(
        "INSERT INTO items (id, modality, source, added_at, updated_at) "
        "VALUES (1, 'text', 'old.txt', 'then', 'then')"
    )
    conn.execute("INSERT INTO vectors (item_id, vector) VALUES (1, ?)", (VECTOR.tobytes(),))
    conn.execute("INSERT INTO meta VALUES ('spec', '{\"dim\": 4}')")
    conn.close()


def _schema(path) -> set[tuple]:
    with sqlite3.connect(path) as conn:
        return set(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))


def _history(path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT migration_set, name, applied_at FROM _sqlite_migrations ORDER BY id"
        ).fetchall()


def _read_only(path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def test_a_new_catalog_runs_and_records_every_migration(tmp_path):
    path = tmp_path / "catalog.sqlite"
    assert pending_migrations(sqlite3.connect(":memory:")) == NAMES
    catalog = Catalog(path)
    assert catalog.migrations_applied == NAMES
    assert [(s, n) for s, n, _ in _history(path)] == [("e5v_search.catalog", n) for n in NAMES]
    assert not catalog.db["_migrations"].exists()
    assert pending_migrations(_read_only(path)) == []
    catalog.close()
    assert Catalog(path).migrations_applied == []
    assert len(_history(path)) == len(NAMES)


@pytest.mark.parametrize("applied", [5, 3])
def test_a_catalog_of_the_release_before_keeps_its_history_and_data(tmp_path, applied):
    """Names found in `_migrations` are recorded as applied (with their times), not run again;
    the rest run. Until a writer opens it, a reader needs only what `_migrations` lacks."""
    path = tmp_path / "catalog.sqlite"
    _made_by_the_release_before(path, applied)
    with _read_only(path) as reader:
        assert pending_migrations(reader) == NAMES[applied:]  # on a read-only connection
    assert not Database(path)["_sqlite_migrations"].exists()  # which wrote nothing
    legacy = sqlite3.connect(path).execute("SELECT * FROM _migrations").fetchall()

    catalog = Catalog(path)
    assert catalog.migrations_applied == NAMES[applied:]
    history = _history(path)
    assert [name for _, name, _ in history] == NAMES
    assert [at for _, _, at in history[:applied]] == [THEN] * applied
    assert catalog.get([1])[0]["source"] == "old.txt"
    assert np.array_equal(catalog.vectors([1])[0], VECTOR)
    assert (catalog.count("text"), catalog.count()) == (1, 1)
    assert catalog.damaged() == ([], 1, 1)  # whole, written before checksums
    catalog.close()

    fresh = tmp_path / "fresh.sqlite"
    Catalog(fresh).close()
    legacy_table = {row for row in _schema(path) if row[2] == "_migrations"}
    assert _schema(path) == _schema(fresh) | legacy_table  # as if made now, `_migrations` kept
    assert sqlite3.connect(path).execute("SELECT * FROM _migrations").fetchall() == legacy
    assert Catalog(path).migrations_applied == []
    assert _history(path) == history


def test_a_failing_migration_rolls_back_with_its_record(tmp_path):
    path = tmp_path / "catalog.sqlite"
    Catalog(path).close()
    schema, history = _schema(path), _history(path)
    failing = Migrations(catalog_migrations.name)

    @failing()
    def m006_half_done(db):
        db.executescript(
            """
            CREATE TABLE half_done (x INTEGER);
            INSERT INTO meta (key, value) VALUES ('half', '1');
            ALTER TABLE items ADD COLUMN seq INTEGER
            """
        )

    conn = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="duplicate column name: seq"):
        migrate(conn, migrations=failing)
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM meta WHERE key = 'half'").fetchone() == (0,)
    conn.close()
    assert (_schema(path), _history(path)) == (schema, history)
    assert pending_migrations(_read_only(path), failing) == ["m006_half_done"]
    assert Catalog(path).migrations_applied == []  # the shipped ones: all applied still


def test_migrate_upto_stops_after_a_recorded_migration(tmp_path):
    """`migrate(upto=...)` stops after a migration, recorded: the next open runs the rest."""
    path = tmp_path / "catalog.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, upto="m002_change_tracking") == NAMES[:2]
    assert not conn.in_transaction
    conn.close()
    assert [name for _, name, _ in _history(path)] == NAMES[:2]
    assert Catalog(path).migrations_applied == NAMES[2:]
