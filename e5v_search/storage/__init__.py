"""The storage layer: an index directory, with no model.

catalog (SQLite, the source of truth; its reads in catalog_reads), its migrations and blobs (the
vector blob format and the row checksums), commits (what the catalog committed, remembered
outside it), faiss_ops (numpy-in numpy-out FAISS helpers), ondisk (indexes past RAM), segments
(sealed segments, a delta and masks: what a save writes), policy (the type follows the
collection), locking (the writer lock), integrity (the manifest and the checks of its files),
verify (every byte checked), search (plain, filtered, re-ranked) and store (catalog + one FAISS
index per modality, kept in step across crashes and processes).
"""
