"""A run that fails says so: the first error with its traceback, a non-zero exit status,
every traceback kept (worker log and store) for ``popbt status --errors``; a run that
finished without some members says that too."""

from __future__ import annotations

import os

from conftest import SPECS, run_popbt
from test_run import results

FAULTY = str(SPECS / "faulty.py")

BROKEN = """
from popbt import Uniform
space = {"x": Uniform(0.0, 1.0)}
population, intervals = 4, 3

def build(hparams, device):
    return [0.0]

def train(state, hparams, interval, device):
    reshape(state)

def reshape(state):
    raise ValueError("shapes (3,) and (4,) do not match")

def evaluate(state, device):
    return 1.0

def save(state, path):
    open(path, "w").write("0")

def load(state, path):
    return state
"""


def test_a_run_where_every_member_fails_stops_with_the_first_error_and_its_traceback(tmp_path):
    spec = tmp_path / "broken.py"
    spec.write_text(BROKEN)
    runs = tmp_path / "runs"
    out = run_popbt("run", str(spec), "--workers", "2", "--dir", str(runs))
    assert out.returncode == 1, (out.stdout, out.stderr)
    err = out.stderr.splitlines()
    assert err[0] == (
        "popbt: error: experiment 'broken' failed: every member failed its first interval; "
        "first error: ValueError: shapes (3,) and (4,) do not match"
    )
    assert "Traceback (most recent call last):" in out.stderr
    assert f'File "{spec}", line 13, in reshape' in out.stderr  # the user's own frames
    exp, rows, events = results(f"sqlite:///{runs / 'popbt.db'}", "broken")
    assert exp.status == "failed"
    assert sum(r.attempts for r in rows) < 3 * 4  # it stopped at once, not after every retry
    errors = run_popbt("status", "--errors", "--dir", str(runs))
    assert errors.returncode == 0 and "in reshape" in errors.stdout and "ValueError: shapes" in errors.stdout
    logs = "".join(p.read_text() for p in (runs / "logs" / "broken").glob("*.log"))
    assert "in reshape" in logs
    # fixed, the same command resumes the experiment from its start
    spec.write_text(BROKEN.replace('    raise ValueError("shapes (3,) and (4,) do not match")', "    pass"))
    fixed = run_popbt("run", str(spec), "--workers", "2", "--allow-spec-change", "--dir", str(runs))
    assert fixed.returncode == 0, fixed.stderr
    exp, rows, _ = results(f"sqlite:///{runs / 'popbt.db'}", "broken")
    assert exp.status == "finished" and sum(r.state == "done" for r in rows) == 12


def test_the_mnist_example_without_its_dataset_fails_loudly(tmp_path):
    out = run_popbt(
        "run", "popbt.examples.mnist", "--data", str(tmp_path / "nothing"), "--workers", "1", "--dir", str(tmp_path)
    )
    assert out.returncode != 0
    assert "dataset-fashion-mnist" in out.stderr.splitlines()[0]
    assert "finished" not in out.stdout


def test_a_run_that_finished_without_a_member_says_so_in_its_last_lines(tmp_path):
    env = {"FAULTY_DIR": str(tmp_path), "FAULTY_RAISE": "train:1:1"}  # member 1 fails interval 1, always
    out = run_popbt("run", FAULTY, "--workers", "1", "--seed", "2", "--dir", str(tmp_path / "runs"), env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == (
        "popbt: note: finished without member 1, given up after repeated failures (popbt status --errors shows why)"
    )
    assert os.path.exists(tmp_path / "runs" / "popbt.db")
