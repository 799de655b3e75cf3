"""The live view: who trains what, the latest exploits, on a terminal and in a log."""

from __future__ import annotations

import io

from rich.console import Console

from conftest import run_popbt
from pbt_history import config, hand_built
from popbt import live
from popbt.store import Result, open_store


def test_snapshot_shows_each_running_interval_with_its_worker_and_device(sqlite_url):
    store = open_store(sqlite_url)
    try:
        exp = store.create_experiment(config(), "/tmp")
        a = store.claim(exp.id, "host-a:1", "cuda:0")
        store.claim(exp.id, "host-b:2", "cuda:1")
        store.report(a, Result(0.5, {}, "/nonexistent", "0" * 64, 1))
        snap = live.snapshot(store, exp)
    finally:
        store.close()
    assert [(b.worker, b.device, b.member, b.interval) for b in snap.running] == [("host-b:2", "cuda:1", 1, 0)]
    assert snap.exploits == []
    table = live.workers_table(snap, now=snap.running[0].started_at + 3)
    text = render(table)
    assert "host-b:2" in text and "cuda:1" in text and "3 s" in text


def test_terminal_view_of_a_finished_run_shows_progress_best_and_exploits(sqlite_url):
    hand_built(sqlite_url)
    store = open_store(sqlite_url)
    try:
        exp = store.experiment("hand")
        out = io.StringIO()
        counts = live.watch(store, exp, lambda: True, Console(file=out, force_terminal=True, width=140))
    finally:
        store.close()
    text = out.getvalue()
    assert counts.finished and counts.done == 12
    assert "12/12" in text and "best acc 0.95 (member 1)" in text
    assert "latest exploits" in text and "3@0" in text and "0@1" in text


def test_plain_lines_name_the_last_exploit_and_stop_when_told(sqlite_url):
    hand_built(sqlite_url)
    store = open_store(sqlite_url)
    try:
        exp = store.experiment("hand")
        out = io.StringIO()
        live.watch(store, exp, lambda: False, Console(file=out, width=300))
        pending = store.create_experiment(config("later"), "/tmp")
        stopped = live.watch(store, pending, lambda: False, Console(file=io.StringIO()))
    finally:
        store.close()
    assert out.getvalue().strip() == (
        "[hand] 12/12 intervals, 0 running; best acc 0.95 (member 1); "
        "last exploit: member 1 copied member 0 (interval 1) at interval 2"
    )
    assert not stopped.finished and stopped.done == 0


def test_status_watch_on_a_finished_experiment_shows_it_and_exits_0(tmp_path, sqlite_url):
    hand_built(sqlite_url)
    out = run_popbt("status", "--watch", "--storage", sqlite_url, "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "[hand] 12/12 intervals" in out.stdout and "hand: finished" in out.stdout


def render(renderable) -> str:
    console = Console(file=io.StringIO(), width=140)
    console.print(renderable)
    return console.file.getvalue()
