"""The console entry point ends a command that only reads with os._exit once its output is
flushed (cli.main): real subprocesses, their output read through pipes as a shell would."""

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from e5v_search.cli import cli
from e5v_search.engine import Engine
from e5v_search.testing import make_sample_corpus

# Registers an atexit handler, then runs the console entry point with the given arguments.
WITH_ATEXIT = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('atexit ran', flush=True))\n"
    "sys.argv = ['e5v-search', *sys.argv[1:]]\n"
    "from e5v_search.cli import main\n"
    "main()\n"
)


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_dir):
    folder = tmp_path_factory.mktemp("exit")
    corpus = make_sample_corpus(folder / "corpus")
    engine = Engine.open(folder / "ix", model=str(tiny_dir), device="cpu", create=True)
    with engine:
        engine.ingest([corpus["images"]], progress=False)
    return folder / "ix"


def _run(*args, stdout=subprocess.PIPE):
    env = dict(os.environ, E5V_DEVICE="cpu")
    command = [sys.executable, "-m", "e5v_search.cli", *map(str, args)]
    return subprocess.run(command, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)


def test_a_search_through_a_pipe_prints_all_it_would_print_in_process(index):
    args = ["search", "a red circle", "--index", index, "-k", "30"]
    ran = _run(*args, "--paths")
    alone = CliRunner().invoke(cli, [*map(str, args), "--paths"])
    assert ran.returncode == alone.exit_code == 0, ran.stderr
    assert ran.stdout == alone.output and len(ran.stdout.splitlines()) == 30
    ran = _run("info", "--index", index)
    assert (
        ran.returncode == 0
        and ran.stdout == CliRunner().invoke(cli, ["info", "--index", str(index)]).output
    )


def test_a_failing_read_keeps_its_exit_code_and_message(tmp_path):
    ran = _run("search", "a cat", "--index", tmp_path / "absent")
    alone = CliRunner().invoke(cli, ["search", "a cat", "--index", str(tmp_path / "absent")])
    assert ran.returncode == alone.exit_code != 0
    assert "absent" in ran.stderr and "Traceback" not in ran.stderr


def test_a_reader_that_went_away_is_exit_1_not_a_traceback(index):
    """`e5v-search search ... --paths | head -0`: the pipe is closed before anything is written."""
    command = [sys.executable, "-m", "e5v_search.cli", "search", "a red circle"]
    command += ["--index", str(index), "--paths"]
    env = dict(os.environ, E5V_DEVICE="cpu")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 1
    assert "Traceback" not in err and "Exception ignored" not in err


def test_only_reading_commands_skip_the_interpreters_exit(index, tmp_path):
    """A write command's atexit handlers still run (Ray's shutdown, logging's flush)."""
    env = dict(os.environ, E5V_DEVICE="cpu")

    def atexit_ran(*args):
        command = [sys.executable, "-c", WITH_ATEXIT, *map(str, args)]
        ran = subprocess.run(command, env=env, capture_output=True, text=True)
        return ran.returncode, "atexit ran" in ran.stdout

    assert atexit_ran("info", "--index", index) == (0, False)
    assert atexit_ran("--version") == (0, True)
    notes = tmp_path / "more.txt"
    notes.write_text("one more note\n")
    assert atexit_ran("ingest", notes, "--index", index, "--quiet") == (0, True)
