"""The storage layer: an index directory, with no model.

catalog (SQLite, the source of truth; its reads in catalog_reads), its migrations and blobs (the
vector blob format and the row checksums), commits (what the catalog committed, remembered
outside it), faiss_ops (plain FAISS, numpy in and out), ondisk (indexes past RAM), segments
(one modality's index: sealed segments, a delta and masks) and older (layouts of earlier
versions), manifest (the typed record of the files), integrity (their checks), loading (opening
and catching up), rebuild (building from the stored vectors), phases (what long index work
says as it runs), policy (the type follows the
collection), locking (the writer lock), problems (writes the disk refuses), verify (every byte
checked), search (plain, filtered, re-ranked), keywords (the FTS5 keyword index, BM25 and
the fusion with the vectors) and store (the Store: what is open, and the one way to write).
"""
