"""Truncation selection, from its definition, on hand-made populations."""

import random

import pytest

from popbt.strategy import Standing, StrategyError, cut_size, rank, truncation


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
