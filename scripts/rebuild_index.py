"""Rebuild an index directory's FAISS files from the vectors stored in its catalog (no model):
a thin call of `e5v-search rebuild`, kept for the cron jobs and scripts that call this file.

    python scripts/rebuild_index.py photos --type HNSW32
    python scripts/rebuild_index.py ./ix --max-memory 8GB

Takes `e5v-search rebuild`'s options after the index directory (or name); see its --help.
"""

import sys

from e5v_search.cli import cli

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: rebuild_index.py INDEX [e5v-search rebuild options]")
    cli(["rebuild", "--index", sys.argv[1], *sys.argv[2:]], prog_name="rebuild_index.py")
