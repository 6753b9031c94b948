"""`verify`: every byte of an index directory checked against what was recorded when it was
written, without the writer lock (it writes nothing), and `repair`'s list of what to mend.

- both copies of the manifest against their own checksums;
- every index file the manifest names: its size and the SHA-256 of all of it (`digest`, recorded
  at its save; a file saved before digests is checked by its probe only, and said so);
- the catalog: SQLite's `PRAGMA integrity_check` (pages, b-trees, indexes), then every item row
  and vector blob against the CRC-32 written with it (rows written before checksums are counted
  as unchecked), then the keyword index against the items and FTS5's own check
  (keywords.keyword_damage);
- commits the catalog lost (commits.py), and modalities found DAMAGED on open.

A writer may replace files while this runs (they are never changed, only replaced and then
removed): when a named file disappears the manifest is read again and the files checked again.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import commits
from .integrity import damage_of, digest_damage
from .keywords import keyword_damage
from .manifest import Manifest, copy_problems

_ATTEMPTS = 3


def verify(store) -> dict:
    started = time.perf_counter()
    for _ in range(_ATTEMPTS):
        manifest, _problem = Manifest.read(store.path)
        files = _files(store.path, manifest)
        if Manifest.read(store.path)[0].save_id == manifest.save_id:
            break
    rows, checked, unchecked = store.catalog.damaged()
    integrity = [r[0] for r in store.catalog.conn.execute("PRAGMA integrity_check")]
    keywords, keywords_checked = keyword_damage(store.catalog.conn, store.path / "catalog.sqlite")
    report = {
        "path": str(store.path),
        "manifest": copy_problems(store.path),
        "files": files,
        "catalog": {
            "integrity": [] if integrity == ["ok"] else integrity,
            "keywords": keywords,
            "keywords_checked": keywords_checked,  # FTS5's own check (not on read-only media)
            "rows": checked,
            "unchecked_rows": unchecked,
            "damaged_rows": [{"id": i, "source": s, "problem": p} for i, s, p in rows],
        },
        "lost": [*store.catalog.lost(), *([store.lost] if store.lost else [])],
        "commits": commits.damage(store.path),
        "damaged": dict(store.damaged),
        "bytes": sum(f["bytes"] for f in files) + (store.path / "catalog.sqlite").stat().st_size,
    }
    if not manifest.indexes and store.catalog.count():
        report["manifest"]["indexes"] = "no manifest names the index files"
    report["seconds"] = time.perf_counter() - started
    report["problems"] = problems(report)
    report["ok"] = not report["problems"]
    return report


def _files(folder: Path, manifest: Manifest) -> list[dict]:
    out = []
    for modality, entry in sorted(manifest.indexes.items()):
        records = entry.files
        for path in entry.paths(folder):
            record = records.get(path.name)
            problem = digest_damage(folder, path.name, record)
            if record and "digest" not in record and "sha256" not in record and not problem:
                problem = damage_of(folder, {path.name: record})  # probe only
            size = path.stat().st_size if path.exists() else 0
            out.append(
                {
                    "modality": modality,
                    "name": path.name,
                    "bytes": size,
                    "problem": problem,
                    "whole": bool(record and ("digest" in record or "sha256" in record)),
                }
            )
        for name in set(records) - {p.name for p in entry.paths(folder)}:
            missing = {"bytes": 0, "problem": f"{name} is missing", "whole": False}
            out.append({"modality": modality, "name": name, **missing})
    return out


def problems(report: dict) -> list[str]:
    """Every problem a verify report found, one line each."""
    from .commits import describe

    lines = [f"{name} {p}" for name, p in report["manifest"].items() if p and name != "indexes"]
    if report["manifest"].get("indexes"):
        lines.append(report["manifest"]["indexes"])
    lines += [f["problem"] for f in report["files"] if f["problem"]]
    catalog = report["catalog"]
    lines += [f"catalog.sqlite: {line}" for line in catalog["integrity"]]
    lines += catalog["keywords"]
    lines += [f"item {r['id']} ({r['source']}): {r['problem']}" for r in catalog["damaged_rows"]]
    lines += [f"lost: {describe(lost)}" for lost in report["lost"]]
    lines += [report["commits"]] if report["commits"] else []
    lines += [f"{m} index: {why}" for m, why in report["damaged"].items()]
    return lines
