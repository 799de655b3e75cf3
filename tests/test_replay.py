"""``popbt replay``: one fresh model trained on a schedule, interval by interval, no copies."""

from __future__ import annotations

import json

import pytest

import popbt
from conftest import QUAD, run_popbt
from pbt_history import BEST_ANCESTRY, hand_built, toy_run
from popbt import analysis
from popbt.experiment import ConfigError
from popbt.store import NotFound, open_store

# A spec that records what replay does to it: the hyperparameters it was built with, each
# apply, and each interval trained; its score is the number of intervals trained.
RECORDER = """
import json
from popbt import LogUniform, Uniform

space = {"lr": LogUniform(1e-3, 1.0), "momentum": Uniform(0.0, 1.0)}
metric = "acc"

def build(hparams, device):
    return {"built_with": dict(hparams), "applied": [], "trained": []}

def apply(state, hparams):
    state["applied"].append(dict(hparams))

def train(state, hparams, interval, device):
    state["trained"].append([interval, dict(hparams)])

def evaluate(state, device):
    return float(len(state["trained"]))

def save(state, path):
    with open(path, "w") as f:
        json.dump(state, f)

def load(state, path):
    with open(path) as f:
        return json.load(f)
"""


@pytest.fixture
def recorder(tmp_path):
    path = tmp_path / "recorder.py"
    path.write_text(RECORDER)
    return str(path)


def history_of(url, name):
    store = open_store(url)
    try:
        exp = store.experiment(name)
        return store.history(exp.id), store.exploits(exp.id)
    finally:
        store.close()


def test_replay_applies_each_schedule_change_at_its_interval(tmp_path, sqlite_url, recorder):
    hand_built(sqlite_url, spec=recorder)
    before = history_of(sqlite_url, "hand")
    schedule = analysis.schedule(before[0], 1, 2)
    assert [(s.member, s.interval) for s in schedule] == BEST_ANCESTRY

    done = popbt.replay(recorder, "hand", storage=sqlite_url, dir=tmp_path)

    assert (done.member, done.interval, done.metric) == (1, 2, "acc")
    assert done.weights == str(tmp_path / "replays" / "hand-member-1.ckpt")
    state = json.loads(open(done.weights).read())
    assert state["built_with"] == schedule[0].hparams
    assert state["trained"] == [[s.interval, s.hparams] for s in schedule]
    assert state["applied"] == [s.hparams for s in schedule[1:]]
    assert [(s.interval, s.member, s.original, s.replayed) for s in done.steps] == [
        (0, 3, 0.4, 1.0),
        (1, 0, 0.9, 2.0),
        (2, 1, 0.95, 3.0),
    ]
    assert history_of(sqlite_url, "hand") == before  # replay only reads the store


def test_replay_of_a_given_member_follows_its_own_schedule(tmp_path, sqlite_url, recorder):
    hand_built(sqlite_url, spec=recorder)
    done = popbt.replay(recorder, "hand", member=2, storage=sqlite_url, dir=tmp_path)
    assert [(s.member, s.interval) for s in done.steps] == [(2, 0), (2, 1), (2, 2)]
    assert done.weights.endswith("hand-member-2.ckpt")
    with pytest.raises(NotFound, match="no result for member 7"):
        popbt.replay(recorder, "hand", member=7, storage=sqlite_url, dir=tmp_path)


def test_replay_refuses_a_spec_with_another_space(tmp_path, sqlite_url):
    hand_built(sqlite_url)
    with pytest.raises(ConfigError, match="another search space"):
        popbt.replay(QUAD, "hand", storage=sqlite_url, dir=tmp_path)


def test_replay_of_a_toy_run_reproduces_the_original_scores(tmp_path):
    url = toy_run(tmp_path, QUAD, "toy", seed=7)
    rows, exploits = history_of(url, "toy")
    copied = {x.member for x in exploits}
    own = next(m for m in range(4) if m not in copied)  # a member whose schedule has no exploit
    done = popbt.replay(QUAD, "toy", member=own, dir=tmp_path)
    assert len(done.steps) == 6 and {s.member for s in done.steps} == {own}
    assert [s.replayed for s in done.steps] == [s.original for s in done.steps]
    # Seeded as the worker seeded each interval, a deterministic spec matches through exploits too.
    assert copied
    crossed = popbt.replay(QUAD, "toy", member=min(copied), dir=tmp_path)
    assert len({s.member for s in crossed.steps}) > 1
    assert [s.replayed for s in crossed.steps] == [s.original for s in crossed.steps]


def test_replay_from_the_command_line_prints_scores_and_the_weights_path(tmp_path):
    toy_run(tmp_path, QUAD, "toy", seed=7)
    out = run_popbt("replay", QUAD, "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "replayed member" in out.stdout and "original" in out.stdout
    weights = out.stdout.split("weights: ")[1].split()[0]
    assert weights.startswith(str(tmp_path / "replays" / "toy-member-"))
    out = run_popbt("replay", QUAD, "--member", "9", "--dir", str(tmp_path))
    assert out.returncode == 2 and "no result for member 9" in out.stderr


NOISY = """
import numpy as np
import popbt
from popbt import Uniform
from popbt.worker import seed_for

space = {"h": Uniform(0.0, 1.0)}
population, intervals, seed = 2, 4, 3

def build(hparams, device):
    return np.array([1.0])

def train(theta, hparams, interval, device):
    trial = popbt.current()
    if (trial.member, trial.interval) == (1, 2) and trial.seed == seed_for(3, 1, 2):
        raise RuntimeError("fails with the first attempt's draw")
    theta *= 1 - hparams["h"] * np.random.uniform(0.1, 0.3)

def evaluate(theta, device):
    return -float(theta[0])

def save(theta, path):
    with open(path, "wb") as f:
        np.save(f, theta)

def load(theta, path):
    with open(path, "rb") as f:
        return np.load(f)
"""


def test_replay_reuses_the_seed_of_the_attempt_that_succeeded(tmp_path):
    """Member 1's interval 2 succeeded on its second attempt, with another seed: a replay of
    a random training reproduces its scores only with that seed."""
    spec = tmp_path / "noisy.py"
    spec.write_text(NOISY)
    url = toy_run(tmp_path, str(spec), "noisy", search="random")
    rows, _ = history_of(url, "noisy")
    assert [r.attempts for r in rows if (r.member, r.interval) == (1, 2)] == [1]
    done = popbt.replay(str(spec), "noisy", member=1, dir=tmp_path)
    assert [s.replayed for s in done.steps] == [s.original for s in done.steps]
