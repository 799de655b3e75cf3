"""End to end through the command line and real worker processes, as a user runs popbt."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import QUAD, SPECS, expire_lease, popbt_cmd, run_popbt
from popbt import analysis
from popbt.experiment import ExperimentConfig
from popbt.space import Uniform
from popbt.store import DONE, NotFound, open_store

FAULTY = str(SPECS / "faulty.py")


def wait_for(predicate, timeout=60.0, what="condition"):
    """Poll a real condition (a file, a database row) until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def results(url, name):
    store = open_store(url)
    try:
        exp = store.experiment(name)
        return exp, store.history(exp.id), store.events(exp.id, limit=1000)
    finally:
        store.close()


def done_count(url, name):
    try:
        return sum(r.state == DONE for r in results(url, name)[1])
    except NotFound:
        return 0


def store_exploits(url, exp_id):
    store = open_store(url)
    try:
        return store.exploits(exp_id)
    finally:
        store.close()


def assert_complete(rows, population, intervals):
    keys = [(r.member, r.interval) for r in rows if r.state == DONE]
    assert sorted(keys) == [(m, k) for m in range(population) for k in range(intervals)]


def test_run_two_workers_then_list_status_best(tmp_path):
    out = run_popbt("run", QUAD, "--workers", "2", "--seed", "3", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "best: member" in out.stdout and "weights:" in out.stdout
    best = json.loads(run_popbt("best", "--json", "--dir", str(tmp_path)).stdout)
    assert best["experiment"] == "quad" and best["interval"] == 5
    assert Path(best["weights"]).is_file()
    steps = best["schedule"]
    # the model's whole training, oldest first: every interval once, whoever trained it
    assert [s["interval"] for s in steps] == list(range(6))
    assert (steps[-1]["member"], steps[-1]["interval"]) == (best["member"], 5)
    assert set(best["schedule"][0]["hparams"]) == {"h0", "h1"}
    status = run_popbt("status", "--dir", str(tmp_path))
    assert status.returncode == 0 and "quad: finished, 24/24 intervals" in status.stdout
    listing = run_popbt("list", "--dir", str(tmp_path))
    assert "quad" in listing.stdout and "finished" in listing.stdout
    # the checkpoints left are the final one of each member
    assert len(list((tmp_path / "checkpoints" / "quad").glob("*.ckpt"))) == 4
    # running the same command again starts a new experiment instead of redoing the old one
    again = run_popbt("run", QUAD, "--workers", "1", "--intervals", "1", "--dir", str(tmp_path))
    assert again.returncode == 0 and "quad-2" in again.stdout


def claim_all(url, exp_id, queue, barrier):
    store = open_store(url)
    store.config(exp_id)
    barrier.wait()  # every process is connected: start claiming together
    got = []
    while (task := store.claim(exp_id, f"p{os.getpid()}", "cpu")) is not None:
        got.append((task.member, task.interval))
        if len(got) == 1:
            barrier.wait()  # each holds one claim before any goes on: all four compete to the end
    store.close()
    queue.put(got)


def report_all(url, exp_id, barrier):
    """Claim and report with hand-made scores until the experiment is finished, settling when idle."""
    from popbt.store import Result

    store = open_store(url)
    store.config(exp_id)
    barrier.wait()
    while not store.progress(exp_id).finished:
        task = store.claim(exp_id, f"p{os.getpid()}", "cpu")
        if task is None:
            store.settle(exp_id)
            continue
        score = ((task.member * 7919 + task.interval * 104729) % 1000) / 1000
        store.report(task, Result(score, {}, f"/nonexistent/{task.member}-{task.interval}-{task.token}", "0" * 64, 1))
    store.close()


def test_reports_and_decisions_under_contention_from_several_processes(storage):
    """Four processes report at once: every decision is applied exactly once, and every copy is
    of the copier's age, whoever planned it and however often a plan was refused."""
    store = open_store(storage)
    cfg = ExperimentConfig(name="race", spec="x", space={"x": Uniform(0, 1)}, population=12, intervals=12, seed=0)
    exp = store.create_experiment(cfg, "/tmp")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=report_all, args=(storage, exp.id, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    rows, copies, heads = store.history(exp.id), store.exploits(exp.id), store.heads(exp.id)
    progress = store.progress(exp.id)
    store.close()
    assert_complete(rows, 12, 12)
    assert all(r.parent_interval == r.interval - 1 for r in rows if r.interval > 0)
    assert len({(x.member, x.interval) for x in copies}) == len(copies) == 11 * 3  # 3 of 12 copy, each time
    # the head rows, updated by every report under that contention, say what the history says
    final = {r.member: r for r in rows if r.interval == 11}
    assert [(h.member, h.age, h.score, h.done, h.given_up_at) for h in heads] == [
        (m, 11, final[m].score, 12, None) for m in range(12)
    ]
    best = max((r for r in final.values()), key=lambda r: (r.score, -r.member))
    assert (progress.done, progress.best_member, progress.best_score) == (144, best.member, best.score)
    assert progress.best_seen == max(r.score for r in rows if r.score is not None)


def test_claims_under_contention_from_several_processes_never_share_a_task(storage):
    store = open_store(storage)
    cfg = ExperimentConfig(name="race", spec="x", space={"x": Uniform(0, 1)}, population=1000, intervals=1, seed=0)
    exp = store.create_experiment(cfg, "/tmp")
    store.close()
    ctx = mp.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(4)
    procs = [ctx.Process(target=claim_all, args=(storage, exp.id, queue, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    claimed = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    everything = [k for got in claimed for k in got]
    assert len(everything) == len(set(everything)) == 1000
    assert all(claimed)  # every process claimed, and kept claiming beside the others


def test_a_worker_killed_mid_interval_loses_only_that_interval(tmp_path, sqlite_url):
    run_popbt("run", QUAD, "--workers", "0", "--seed", "1", "--storage", sqlite_url, "--dir", str(tmp_path))
    marker = tmp_path / "markers"
    marker.mkdir()
    doomed = subprocess.Popen(
        popbt_cmd("worker", QUAD, "--storage", sqlite_url),
        env={**os.environ, "POPBT_TEST_HANG": f"2:3:{marker}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: any(marker.iterdir()), what="the worker to start member 2 interval 3")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    exp, rows, _ = results(sqlite_url, "quad")
    hung = [r for r in rows if (r.member, r.interval) == (2, 3)]
    assert hung[0].state == "running"
    expire_lease(sqlite_url, exp.id, 2, 3)  # as the database clock would after lease_seconds
    heir = run_popbt("worker", QUAD, "--storage", sqlite_url)
    assert heir.returncode == 0, heir.stderr
    exp, rows, events = results(sqlite_url, "quad")
    assert exp.status == "finished"
    assert_complete(rows, 4, 6)
    assert [(e.member, e.interval) for e in events if e.kind == "lease_expired"] == [(2, 3)]
    assert not any(e.kind == "failure" for e in events)


def history_signature(url, name):
    _, rows, _ = results(url, name)
    return [(r.member, r.interval, r.score, r.hparams, r.parent, r.parent_interval) for r in rows]


def test_sync_with_a_seed_gives_the_same_history_whatever_the_number_of_workers(tmp_path, storage):
    for name, workers in (("one", "1"), ("three", "3")):
        out = run_popbt(
            "run",
            QUAD,
            "--sync",
            "--seed",
            "11",
            "--population",
            "5",
            "--name",
            name,
            "--workers",
            workers,
            "--storage",
            storage,
            "--dir",
            str(tmp_path),
        )
        assert out.returncode == 0, out.stderr
    one, three = history_signature(storage, "one"), history_signature(storage, "three")
    assert len(one) == 30
    assert one == three
    assert any(p is not None and p != m for m, _, _, _, p, _ in one)  # exploits did happen


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path, sqlite_url):
    args = ("run", QUAD, "--workers", "2", "--seed", "5", "--storage", sqlite_url, "--dir", str(tmp_path))
    env = {**os.environ, "POPBT_TEST_STEP_SECONDS": "0.2"}
    first = subprocess.Popen(
        popbt_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    wait_for(lambda: done_count(sqlite_url, "quad") >= 6, what="6 intervals done")
    os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    out, err = first.communicate(timeout=60)
    assert first.returncode == 130, err
    assert "run the same command again to resume" in out
    _, before, _ = results(sqlite_url, "quad")
    finished_before = {(r.member, r.interval): r.finished_at for r in before if r.state == DONE}
    assert 6 <= len(finished_before) < 24
    assert not [r for r in before if r.state == "running"]  # leases were released, not left to expire
    second = subprocess.run(popbt_cmd(*args), capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "resuming experiment quad" in second.stdout
    exp, after, _ = results(sqlite_url, "quad")
    assert exp.status == "finished"
    assert_complete(after, 4, 6)
    for key, when in finished_before.items():  # nothing finished before was redone
        assert [r.finished_at for r in after if (r.member, r.interval) == key] == [when]


def test_a_failing_member_is_retried_then_replaced_and_the_run_completes(tmp_path, sqlite_url):
    env = {"POPBT_TEST_FAIL": "1:2"}
    out = run_popbt(
        "run", QUAD, "--workers", "1", "--seed", "2", "--storage", sqlite_url, "--dir", str(tmp_path), env=env
    )
    assert out.returncode == 0, out.stderr
    exp, rows, events = results(sqlite_url, "quad")
    assert exp.status == "finished"
    failures = [e for e in events if e.kind == "failure"]
    assert failures and all("RuntimeError: injected failure" in e.message for e in failures)
    assert any(e.kind in ("replaced", "gave_up") for e in events)


def test_every_final_model_trained_exactly_every_interval_in_async_mode(tmp_path, sqlite_url):
    """Async, one worker, population 8: copies cross no ages, so each final model's ancestry is
    intervals 0..9 once each, and the best member's schedule has no hole."""
    out = run_popbt(
        "run",
        QUAD,
        "--workers",
        "1",
        "--seed",
        "6",
        "--population",
        "8",
        "--intervals",
        "10",
        "--storage",
        sqlite_url,
        "--dir",
        str(tmp_path),
    )
    assert out.returncode == 0, out.stderr
    exp, rows, _ = results(sqlite_url, "quad")
    assert len(store_exploits(sqlite_url, exp.id)) >= 10  # it did exploit, two members a generation
    for member in range(8):
        assert [r.interval for r in analysis.ancestry(rows, member, 9)] == list(range(10))
    best = json.loads(run_popbt("best", "--json", "--storage", sqlite_url, "--dir", str(tmp_path)).stdout)
    assert [s["interval"] for s in best["schedule"]] == list(range(10))


def test_a_retry_trains_with_a_fresh_seed(tmp_path, sqlite_url):
    """A failure that depends on the random draw is not repeated: the second attempt succeeds."""
    out = run_popbt(
        "run",
        QUAD,
        "--workers",
        "1",
        "--seed",
        "8",
        "--storage",
        sqlite_url,
        "--dir",
        str(tmp_path),
        env={"POPBT_TEST_FAIL_SEED": "2:3", "POPBT_TEST_SEED": "8"},
    )
    assert out.returncode == 0, out.stderr
    _, rows, events = results(sqlite_url, "quad")
    assert [(e.member, e.interval) for e in events if e.kind == "failure"] == [(2, 3)]
    [row] = [r for r in rows if (r.member, r.interval) == (2, 3)]
    assert row.state == DONE and row.attempts == 1 and row.replacements == 0


def test_a_nan_score_counts_as_the_worst_and_its_member_copies_a_top_member(tmp_path, sqlite_url):
    out = run_popbt(
        "run",
        QUAD,
        "--workers",
        "1",
        "--seed",
        "1",
        "--ready-every",
        "4",
        "--storage",
        sqlite_url,
        "--dir",
        str(tmp_path),
        env={"POPBT_TEST_NAN": "0:1"},
    )
    assert out.returncode == 0, out.stderr
    exp, rows, events = results(sqlite_url, "quad")
    [nan] = [r for r in rows if (r.member, r.interval) == (0, 1)]
    assert nan.state == DONE and nan.score is None and "nan" in nan.error and nan.attempts == 0
    assert any(e.kind == "nonfinite" for e in events) and not any(e.kind == "failure" for e in events)
    copies = [(x.member, x.interval) for x in store_exploits(sqlite_url, exp.id)]
    assert (0, 2) in copies  # at once, though --ready-every 4 allows copies only before 4


def test_with_nonfinite_fail_a_nan_score_is_a_failed_attempt(tmp_path, sqlite_url):
    out = run_popbt(
        "run",
        QUAD,
        "--workers",
        "1",
        "--nonfinite",
        "fail",
        "--storage",
        sqlite_url,
        "--dir",
        str(tmp_path),
        env={"POPBT_TEST_NAN": "0:1"},
    )
    assert out.returncode == 0, out.stderr
    _, rows, events = results(sqlite_url, "quad")
    assert any("not a finite number" in e.message for e in events if e.kind == "failure")
    assert all(r.score is None or r.score == r.score for r in rows)  # no NaN stored as a result


def test_sync_with_a_failing_member_gives_the_same_history_whatever_the_number_of_workers(tmp_path, storage):
    """Member 0's interval 2 fails three times (max_attempts), after training: with three
    workers the others have finished interval 2 by then, with one they have not. It is replaced
    from the previous generation either way."""
    for name, workers in (("one", "1"), ("three", "3")):
        marks = tmp_path / f"marks-{name}"
        marks.mkdir()
        out = run_popbt(
            "run",
            FAULTY,
            "--sync",
            "--seed",
            "11",
            "--population",
            "5",
            "--name",
            name,
            "--workers",
            workers,
            "--storage",
            storage,
            "--dir",
            str(tmp_path),
            env={"FAULTY_DIR": str(marks), "FAULTY_RAISE": "save:0:2:3", "FAULTY_STEP_SECONDS": "0.1"},
        )
        assert out.returncode == 0, out.stderr
    one, three = history_signature(storage, "one"), history_signature(storage, "three")
    assert one == three
    store = open_store(storage)
    exp = store.experiment("one")
    store.close()
    replaced = [x for x in store_exploits(storage, exp.id) if x.reason == "replace"]
    assert [(x.member, x.interval, x.donor_interval) for x in replaced] == [(0, 2, 1)]


def test_a_corrupted_checkpoint_is_detected_and_never_loaded(tmp_path, sqlite_url):
    run_popbt(
        "run",
        QUAD,
        "--workers",
        "0",
        "--seed",
        "4",
        "--intervals",
        "3",
        "--storage",
        sqlite_url,
        "--dir",
        str(tmp_path),
    )
    store = open_store(sqlite_url)
    exp = store.experiment("quad")
    tasks = [store.claim(exp.id, "w", "cpu") for _ in range(4)]
    store.close()
    # train interval 0 by hand through a real worker object, then flip a byte in one checkpoint
    from popbt.experiment import load_spec
    from popbt.worker import Worker

    store = open_store(sqlite_url)
    worker = Worker(store, exp, load_spec(QUAD))
    for t in tasks:
        worker.train_one(t)
    victim = store.live_checkpoints(exp.id)[0]
    data = bytearray(Path(victim.path).read_bytes())
    data[-1] ^= 0xFF
    Path(victim.path).write_bytes(bytes(data))
    worker.run()
    _, rows, events = results(sqlite_url, "quad")
    assert any(e.kind == "corrupt_checkpoint" and victim.path in e.message for e in events)
    assert_complete(rows, 4, 3)
    store.close()
