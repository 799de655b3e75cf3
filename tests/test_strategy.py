"""Exploit rules (truncation by fraction or count, tournament, t-test), the ready rule and
the explore hook, each from its definition, on hand-made populations."""

import random

import pytest

from popbt.experiment import ConfigError, ExperimentConfig
from popbt.space import IntUniform, Uniform
from popbt.strategy import (ExploreError, Standing, StrategyError, Trained, check_top, cut_size,
                            explore_with, histories, is_ready, rank, significantly_better, tournament,
                            truncation, ttest)

SPACE = {"lr": Uniform(0.0, 1.0)}


def population(scores):
    return [Standing(m, 3, s) for m, s in enumerate(scores)]


def test_donors_come_only_from_the_top_quantile_and_losers_only_from_the_bottom():
    scores = [0.1 * m for m in range(10)]  # member 9 is best, member 0 worst
    seen_donors, seen_losers = set(), set()
    for seed in range(300):
        decided = truncation(population(scores), "max", 0.2, random.Random(seed))
        seen_losers |= set(decided)
        seen_donors |= {d.member for d in decided.values()}
    assert seen_losers == {0, 1}
    assert seen_donors == {8, 9}


def test_mode_min_turns_the_ranking_around():
    decided = truncation(population([5.0, 1.0, 3.0, 4.0, 2.0]), "min", 0.2, random.Random(0))
    assert set(decided) == {0}
    assert decided[0].member == 1


def test_cut_sizes():
    assert cut_size(2, 0.2) == 1  # the paper's toy: population 2 still exploits
    assert cut_size(8, 0.2) == 1
    assert cut_size(15, 0.2) == 3
    assert cut_size(10, 0.5) == 5
    with pytest.raises(StrategyError):
        cut_size(1, 0.2)
    with pytest.raises(StrategyError):
        cut_size(10, 0.0)
    with pytest.raises(StrategyError):
        cut_size(10, 0.6)


def test_ties_are_broken_by_the_seed_not_by_insertion_order():
    tied = population([1.0] * 6)
    firsts = {rank(tied, "max", random.Random(seed))[0].member for seed in range(50)}
    assert len(firsts) > 1
    assert rank(tied, "max", random.Random(7)) == rank(list(reversed(tied)), "max", random.Random(7))


# -- top as a count ---------------------------------------------------------------------


def test_donors_come_only_from_the_top_count_and_losers_only_from_the_bottom_count():
    scores = [0.1 * m for m in range(10)]
    seen_donors, seen_losers = set(), set()
    for seed in range(300):
        decided = truncation(population(scores), "max", 0.2, random.Random(seed), top=3)
        assert len(decided) == 3
        seen_losers |= set(decided)
        seen_donors |= {d.member for d in decided.values()}
    assert seen_losers == {0, 1, 2}
    assert seen_donors == {7, 8, 9}


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


# -- binary tournament ------------------------------------------------------------------


def test_tournament_a_worse_member_copies_the_better_one_it_meets():
    pair = population([1.0, 2.0])  # each member can only meet the other
    for seed in range(20):
        assert tournament(pair, "max", random.Random(seed)) == {0: pair[1]}
        assert tournament(pair, "min", random.Random(seed)) == {1: pair[0]}


def test_tournament_the_best_member_never_copies_and_a_tie_keeps_its_weights():
    scores = [0.3, 0.9, 0.1, 0.5, 0.7]
    for seed in range(300):
        decided = tournament(population(scores), "max", random.Random(seed))
        assert 1 not in decided
        assert all(d.score > scores[m] for m, d in decided.items())
        assert all(d.member != m for m, d in decided.items())
    assert tournament(population([1.0, 1.0, 1.0]), "max", random.Random(0)) == {}


def test_tournament_opponents_are_drawn_from_every_other_member_by_the_seed():
    scores = [0.0, 1.0, 2.0, 3.0]
    met = {tournament(population(scores), "max", random.Random(s), members=[0])[0].member for s in range(100)}
    assert met == {1, 2, 3}
    once = tournament(population(scores), "max", random.Random(5))
    assert once == tournament(list(reversed(population(scores))), "max", random.Random(5))


# -- t-test selection -------------------------------------------------------------------

CLEARLY_BETTER = [0.80, 0.82, 0.81, 0.83]
CLEARLY_WORSE = [0.50, 0.52, 0.49, 0.51]
NOISY_A = [0.50, 0.90, 0.55, 0.85]
NOISY_B = [0.60, 0.80, 0.45, 0.95]


@pytest.fixture
def scipy_stats():
    return pytest.importorskip("scipy.stats")


def test_ttest_copies_a_clearly_better_history(scipy_stats):
    pair = population([0.51, 0.83])
    histories = {0: CLEARLY_WORSE, 1: CLEARLY_BETTER}
    for seed in range(10):
        assert ttest(pair, histories, "max", random.Random(seed), window=4, alpha=0.05) == {0: pair[1]}
    assert significantly_better(CLEARLY_WORSE, CLEARLY_BETTER, "min", 4, 0.05)
    assert not significantly_better(CLEARLY_WORSE, CLEARLY_BETTER, "max", 4, 0.05)


def test_ttest_does_not_copy_overlapping_noisy_histories(scipy_stats):
    pair = population([0.85, 0.95])  # the latest score alone would say member 1 is better
    assert ttest(pair, {0: NOISY_A, 1: NOISY_B}, "max", random.Random(0), window=4, alpha=0.05) == {}
    assert not significantly_better(NOISY_B, NOISY_A, "max", 4, 0.05)


def test_ttest_does_not_copy_on_too_short_a_history(scipy_stats):
    pair = population([0.51, 0.83])
    short = {0: CLEARLY_WORSE[-3:], 1: CLEARLY_BETTER}
    assert ttest(pair, short, "max", random.Random(0), window=4, alpha=0.05) == {}
    assert ttest(pair, {0: CLEARLY_WORSE}, "max", random.Random(0), window=4, alpha=0.05) == {}
    # only the last ``window`` scores count: an old bad stretch is forgotten
    assert not significantly_better([0.0] * 6 + [0.5, 0.52, 0.49, 0.51], CLEARLY_WORSE, "max", 4, 0.05)


def test_histories_follow_the_weights_back_through_an_exploit():
    # member 0 trained intervals 0-1 (checkpoints 10, 11), member 1 intervals 0-1 (20, 21);
    # then member 0 copied member 1's checkpoint 21 and trained interval 2 (checkpoint 12)
    trained = [
        Trained(0, 0, 0.1, {}, None, 10), Trained(0, 1, 0.2, {}, 10, 11),
        Trained(1, 0, 0.5, {}, None, 20), Trained(1, 1, 0.6, {}, 20, 21),
        Trained(0, 2, 0.7, {}, 21, 12),
    ]
    assert histories(trained, {0: 12, 1: 21}, 4) == {0: [0.5, 0.6, 0.7], 1: [0.5, 0.6]}
    assert histories(trained, {0: 12}, 2) == {0: [0.6, 0.7]}


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


@pytest.mark.parametrize("hook, message", [
    (lambda hp, rng: {**hp, "lr": 2.0}, "hyperparameter 'lr': 2.0 is outside"),
    (lambda hp, rng: {**hp, "bs": 12.5}, "hyperparameter 'bs': 12.5 is not an integer"),
    (lambda hp, rng: {"lr": 0.5}, "missing ['bs']"),
    (lambda hp, rng: None, "returned NoneType, not a dict"),
    (lambda hp, rng: 1 / 0, "raised ZeroDivisionError: division by zero"),
])
def test_an_explore_hook_answer_outside_the_space_is_one_clear_error(hook, message):
    with pytest.raises(ExploreError) as err:
        explore_with(hook, {"lr": 0.5, "bs": 32}, HOOK_SPACE, random.Random(0))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_tied_members_still_copy_each_other_as_in_the_papers_toy():
    tied = [Standing(0, 3, 0.39), Standing(1, 3, 0.39)]
    decided = truncation(tied, "max", 0.2, random.Random(0))
    assert len(decided) == 1 and {m: d.member for m, d in decided.items()} in ({0: 1}, {1: 0})
