"""PB2 explore from its definition: a time-varying GP on per-interval improvement with the
start score as context, UCB at the current time, running members as hallucinated points,
an EXP3 bandit for Choice values, perturbation as the fallback. Hand-made histories, seeded."""

from __future__ import annotations

import collections
import math
import random

import pytest

from conftest import require
from popbt import pb2, strategy
from popbt.pb2 import Busy, Point, bandit_probabilities, from_unit, points, suggest, to_unit
from popbt.space import Choice, IntUniform, LogUniform, Uniform
from popbt.strategy import Trained

for _module in ("numpy", "scipy"):  # under CI a missing package fails, never skips
    require(_module)

SPACE = {"lr": LogUniform(1e-4, 1e-1), "momentum": Uniform(0.0, 0.99)}
PERTURB_RULES = {"x0.8", "x1.2", "resample", "neighbour"}
SEEDS = range(4)


def history(space, improvement, seed=0, intervals=6, per_interval=8, before=lambda rng: 0.5, noise=0.05):
    """Random configurations over a few intervals; each point improves by
    ``improvement(hparams, t, before)`` plus noise."""
    rng = random.Random(seed)
    out = []
    for t in range(1, intervals + 1):
        for _ in range(per_interval):
            hp = {n: d.sample(rng) for n, d in space.items()}
            b = before(rng)
            out.append(Point(hp, float(t), b, b + improvement(hp, t, b) + noise * rng.gauss(0, 1)))
    return out


def lr_position(hp):
    return to_unit(SPACE["lr"], hp["lr"])


def peak_at(x):
    return lambda hp, t, b: -((lr_position(hp) - x) ** 2)


# -- the GP ---------------------------------------------------------------------------------


def test_the_suggestion_lands_at_the_optimum_of_a_known_improvement():
    for seed in SEEDS:
        hp = suggest(history(SPACE, peak_at(0.7), seed), SPACE, 7, 0.5, random.Random(seed))
        assert abs(lr_position(hp) - 0.7) < 0.1, hp  # a random pick lands there 1 time in 5


def test_the_suggestion_follows_what_helps_now_not_what_helped_early():
    # lr at 0.2 of its (log) range helped in intervals 1-3, at 0.8 in 4-6: time is an input
    def improvement(hp, t, b):
        return peak_at(0.2 if t <= 3 else 0.8)(hp, t, b)

    for seed in SEEDS:
        assert lr_position(suggest(history(SPACE, improvement, seed), SPACE, 7, 0.5, random.Random(seed))) > 0.6


def test_the_suggestion_depends_on_the_score_the_copy_starts_from():
    # weak models (score below 0.5) gain most from lr at 0.2, strong ones from lr at 0.8
    def improvement(hp, t, b):
        return peak_at(0.2 if b < 0.5 else 0.8)(hp, t, b)

    for seed in SEEDS:
        data = history(SPACE, improvement, seed, before=lambda rng: rng.random())
        weak = lr_position(suggest(data, SPACE, 7, 0.1, random.Random(seed)))
        strong = lr_position(suggest(data, SPACE, 7, 0.9, random.Random(seed)))
        assert weak < 0.4 and strong > 0.6, (weak, strong)


def test_members_choosing_at_once_spread_out_where_the_data_leave_room():
    # "a" has a known optimum at 0.5; "b" was only tried in [0, 0.3]. Alone, every member
    # picks the same configuration; a member that sees the first one running goes elsewhere.
    space = {"a": Uniform(0.0, 1.0), "b": Uniform(0.0, 1.0)}
    for seed in range(5):
        rng = random.Random(seed)
        data = []
        for i in range(16):
            hp = {"a": rng.random(), "b": 0.3 * rng.random()}
            data.append(Point(hp, float(1 + i % 2), 0.0, -((hp["a"] - 0.5) ** 2) + 0.01 * rng.gauss(0, 1)))
        first = suggest(data, space, 3, 0.0, random.Random(10 * seed))
        alone = suggest(data, space, 3, 0.0, random.Random(10 * seed + 1))
        together = suggest(data, space, 3, 0.0, random.Random(10 * seed + 1), pending=[Busy(first, 0.0)])
        assert math.dist(first.values(), alone.values()) < 0.05, (first, alone)
        assert math.dist(first.values(), together.values()) > 0.2, (first, together)


def test_loguniform_is_modelled_in_log_space():
    space = {"lr": LogUniform(1e-5, 1e-1)}
    for seed in SEEDS:
        data = history(space, lambda hp, t, b: -(((math.log10(hp["lr"]) + 3) / 2) ** 2), seed)
        # 1e-3 is the middle of the range in log space, 1% of it in linear space
        assert abs(math.log10(suggest(data, space, 7, 0.5, random.Random(seed))["lr"]) + 3) < 0.4


def test_values_stay_in_bounds_and_integers_stay_integers():
    # improvement keeps growing past the upper bounds: the choice may go to a bound, never past
    space = {"lr": LogUniform(1e-4, 1e-1), "layers": IntUniform(1, 8), "momentum": Uniform(0.0, 0.99)}
    for seed in SEEDS:
        data = history(space, lambda hp, t, b: hp["layers"] / 8 + hp["momentum"] + math.log10(hp["lr"]), seed)
        hp = suggest(data, space, 7, 0.5, random.Random(seed))
        assert isinstance(hp["layers"], int) and 1 <= hp["layers"] <= 8
        assert 1e-4 <= hp["lr"] <= 1e-1 and 0.0 <= hp["momentum"] <= 0.99
        assert hp["layers"] >= 6, hp  # it did learn that more layers helped


def test_a_fit_on_300_points_completes():
    space = {"lr": LogUniform(1e-4, 1e-1), "momentum": Uniform(0.0, 0.99), "layers": IntUniform(1, 8)}
    data = history(
        space,
        lambda hp, t, b: -((to_unit(space["lr"], hp["lr"]) - 0.7) ** 2),
        intervals=15,
        per_interval=20,
        before=lambda rng: rng.random(),
    )
    busy = [Busy(p.hparams, p.after) for p in data[-4:]]
    hp = suggest(data, space, 16, 0.5, random.Random(0), pending=busy)
    assert set(hp) == set(space)


# -- the bandit -----------------------------------------------------------------------------

ACTIVATIONS = ["relu", "tanh", "gelu"]


def choice_history(gain, seed, intervals=10, per_interval=8):
    """Random activations; each interval's improvement is ``gain(t)[activation]`` plus noise."""
    rng = random.Random(seed)
    out = []
    for t in range(1, intervals + 1):
        for _ in range(per_interval):
            act, b = rng.choice(ACTIVATIONS), rng.random()
            out.append(Point({"act": act}, float(t), b, b + gain(t)[act] + 0.1 * rng.gauss(0, 1)))
    return out


def test_the_bandit_mostly_picks_the_category_that_improves_more():
    space = {"act": Choice(ACTIVATIONS, ordered=False)}
    picks = collections.Counter(
        suggest(
            choice_history(lambda t: {"relu": 0.0, "tanh": 0.3, "gelu": 0.1}, seed, intervals=15),
            space,
            16,
            0.5,
            random.Random(seed),
        )["act"]
        for seed in range(30)
    )
    assert picks["tanh"] >= 20, picks  # a uniform pick does this once in 6000 runs


def test_every_category_keeps_a_nonzero_probability():
    plays = [(float(t), "tanh", 1.0) for t in range(1, 40) for _ in range(10)]
    plays += [(float(t), "relu", 0.0) for t in range(1, 40) for _ in range(10)]
    p = bandit_probabilities(ACTIVATIONS, plays)
    assert p.sum() == pytest.approx(1.0)
    assert p.argmax() == ACTIVATIONS.index("tanh")
    assert p.min() >= pb2.GAMMA / len(ACTIVATIONS)  # gelu was never tried, relu always lost


def test_the_bandit_follows_the_category_that_helps_lately():
    def gain(t):
        return {"relu": 0.0, "tanh": 0.0, "gelu": 0.3} if t <= 4 else {"relu": 0.3, "tanh": 0.0, "gelu": 0.0}

    for seed in SEEDS:
        data = choice_history(gain, seed, intervals=12)
        rewards = (pb2._standardise([p.after - p.before for p in data]) + pb2.CLIP) / (2 * pb2.CLIP)
        p = bandit_probabilities(ACTIVATIONS, [(d.t, d.hparams["act"], r) for d, r in zip(data, rewards, strict=True)])
        assert p.argmax() == ACTIVATIONS.index("relu"), p


def test_numbers_are_chosen_among_the_points_that_used_the_chosen_category():
    # with tanh the best lr is at 0.75 of its range, with relu at 0.25: a model blind to the
    # category would settle in between
    space = {**SPACE, "act": Choice(["relu", "tanh"], ordered=False)}

    def improvement(hp, t, b):
        return -abs(lr_position(hp) - (0.75 if hp["act"] == "tanh" else 0.25))

    data = history(space, improvement, seed=0, per_interval=12)
    for seed in range(6):
        hp = suggest(data, space, 7, 0.5, random.Random(seed))
        assert abs(lr_position(hp) - (0.75 if hp["act"] == "tanh" else 0.25)) < 0.15, hp


def test_numbers_are_perturbed_when_too_few_points_used_the_chosen_category():
    # tanh was tried twice and did very well: the bandit often picks it, but two points
    # cannot fit a model, so the numbers are then perturbed
    space = {**SPACE, "act": Choice(["relu", "tanh"], ordered=False)}
    rng = random.Random(0)
    data = [
        Point(
            {"lr": SPACE["lr"].sample(rng), "momentum": rng.random() * 0.99, "act": act},
            float(t),
            0.5,
            0.5 + (1.0 if act == "tanh" else 0.1 * rng.random()),
        )
        for t in (1, 2)
        for act in ["tanh"] + ["relu"] * 10
    ]
    rules = collections.defaultdict(set)
    for seed in range(12):
        out = pb2.explore({"lr": 0.01, "momentum": 0.5, "act": "relu"}, space, data, 3, 0.5, random.Random(seed))
        rules[out.hparams["act"]] |= {out.changes["lr"].rule, out.changes["momentum"].rule}
    assert rules["tanh"] and rules["tanh"] <= PERTURB_RULES, rules
    assert rules["relu"] == {"pb2"}, rules


# -- the decision -----------------------------------------------------------------------------


def test_a_decision_reproduces_from_its_seed():
    space = {**SPACE, "act": Choice(ACTIVATIONS, ordered=False)}
    data = history(space, peak_at(0.7))
    busy = [Busy(data[0].hparams, 0.4), Busy(data[1].hparams, None)]
    first = pb2.explore(data[2].hparams, space, data, 7, 0.5, random.Random(3), pending=busy)
    again = pb2.explore(data[2].hparams, space, data, 7, 0.5, random.Random(3), pending=busy)
    assert first == again
    assert {c.rule for c in first.changes.values()} == {"pb2"}


def test_too_short_a_history_suggests_nothing_and_explore_is_plain_perturbation():
    few = history(SPACE, peak_at(0.7))[: pb2.MIN_POINTS - 1]
    assert suggest(few, SPACE, 2, 0.5, random.Random(0)) == {}
    donor = {"lr": 0.01, "momentum": 0.5}
    out = pb2.explore(donor, SPACE, few, 2, 0.5, random.Random(0))
    assert {c.rule for c in out.changes.values()} <= PERTURB_RULES
    assert out == strategy.explore(donor, SPACE, random.Random(0))


def test_explore_records_pb2_for_what_it_chose_and_the_donors_values_before():
    space = {"lr": LogUniform(1e-4, 1e-1), "layers": IntUniform(1, 8), "act": Choice(["relu", "tanh"], ordered=False)}
    data = history(space, lambda hp, t, b: lr_position(hp))
    donor = {"lr": 0.01, "layers": 3, "act": "relu"}
    out = pb2.explore(donor, space, data, 7, 0.5, random.Random(0))
    assert {n: c.rule for n, c in out.changes.items()} == {"lr": "pb2", "layers": "pb2", "act": "pb2"}
    assert {n: c.before for n, c in out.changes.items()} == donor
    assert out.hparams == {n: c.after for n, c in out.changes.items()}


def test_unit_box_round_trips_in_log_space_for_log_domains():
    lr = LogUniform(1e-4, 1e-0)
    assert to_unit(lr, 1e-2) == pytest.approx(0.5)
    assert from_unit(lr, 0.25) == pytest.approx(1e-3)
    assert to_unit(Uniform(0.0, 2.0), 0.5) == pytest.approx(0.25)
    assert from_unit(IntUniform(0, 10), 0.26) == 3


def test_points_start_from_the_checkpoint_each_interval_started_from():
    trained = [
        Trained(0, 0, 0.1, {"lr": 0.1}, None, 10),
        Trained(1, 0, 0.5, {"lr": 0.2}, None, 20),
        Trained(1, 1, 0.6, {"lr": 0.2}, 20, 21),
        Trained(0, 1, 0.7, {"lr": 0.3}, 20, 11),  # member 0 copied member 1's interval-0 weights
        Trained(2, 0, None, {"lr": 0.4}, None, 30),  # a non-finite score, recorded as None
        Trained(2, 1, 0.9, {"lr": 0.4}, 30, 31),  # its parent's score is missing: skipped
        Trained(1, 2, None, {"lr": 0.2}, 21, 22),  # its own score is missing: skipped
    ]
    got = sorted((p.t, p.hparams["lr"], p.before, p.after) for p in points(trained, "max"))
    assert got == [(1.0, 0.2, 0.5, 0.6), (1.0, 0.3, 0.5, 0.7)]  # 0.7 started from 0.5, not from 0.1
    assert sorted((p.before, p.after) for p in points(trained, "min")) == [(-0.5, -0.7), (-0.5, -0.6)]
