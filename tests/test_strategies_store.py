"""Exploit/explore rules as the store applies them, on each backend: the ready rule and
burn-in, top as a count, tournament, t-test, the spec's explore hook and PB2.

Tests drive the store directly, as workers do (see test_store.py), with scores chosen by
hand so each rule's decisions can be checked from its definition.
"""

from __future__ import annotations

import pytest

from conftest import QUAD, require
from popbt.cli import main, parser
from popbt.experiment import ConfigError, ExperimentConfig, load_spec
from popbt.launch import run
from popbt.space import IntUniform, Uniform
from popbt.store import PENDING, Result, open_store
from popbt.worker import Worker

SPACE = {"lr": Uniform(0.0, 1.0)}
PERTURB_RULES = {"x0.8", "x1.2", "resample"}


def config(name="exp", **kw) -> ExperimentConfig:
    values = dict(population=4, intervals=10, seed=1, max_attempts=2, retry_delay=0.0)
    values.update(kw)
    return ExperimentConfig(name=name, spec="quad", space=values.pop("space", SPACE), **values)


def result(score, path="/nonexistent/ckpt") -> Result:
    return Result(float(score), {}, path, "0" * 64, 1)


@pytest.fixture
def store(storage):
    s = open_store(storage)
    yield s
    s.close()


def drain(store, exp, score=lambda t: t.member, explore=None):
    """Claim and report until nothing is claimable (scores by hand); return the tasks."""
    trained = []
    while (task := store.claim(exp.id, "w", "cpu")) is not None:
        store.report(task, result(score(task), f"/ckpt/{task.member}-{task.interval}"), explore=explore)
        trained.append(task)
    assert store.progress(exp.id).finished
    return trained


def exploits(store, exp):
    return store.exploits(exp.id)


# -- the ready rule ---------------------------------------------------------------------


@pytest.mark.parametrize("sync", [False, True])
def test_no_exploit_before_the_burn_in_and_only_at_multiples_of_ready_every(store, sync):
    exp = store.create_experiment(config(sync=sync, ready_every=3, burn_in=4), "/tmp")
    drain(store, exp)
    # member 0 always scores worst: it copies whenever the rule allows, and only then
    assert sorted((x.member, x.interval) for x in exploits(store, exp)) == [(0, 6), (0, 9)]


@pytest.mark.parametrize("sync", [False, True])
def test_by_default_the_bottom_member_exploits_before_every_interval(store, sync):
    # async too: member 0 reports interval 0 first, and its decision waits for its cohort
    exp = store.create_experiment(config(sync=sync, intervals=5), "/tmp")
    drain(store, exp)
    assert sorted(x.interval for x in exploits(store, exp) if x.member == 0) == [1, 2, 3, 4]


# -- exploit rules ----------------------------------------------------------------------


def test_a_top_count_copies_the_whole_bottom_group_from_the_top_group(store):
    exp = store.create_experiment(config(population=6, intervals=4, sync=True, top=2), "/tmp")
    drain(store, exp)
    rows = exploits(store, exp)
    assert sorted((x.interval, x.member) for x in rows) == [(k, m) for k in (1, 2, 3) for m in (0, 1)]
    assert {x.donor for x in rows} <= {4, 5}


@pytest.mark.parametrize("sync", [False, True])
def test_tournament_copies_only_a_better_member(store, sync):
    exp = store.create_experiment(config(sync=sync, exploit="tournament"), "/tmp")
    drain(store, exp)
    rows = exploits(store, exp)
    assert rows and all(x.donor_score > x.score for x in rows)
    assert 3 not in {x.member for x in rows}  # the best member never copies
    assert len({x.member for x in rows}) > 1  # not only the worst one, as truncation would


def test_ttest_copies_only_significantly_better_histories_once_they_are_long_enough(store):
    require("scipy")
    exp = store.create_experiment(config(sync=True, exploit="ttest", ttest_window=4), "/tmp")
    # members 0 and 1 are clearly apart from 2 and 3, but 0 and 1 (and 2 and 3) overlap
    level = {0: 0.0, 1: 0.05, 2: 1.0, 3: 1.05}
    drain(store, exp, score=lambda t: level[t.member] + 0.1 * ((t.interval * 7 + t.member * 3) % 5))
    rows = exploits(store, exp)
    assert rows and min(x.interval for x in rows) == 4  # a history of 4 needs 4 intervals
    assert all(x.member in (0, 1) and x.donor in (2, 3) for x in rows)


# -- explore: the spec's hook -----------------------------------------------------------


def first_interval(store, exp, explore=None):
    """Everyone trains interval 0 (score = member); member 0 reports last, so it decides
    with the whole population ranked and copies member 3."""
    tasks = [store.claim(exp.id, "w", "cpu") for _ in range(exp.config.population)]
    for t in tasks[1:] + tasks[:1]:
        store.report(t, result(t.member, f"/ckpt/{t.member}-0"), explore=explore)


def test_the_explore_hook_chooses_the_copy_s_hyperparameters(store):
    calls = []

    def hook(hparams, rng):
        calls.append(dict(hparams))
        return {"lr": round(hparams["lr"] / 2 + rng.random() / 100, 9)}

    exp = store.create_experiment(config(), "/tmp")
    first_interval(store, exp, explore=hook)
    [x] = exploits(store, exp)
    task = store.claim(exp.id, "w", "cpu")
    assert (task.member, task.start.member) == (0, 3)
    donor = [r for r in store.history(exp.id) if (r.member, r.interval) == (3, 0)][0]
    assert calls == [donor.hparams]  # the hook explores from the donor's hyperparameters
    assert task.hparams == x.hparams_after and x.changes == {"lr": "hook"}
    assert 0 <= x.hparams_after["lr"] - donor.hparams["lr"] / 2 <= 0.01


@pytest.mark.parametrize(
    "hook, message",
    [
        (lambda hp, rng: {"lr": 7.0}, "7.0 is outside [0.0, 1.0]"),
        (lambda hp, rng: {"rate": 0.1}, "unexpected ['rate']"),
        (lambda hp, rng: hp["nope"], "raised KeyError"),
    ],
)
def test_an_invalid_hook_answer_is_a_recorded_failure_and_the_member_keeps_its_own(store, hook, message):
    exp = store.create_experiment(config(intervals=3), "/tmp")
    first_interval(store, exp, explore=hook)
    assert exploits(store, exp) == []
    [failure] = [e for e in store.events(exp.id) if e.kind == "failure"]
    assert (failure.member, failure.interval) == (0, 1) and message in failure.message
    assert ("KeyError: 'nope'" in failure.detail) if "raised" in message else failure.detail is None
    task = store.claim(exp.id, "w", "cpu")
    assert (task.member, task.interval, task.start.member) == (0, 1, 0)
    store.release(task)
    drain(store, exp, explore=hook)  # the run still completes


def test_a_hook_failure_in_a_plan_another_worker_overtook_is_still_recorded(store):
    """The hook raises while another worker decides the same copy and its plan lands first:
    the plan that called the hook is refused and never applied, but the user's failure is
    kept (before: it vanished without a line)."""
    exp = store.create_experiment(config(), "/tmp")

    def hook(hparams, rng):
        store.settle(exp.id)  # meanwhile another worker's plan, with PBT's own explore, lands
        raise RuntimeError("explore broke")

    first_interval(store, exp, explore=hook)
    [failure] = store.events(exp.id, kinds=("failure",))
    assert (failure.member, failure.interval) == (0, 1)
    assert "cannot copy member 3: explore(hparams, rng) raised RuntimeError: explore broke" in failure.message
    assert 'raise RuntimeError("explore broke")' in failure.detail  # the user's traceback, kept
    [x] = exploits(store, exp)  # the copy the other worker decided
    assert (x.member, x.donor) == (0, 3) and set(x.changes.values()) <= {"x0.8", "x1.2", "resample"}


def test_a_replacement_whose_hook_fails_falls_back_to_the_default_explore(store):
    exp = store.create_experiment(config(intervals=3, max_attempts=1), "/tmp")
    first_interval(store, exp)
    task = store.claim(exp.id, "w", "cpu")
    store.fail(task, "boom", explore=lambda hp, rng: {"lr": -1.0})
    row = [r for r in store.history(exp.id) if (r.member, r.interval) == (task.member, task.interval)][0]
    assert row.state == PENDING  # replaced, not given up
    kinds = [e.kind for e in store.events(exp.id)]
    assert kinds[-3:] == ["failure", "failure", "replaced"]  # the task's, the hook's, then the copy
    [x] = [x for x in exploits(store, exp) if x.reason == "replace"]
    assert set(x.changes.values()) <= {"x0.8", "x1.2", "resample"}
    drain(store, exp)


SPEC = """
from popbt import Uniform
import numpy as np

space = {"h0": Uniform(0.0, 1.0), "h1": Uniform(0.0, 1.0)}
population, intervals, seed, sync = 4, 4, 5, True

def build(hparams, device): return np.array([0.9, 0.9])
def train(theta, hparams, interval, device): theta *= 1 - 0.4 * np.array([hparams["h0"], hparams["h1"]])
def evaluate(theta, device): return 1.2 - float((theta ** 2).sum())
def save(theta, path):
    with open(path, "wb") as f: np.save(f, theta)
def load(theta, path):
    with open(path, "rb") as f: return np.load(f)
"""
HOOK = """
def explore(hparams, rng):
    return {"h0": 1.0, "h1": 1.0}
"""


def test_a_worker_runs_the_spec_s_explore_hook(tmp_path, sqlite_url):
    (tmp_path / "hooked.py").write_text(SPEC + HOOK)
    spec = load_spec(str(tmp_path / "hooked.py"))
    assert callable(spec.explore) and "explore" not in spec.defaults
    store = open_store(sqlite_url)
    try:
        exp = store.create_experiment(spec.config(), str(tmp_path / "ckpt"))
        Worker(store, exp, spec).run(poll=0.05)
        rows = store.exploits(exp.id)
        assert rows and all(x.hparams_after == {"h0": 1.0, "h1": 1.0} for x in rows)
    finally:
        store.close()


def test_a_spec_may_set_the_explore_rule_by_name(tmp_path):
    (tmp_path / "named.py").write_text(SPEC + "explore = 'pb2'\n")
    spec = load_spec(str(tmp_path / "named.py"))
    assert spec.explore is None and spec.config().explore == "pb2"


# -- explore: PB2 -----------------------------------------------------------------------


@pytest.mark.parametrize("sync", [False, True])
def test_pb2_chooses_numbers_once_there_is_history_and_perturbs_before(store, sync):
    require("scipy")
    space = {"lr": Uniform(0.0, 1.0), "layers": IntUniform(1, 4)}
    exp = store.create_experiment(config(space=space, intervals=5, sync=sync, explore="pb2"), "/tmp")
    drain(store, exp, score=lambda t: t.member + t.interval * t.hparams["lr"])
    rows = exploits(store, exp)
    early = [x for x in rows if x.interval == 1]  # no interval has a predecessor yet
    assert all(set(x.changes.values()) <= PERTURB_RULES for x in early) and (early or not sync)
    later = [x for x in rows if x.interval >= 3]
    assert later and all(x.changes == {"lr": "pb2", "layers": "pb2"} for x in later)
    for x in rows:
        assert 0 <= x.hparams_after["lr"] <= 1 and x.hparams_after["layers"] in (1, 2, 3, 4)


# -- settings from the command line ------------------------------------------------------


def test_command_line_strategy_options_reach_the_stored_config(tmp_path, capsys):
    args = parser().parse_args(
        [
            "run",
            "x.py",
            "--top",
            "2",
            "--exploit",
            "tournament",
            "--ready-every",
            "2",
            "--burn-in",
            "3",
            "--explore",
            "perturb",
            "--factors",
            "0.9,1.1",
            "--resample-probability",
            "0.1",
        ]
    )
    assert (args.top, args.exploit, args.ready_every, args.burn_in, args.factors, args.resample_probability) == (
        2,
        "tournament",
        2,
        3,
        (0.9, 1.1),
        0.1,
    )
    for bad, said in (
        (["--top", "2", "--quantile", "0.2"], "give one"),  # one or the other
        (["--factors", "0.9,big"], "expected numbers separated by commas"),
    ):
        assert main(["run", QUAD, *bad, "--dir", str(tmp_path / "bad")]) == 2
        assert said in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    run(
        QUAD,
        workers=0,
        dir=tmp_path,
        top=2,
        exploit="ttest",
        ttest_window=3,
        ready_every=2,
        burn_in=3,
        explore="pb2",
        factors=[0.9, 1.1],
        resample_probability=0.1,
    )
    store = open_store(f"sqlite:///{tmp_path / 'popbt.db'}")
    try:
        cfg = store.experiment("quad").config
    finally:
        store.close()
    assert (
        cfg.top,
        cfg.exploit,
        cfg.ttest_window,
        cfg.ready_every,
        cfg.burn_in,
        cfg.explore,
        cfg.factors,
        cfg.resample_probability,
    ) == (2, "ttest", 3, 2, 3, "pb2", (0.9, 1.1), 0.1)


def test_a_config_stored_before_these_settings_existed_still_loads():
    old = {
        k: v
        for k, v in config().to_json().items()
        if k not in ("top", "exploit", "ttest_window", "ttest_alpha", "ready_every", "burn_in", "explore")
    }
    loaded = ExperimentConfig.from_json(old)
    assert (loaded.exploit, loaded.explore, loaded.top, loaded.ready_every, loaded.burn_in) == (
        "truncation",
        "perturb",
        None,
        1,
        0,
    )
    assert loaded == config()


def test_a_rule_whose_optional_package_is_missing_fails_before_anything_is_written(monkeypatch, tmp_path):
    import popbt.spec as spec_module

    (tmp_path / "plain.py").write_text(SPEC)
    spec = load_spec(str(tmp_path / "plain.py"))
    monkeypatch.setattr(spec_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"explore='pb2' needs scipy: pip install 'popbt\[pb2\]'"):
        spec.config(explore="pb2")
    with pytest.raises(ConfigError, match="exploit='ttest' needs scipy"):
        spec.config(exploit="ttest")
    assert spec.config(exploit="tournament").exploit == "tournament"
