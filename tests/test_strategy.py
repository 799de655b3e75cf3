"""The rules' building blocks (ranking, group sizes, the t-test, lineages, the ready rule, the
explore hook), each from its definition, on hand-made scores. How they are combined at
matched age is tested in test_plan.py."""

import random

import pytest

from conftest import require
from popbt.experiment import ConfigError, ExperimentConfig
from popbt.space import IntUniform, Uniform
from popbt.strategy import (
    ExploreError,
    Standing,
    StrategyError,
    Trained,
    check_top,
    cut_size,
    explore_with,
    histories,
    is_ready,
    opponent,
    rank,
    significantly_better,
    surely_kept,
    tiebreak,
    truncation,
)

SPACE = {"lr": Uniform(0.0, 1.0)}


def population(scores, interval=3, seed=0):
    return [Standing(m, sc, tiebreak(seed, interval, m)) for m, sc in enumerate(scores)]


def test_the_bottom_group_are_the_worst_and_the_top_group_the_best():
    ranked = rank(population([0.1 * m for m in range(10)]), "max")
    top, bottom = truncation(ranked, cut_size(10, 0.2))
    assert [s.member for s in top] == [9, 8] and [s.member for s in bottom] == [1, 0]


def test_mode_min_turns_the_ranking_around():
    ranked = rank(population([5.0, 1.0, 3.0, 4.0, 2.0]), "min")
    assert [s.member for s in ranked] == [1, 4, 2, 3, 0]


def test_a_non_finite_score_ranks_below_every_number_in_both_modes():
    for mode in ("max", "min"):
        ranked = rank(population([None, 1.0, -1e300, 1e300]), mode)
        assert ranked[-1].member == 0


GROUP_SIZES_AT_QUANTILE_0_2 = {2: 1, 3: 1, 4: 1, 5: 1, 6: 2, 7: 2, 8: 2, 9: 2, 10: 2, 11: 3, 15: 3, 16: 4, 32: 7}


def test_group_sizes_round_up_like_ray_tune_at_least_one_at_most_half():
    assert {n: cut_size(n, 0.2) for n in GROUP_SIZES_AT_QUANTILE_0_2} == GROUP_SIZES_AT_QUANTILE_0_2
    assert cut_size(10, 0.3) == 3  # 10 * 0.3 is 3.0000000000000004 in floating point: still 3
    assert cut_size(4, 0.25) == 1 and cut_size(8, 0.25) == 2 and cut_size(5, 0.5) == 2
    assert all(1 <= cut_size(n, q) <= n // 2 for n in range(2, 33) for q in (0.01, 0.2, 0.25, 0.5))
    with pytest.raises(StrategyError):
        cut_size(1, 0.2)
    with pytest.raises(StrategyError):
        cut_size(10, 0.0)
    with pytest.raises(StrategyError):
        cut_size(10, 0.6)


def test_ties_are_broken_by_a_fixed_draw_per_member_not_by_member_order_or_by_who_else_is_there():
    firsts = {rank(population([1.0] * 6, seed=seed), "max")[0].member for seed in range(50)}
    assert len(firsts) > 1
    everyone = rank(population([1.0] * 6), "max")
    some = rank([s for s in population([1.0] * 6) if s.member in (1, 3, 4)], "max")
    assert [s.member for s in everyone if s.member in (1, 3, 4)] == [s.member for s in some]


def test_a_member_is_surely_kept_once_enough_of_its_cohort_scored_below_it():
    def keys(standings):
        return sorted(s.key("max") for s in standings)

    me = Standing(5, 0.7, 0.5)
    known = [Standing(1, 0.2, 0.1), Standing(2, 0.9, 0.1), me]
    assert surely_kept(me.key("max"), keys(known), 1)
    assert not surely_kept(me.key("max"), keys(known), 2)  # only one known below: the unknown may be lower
    assert surely_kept(me.key("max"), keys(known + [Standing(3, 0.1, 0.3)]), 2)
    assert not surely_kept(Standing(1, 0.2, 0.1).key("max"), keys(known), 1)
    tied = [Standing(m, 0.5, tiebreak(0, 1, m)) for m in range(4)]  # equal scores: the fixed draw decides
    lowest = min(tied, key=lambda s: s.tiebreak)
    assert not surely_kept(lowest.key("max"), keys(tied), 1)
    assert all(surely_kept(s.key("max"), keys(tied), 1) for s in tied if s is not lowest)


def test_an_opponent_is_any_other_member_drawn_by_the_seed():
    met = {opponent([0, 1, 2, 3], 0, random.Random(s)) for s in range(100)}
    assert met == {1, 2, 3}
    assert opponent([3, 1, 2, 0], 0, random.Random(5)) == opponent([0, 1, 2, 3], 0, random.Random(5))
    assert opponent([2], 2, random.Random(0)) is None


# -- top as a count ---------------------------------------------------------------------


def test_a_count_wins_over_the_fraction_and_never_lets_the_groups_overlap():
    assert cut_size(10, 0.2, top=5) == 5
    assert cut_size(10, 0.5, top=1) == 1
    assert cut_size(6, 0.2, top=3) == 3
    assert cut_size(4, 0.2, top=3) == 2  # members dropped out of a run made for more: clamp
    assert check_top(None, 4) is None and check_top(2, 4) == 2
    for bad in (0, 3, -1, 2.0, True):
        with pytest.raises(StrategyError, match="must not overlap"):
            check_top(bad, 5)


def test_config_refuses_a_top_count_above_half_the_population():
    with pytest.raises(ConfigError, match="population // 2 = 4"):
        ExperimentConfig(name="x", spec="s", space=SPACE, population=8, top=5)
    assert ExperimentConfig(name="x", spec="s", space=SPACE, population=8, top=4).top == 4
    with pytest.raises(ConfigError, match="quantile must be in"):
        ExperimentConfig(name="x", spec="s", space=SPACE, quantile=0.0)
    with pytest.raises(ConfigError, match="population must be"):
        ExperimentConfig(name="x", spec="s", space=SPACE, population=1)


# -- t-test selection -------------------------------------------------------------------

CLEARLY_BETTER = [0.80, 0.82, 0.81, 0.83]
CLEARLY_WORSE = [0.50, 0.52, 0.49, 0.51]
NOISY_A = [0.50, 0.90, 0.55, 0.85]
NOISY_B = [0.60, 0.80, 0.45, 0.95]


@pytest.fixture
def scipy_stats():
    return require("scipy.stats")


def test_ttest_finds_a_clearly_better_history(scipy_stats):
    assert significantly_better(CLEARLY_BETTER, CLEARLY_WORSE, "max", 4, 0.05)
    assert significantly_better(CLEARLY_WORSE, CLEARLY_BETTER, "min", 4, 0.05)
    assert not significantly_better(CLEARLY_WORSE, CLEARLY_BETTER, "max", 4, 0.05)


def test_ttest_does_not_find_overlapping_noisy_histories_better(scipy_stats):
    assert NOISY_B[-1] > NOISY_A[-1]  # the latest score alone would say B is better
    assert not significantly_better(NOISY_B, NOISY_A, "max", 4, 0.05)


def test_ttest_never_finds_too_short_a_history_better(scipy_stats):
    assert not significantly_better(CLEARLY_BETTER, CLEARLY_WORSE[-3:], "max", 4, 0.05)
    assert not significantly_better(CLEARLY_BETTER[-3:], CLEARLY_WORSE, "max", 4, 0.05)
    # only the last ``window`` scores count: an old bad stretch is forgotten
    assert not significantly_better([0.0] * 6 + [0.5, 0.52, 0.49, 0.51], CLEARLY_WORSE, "max", 4, 0.05)


def test_histories_follow_the_weights_back_through_an_exploit():
    # member 0 trained intervals 0-1 (checkpoints 10, 11), member 1 intervals 0-1 (20, 21);
    # then member 0 copied member 1's checkpoint 21 and trained interval 2 (checkpoint 12)
    trained = [
        Trained(0, 0, 0.1, {}, None, 10),
        Trained(0, 1, 0.2, {}, 10, 11),
        Trained(1, 0, 0.5, {}, None, 20),
        Trained(1, 1, 0.6, {}, 20, 21),
        Trained(0, 2, 0.7, {}, 21, 12),
    ]
    assert histories(trained, {0: 12, 1: 21}, 4) == {0: [0.5, 0.6, 0.7], 1: [0.5, 0.6]}
    assert histories(trained, {0: 12}, 2) == {0: [0.6, 0.7]}


def test_a_history_stops_at_a_non_finite_score():
    trained = [Trained(0, 0, None, {}, None, 10), Trained(0, 1, 0.2, {}, 10, 11), Trained(0, 2, 0.3, {}, 11, 12)]
    assert histories(trained, {0: 12}, 4) == {0: [0.2, 0.3]}


# -- the ready rule ---------------------------------------------------------------------


def test_ready_every_k_intervals_after_the_burn_in():
    assert [n for n in range(1, 13) if is_ready(n)] == list(range(1, 13))
    assert [n for n in range(1, 13) if is_ready(n, ready_every=4)] == [4, 8, 12]
    assert [n for n in range(1, 13) if is_ready(n, burn_in=5)] == list(range(5, 13))
    assert [n for n in range(1, 13) if is_ready(n, ready_every=3, burn_in=5)] == [6, 9, 12]


# -- the user's explore hook ------------------------------------------------------------

HOOK_SPACE = {"lr": Uniform(0.0, 1.0), "bs": IntUniform(8, 64)}


def test_an_explore_hook_decides_and_each_change_is_recorded():
    def hook(hparams, rng):
        assert isinstance(rng, random.Random)
        return {**hparams, "lr": round(rng.uniform(0.0, 0.1), 6)}

    out = explore_with(hook, {"lr": 0.5, "bs": 32}, HOOK_SPACE, random.Random(1))
    assert out == explore_with(hook, {"lr": 0.5, "bs": 32}, HOOK_SPACE, random.Random(1))
    assert 0 <= out.hparams["lr"] <= 0.1 and out.hparams["bs"] == 32
    assert {n: c.rule for n, c in out.changes.items()} == {"lr": "hook", "bs": "keep"}


@pytest.mark.parametrize(
    "hook, message",
    [
        (lambda hp, rng: {**hp, "lr": 2.0}, "hyperparameter 'lr': 2.0 is outside"),
        (lambda hp, rng: {**hp, "bs": 12.5}, "hyperparameter 'bs': 12.5 is not an integer"),
        (lambda hp, rng: {"lr": 0.5}, "missing ['bs']"),
        (lambda hp, rng: None, "returned NoneType, not a dict"),
        (lambda hp, rng: 1 / 0, "raised ZeroDivisionError: division by zero"),
    ],
)
def test_an_explore_hook_answer_outside_the_space_is_one_clear_error(hook, message):
    with pytest.raises(ExploreError) as err:
        explore_with(hook, {"lr": 0.5, "bs": 32}, HOOK_SPACE, random.Random(0))
    assert message in str(err.value) and "\n" not in str(err.value)
