"""The filter language: `KEY=VALUE` pairs on item metadata, and one SQL condition on `items`.

Pure Python and free of the model, numpy and SQLite, so any shell may import it (the CLI to
check `--filter` before anything loads, the server for its query parameters) and the engine
turns filters into the SQL the catalog runs.
"""

from __future__ import annotations

import re

from .errors import InputError

METADATA_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


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
        if not METADATA_KEY.match(key):
            raise InputError(f"metadata key {key!r}: use letters, digits, _ and dots")
        clauses.append(f"json_extract(metadata, '$.{key}') = ?")
        params.append(value)
    return " AND ".join(clauses) or "1", params
