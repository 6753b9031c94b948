"""The `e5v-search` command: parse flags, call the engine, print. No logic lives here.

options (what commands share: the model options as one ModelChoice, --index, --lock-timeout,
the engine opened, library errors turned into messages and exit codes), models (`similarity`,
`check`: the encoder alone), reading (`search`, `info`, `errors`, `verify`), writing (`ingest`,
`rebuild`, `delete`, `repair`), serve and evaluate (`eval ...`); __main__ runs it
(`python -m e5v_search.cli`). Heavy imports (torch,
transformers) happen inside commands, so `e5v-search --help` stays fast.
"""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="e5v-search")
def cli():
    """Multimodal search over images and texts with E5-V."""


from . import evaluate, models, reading, serve, writing  # noqa: E402, F401 - they add commands
