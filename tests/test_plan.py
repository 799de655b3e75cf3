"""The planner, without a database: every rule decided from hand-built snapshots.

Each test builds a population snapshot (results per member and interval, the tasks waiting
for a decision, who gave up) and checks what ``plan`` decides, and what it leaves waiting.
"""

from __future__ import annotations

import pytest

from popbt import strategy
from popbt.experiment import ExperimentConfig
from popbt.plan import Decision, Result, Snapshot, Waiting, needs_decision, plan
from popbt.space import Uniform
from popbt.strategy import Trained

SPACE = {"lr": Uniform(0.0, 1.0)}


def config(**kw) -> ExperimentConfig:
    values = dict(population=4, intervals=10, seed=1, max_attempts=2)
    values.update(kw)
    return ExperimentConfig(name="p", spec="s", space=SPACE, **values)


def ckpt(member: int, interval: int) -> int:
    return 1000 * interval + member


def cohort(interval: int, scores: dict[int, float | None], **usable) -> dict[tuple[int, int], Result]:
    return {
        (m, interval): Result(m, interval, sc, {"lr": 0.1 * (m + 1)}, ckpt(m, interval), usable.get(f"m{m}", True))
        for m, sc in scores.items()
    }


def waiting(member: int, interval: int, attempts: int = 0, replacements: int = 0) -> Waiting:
    own = ckpt(member, interval - 1) if interval > 0 else None
    return Waiting(100 * interval + member, member, interval, {"lr": 0.1 * (member + 1)}, own, attempts, replacements)


def snapshot(cfg, results, tasks, given_up=None, trained=()) -> Snapshot:
    return Snapshot(7, cfg, tasks, results, given_up or {}, trained)


def by_member(p) -> dict[int, Decision]:
    return {d.member: d for d in p.decisions}


def kept(d: Decision) -> bool:
    return d.copy is None and not d.give_up and d.start == ckpt(d.member, d.interval - 1)


# -- truncation at matched age -----------------------------------------------------------


def test_a_decision_is_taken_once_determined_and_waits_otherwise():
    cfg = config()  # population 4: groups of one
    snap = snapshot(cfg, cohort(0, {0: 0.0, 1: 1.0}), [waiting(0, 1), waiting(1, 1)])
    decided = by_member(plan(snap))
    assert set(decided) == {1} and kept(decided[1])  # member 0 scored below it: 1 cannot be the bottom
    # member 0 may still be the bottom one: it waits for the cohort, and nothing else is decided


def test_the_bottom_of_a_complete_cohort_copies_a_member_of_the_top():
    cfg = config(population=8)  # quantile 0.2 of 8 rounds up: groups of two
    snap = snapshot(cfg, cohort(0, {m: float(m) for m in range(8)}), [waiting(m, 1) for m in range(8)])
    decided = by_member(plan(snap))
    copied = {m: d.copy.donor for m, d in decided.items() if d.copy}
    assert set(copied) == {0, 1} and set(copied.values()) <= {6, 7}
    for m, d in decided.items():
        if d.copy:
            assert d.start == ckpt(d.copy.donor, 0) and d.copy.donor_interval == 0  # a model of the same age
            assert d.copy.hparams_before == {"lr": 0.1 * (m + 1)} and d.copy.reason == "exploit"
        else:
            assert kept(d)


def test_a_member_is_compared_only_with_results_of_its_own_age():
    """Members 1 and 3 are an interval ahead and did well there; member 0's decision still
    ranks scores of interval 1 only, where member 1 is the worst."""
    cfg = config()
    results = {
        **cohort(0, {m: 5.0 for m in range(4)}),
        **cohort(1, {0: 0.65, 1: 0.6, 2: 0.99, 3: 0.7}),
        **cohort(2, {1: 0.9, 3: 0.95}),
    }
    decided = by_member(plan(snapshot(cfg, results, [waiting(0, 2), waiting(2, 2), waiting(1, 3), waiting(3, 3)])))
    assert kept(decided[0]) and kept(decided[2])
    assert kept(decided[3])  # ahead: kept once member 1 scored below it at interval 2
    assert 1 not in decided  # ahead, and possibly the worst of interval 2: waits for 0 and 2


def test_sync_mode_waits_for_the_whole_cohort_even_when_a_decision_is_determined():
    snap = snapshot(config(sync=True), cohort(0, {0: 0.0, 1: 1.0, 2: 2.0}), [waiting(m, 1) for m in range(3)])
    assert not plan(snap)


def test_async_and_sync_decide_the_same_once_the_cohort_is_complete():
    results = cohort(0, {m: (m * 7) % 5 + 0.1 * m for m in range(6)})
    tasks = [waiting(m, 1) for m in range(6)]
    a = plan(snapshot(config(population=6), results, tasks))
    s = plan(snapshot(config(population=6, sync=True), results, tasks))
    assert sorted(a.decisions, key=lambda d: d.member) == sorted(s.decisions, key=lambda d: d.member)


def test_the_plan_does_not_depend_on_the_order_of_the_snapshot():
    results = cohort(0, {m: float(m % 3) for m in range(8)})  # ties, broken by the seeded draw
    tasks = [waiting(m, 1) for m in range(8)]
    one = plan(snapshot(config(population=8), results, tasks))
    other = plan(snapshot(config(population=8), dict(reversed(results.items())), list(reversed(tasks))))
    assert one == other


def test_tied_members_may_copy_each_other_as_in_the_paper_s_toy():
    snap = snapshot(config(population=2), cohort(0, {0: 0.39, 1: 0.39}), [waiting(0, 1), waiting(1, 1)])
    decided = by_member(plan(snap))
    copies = [d for d in decided.values() if d.copy]
    assert len(copies) == 1 and copies[0].copy.donor != copies[0].member


def test_a_count_for_the_groups_wins_over_the_fraction():
    snap = snapshot(
        config(population=6, top=3), cohort(0, {m: float(m) for m in range(6)}), [waiting(m, 1) for m in range(6)]
    )
    decided = by_member(plan(snap))
    assert {m for m, d in decided.items() if d.copy} == {0, 1, 2}
    assert {d.copy.donor for d in decided.values() if d.copy} <= {3, 4, 5}


# -- the ready rule, burn-in and random search -----------------------------------------------


def test_before_a_ready_interval_a_member_keeps_its_weights_without_waiting():
    cfg = config(ready_every=3, burn_in=4)
    snap = snapshot(cfg, cohort(4, {0: 0.0}), [waiting(0, 5)])  # 5 is no multiple of 3
    assert kept(by_member(plan(snap))[0])
    snap = snapshot(cfg, cohort(5, {m: float(m) for m in range(4)}), [waiting(0, 6)])
    assert by_member(plan(snap))[0].copy.donor == 3
    assert not needs_decision(cfg, 5, finite=True) and needs_decision(cfg, 6, finite=True)
    assert not needs_decision(config(burn_in=4), 3, finite=True)
    assert needs_decision(config(sync=True, search="random"), 3, finite=True)  # sync: the generation barrier


def test_random_search_never_copies():
    snap = snapshot(
        config(search="random"), cohort(0, {m: float(m) for m in range(4)}), [waiting(m, 1) for m in range(4)]
    )
    assert all(kept(d) for d in plan(snap).decisions) and len(plan(snap).decisions) == 4
    assert not needs_decision(config(search="random"), 3, finite=False)


# -- tournament and t-test ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_tournament_copies_the_opponent_drawn_by_the_seed_only_if_it_scores_better(seed):
    cfg = config(exploit="tournament", seed=seed)
    scores = {0: 0.3, 1: 0.9, 2: 0.1, 3: 0.5}
    decided = by_member(plan(snapshot(cfg, cohort(0, scores), [waiting(m, 1) for m in range(4)])))
    for m, d in decided.items():
        other = strategy.opponent(range(4), m, strategy.decision_rng(seed, "exploit", m, 0))
        if scores[other] > scores[m]:
            assert d.copy.donor == other
        else:
            assert kept(d)
    assert kept(decided[1])  # the best member never copies


def test_tournament_waits_only_for_the_opponent_it_drew():
    cfg = config(exploit="tournament")
    other = strategy.opponent(range(4), 0, strategy.decision_rng(cfg.seed, "exploit", 0, 0))
    missing = cohort(0, {m: float(m) for m in range(4) if m != other})
    assert 0 not in by_member(plan(snapshot(cfg, missing, [waiting(0, 1)])))
    everyone = cohort(0, {0: -1.0, 1: 1.0, 2: 2.0, 3: 3.0})
    assert by_member(plan(snapshot(cfg, everyone, [waiting(0, 1)])))[0].copy.donor == other


def lineage(member: int, scores: list[float]) -> list[Trained]:
    """A member that trained its own weights for len(scores) intervals."""
    return [
        Trained(member, k, sc, {}, ckpt(member, k - 1) if k else None, ckpt(member, k)) for k, sc in enumerate(scores)
    ]


def test_ttest_copies_only_a_significantly_better_history():
    pytest.importorskip("scipy")
    cfg = config(population=2, exploit="ttest", ttest_window=4)
    good, bad = [0.80, 0.82, 0.81, 0.83], [0.50, 0.52, 0.49, 0.51]
    trained = lineage(0, bad) + lineage(1, good)
    results = cohort(3, {0: bad[-1], 1: good[-1]})
    decided = by_member(plan(snapshot(cfg, results, [waiting(0, 4), waiting(1, 4)], trained=trained)))
    assert decided[0].copy.donor == 1 and kept(decided[1])
    short = lineage(0, bad[-2:]) + lineage(1, good[-2:])
    results = cohort(1, {0: bad[-1], 1: good[-1]})
    decided = by_member(plan(snapshot(cfg, results, [waiting(0, 2)], trained=short)))
    assert kept(decided[0])  # two scores are no evidence


# -- failures and non-finite scores ----------------------------------------------------------


def test_a_failing_member_is_never_ranked_and_the_bottom_waits_for_it():
    """Member 3 is retrying interval 0 (no result yet): the cohort is incomplete."""
    cfg = config()
    snap = snapshot(cfg, cohort(0, {0: 0.0, 1: 1.0, 2: 2.0}), [waiting(m, 1) for m in range(3)])
    decided = by_member(plan(snap))
    assert set(decided) == {1, 2} and all(kept(d) for d in decided.values())


def test_a_member_that_gave_up_leaves_the_cohort_and_is_never_copied():
    cfg = config()
    results = {**cohort(0, {m: float(m) for m in range(4)}), **cohort(1, {0: 0.5, 1: 1.0, 2: 2.0})}
    decided = by_member(plan(snapshot(cfg, results, [waiting(m, 2) for m in range(3)], given_up={3: 1})))
    assert decided[0].copy.donor == 2 and kept(decided[1]) and kept(decided[2])


def test_a_non_finite_score_is_the_worst_and_its_member_copies_at_once_whatever_the_ready_rule():
    cfg = config(population=6, ready_every=5)
    results = cohort(1, {0: None, 1: 1.0, 2: 2.0, 3: None, 4: 4.0, 5: 5.0})
    decided = by_member(plan(snapshot(cfg, results, [waiting(m, 2) for m in range(6)])))
    assert decided[0].copy and decided[3].copy  # both copy, though interval 2 is not ready
    assert {decided[0].copy.donor, decided[3].copy.donor} <= {4, 5}
    assert all(kept(decided[m]) for m in (1, 2, 4, 5))
    assert needs_decision(cfg, 2, finite=False) and not needs_decision(cfg, 2, finite=True)


def test_a_non_finite_member_never_donates_and_keeps_its_weights_when_nobody_can_be_copied():
    cfg = config(population=2)
    decided = by_member(plan(snapshot(cfg, cohort(0, {0: None, 1: None}), [waiting(0, 1), waiting(1, 1)])))
    assert kept(decided[0]) and kept(decided[1])
    decided = by_member(plan(snapshot(cfg, cohort(0, {0: None, 1: 1.0}), [waiting(0, 1), waiting(1, 1)])))
    assert decided[0].copy.donor == 1 and kept(decided[1])


def test_a_corrupt_checkpoint_is_never_copied():
    cfg = config()
    results = cohort(0, {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0}, m3=False)
    decided = by_member(plan(snapshot(cfg, results, [waiting(0, 1)])))
    assert kept(decided[0])  # its only donor (the top group of one) is corrupt


# -- replacement after repeated failures ------------------------------------------------------


def test_a_replacement_copies_a_top_member_of_the_interval_before():
    cfg = config(population=8)
    results = cohort(2, {m: float(m) for m in range(8)})
    decided = by_member(plan(snapshot(cfg, results, [waiting(7, 3, attempts=2)])))
    d = decided[7]
    assert d.copy.reason == "replace" and d.copy.donor == 6  # the top group is 7 and 6; not itself
    assert d.start == ckpt(6, 2) and d.replacements == 1


def test_a_replacement_waits_for_the_cohort_before_its_interval():
    results = cohort(2, {0: 0.0, 1: 1.0, 2: 2.0})
    assert not plan(snapshot(config(), results, [waiting(0, 3, attempts=2)]))


def test_a_replacement_at_the_first_interval_restarts_with_fresh_hyperparameters():
    decided = by_member(plan(snapshot(config(), {}, [waiting(2, 0, attempts=2)])))
    assert decided[2].start is None and decided[2].hparams != {"lr": 0.3} and decided[2].replacements == 1


def test_a_replacement_with_nobody_to_copy_restarts_from_its_own_weights():
    results = cohort(0, {0: 1.0, 1: None})
    decided = by_member(plan(snapshot(config(population=2), results, [waiting(0, 1, attempts=2)])))
    assert decided[0].start == ckpt(0, 0) and decided[0].copy is None and decided[0].replacements == 1


def test_a_member_replaced_max_attempts_times_gives_up_and_leaves_the_cohort_at_once():
    cfg = config()
    results = cohort(0, {m: float(m) for m in range(4)})
    tasks = [waiting(3, 1, attempts=2, replacements=2), waiting(0, 2), waiting(1, 2), waiting(2, 2)]
    results.update(cohort(1, {0: 0.0, 1: 1.0, 2: 2.0}))
    p = plan(snapshot(cfg, results, tasks))
    decided = by_member(p)
    assert decided[3].give_up
    assert decided[0].copy.donor == 2  # the cohort of interval 1 is complete without member 3
    assert [n.kind for n in p.notes] == ["gave_up"]


# -- explore ----------------------------------------------------------------------------------


def test_the_hook_explores_from_the_donor_s_hyperparameters_outside_any_store():
    seen = []

    def hook(hparams, rng):
        seen.append(dict(hparams))
        return {"lr": round(hparams["lr"] / 2, 6)}

    snap = snapshot(config(), cohort(0, {m: float(m) for m in range(4)}), [waiting(0, 1)])
    d = by_member(plan(snap, hook))[0]
    assert seen == [{"lr": 0.4}] and d.hparams == {"lr": 0.2} and d.copy.changes == {"lr": "hook"}


def test_a_failing_hook_is_a_note_and_the_member_keeps_its_own_weights():
    snap = snapshot(config(), cohort(0, {m: float(m) for m in range(4)}), [waiting(0, 1)])
    p = plan(snap, lambda hp, rng: {"lr": 7.0})
    assert kept(by_member(p)[0])
    assert [n.kind for n in p.notes] == ["failure"] and "outside" in p.notes[0].message


def test_a_replacement_whose_hook_fails_falls_back_on_the_perturbation():
    snap = snapshot(config(), cohort(0, {m: float(m) for m in range(4)}), [waiting(0, 1, attempts=2)])
    p = plan(snap, lambda hp, rng: 1 / 0)
    d = by_member(p)[0]
    assert d.copy.reason == "replace" and set(d.copy.changes.values()) <= {"x0.8", "x1.2", "resample"}
    assert [n.kind for n in p.notes] == ["failure", "replaced"]


def test_explore_draws_are_seeded_by_experiment_member_and_interval():
    for seed in range(5):
        cfg = config(seed=seed)
        d = by_member(plan(snapshot(cfg, cohort(0, {m: float(m) for m in range(4)}), [waiting(0, 1)])))[0]
        rng = strategy.decision_rng(seed, "explore", 0, 1, "exploit")
        assert d.hparams == strategy.explore({"lr": 0.4}, SPACE, rng, cfg.factors, cfg.resample_probability).hparams


def test_planning_again_reuses_the_explorations_already_drawn():
    """A plan refused because the population moved is made again from a newer snapshot: the
    hook (or PB2's fit) is not run a second time for the same copy."""
    calls = []

    def hook(hparams, rng):
        calls.append(1)
        return {"lr": 0.5}

    explored = {}
    snap = snapshot(config(), cohort(0, {m: float(m) for m in range(4)}), [waiting(0, 1)])
    first = plan(snap, hook, explored)
    again = plan(Snapshot(8, snap.config, snap.waiting, snap.results), hook, explored)
    assert len(calls) == 1 and first.decisions == again.decisions and again.version == 8
