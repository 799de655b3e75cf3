"""Faults, quickly: the short versions of chaos/campaign.py's faults, for `make test`.

Each test drives real worker processes (or a real Worker object) through one fault and checks
that nothing is lost, duplicated or corrupted, and that the fault was reported in one line.
Waiting is always on a real condition: a marker file the spec leaves, a database row, a
process exit.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from conftest import QUAD, SPECS, popbt_cmd, run_popbt
from popbt import checkpoints
from popbt.experiment import load_spec
from popbt.store import StoreError, open_store
from popbt.worker import Worker
from test_run import assert_complete, done_count, results, wait_for

FAULTY = str(SPECS / "faulty.py")
LEASE = "2"

# Holds BEGIN EXCLUSIVE on a sqlite database until a line arrives on stdin.
LOCKER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


def switches(tmp_path, **values) -> dict:
    markers = tmp_path / "markers"
    markers.mkdir(exist_ok=True)
    return {"FAULTY_DIR": str(markers), "FAULTY_LEASE": LEASE, **values}


def create(storage, tmp_path, env, *extra):
    out = run_popbt(
        "run", FAULTY, "--workers", "0", "--seed", "7", "--storage", storage, "--dir", str(tmp_path), *extra, env=env
    )
    assert out.returncode == 0, out.stderr


def start_worker(storage, env, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        popbt_cmd("worker", FAULTY, "--storage", storage),
        env={**os.environ, **env},
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )


def name_of(proc: subprocess.Popen) -> str:
    return f"{socket.gethostname()}:{proc.pid}"


def events_of(storage, name="faulty"):
    return results(storage, name)[2]


def assert_live_checkpoints_intact(storage, name="faulty"):
    store = open_store(storage)
    try:
        exp = store.experiment(name)
        live = store.live_checkpoints(exp.id)
        for c in live:
            checkpoints.verify(c.path, c.sha256)
        return exp, live
    finally:
        store.close()


def in_transaction(storage) -> bool:
    """Does any connection hold a write transaction (a lock) on this database right now?"""
    url = make_url(storage)
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(url.database, timeout=0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()
    store = open_store(storage)
    try:
        with store.engine.connect() as conn:
            return bool(
                conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')"
                    )
                ).scalar()
            )
    finally:
        store.close()


def group_gone(pgid: int) -> bool:
    """No live process is left in process group ``pgid``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return False
    return True


def freeze_outside_transactions(proc: subprocess.Popen, storage) -> None:
    """SIGSTOP ``proc`` at a moment it holds no database lock (its heartbeat thread may be in
    the middle of one: frozen there, it would block everyone else too, which is another fault)."""
    while True:
        proc.send_signal(signal.SIGSTOP)
        if not in_transaction(storage):
            return
        proc.send_signal(signal.SIGCONT)


def test_a_worker_stopped_past_its_lease_has_its_late_result_refused_and_carries_on(tmp_path, storage):
    env = switches(tmp_path)
    markers, markers_b = tmp_path / "markers", tmp_path / "markers-b"
    markers_b.mkdir()
    create(storage, tmp_path, env)
    a = start_worker(storage, {**env, "FAULTY_HANG": "1:1"}, tmp_path / "a.log")
    wait_for(lambda: (markers / "hang-1-1").exists(), what="worker a to reach member 1 interval 1")
    freeze_outside_transactions(a, storage)
    # b trains the rest, takes member 1 interval 1 over once a's lease expires, and hangs there
    b = start_worker(storage, {**env, "FAULTY_DIR": str(markers_b), "FAULTY_HANG": "1:1"}, tmp_path / "b.log")
    wait_for(lambda: (markers_b / "hang-1-1").exists(), what="worker b to take member 1 interval 1 over")
    b.kill()  # member 1's last intervals are left to a
    b.wait()
    a.send_signal(signal.SIGCONT)
    (markers / "release-1-1").touch()
    assert a.wait(timeout=60) == 0
    log = (tmp_path / "a.log").read_text()
    discarded = "member 1 interval 1: lease was taken over by another worker; result discarded"
    assert discarded in log
    assert "member 1 interval 3: Q=" in log.split(discarded, 1)[1], log  # it carried on with new work
    exp, rows, events = results(storage, "faulty")
    assert exp.status == "finished"
    assert_complete(rows, 4, 4)
    takeovers = [e.message for e in events if e.kind == "lease_expired"]
    assert takeovers == [
        f"lease of {name_of(a)} expired; {name_of(b)} takes over",
        f"lease of {name_of(b)} expired; {name_of(a)} takes over",
    ]
    assert_live_checkpoints_intact(storage)


def test_sigkill_of_popbt_run_and_its_workers_then_the_same_command_completes(tmp_path, sqlite_url):
    env = switches(tmp_path, FAULTY_HANG="2:2")  # one worker is sure to be mid-interval
    args = ("run", FAULTY, "--workers", "2", "--seed", "5", "--storage", sqlite_url, "--dir", str(tmp_path))
    first = subprocess.Popen(
        popbt_cmd(*args),
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    hang = tmp_path / "markers" / "hang-2-2"
    wait_for(hang.exists, what="a worker to reach member 2 interval 2")
    _, before, _ = results(sqlite_url, "faulty")
    held = {(r.member, r.interval) for r in before if r.state == "running"}
    assert (2, 2) in held
    os.killpg(first.pid, signal.SIGKILL)  # the launcher and its workers, as a lost machine
    first.wait()
    wait_for(lambda: group_gone(first.pid), what="the killed processes to be gone")
    _, frozen, _ = results(sqlite_url, "faulty")
    held = {(r.member, r.interval) for r in frozen if r.state == "running"}
    finished_before = {(r.member, r.interval): r.finished_at for r in frozen if r.state == "done"}
    second = subprocess.run(popbt_cmd(*args), env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "resuming experiment faulty" in second.stdout
    exp, after, events = results(sqlite_url, "faulty")
    assert exp.status == "finished"
    assert_complete(after, 4, 4)
    assert held <= {(e.member, e.interval) for e in events if e.kind == "lease_expired"}
    for key, when in finished_before.items():  # nothing finished before the crash was redone
        assert [r.finished_at for r in after if (r.member, r.interval) == key] == [when]
    assert_live_checkpoints_intact(sqlite_url)


def test_a_save_failing_midway_leaves_no_half_checkpoint_referenced(tmp_path, storage):
    out = run_popbt(
        "run",
        FAULTY,
        "--workers",
        "1",
        "--seed",
        "3",
        "--storage",
        storage,
        "--dir",
        str(tmp_path),
        env=switches(tmp_path, FAULTY_SAVE_HALF="1:2"),
    )
    assert out.returncode == 0, out.stderr
    exp, rows, events = results(storage, "faulty")
    failures = [e for e in events if e.kind == "failure"]
    assert [(e.member, e.interval) for e in failures] == [(1, 2)]
    assert failures[0].message == "attempt 1/3: ValueError: serialisation failed halfway (injected)"
    assert_complete(rows, 4, 4)
    _, live = assert_live_checkpoints_intact(storage)
    on_disk = sorted(str(p) for p in (tmp_path / "checkpoints" / "faulty").iterdir())
    assert on_disk == sorted(c.path for c in live)  # no half file anywhere, not even a temporary one


def test_a_deleted_checkpoint_is_detected_and_the_member_recovers(tmp_path, storage):
    create(storage, tmp_path, switches(tmp_path))
    store = open_store(storage)
    exp = store.experiment("faulty")
    worker = Worker(store, exp, load_spec(FAULTY))
    for _ in range(4):  # interval 0 of every member, through a real worker
        worker.train_one(store.claim(exp.id, worker.name, "cpu"))
    victim = next(c for c in store.live_checkpoints(exp.id) if c.member == 1)
    os.unlink(victim.path)  # between intervals: member 1 interval 1 starts from it
    worker.run()
    store.close()
    exp, rows, events = results(storage, "faulty")
    assert any(e.kind == "corrupt_checkpoint" and e.message == f"checkpoint {victim.path} is missing" for e in events)
    failed = [e for e in events if e.kind == "failure"]
    assert failed and all((e.member, e.interval) == (1, 1) and "is missing" in e.message for e in failed)
    assert any(e.kind == "replaced" and e.member == 1 for e in events)
    assert exp.status == "finished"
    assert_complete(rows, 4, 4)  # member 1 recovered: every interval of every member is done
    assert_live_checkpoints_intact(storage)


def test_sqlite_locked_past_the_busy_timeout(tmp_path, sqlite_url):
    """Another process holds the database with BEGIN EXCLUSIVE. Past the busy timeout, a worker
    retries; past its lease it stops taking work, in one line, having written nothing; once the
    lock goes, workers carry on and nothing is lost.

    `popbt worker`'s busy timeout is a fixed 30 s, so this drives a real Worker whose store has
    a 0.2 s one, set on its engine's connections."""
    create(sqlite_url, tmp_path, switches(tmp_path, FAULTY_LEASE="3"), "--population", "4", "--intervals", "3")
    db = make_url(sqlite_url).database

    def worker():
        store = open_store(sqlite_url)
        exp = store.experiment("faulty")
        store.patience = exp.config.lease_seconds  # as `popbt worker` does
        hit = threading.Event()
        event.listen(store.engine, "connect", lambda conn, _: conn.execute("PRAGMA busy_timeout = 200"))
        event.listen(
            store.engine, "handle_error", lambda ctx: hit.set() if "locked" in str(ctx.original_exception) else None
        )
        store.engine.dispose()
        return store, Worker(store, exp, load_spec(FAULTY)), hit

    def lock():
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, db], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert locker.stdout.readline().strip() == "locked"
        return locker

    def release(locker):
        locker.stdin.write("\n")
        locker.stdin.flush()
        assert locker.wait(timeout=30) == 0

    # locked for longer than the worker's lease: it stops taking work, and says why in one line
    store, w, hit = worker()
    locker = lock()
    with pytest.raises(StoreError) as stopped:
        w.run()
    release(locker)
    store.close()
    message = str(stopped.value)
    assert "\n" not in message
    assert "stops taking work: the database was unreachable for longer than its 3 s lease" in message
    assert "database is locked" in message
    _, rows, _ = results(sqlite_url, "faulty")
    assert all(r.state == "pending" for r in rows)  # it wrote nothing
    assert not (tmp_path / "checkpoints" / "faulty").exists() or not any(
        (tmp_path / "checkpoints" / "faulty").iterdir()
    )

    # locked past the busy timeout but not past the lease: the worker retries and goes on
    store, w, hit = worker()
    locker = lock()
    done = []
    runner = threading.Thread(target=lambda: done.append(w.run()))
    runner.start()
    assert hit.wait(timeout=15), "the worker never met the lock"
    release(locker)
    runner.join(timeout=60)
    store.close()
    assert done and done[0].done == 12
    exp, rows, _ = results(sqlite_url, "faulty")
    assert exp.status == "finished"
    assert_complete(rows, 4, 3)
    assert_live_checkpoints_intact(sqlite_url)


def test_user_code_raising_in_save_and_in_load_is_recorded_and_retried(tmp_path, storage):
    out = run_popbt(
        "run",
        FAULTY,
        "--workers",
        "1",
        "--seed",
        "9",
        "--storage",
        storage,
        "--dir",
        str(tmp_path),
        env=switches(tmp_path, FAULTY_RAISE="save:1:1:1,load:2:2:2"),
    )
    assert out.returncode == 0, out.stderr
    exp, rows, events = results(storage, "faulty")
    failures = sorted((e.member, e.interval, e.message) for e in events if e.kind == "failure")
    assert failures == [
        (1, 1, "attempt 1/3: RuntimeError: injected in save"),
        (2, 2, "attempt 1/3: RuntimeError: injected in load"),
        (2, 2, "attempt 2/3: RuntimeError: injected in load"),
    ]
    assert exp.status == "finished"
    assert_complete(rows, 4, 4)
    _, live = assert_live_checkpoints_intact(storage)
    on_disk = sorted(str(p) for p in (tmp_path / "checkpoints" / "faulty").iterdir())
    assert on_disk == sorted(c.path for c in live)


def test_sync_mode_with_a_member_that_keeps_failing_completes(tmp_path, storage):
    out = run_popbt(
        "run",
        FAULTY,
        "--sync",
        "--workers",
        "2",
        "--seed",
        "2",
        "--intervals",
        "3",
        "--storage",
        storage,
        "--dir",
        str(tmp_path),
        env=switches(tmp_path, FAULTY_RAISE="train:1:1"),
    )
    assert out.returncode == 0, out.stderr
    exp, rows, events = results(storage, "faulty")
    assert exp.status == "finished"
    done = sorted((r.member, r.interval) for r in rows if r.state == "done")
    assert done == sorted([(m, k) for m in (0, 2, 3) for k in range(3)] + [(1, 0)])
    assert [(r.member, r.interval) for r in rows if r.state == "failed"] == [(1, 1)]
    assert not [r for r in rows if r.member == 1 and r.interval == 2]  # it stops there
    failures = [e for e in events if e.kind == "failure"]
    assert len(failures) == 12 and all("RuntimeError: injected in train" in e.message for e in failures)
    gave_up = [e for e in events if e.kind == "gave_up"]
    assert [(e.member, e.interval) for e in gave_up] == [(1, 1)]
    assert gave_up[0].message == "member 1 failed 4 times over; it stops here"
    status = run_popbt("status", "--storage", storage, env={"COLUMNS": "200"})
    assert status.returncode == 0 and "gave_up: member 1 interval 1: member 1 failed 4 times over" in status.stdout


def test_a_checkpoint_whose_report_is_delayed_survives_popbt_run_s_sweep(tmp_path, sqlite_url):
    """A worker frozen between writing its checkpoint and committing it (here: waiting on a
    locked database, then SIGSTOPped) for longer than the sweep's age limit still commits it if
    nobody took its lease over; `popbt run` must not delete that file as an orphan."""
    env = switches(tmp_path, FAULTY_HANG="1:1")
    markers = tmp_path / "markers"
    create(sqlite_url, tmp_path, env)
    a = start_worker(sqlite_url, env, tmp_path / "a.log")
    wait_for(lambda: (markers / "hang-1-1").exists(), what="the worker to reach member 1 interval 1")
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, make_url(sqlite_url).database],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert locker.stdout.readline().strip() == "locked"
    (markers / "release-1-1").touch()  # it trains on, writes its checkpoint, and waits for the lock
    ckdir = tmp_path / "checkpoints" / "faulty"
    wait_for(lambda: list(ckdir.glob("m0001-i00001-*.ckpt")), what="the checkpoint of member 1 interval 1")
    a.send_signal(signal.SIGSTOP)
    locker.stdin.write("\n")
    locker.stdin.flush()
    locker.wait(timeout=30)
    [written] = ckdir.glob("m0001-i00001-*.ckpt")
    wait_for(
        lambda: time.time() - written.stat().st_mtime > 2 * float(LEASE) + 0.5,
        timeout=30,
        what="the file to be older than the sweep's age limit",
    )
    sweep = run_popbt("run", FAULTY, "--workers", "0", "--storage", sqlite_url, "--dir", str(tmp_path), env=env)
    assert sweep.returncode == 0 and "resuming experiment faulty" in sweep.stdout, sweep.stderr
    assert written.exists()
    a.send_signal(signal.SIGCONT)  # nobody took its lease: its report is accepted
    assert a.wait(timeout=60) == 0
    exp, rows, _ = results(sqlite_url, "faulty")
    assert [r.checkpoint for r in rows if (r.member, r.interval) == (1, 1)] == [str(written)]
    assert exp.status == "finished"
    assert_complete(rows, 4, 4)
    assert_live_checkpoints_intact(sqlite_url)


def test_a_string_score_is_refused_and_a_nan_metric_is_stored_as_null():
    from popbt.worker import ScoreError, split_score

    with pytest.raises(ScoreError):
        split_score("0.5", "score")  # a string is not a score, even one that looks like a number
    assert split_score({"score": 0.5, "loss": float("nan")}, "score") == (0.5, {"loss": None})


def test_two_databases_sharing_a_run_directory_keep_each_others_checkpoints(tmp_path):
    """Two experiments called ``faulty`` in one --dir, recorded in two databases (the default
    popbt-runs with different --storage), and a user's own file in the checkpoint directory:
    each run's sweep deletes only its own orphans."""
    runs = tmp_path / "runs"
    ckpts = runs / "checkpoints" / "faulty"
    ckpts.mkdir(parents=True)
    pretrained = ckpts / "pretrained.ckpt"
    pretrained.write_bytes(b"the user's own weights")
    os.utime(pretrained, (1_000_000_000, 1_000_000_000))
    urls = [f"sqlite:///{tmp_path / name}" for name in ("a.db", "b.db")]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    launchers = [
        subprocess.Popen(
            popbt_cmd("run", FAULTY, "--workers", "1", "--storage", url, "--dir", str(runs)),
            env={**os.environ, **switches(tmp_path / name, FAULTY_STEP_SECONDS="0.02")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for url, name in zip(urls, ("a", "b"))
    ]
    for p in launchers:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    for url in urls:
        exp, rows, _ = results(url, "faulty")
        assert exp.status == "finished"
        assert_complete(rows, 4, 4)
        assert_live_checkpoints_intact(url)  # the final weights of both are there
    assert pretrained.read_bytes() == b"the user's own weights"


def test_a_sqlite_file_deleted_mid_run_stops_the_run_and_its_history_is_salvaged(tmp_path):
    """Deleting popbt.db while the run goes on: nobody may write on into a file nobody can open
    any more. The run stops, non-zero, saying so; the first writer to notice saved what it
    could still read, and every result a worker committed is in that copy."""
    runs = tmp_path / "runs"
    env = {**os.environ, "POPBT_TEST_STEP_SECONDS": "0.2"}
    launcher = subprocess.Popen(
        popbt_cmd("run", QUAD, "--workers", "2", "--intervals", "30", "--dir", str(runs)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = runs / "popbt.db"
    wait_for(lambda: db.exists() and done_count(f"sqlite:///{db}", "quad") >= 4, what="a few results")
    db.unlink()
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 2, err
    [line] = [x for x in err.splitlines() if x.startswith("popbt: error:")]
    assert f"database file {db} was deleted while in use" in line and "saved in" in line
    salvaged = runs / "popbt.db.salvaged"
    with sqlite3.connect(salvaged) as conn:
        saved = set(conn.execute("SELECT member, interval FROM popbt_tasks WHERE state = 'done'"))
    logged = set()
    for log in (runs / "logs" / "quad").glob("*.log"):
        logged |= {
            (int(m), int(k)) for m, k in re.findall(r"popbt\.worker member (\d+) interval (\d+): Q=", log.read_text())
        }
    assert len(logged) >= 4 and logged <= saved  # nothing a worker committed is lost
    assert not db.exists()  # nothing recreated an empty database in its place
