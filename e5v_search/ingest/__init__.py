"""The ingest layer: from files to stored vectors.

sources (folders, globs, .txt/.jsonl/.csv read through the base floor's records module; every
bad input named), photo_metadata (EXIF, GPS, IPTC and XMP of an image file as flat metadata
keys), run (one ingest: plan, decide what needs a vector, commit chunk by chunk) and
its two backends, which only prepare and embed what the run hands them: threads (decoding ahead
of the local model) and ray_backend (Ray Data).
"""
