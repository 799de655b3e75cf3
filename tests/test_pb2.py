"""PB2 explore, from its definition: a GP on per-interval improvement, UCB at the current
time, numeric domains only, perturbation as the fallback. Hand-made histories, seeded."""

from __future__ import annotations

import math
import random

import pytest

from popbt import pb2
from popbt.pb2 import Point, from_unit, points, suggest, to_unit
from popbt.space import Choice, IntUniform, LogUniform, Uniform
from popbt.strategy import Trained

pytest.importorskip("sklearn")

SPACE = {"lr": LogUniform(1e-4, 1e-1), "momentum": Uniform(0.0, 0.99)}
PERTURB_RULES = {"x0.8", "x1.2", "resample", "neighbour"}


def history(space, improvement, seed=0, intervals=6, per_interval=6):
    """Random configurations over a few intervals, each scored by ``improvement`` plus noise."""
    rng = random.Random(seed)
    out = []
    for t in range(1, intervals + 1):
        for _ in range(per_interval):
            hp = {n: d.sample(rng) for n, d in space.items()}
            out.append(Point(hp, float(t), improvement(hp) + 0.05 * rng.gauss(0, 1)))
    return out


def lr_position(hp):
    return to_unit(SPACE["lr"], hp["lr"])


def test_the_suggestion_moves_toward_the_region_where_improvement_grows():
    grows = history(SPACE, lr_position)
    for seed in range(3):
        hp = suggest(grows, SPACE, 7, random.Random(seed))
        assert lr_position(hp) > 0.75, hp  # the upper part of the (log) range
        assert 0.0 <= hp["momentum"] <= 0.99
    shrinks = history(SPACE, lambda hp: 1 - lr_position(hp))
    assert lr_position(suggest(shrinks, SPACE, 7, random.Random(0))) < 0.25


def test_the_suggestion_follows_what_helps_now_not_what_helped_early():
    # a large lr helped in intervals 1-3, a small one in 4-6: time is an input of the model
    early = [p for p in history(SPACE, lr_position, seed=1) if p.t <= 3]
    late = [p for p in history(SPACE, lambda hp: 1 - lr_position(hp), seed=2) if p.t > 3]
    for seed in range(3):
        assert lr_position(suggest(early + late, SPACE, 7, random.Random(seed))) < 0.5


def test_a_suggestion_is_reproducible_from_the_seed():
    grows = history(SPACE, lr_position)
    assert suggest(grows, SPACE, 7, random.Random(3)) == suggest(grows, SPACE, 7, random.Random(3))


def test_too_short_a_history_suggests_nothing_and_explore_falls_back_to_perturbation():
    few = history(SPACE, lr_position)[: pb2.MIN_POINTS - 1]
    assert suggest(few, SPACE, 2, random.Random(0)) == {}
    out = pb2.explore({"lr": 0.01, "momentum": 0.5}, SPACE, few, 2, random.Random(0))
    assert {c.rule for c in out.changes.values()} <= PERTURB_RULES


def test_choices_are_perturbed_and_numbers_chosen_inside_their_bounds():
    space = {"lr": LogUniform(1e-4, 1e-1), "layers": IntUniform(1, 8),
             "width": Choice([16, 32, 64]), "act": Choice(["relu", "tanh"], ordered=False)}
    data = history(space, lr_position)
    out = pb2.explore({"lr": 0.01, "layers": 3, "width": 32, "act": "relu"}, space, data, 7,
                      random.Random(0), resample_probability=0.0)
    rules = {n: c.rule for n, c in out.changes.items()}
    assert rules["lr"] == rules["layers"] == "pb2"
    assert rules["width"] == "neighbour" and rules["act"] == "resample"
    assert isinstance(out.hparams["layers"], int) and 1 <= out.hparams["layers"] <= 8
    assert 1e-4 <= out.hparams["lr"] <= 1e-1
    assert {n: c.before for n, c in out.changes.items()} == {"lr": 0.01, "layers": 3, "width": 32, "act": "relu"}


def test_unit_box_round_trips_in_log_space_for_log_domains():
    lr = LogUniform(1e-4, 1e-0)
    assert to_unit(lr, 1e-2) == pytest.approx(0.5)
    assert from_unit(lr, 0.25) == pytest.approx(1e-3)
    assert to_unit(Uniform(0.0, 2.0), 0.5) == pytest.approx(0.25)
    assert from_unit(IntUniform(0, 10), 0.26) == 3


def test_points_measure_improvement_from_the_checkpoint_each_interval_started_from():
    trained = [
        Trained(0, 0, 0.1, {"lr": 0.1}, None, 10), Trained(1, 0, 0.5, {"lr": 0.2}, None, 20),
        Trained(1, 1, 0.6, {"lr": 0.2}, 20, 21),
        Trained(0, 1, 0.7, {"lr": 0.3}, 20, 11),  # member 0 copied member 1's interval-0 weights
    ]
    got = sorted((p.t, p.hparams["lr"], round(p.improvement, 9)) for p in points(trained, "max"))
    assert got == [(1.0, 0.2, 0.1), (1.0, 0.3, 0.2)]  # 0.6 - 0.5 and 0.7 - 0.5, not 0.7 - 0.1
    assert [round(p.improvement, 9) for p in points(trained, "min")] == [-0.1, -0.2]


def test_members_exploiting_at_once_spread_out_where_little_is_known():
    # pure noise: UCB leans on uncertainty, and a configuration being trained already
    # (pending) no longer looks uncertain, so the next suggestion goes elsewhere
    rng = random.Random(0)
    noise = [Point({n: d.sample(rng) for n, d in SPACE.items()}, t, rng.gauss(0, 1))
             for t in (1.0, 2.0) for _ in range(6)]

    def unit(hp):
        return (lr_position(hp), hp["momentum"] / 0.99)

    for seed in range(4):
        first = suggest(noise, SPACE, 3, random.Random(seed))
        second = suggest(noise, SPACE, 3, random.Random(seed), pending=[first] * 3)
        assert math.dist(unit(first), unit(second)) > 0.2, (first, second)
