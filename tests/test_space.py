"""Domains: bounds checked at definition; explore's rules (x0.8/x1.2, resample, clip, round,
neighbour) hold for every draw."""

import math
import random

import pytest

from popbt.space import (
    Choice,
    IntUniform,
    LogUniform,
    SpaceError,
    Uniform,
    sample_space,
    space_from_json,
    space_to_json,
    validate_hparams,
)
from popbt.strategy import explore


@pytest.mark.parametrize(
    "make",
    [
        lambda: Uniform(1.0, 0.0),
        lambda: Uniform(0.0, 0.0),
        lambda: Uniform(0.0, float("nan")),
        lambda: LogUniform(0.0, 1.0),
        lambda: LogUniform(-1.0, 1.0),
        lambda: IntUniform(5, 1),
        lambda: IntUniform(0.5, 3),
        lambda: Choice([]),
        lambda: Choice([1, 1]),
    ],
)
def test_invalid_bounds_raise_a_clear_error(make):
    with pytest.raises(SpaceError) as err:
        make()
    assert "\n" not in str(err.value)


def test_multiplicative_perturbation_gives_only_the_two_factors_then_clips():
    d = Uniform(0.0, 10.0)
    rng = random.Random(0)
    seen = {d.perturb(5.0, rng, (0.8, 1.2)).after for _ in range(200)}
    assert seen == {4.0, 6.0}
    assert sorted({round(d.perturb(9.0, rng, (0.8, 1.2)).after, 9) for _ in range(200)}) == [7.2, 10.0]


def test_log_uniform_samples_cover_decades():
    d = LogUniform(1e-5, 1.0)
    rng = random.Random(1)
    values = [d.sample(rng) for _ in range(2000)]
    decades = {math.floor(math.log10(v)) for v in values}
    assert decades == {-5, -4, -3, -2, -1}
    assert all(1e-5 <= v <= 1.0 for v in values)


def test_integers_round_and_never_stick():
    d = IntUniform(1, 100)
    rng = random.Random(2)
    assert {d.perturb(10, rng, (0.8, 1.2)).after for _ in range(100)} == {8, 12}
    # 3 * 0.8 = 2.4 rounds to 2 (truncation would give 2 too), 3 * 1.2 = 3.6 rounds to 4 (not 3)
    assert {d.perturb(3, rng, (0.8, 1.2)).after for _ in range(100)} == {2, 4}
    # 1 * 1.2 rounds back to 1: it moves one step instead of sticking
    assert {d.perturb(1, rng, (0.8, 1.2)).after for _ in range(100)} == {1, 2}
    assert {d.perturb(100, rng, (0.8, 1.2)).after for _ in range(100)} == {80, 100}


def test_choice_moves_to_a_neighbour_and_stays_inside_at_the_ends():
    d = Choice([16, 32, 64, 128])
    rng = random.Random(3)
    assert {d.perturb(16, rng, (0.8, 1.2)).after for _ in range(50)} == {32}
    assert {d.perturb(128, rng, (0.8, 1.2)).after for _ in range(50)} == {64}
    assert {d.perturb(32, rng, (0.8, 1.2)).after for _ in range(50)} == {16, 64}
    unordered = Choice(["adam", "sgd", "rmsprop"], ordered=False)
    assert {unordered.perturb("sgd", rng, ()).rule for _ in range(20)} == {"resample"}


def test_explore_resamples_with_the_given_probability_and_records_each_rule():
    space = {"lr": LogUniform(1e-4, 1.0), "bs": IntUniform(8, 512), "act": Choice(["relu", "tanh"])}
    rng = random.Random(4)
    hp = {"lr": 0.01, "bs": 64, "act": "relu"}
    rules = []
    for _ in range(2000):
        out = explore(hp, space, rng, (0.8, 1.2), 0.25)
        validate_hparams(space, out.hparams)
        rules += [c.rule for c in out.changes.values()]
    share = rules.count("resample") / len(rules)
    assert 0.22 < share < 0.28
    assert set(rules) == {"resample", "x0.8", "x1.2", "neighbour"}
    never = explore(hp, space, random.Random(5), (0.8, 1.2), 0.0)
    assert "resample" not in {c.rule for c in never.changes.values()}


def test_space_round_trips_through_json_and_sampling_is_seeded():
    space = {"lr": LogUniform(1e-4, 1.0), "bs": IntUniform(8, 512), "act": Choice(["relu", "tanh"], ordered=False)}
    assert space_from_json(space_to_json(space)) == space
    assert sample_space(space, random.Random(9)) == sample_space(space, random.Random(9))
