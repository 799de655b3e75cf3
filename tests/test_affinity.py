"""A worker that trains a member's next interval right after its last goes on with the state
it holds in memory (no rebuild, no reload; the checkpoint is still written for the others),
and the history is the same as without it: train() is seeded after build and load."""

from __future__ import annotations

from popbt.spec import load_spec
from popbt.store import open_store
from popbt.worker import Worker

COUNTING = """
import numpy as np
from popbt import Uniform

space = {"lr": Uniform(0.01, 0.5)}
population, intervals, search = 3, 5, "random"
calls = {"build": 0, "load": 0}

def build(hparams, device):
    calls["build"] += 1
    np.random.random(7)  # build draws from the stream too, as a model's init would
    return np.array([1.0, 1.0])

def train(state, hparams, interval, device):
    state -= hparams["lr"] * state * np.random.random(2)

def evaluate(state, device):
    return -float((state ** 2).sum())

def save(state, path):
    with open(path, "wb") as f:
        np.save(f, state)

def load(state, path):
    calls["load"] += 1
    with open(path, "rb") as f:
        return np.load(f)
"""


def run_one(tmp_path, name: str, reuse: bool) -> tuple[dict, dict, int]:
    spec_file = tmp_path / f"{name}.py"
    spec_file.write_text(COUNTING + f"reuse_state = {reuse}\n")
    spec = load_spec(str(spec_file))
    store = open_store(f"sqlite:///{tmp_path / name}.db")
    try:
        exp = store.create_experiment(spec.config(name, seed=11), str(tmp_path / name))
        worker = Worker(store, exp, spec)
        worker.run()
        scores = {(r.member, r.interval): r.score for r in store.history(exp.id)}
        assert store.experiment(name).status == "finished"
        return scores, dict(spec.build.__globals__["calls"]), worker.reused
    finally:
        store.close()


def test_a_member_trained_on_in_memory_skips_the_reload_and_changes_nothing(tmp_path):
    with_reuse, calls, reused = run_one(tmp_path, "kept", reuse=True)
    without, calls_without, reused_without = run_one(tmp_path, "reloaded", reuse=False)
    assert reused_without == 0 and calls_without == {"build": 15, "load": 12}
    assert reused >= 6  # one worker, no exploits: it keeps going with the member it holds
    assert calls == {"build": 15 - reused, "load": 12 - reused}
    assert with_reuse == without  # the same scores, interval by interval
    assert len(with_reuse) == 15 and all(v is not None for v in with_reuse.values())


def test_a_state_is_not_reused_when_the_member_copied_another(tmp_path):
    """After an exploit the next interval starts from the donor's checkpoint: it is loaded."""
    spec_file = tmp_path / "pbt.py"
    spec_file.write_text(COUNTING.replace('search = 3, 5, "random"', 'search = 3, 5, "pbt"'))
    spec = load_spec(str(spec_file))
    store = open_store(f"sqlite:///{tmp_path / 'pbt.db'}")
    try:
        exp = store.create_experiment(spec.config("pbt", seed=3, sync=True), str(tmp_path / "pbt"))
        worker = Worker(store, exp, spec)
        worker.run()
        exploits = store.exploits(exp.id)
        assert exploits  # copies happened
        assert spec.build.__globals__["calls"]["load"] >= len(exploits)  # each copy loaded its donor
        assert worker.reused + spec.build.__globals__["calls"]["load"] == 12
    finally:
        store.close()
