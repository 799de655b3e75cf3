"""A spec defined in a notebook (or a script's ``__main__``): ``popbt.run`` takes the object
itself, a namespace of functions, and its local workers get the code as a cloudpickle file."""

from __future__ import annotations

import subprocess
import sys

NOTEBOOK = r"""
import json, sys, types
import numpy as np
import popbt

SCALE = 0.1  # a global the functions read, as notebook cells do

def build(hparams, device):
    return np.array([0.9, 0.9])

def train(theta, hparams, interval, device):
    theta -= SCALE * hparams["h"] * theta

def evaluate(theta, device):
    return 1.2 - float((theta ** 2).sum())

def save(theta, path):
    with open(path, "wb") as f:
        np.save(f, theta)

def load(theta, path):
    with open(path, "rb") as f:
        return np.load(f)

spec = types.SimpleNamespace(
    space={"h": popbt.Uniform(0.0, 1.0)}, build=build, train=train, evaluate=evaluate, save=save, load=load,
    metric="Q", population=4, intervals=3, name="toy",
)
summary = popbt.run(spec, workers=2, seed=1, dir=sys.argv[1])
print(json.dumps({"name": summary.experiment, "finished": summary.finished, "score": summary.best.score}))
"""


def test_a_spec_object_from_a_notebook_runs_with_local_workers(tmp_path):
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "runs")], capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr
    first = out.stdout.strip().splitlines()[-1]
    assert '"name": "toy"' in first and '"finished": true' in first
    pickled = list((tmp_path / "runs" / "specs").glob("toy-*.pkl"))
    assert len(pickled) == 1 and oct(pickled[0].stat().st_mode & 0o777) == "0o600"
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "logs" / "toy").glob("*.log"))
    assert "joins experiment toy" in logs  # the workers ran the notebook's functions
    # the same cells run again (a restarted kernel) start a new experiment, the first one is finished
    again = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "runs")], capture_output=True, text=True, timeout=180
    )
    assert again.returncode == 0 and '"name": "toy-2"' in again.stdout, again.stderr
