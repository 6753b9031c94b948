"""Thumbnails for the server: small JPEGs made on demand inside the index directory (or, for an
index on read-only media, in this user's cache), their total size kept under a bound by
evicting the least recently used."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from ..config import cache_home
from ..files import write_bytes
from ..images import load_image

THUMBNAIL_SIZES = (128, 256, 512)


def thumbnail_folder(index: Path) -> Path:
    """`<index>/thumbnails` where the index may be written; else a folder of this user's cache
    named after the index, so an index on a read-only mount or of another account is served
    with thumbnails too (the server is a reader: it writes nothing it may not)."""
    inside = Path(index) / "thumbnails"
    if os.access(index, os.W_OK) or os.access(inside, os.W_OK):
        try:
            inside.mkdir(exist_ok=True)
            return inside
        except OSError:
            pass
    key = hashlib.sha256(str(Path(index).resolve()).encode()).hexdigest()[:16]
    return cache_home() / "thumbnails" / key


class ThumbnailCache:
    def __init__(self, folder: Path, max_bytes: int = 256 * 2**20):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def get(self, item: dict, size: int) -> Path:
        """The thumbnail of a catalog image item (its longer side `size` px), made if missing.
        Names come from the item's id, size and content hash only: nothing a client sends
        becomes a path."""
        if size not in THUMBNAIL_SIZES:
            raise ValueError(f"size must be one of {THUMBNAIL_SIZES}")
        name = f"{int(item['id'])}-{size}-{(item['content_hash'] or 'x')[:16]}.jpg"
        path = self.folder / name
        if path.exists():
            os.utime(path)  # recently used
            return path
        image = load_image(item["source"])
        image.thumbnail((size, size))
        write_bytes(path, lambda f: image.save(f, format="JPEG", quality=85))
        self._evict()
        return path

    def _evict(self) -> None:
        with self._lock:
            files = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.folder.glob("*.jpg")]
            total = sum(size for _, size, _ in files)
            for _, size, path in sorted(files):
                if total <= self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size
