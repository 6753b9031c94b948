"""Index layouts saved by earlier versions, read once and converted by the next save: the one
place that knows them (the manifest's `IndexEntry.names` lists their files, integrity.py accepts
their whole-file checksums).

- one file per modality (`image.faiss`), before segments;
- an on-disk base `image.g<N>.faiss` (lists in `.ivfdata`) with its delta (`.delta.npz`, or a
  Flat `.delta.faiss` from before deltas were compressed) and its mask (`.masked.npy`).

The file becomes the first sealed segment, as it is; the next save writes a template, the
segment's id list, a delta and masks under new names (segments.py), and the old files go.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from . import faiss_ops as fx
from .segments import NO_IDS, Segment, Segments, emptied, fill


def load_older(folder: Path, entry) -> Segments:
    file = folder / entry.file
    stem = file.name.removesuffix(".faiss")
    if entry.ondisk:
        with fx.native_output():
            index = faiss.read_index(str(file), faiss.IO_FLAG_ONDISK_SAME_DIR)
        template = _template_of(file)
    else:
        index = fx.load(file, mmap=True)
        template = emptied(fx.owned(index))  # once: the next save writes a template file
    mask_file = folder / f"{stem}.masked.npy"
    masked = np.load(mask_file) if mask_file.exists() else NO_IDS
    segment = Segment(stem, index, np.sort(fx.ids_of(index)), masked, ids_written=False)
    delta = emptied(template)
    if (folder / f"{stem}.delta.npz").exists():
        with np.load(folder / f"{stem}.delta.npz") as data:
            fill(delta, data["lists"], data["sizes"], data["ids"], data["codes"])
    if (folder / f"{stem}.delta.faiss").exists():
        flat = fx.load(folder / f"{stem}.delta.faiss")
        ids = fx.ids_of(flat)
        fx.add(delta, ids, flat.reconstruct_batch(ids))
    return Segments(template, [segment], delta, entry.ondisk)


def _template_of(base_file: Path):
    """An on-disk base's trained structure, its lists left on disk unread."""
    with fx.native_output():
        template = faiss.read_index(str(base_file), faiss.IO_FLAG_SKIP_IVF_DATA)
    ivf = fx.ivf_of(template)
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns and frees it now, not Python
    ivf.ntotal = template.ntotal = 0
    return template
