"""Truthful, quiet output (issue 23): the checkpoint-repair notice once, `info` for people,
an id column and aligned scores, `errors` without files that are gone and `errors --clear`,
training's elapsed time and ETA."""

import re

from click.testing import CliRunner

from e5v_search.cli import cli


def test_the_repair_notice_is_said_at_creation_then_kept_in_info(tmp_path, legacy_dir):
    (tmp_path / "t.txt").write_text("a red circle\na green square\n")
    env = {
        "E5V_MODEL": str(legacy_dir),
        "E5V_DEVICE": "cpu",
        "E5V_SEARCH_INDEX": str(tmp_path / "ix"),
    }
    made = CliRunner().invoke(cli, ["ingest", str(tmp_path / "t.txt"), "-q"], env=env)
    assert made.exit_code == 0, made.output
    assert made.stderr.count("the checkpoint was repaired on loading") == 1
    for args in (["search", "red", "--type", "text"], ["ingest", str(tmp_path / "t.txt"), "-q"]):
        again = CliRunner().invoke(cli, args, env=env)
        assert again.exit_code == 0 and "repaired" not in again.stderr, again.stderr
    info = CliRunner().invoke(cli, ["info"], env=env)
    assert "the checkpoint was repaired on loading" in info.stdout
    assert "repaired" not in info.stderr


def test_info_reads_as_text_for_an_index_with_no_items_yet(tmp_path, tiny_dir):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\n")
    env = {
        "E5V_MODEL": str(tiny_dir),
        "E5V_DEVICE": "cpu",
        "E5V_SEARCH_INDEX": str(tmp_path / "ix"),
    }
    assert CliRunner().invoke(cli, ["ingest", str(bad), "-q"], env=env).exit_code == 3
    info = CliRunner().invoke(cli, ["info"], env=env)
    assert info.exit_code == 0, info.output
    assert "model:   none yet (the first ingest records" in info.stdout
    assert "None" not in info.stdout and "{" not in info.stdout
    assert "1 ingest errors (`e5v-search errors`)" in info.stdout
    assert (
        "bad.txt (line 1): not valid UTF-8" in CliRunner().invoke(cli, ["errors"], env=env).stdout
    )
    bad.unlink()  # an error of a file that is gone is no longer listed
    assert CliRunner().invoke(cli, ["errors"], env=env).stdout == ""
    assert "no ingest errors" in CliRunner().invoke(cli, ["info"], env=env).stdout
    cleared = CliRunner().invoke(cli, ["errors", "--clear"], env=env)
    assert cleared.exit_code == 0 and "cleared 1 recorded errors" in cleared.stderr


def test_results_have_an_id_column_and_aligned_scores(tmp_path, tiny_dir):
    lines = [f"text number {i}" for i in range(12)]
    (tmp_path / "t.txt").write_text("\n".join(lines) + "\n")
    env = {
        "E5V_MODEL": str(tiny_dir),
        "E5V_DEVICE": "cpu",
        "E5V_SEARCH_INDEX": str(tmp_path / "ix"),
    }
    assert (
        CliRunner().invoke(cli, ["ingest", str(tmp_path / "t.txt"), "-q"], env=env).exit_code == 0
    )
    rebuilt = CliRunner().invoke(cli, ["rebuild", "--type", "HNSW32", "--no-recall"], env=env)
    assert rebuilt.exit_code == 0, rebuilt.output
    table = CliRunner().invoke(cli, ["search", "text", "--type", "text", "-k", "12"], env=env)
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["#", "score", "type", "id", "item"]
    ids = [int(row[21:23]) for row in rows]  # the id column: the same place in every row
    assert sorted(ids) == list(range(1, 13))
    assert len({row.index(".") for row in rows}) == 1  # scores aligned on the point
    assert all(re.match(r"^ *\d+ +-?\d\.\d{4} +text +\d+ +text number", row) for row in rows)
    info = CliRunner().invoke(cli, ["info"], env=env).stdout
    assert "HNSW32" in info and "ef_search " in info and "{" not in info


def test_training_says_elapsed_time_and_eta():
    import time

    from e5v_search.training import progress

    started = time.perf_counter() - 65
    assert re.fullmatch(r"elapsed 1m0[56]s, ETA 3m1[5-9]s", progress(started, 25, 100))
    assert progress(started, 100, 100).endswith("ETA done")
