"""Faults that follow the worker, not the member: a device this machine lacks, a checkpoint
disk that is full or read-only, a host on which everything fails. The worker stops taking
work with one line (exit status 3), its members are not charged, and other workers carry on.

The disks are real: a small tmpfs mounted over the experiment's checkpoint directory, filled
up or remounted read-only while a worker trains (needs root, as CI runs).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import QUAD, SPECS, popbt_cmd, require, run_popbt, unavailable
from popbt.blame import error_kind, worker_to_blame
from popbt.errors import WorkerFault
from popbt.spec import load_spec
from popbt.store import open_store
from popbt.worker import Worker
from test_run import assert_complete, results, wait_for


def create(runs: Path, *args: str) -> str:
    out = run_popbt("run", QUAD, "--workers", "0", "--seed", "5", *args, "--dir", str(runs))
    assert out.returncode == 0, out.stderr
    return f"sqlite:///{runs / 'popbt.db'}"


def charged(url: str) -> list:
    """Failures, replacements and give-ups: what members are charged with."""
    _, _, events = results(url, "quad")
    return [e for e in events if e.kind in ("failure", "replaced", "gave_up")]


def test_a_worker_given_a_device_this_machine_lacks_stops_before_claiming(tmp_path):
    if require("torch").cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    url = create(tmp_path / "runs")
    out = run_popbt("worker", QUAD, "--device", "cuda:0", "--dir", str(tmp_path / "runs"))
    assert out.returncode == 3, out.stderr
    assert "popbt: error: device cuda:0 is unusable: torch sees no CUDA device" in out.stderr
    assert len([line for line in out.stderr.splitlines() if line.startswith("popbt: error:")]) == 1
    _, rows, events = results(url, "quad")
    assert {(r.state, r.attempts, r.worker) for r in rows} == {("pending", 0, None)}  # nothing claimed
    assert not events


@pytest.fixture
def disk(tmp_path):
    """A 1 MiB tmpfs where the experiment's checkpoints go."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        unavailable("mounting a tmpfs needs root")
    ckpts = tmp_path / "runs" / "checkpoints" / "quad"
    ckpts.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(ckpts)], capture_output=True)
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield ckpts
    subprocess.run(["umount", "-l", str(ckpts)], capture_output=True)


def fill(path: Path) -> None:
    """Write zeros until the disk refuses (ENOSPC)."""
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["full", "read-only"])
def test_a_checkpoint_disk_that_fails_mid_run_stops_the_worker_and_charges_nobody(tmp_path, disk, how):
    runs, markers = tmp_path / "runs", tmp_path / "markers"
    markers.mkdir()
    url = create(runs)
    env = {**os.environ, "POPBT_TEST_HANG": f"1:0:{markers}", "POPBT_TEST_HANG_SECONDS": "1"}
    worker = subprocess.Popen(popbt_cmd("worker", QUAD, "--dir", str(runs)), env=env, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(markers.iterdir()), what="the worker to be training member 1")
    if how == "full":
        fill(disk)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 3, err
    [line] = [line for line in err.splitlines() if line.startswith("popbt: error:")]
    assert f"checkpoint directory {disk} is unusable" in line
    assert ("No space left on device" if how == "full" else "Read-only file system") in line
    _, rows, events = results(url, "quad")
    held = next(r for r in rows if (r.member, r.interval) == (1, 0))
    assert (held.state, held.attempts) == ("pending", 0)  # handed back, not charged
    assert [e.kind for e in events if e.kind != "lease_expired"] == ["released", "worker_fault"]
    assert not charged(url)
    # another start on the broken disk is refused before it claims anything
    again = run_popbt("worker", QUAD, "--dir", str(runs))
    assert again.returncode == 3 and "is unusable" in again.stderr
    # the disk mended, a worker finishes the run
    if how == "full":
        (disk / "filler").unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
    done = run_popbt("worker", QUAD, "--dir", str(runs))
    assert done.returncode == 0, done.stderr
    exp, rows, _ = results(url, "quad")
    assert exp.status == "finished"
    assert_complete(rows, 4, 6)
    assert not charged(url)


def test_a_worker_that_fails_every_member_while_others_succeed_stops_and_takes_its_charges_back(tmp_path):
    """A host with a broken GPU raises in every train. Its failures are retried with backoff,
    so it meets different members, and another worker succeeds meanwhile: it is to blame."""
    runs = tmp_path / "runs"
    url = create(runs, "--retry-delay", "1", "--intervals", "3")
    healthy = subprocess.Popen(
        popbt_cmd("worker", QUAD, "--dir", str(runs)),
        env={**os.environ, "POPBT_TEST_STEP_SECONDS": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: any(r.worker for r in results(url, "quad")[1]), what="the healthy worker to claim work")
    sick = run_popbt("worker", QUAD, "--dir", str(runs), env={"POPBT_TEST_SICK": "1"})
    assert sick.returncode == 3, sick.stderr
    assert re.search(
        r"failed \d+ intervals of \d+ different members in a row while other workers succeeded", sick.stderr
    )
    assert "CUDA error" in sick.stderr and "its failures are not counted" in sick.stderr
    _, err = healthy.communicate(timeout=180)
    assert healthy.returncode == 0, err
    exp, rows, events = results(url, "quad")
    assert exp.status == "finished"
    assert_complete(rows, 4, 3)
    failures = [e for e in events if e.kind == "failure"]
    assert len({e.member for e in failures}) >= 2 and all("CUDA error" in e.message for e in failures)
    assert [e.kind for e in events if e.kind == "worker_fault"] == ["worker_fault"]
    assert not [e for e in events if e.kind in ("replaced", "gave_up")]  # nobody paid for the sick host
    # the charges still standing when it stopped were taken back (a retry another worker had
    # already claimed keeps its count: that attempt's seed depends on it)
    assert sum(r.attempts for r in rows) < len(failures)


def test_the_rule_counts_only_failures_no_other_worker_shares():
    """Pure: three failures of one kind, of two or more members, are the worker's, unless
    another worker met that kind of error too (then it is the code's or a member's)."""
    cuda = "RuntimeError: CUDA error: an illegal memory access at 0x7f3a12"
    oom = "OutOfMemoryError: CUDA out of memory. Tried to allocate {} MiB"
    streak = [(0, 1, cuda), (1, 1, cuda), (0, 1, cuda)]
    assert worker_to_blame(streak, set())
    assert not worker_to_blame(streak, {error_kind("attempt 2/3: " + cuda.replace("12", "40"))})  # met elsewhere
    assert worker_to_blame(streak, {error_kind("ValueError: boom")})  # another error says nothing about this one
    assert not worker_to_blame([(0, 1, cuda), (0, 2, cuda), (0, 3, cuda)], set())  # one member: its own fault
    assert worker_to_blame([(0, 2, oom.format(20)), (1, 2, oom.format(1500)), (2, 2, oom.format(7))], set())


def test_a_run_of_different_errors_is_its_members_not_the_worker_s():
    """Pure: one-off faults of different members that happen to follow each other on one
    worker are no sign of a broken host; a broken host fails the same way every time."""
    streak = [(0, 1, "ValueError: bad batch"), (1, 1, "ScoreError: evaluate() returned None"), (2, 1, "KeyError: 'x'")]
    assert not worker_to_blame(streak, set())
    assert not worker_to_blame([*streak, (3, 1, "ValueError: bad batch"), (0, 2, "KeyError: 'y'")], set())


@contextlib.contextmanager
def faulty(tmp_path, monkeypatch, raises: str):
    """tests/specs/faulty.py raising as ``raises`` says (FAULTY_RAISE), with a store. Its lease
    is short: the worker that trains first goes away, and a worker's own retries wait two
    leases for another."""
    monkeypatch.setenv("FAULTY_DIR", str(tmp_path))
    monkeypatch.setenv("FAULTY_RAISE", raises)
    monkeypatch.setenv("FAULTY_LEASE", "1")
    spec = load_spec(str(SPECS / "faulty.py"))
    store = open_store(f"sqlite:///{tmp_path / 'popbt.db'}")
    try:
        yield spec, store
    finally:
        store.close()


def train_elsewhere(store, exp, spec, n: int) -> None:
    """``n`` intervals trained, in the store's order, by a worker named "other"."""
    other = Worker(store, exp, spec, name="other")
    for _ in range(n):
        other.train_one(store.claim(exp.id, other.name, "cpu"))


def test_a_healthy_worker_meeting_a_member_that_fails_everywhere_keeps_working(tmp_path, monkeypatch):
    """Member 0 fails interval 1 on every worker, member 1 fails it once: a healthy worker
    meets them in a row (3 failures, 2 members) while another has results. Member 0 is
    replaced and given up as any failing member; the worker is not to blame and finishes."""
    with faulty(tmp_path, monkeypatch, "train:0:1,train:1:1:1") as (spec, store):
        exp = store.create_experiment(spec.config("blame", population=2, intervals=3, seed=0), str(tmp_path))
        train_elsewhere(store, exp, spec, 3)  # interval 0 of both members, then member 0's interval 1, which fails
        assert [(e.member, e.interval, e.worker) for e in store.events(exp.id, kinds=("failure",))] == [(0, 1, "other")]
        healthy = Worker(store, exp, spec, name="healthy")
        healthy.run(poll=0.05)  # before: WorkerFault after member 0, member 1, member 0 again
        events = store.events(exp.id, limit=1000)
        assert store.experiment("blame").status == "finished"
        assert not [e for e in events if e.kind == "worker_fault"]
        assert [(e.member, e.kind) for e in events if e.kind == "gave_up"] == [(0, "gave_up")]
        assert healthy.stats.done == 2  # member 1's intervals 1 (after its one failure) and 2


def test_a_healthy_worker_meeting_one_off_faults_of_three_members_in_a_row_keeps_working(tmp_path, monkeypatch):
    """Members 0, 1 and 2 each fail once, in build, train and evaluate, and a healthy worker
    meets the three in a row while another worker has results: three different errors are
    the members' own, not a broken host's (before: it stopped with WorkerFault)."""
    with faulty(tmp_path, monkeypatch, "build:0:1:1,train:1:1:1,evaluate:2:1:1") as (spec, store):
        config = spec.config("oneoffs", population=4, intervals=2, seed=0, retry_delay=0.5)
        exp = store.create_experiment(config, str(tmp_path))
        train_elsewhere(store, exp, spec, 4)  # interval 0 of every member
        healthy = Worker(store, exp, spec, name="healthy")
        healthy.run(poll=0.05)
        events = store.events(exp.id, limit=1000)
        assert [(e.member, e.worker) for e in events if e.kind == "failure"] == [(m, "healthy") for m in (0, 1, 2)]
        assert not [e for e in events if e.kind == "worker_fault"]
        assert store.experiment("oneoffs").status == "finished"
        assert healthy.stats.done == 4


def test_the_failure_that_convicts_a_sick_worker_is_not_charged(tmp_path, monkeypatch):
    """Member 0's interval 1 failed twice of its own; a sick worker that failed members 1 and 2
    meets it third. Charged, that failure would replace member 0 for the host's fault (its
    third attempt): it is handed back instead, and members 1 and 2 get their attempts back."""
    spec = load_spec(QUAD)
    store = open_store(f"sqlite:///{tmp_path / 'popbt.db'}")
    try:
        exp = store.create_experiment(spec.config("sick", population=4, intervals=2, seed=0), str(tmp_path))
        healthy = Worker(store, exp, spec, name="healthy")
        for _ in range(4):  # interval 0 of every member
            healthy.train_one(store.claim(exp.id, healthy.name, "cpu"))
        for _ in range(2):
            store.fail(store.claim(exp.id, healthy.name, "cpu"), "ValueError: member 0's own bug")
        held = store.claim(exp.id, healthy.name, "cpu")
        assert (held.member, held.attempts) == (0, 2)
        monkeypatch.setenv("POPBT_TEST_SICK", "1")
        sick = Worker(store, exp, spec, name="sick")
        for member in (1, 2):
            task = store.claim(exp.id, sick.name, "cpu")
            assert task.member == member
            sick.train_one(task)
        store.release(held)
        third = store.claim(exp.id, sick.name, "cpu")
        assert third.member == 0
        with pytest.raises(WorkerFault, match="failed 3 intervals of 3 different members in a row"):
            sick.train_one(third)
        events = store.events(exp.id, limit=1000)
        assert not [e for e in events if e.kind in ("replaced", "gave_up")]  # before: member 0 was replaced
        assert [(e.member, e.worker) for e in events if e.kind == "released"] == [(0, "sick")]
        attempts = {r.member: r.attempts for r in store.history(exp.id) if r.interval == 1}
        assert attempts == {0: 2, 1: 0, 2: 0, 3: 0}
    finally:
        store.close()
