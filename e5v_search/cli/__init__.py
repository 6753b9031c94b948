"""The `e5v-search` command: parse flags, call the engine, print. No logic lives here.

options (what commands share: the model options as one ModelChoice, --index, --lock-timeout,
the engine opened, library errors turned into messages and exit codes), models (`similarity`,
`check`: the encoder alone), reading (`search`, `info`, `errors`, `verify`), writing (`ingest`,
`rebuild`, `delete`, `repair`), serve and evaluate (`eval ...`). `main` is the console entry
point (`e5v-search`; __main__ calls it for `python -m e5v_search.cli`). Heavy imports (torch,
transformers) happen inside commands, so `e5v-search --help` stays fast.
"""

from __future__ import annotations

import os
import sys

import click

# Commands that only read: nothing of theirs is left for an atexit handler or a finalizer.
QUICK_EXIT = frozenset({"search", "info", "errors", "verify", "similarity", "check"})


@click.group()
@click.version_option(package_name="e5v-search")
def cli():
    """Multimodal search over images and texts with E5-V."""


from . import evaluate, models, reading, serve, writing  # noqa: E402, F401 - they add commands


def main() -> None:
    """Run the command; after one that only reads, end with os._exit once the output is
    flushed. The interpreter's own exit tears down torch and ~3,000 modules: 1.1 s of a 4.4 s
    one-shot search here (docs/benchmarks.md). Every other command exits as Python does."""
    command = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    try:
        cli.main()
    except SystemExit as done:
        if command not in QUICK_EXIT:
            raise
        code = done.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a reader that went away (`| head`): what click says of a broken pipe
        code = code or 1
    os._exit(code)
