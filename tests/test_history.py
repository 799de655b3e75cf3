"""Reading an experiment back: readers find the database or say it is missing, and never
create one."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from rich.console import Console

import popbt
from conftest import run_popbt
from pbt_history import EXPLOITS, hand_built
from popbt import history, report
from popbt.store import WAITING, Exploit, NotFound

READERS = (["list"], ["status"], ["status", "--experiment", "nope"], ["best", "--json"], ["export"])


@pytest.mark.parametrize("args", READERS, ids=" ".join)
def test_a_reader_given_a_run_directory_without_a_database_refuses_and_creates_nothing(tmp_path, args):
    typo = tmp_path / "typo"
    out = run_popbt(*args, "--dir", str(typo))
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert f"no popbt database at {typo / 'popbt.db'} (directory {typo} does not exist)" in lines[0]
    if "nope" in args:
        assert lines[0].startswith("popbt: error: no experiment named 'nope': ")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_directory_without_a_database_stays_empty(tmp_path):
    with pytest.raises(NotFound, match=f"^no popbt database at {tmp_path / 'popbt.db'}$"):
        popbt.status(dir=tmp_path)
    with pytest.raises(NotFound, match="no popbt database"):
        popbt.experiments(storage=f"sqlite:///{tmp_path / 'other.db'}")
    assert list(tmp_path.iterdir()) == []


def test_read_returns_the_rows_and_the_exploits_as_records(sqlite_url):
    hand_built(sqlite_url)
    found = history.read("latest", storage=sqlite_url)
    assert found.experiment.name == "hand" and found.config.population == 4
    assert len(found.rows) == 12
    assert all(isinstance(x, Exploit) for x in found.exploits)
    assert [(x.donor, x.donor_interval, x.member, x.interval) for x in found.exploits] == EXPLOITS


def test_read_many_keeps_the_order_asked_and_names_an_unknown_experiment(sqlite_url):
    hand_built(sqlite_url, "a")
    hand_built(sqlite_url, "b")
    assert [h.experiment.name for h in history.read_many(["b", "a"], storage=sqlite_url)] == ["b", "a"]
    with pytest.raises(NotFound, match="no experiment named 'c'"):
        history.read_many(["a", "c"], storage=sqlite_url)


def test_a_task_whose_start_is_not_decided_yet_shows_as_waiting(sqlite_url):
    hand_built(sqlite_url)
    st = popbt.status("hand", storage=sqlite_url)
    undecided = replace(
        st.population[2],
        interval=3,
        state=WAITING,
        score=None,
        hparams={},
        parent=None,
        parent_interval=None,
        worker=None,
        device=None,
    )
    shown = replace(st, population=[*st.population[:2], undecided, st.population[3]])
    console = Console(file=io.StringIO(), width=160)
    console.print(report.status_table(shown))
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in console.file.getvalue().splitlines()
        if line.startswith("│")
    ]
    # its latest result (age 2) stays shown next to the interval it waits to start
    assert rows[2] == ["2", "2", "0.35", "3", "", "", "waiting", "", ""]
