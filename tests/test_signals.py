"""SIGTERM and SIGINT, as schedulers (SLURM preemption, ``timeout``, ``kill``) and users send them.

The launcher and its workers behave the same for both: a running interval is handed back at
once without counting an attempt (a ``released`` event says so), the launcher stops its
workers, and the exit status is 128 + the signal. The next worker resumes the interval from
the last checkpoint. Waiting is always on a real condition: a marker file the spec leaves
while it trains, a process exit, a database row.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import QUAD, SPECS, popbt_cmd, run_popbt
from test_run import assert_complete, results, wait_for

FAULTY = str(SPECS / "faulty.py")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def hanging_worker(markers: Path) -> int:
    """The pid of the worker the faulty spec holds in train (it wrote it in its marker)."""
    wait_for(lambda: any(markers.glob("hang-*-*")), what="a worker to be training the hanging interval")
    return int(next(markers.glob("hang-*-*")).read_text())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_popbt_run_hands_the_interval_back_stops_the_workers_and_the_run_resumes(tmp_path, sig):
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "FAULTY_DIR": str(markers), "FAULTY_HANG": "1:1"}
    args = ("run", FAULTY, "--workers", "2", "--seed", "4", "--dir", str(tmp_path / "runs"))
    launcher = subprocess.Popen(popbt_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = hanging_worker(markers)
    launcher.send_signal(sig)
    out, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 128 + sig, err
    assert "run the same command again to resume" in out
    wait_for(lambda: not alive(worker), timeout=30, what="the launcher's workers to stop")
    url = f"sqlite:///{tmp_path / 'runs' / 'popbt.db'}"
    _, rows, events = results(url, "faulty")
    held = next(r for r in rows if (r.member, r.interval) == (1, 1))
    assert (held.state, held.attempts) == ("pending", 0)  # handed back, not an attempt
    released = [e for e in events if e.kind == "released" and (e.member, e.interval) == (1, 1)]
    assert released and "stopped by SIG" in released[0].message and released[0].worker == f"{os.uname()[1]}:{worker}"
    assert not [e for e in events if e.kind in ("failure", "lease_expired")]
    again = run_popbt(*args, env={"FAULTY_DIR": str(markers)})  # the same command resumes it
    assert again.returncode == 0, again.stderr
    exp, rows, events = results(url, "faulty")
    assert exp.status == "finished"
    assert_complete(rows, 4, 4)
    resumed = next(r for r in rows if (r.member, r.interval) == (1, 1))
    assert resumed.parent_interval == 0  # trained from the checkpoint of interval 0, not from scratch


def test_three_preemptions_of_one_interval_cost_no_attempt_and_the_member_is_kept(tmp_path):
    """SLURM preempts a worker three times while it trains member 0's interval 1: the member is
    not replaced (its weights are kept) and the interval trains once it is left alone."""
    runs, markers = tmp_path / "runs", tmp_path / "markers"
    markers.mkdir()
    created = run_popbt("run", QUAD, "--workers", "0", "--seed", "2", "--dir", str(runs))
    assert created.returncode == 0, created.stderr
    for n in range(3):
        env = {**os.environ, "POPBT_TEST_HANG": f"0:1:{markers}"}
        worker = subprocess.Popen(popbt_cmd("worker", QUAD, "--dir", str(runs)), env=env, stderr=subprocess.PIPE)
        wait_for(lambda n=n: len(list(markers.iterdir())) > n, what=f"preemption {n + 1}: the worker to be training")
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 143, err
    done = run_popbt("worker", QUAD, "--dir", str(runs))
    assert done.returncode == 0, done.stderr
    exp, rows, events = results(f"sqlite:///{runs / 'popbt.db'}", "quad")
    assert exp.status == "finished"
    assert_complete(rows, 4, 6)
    row = next(r for r in rows if (r.member, r.interval) == (0, 1))
    assert (row.attempts, row.replacements, row.parent_interval) == (0, 0, 0)
    assert len([e for e in events if e.kind == "released" and (e.member, e.interval) == (0, 1)]) == 3
    assert not [e for e in events if e.kind in ("failure", "replaced", "gave_up", "lease_expired")]


def test_workers_stop_with_their_launcher_even_when_it_is_killed(tmp_path):
    """SIGKILL leaves the launcher no chance to stop anyone: its workers notice on their own
    and hand their intervals back, instead of training on as orphans."""
    markers = tmp_path / "markers"
    markers.mkdir()
    env = {**os.environ, "FAULTY_DIR": str(markers), "FAULTY_HANG": "2:0"}
    launcher = subprocess.Popen(
        popbt_cmd("run", FAULTY, "--workers", "1", "--dir", str(tmp_path / "runs")),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = hanging_worker(markers)
    launcher.kill()
    launcher.wait()
    wait_for(lambda: not alive(worker), timeout=30, what="the orphaned worker to stop")
    _, rows, events = results(f"sqlite:///{tmp_path / 'runs' / 'popbt.db'}", "faulty")
    held = next(r for r in rows if (r.member, r.interval) == (2, 0))
    assert (held.state, held.attempts) == ("pending", 0)
    assert [e.kind for e in events if (e.member, e.interval) == (2, 0)] == ["released"]
