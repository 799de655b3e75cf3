"""The Store contract, run once per backend (sqlite and a real PostgreSQL).

Tests drive the store directly, as workers do, so each rule of the contract is checked
without user code in the way.
"""

from __future__ import annotations

import pytest
from sqlalchemy import update

from conftest import expire_lease
from popbt.experiment import ConfigError, ExperimentConfig
from popbt.space import Uniform
from popbt.store import DONE, FAILED, PENDING, LeaseLost, NotFound, Result, StoreError, open_store, schema

SPACE = {"lr": Uniform(0.0, 1.0)}


def config(name="exp", **kw) -> ExperimentConfig:
    values = dict(population=4, intervals=3, seed=1, max_attempts=2, retry_delay=0.0)
    values.update(kw)
    return ExperimentConfig(name=name, spec="quad", space=SPACE, **values)


def result(score, path="/nonexistent/ckpt") -> Result:
    return Result(float(score), {}, path, "0" * 64, 1)


@pytest.fixture
def store(storage):
    s = open_store(storage)
    yield s
    s.close()


def first_interval(store, exp, order=None):
    """Everyone trains interval 0 (score = member index), reporting in ``order``."""
    tasks = [store.claim(exp.id, "w", "cpu") for _ in range(exp.config.population)]
    for t in tasks if order is None else [tasks[m] for m in order]:
        store.report(t, result(t.member, f"/ckpt/{t.member}-0"))


def drain(store, exp, score=lambda t: t.member, stop_at=None):
    """Claim and report until nothing is claimable; return the tasks trained, in order."""
    trained = []
    while (task := store.claim(exp.id, "w", "cpu")) is not None:
        store.report(task, result(score(task), f"/ckpt/{task.member}-{task.interval}"))
        trained.append(task)
        if stop_at and len(trained) >= stop_at:
            break
    return trained


def test_create_find_and_list(store):
    exp = store.create_experiment(config("a"), "/tmp/ckpt")
    store.create_experiment(config("b"), "/tmp/ckpt")
    assert store.experiment("a").id == exp.id
    assert store.experiment("latest").name == "b"
    assert [e.name for e in store.experiments()] == ["a", "b"]
    assert store.experiment("a").config == config("a")
    with pytest.raises(NotFound):
        store.experiment("nope")
    with pytest.raises(ConfigError):
        store.create_experiment(config("a"), "/tmp/ckpt")


def test_claims_hand_out_each_task_once_furthest_behind_first(store):
    exp = store.create_experiment(config(), "/tmp")
    first = [store.claim(exp.id, "w", "cpu") for _ in range(4)]
    assert [t.member for t in first] == [0, 1, 2, 3]
    assert store.claim(exp.id, "w", "cpu") is None  # all running
    store.report(first[3], result(3.0))
    store.report(first[2], result(2.0))  # member 3 now surely is not the bottom one of four
    nxt = store.claim(exp.id, "w", "cpu")
    assert (nxt.member, nxt.interval) == (3, 1)
    assert nxt.start is not None and (nxt.start.member, nxt.start.interval) == (3, 0)


def test_a_decision_waits_until_it_is_determined_and_its_task_is_never_claimed_meanwhile(store):
    """Async, matched age: the first member to report cannot be ranked yet. It is kept as
    soon as enough members of its age score below it; a copy waits for the whole cohort."""
    exp = store.create_experiment(config(), "/tmp")  # population 4: bottom and top groups of 1
    tasks = [store.claim(exp.id, "w", "cpu") for _ in range(4)]
    store.report(tasks[0], result(0.0, "/ckpt/0-0"))
    store.report(tasks[1], result(1.0, "/ckpt/1-0"))
    nxt = store.claim(exp.id, "w", "cpu")
    assert (nxt.member, nxt.interval, nxt.start.path) == (1, 1, "/ckpt/1-0")  # member 0 scored below it
    assert store.claim(exp.id, "w", "cpu") is None  # member 0 waits: it may be the bottom one
    store.report(tasks[2], result(2.0, "/ckpt/2-0"))
    assert store.claim(exp.id, "w", "cpu").member == 2
    assert store.claim(exp.id, "w", "cpu") is None
    store.report(tasks[3], result(3.0, "/ckpt/3-0"))  # the cohort is complete: 0 is bottom, 3 top
    claimed = {t.member: t for t in (store.claim(exp.id, "w", "cpu"), store.claim(exp.id, "w", "cpu"))}
    assert claimed[0].start.path == "/ckpt/3-0" and claimed[3].start.path == "/ckpt/3-0"
    [x] = store.exploits(exp.id)
    assert (x.member, x.interval, x.donor, x.donor_interval) == (0, 1, 3, 0)


def test_a_member_is_never_ranked_against_an_older_or_newer_result(store):
    """Member 1 is ahead by an interval with a high score; member 0's decision at interval 0
    compares only scores of interval 0."""
    exp = store.create_experiment(config(population=2, intervals=4), "/tmp")
    t0, t1 = store.claim(exp.id, "w", "cpu"), store.claim(exp.id, "w", "cpu")
    store.report(t1, result(5.0, "/ckpt/1-0"))
    store.report(t0, result(1.0, "/ckpt/0-0"))  # 0 is the bottom of interval 0: it copies 1
    a, b = store.claim(exp.id, "w", "cpu"), store.claim(exp.id, "w", "cpu")
    by_member = {t.member: t for t in (a, b)}
    store.report(by_member[1], result(9.0, "/ckpt/1-1"))  # 1 is ahead now, scoring 9 at interval 1
    store.report(by_member[0], result(6.0, "/ckpt/0-1"))  # 6 > 5: better than 1 was at interval 0
    xs = store.exploits(exp.id)
    # at interval 1, 0 (6.0) is compared with 1's interval-1 score (9.0), not its older 5.0
    assert [(x.member, x.interval, x.donor_interval, x.donor_score) for x in xs] == [(0, 1, 0, 5.0), (0, 2, 1, 9.0)]


def test_a_late_report_after_the_lease_was_taken_over_is_refused(store, storage):
    exp = store.create_experiment(config(), "/tmp")
    zombie = store.claim(exp.id, "zombie", "cpu")
    expire_lease(storage, exp.id, zombie.member, zombie.interval)
    heir = store.claim(exp.id, "heir", "cpu")
    assert (heir.member, heir.interval) == (zombie.member, zombie.interval)
    assert heir.token != zombie.token
    assert store.heartbeat(zombie) is False
    with pytest.raises(LeaseLost):
        store.report(zombie, result(9.0))
    with pytest.raises(LeaseLost):
        store.fail(zombie, "late")
    store.report(heir, result(1.0))
    rows = [r for r in store.history(exp.id) if (r.member, r.interval) == (0, 0)]
    assert len(rows) == 1 and rows[0].score == 1.0 and rows[0].worker == "heir"
    assert any(e.kind == "lease_expired" for e in store.events(exp.id))


def test_heartbeat_keeps_a_lease_and_release_returns_the_task(store):
    exp = store.create_experiment(config(), "/tmp")
    task = store.claim(exp.id, "w", "cpu")
    assert store.heartbeat(task)
    assert store.release(task)
    again = store.claim(exp.id, "w", "cpu")
    assert (again.member, again.interval) == (task.member, task.interval)


def test_a_full_async_run_records_every_result_exactly_once(store):
    exp = store.create_experiment(config(), "/tmp")
    drain(store, exp)
    rows = store.history(exp.id)
    assert sorted((r.member, r.interval) for r in rows) == [(m, k) for m in range(4) for k in range(3)]
    assert all(r.state == DONE for r in rows)
    assert store.progress(exp.id).finished
    assert store.experiment(exp.name).status == "finished"


def test_the_bottom_member_copies_the_top_checkpoint_and_explores(store):
    exp = store.create_experiment(config(), "/tmp")
    first_interval(store, exp)
    t = store.claim(exp.id, "w", "cpu")  # member 0 at interval 1
    assert t.member == 0 and t.interval == 1
    assert t.start.member == 3  # member 0 scored worst, member 3 best (quantile 0.2 of 4 -> 1)
    [x] = store.exploits(exp.id)
    assert (x.member, x.donor, x.interval, x.reason) == (0, 3, 1, "exploit")
    assert set(x.changes) == {"lr"} and x.changes["lr"] in ("x0.8", "x1.2", "resample")
    assert t.hparams == x.hparams_after


def test_sync_creates_a_generation_only_when_the_previous_one_is_complete(store):
    exp = store.create_experiment(config(sync=True), "/tmp")
    tasks = [store.claim(exp.id, "w", "cpu") for _ in range(4)]
    for t in tasks[:3]:
        store.report(t, result(t.member))
        assert store.claim(exp.id, "w", "cpu") is None  # generation 0 not complete
    store.report(tasks[3], result(3))
    nxt = [store.claim(exp.id, "w", "cpu") for _ in range(4)]
    assert [(t.member, t.interval) for t in nxt] == [(m, 1) for m in range(4)]
    assert nxt[0].start.member == 3


def test_checkpoints_are_deleted_only_when_nothing_references_them(store):
    exp = store.create_experiment(config(), "/tmp")
    first_interval(store, exp)
    live = {c.path for c in store.live_checkpoints(exp.id)}
    assert live == {f"/ckpt/{m}-0" for m in range(4)}
    garbage = []
    for t in [store.claim(exp.id, "w", "cpu") for _ in range(4)]:  # member 0 starts from member 3's
        garbage += store.report(t, result(5.0 + t.member, f"/ckpt/{t.member}-1")).garbage
        live = {c.path for c in store.live_checkpoints(exp.id)}
        if len(garbage) < 4:  # a member failing at interval 1 could still be restarted from interval 0
            assert {f"/ckpt/{m}-0" for m in range(4)} <= live
    # generation 1 complete: interval 0 is referenced by nothing any more
    assert sorted(garbage) == [f"/ckpt/{m}-0" for m in range(4)]
    drain(store, exp)
    final = {c.path for c in store.live_checkpoints(exp.id)}
    assert final == {f"/ckpt/{m}-2" for m in range(4)}  # one per member at the end


def test_checkpoints_kept_alive_stay_bounded_by_the_population_s_spread(store):
    """Donors of the copier's age are kept while a decision may need them: a few per member."""
    exp = store.create_experiment(config(population=6, intervals=8), "/tmp")
    most = 0
    while (task := store.claim(exp.id, "w", "cpu")) is not None:
        store.report(task, result((task.member * 7 + task.interval * 3) % 5, f"/ckpt/{task.member}-{task.interval}"))
        most = max(most, len(store.live_checkpoints(exp.id)))
    assert most <= 3 * 6
    assert len(store.live_checkpoints(exp.id)) == 6


def test_failures_retry_then_replace_then_give_up(store):
    exp = store.create_experiment(config(max_attempts=2), "/tmp")
    first_interval(store, exp)
    failing = store.claim(exp.id, "w", "cpu")
    assert failing.member == 0
    store.fail(failing, "boom 1")
    retry = store.claim(exp.id, "w", "cpu")
    assert (retry.member, retry.interval, retry.attempts) == (0, 1, 1)
    store.fail(retry, "boom 2")  # second failure: member 0 is replaced from a top member
    replaced = store.claim(exp.id, "w", "cpu")
    assert (replaced.member, replaced.interval, replaced.attempts) == (0, 1, 0)
    assert replaced.start.member != 0
    kinds = [e.kind for e in store.events(exp.id)]
    assert kinds.count("failure") == 2 and "replaced" in kinds
    for _ in range(6):  # keep failing: after max_attempts replacements it gives up
        store.fail(replaced, "boom")
        replaced = store.claim(exp.id, "w", "cpu")
        if replaced.member != 0:
            break
    row = [r for r in store.history(exp.id) if (r.member, r.interval) == (0, 1)][0]
    assert row.state == FAILED and row.error == "boom"
    store.release(replaced)
    drain(store, exp)
    assert store.progress(exp.id).finished  # the run does not hang on the failed member


def test_a_failed_attempt_is_retried_only_after_its_delay_by_the_database_clock(store):
    exp = store.create_experiment(config(retry_delay=30.0, population=2, intervals=1), "/tmp")
    failing = store.claim(exp.id, "w", "cpu")
    store.fail(failing, "boom")
    other = store.claim(exp.id, "w", "cpu")
    assert other.member != failing.member  # the other member goes first
    assert store.claim(exp.id, "w", "cpu") is None  # the failed one waits out its delay
    with store.engine.begin() as conn:  # as if the database's clock moved on by 30 s
        conn.execute(update(schema.tasks).where(schema.tasks.c.id == failing.id).values(retry_at=0.0))
    retry = store.claim(exp.id, "w", "cpu")
    assert (retry.member, retry.attempts) == (failing.member, 1)


def test_a_retry_goes_to_another_worker_while_there_is_one(store):
    exp = store.create_experiment(config(population=3, intervals=1), "/tmp")
    held = store.claim(exp.id, "good", "cpu")
    failed = store.claim(exp.id, "sick", "cpu")
    store.fail(failed, "RuntimeError: CUDA error")
    other = store.claim(exp.id, "sick", "cpu")
    assert other.member not in (held.member, failed.member)  # its own failure is left to the others
    store.report(other, result(1.0))
    store.report(held, result(2.0))
    assert store.claim(exp.id, "sick", "cpu") is None  # "good" just reported: it will come for it
    retry = store.claim(exp.id, "good", "cpu")
    assert (retry.member, retry.attempts) == (failed.member, 1)


def test_a_worker_retries_its_own_failure_when_no_other_worker_trained_for_two_leases(store):
    exp = store.create_experiment(config(population=2, intervals=1), "/tmp")
    failed = store.claim(exp.id, "alone", "cpu")
    store.fail(failed, "boom")
    retry = store.claim(exp.id, "alone", "cpu")  # a worker on its own is not kept waiting
    assert (retry.member, retry.attempts) == (failed.member, 1)
    exp = store.create_experiment(config("b", population=2, intervals=1), "/tmp")
    store.report(store.claim(exp.id, "gone", "cpu"), result(1.0))
    failed = store.claim(exp.id, "left", "cpu")
    store.fail(failed, "boom")
    assert store.claim(exp.id, "left", "cpu") is None
    with store.engine.begin() as conn:  # as if the database's clock moved on by two leases
        t = schema.tasks
        conn.execute(update(t).where(t.c.experiment_id == exp.id, t.c.worker == "gone").values(lease_expires=0.0))
    assert store.claim(exp.id, "left", "cpu").member == failed.member


def test_a_released_task_is_claimable_at_once_and_no_attempt_is_counted(store):
    exp = store.create_experiment(config(retry_delay=30.0), "/tmp")
    task = store.claim(exp.id, "w", "cpu")
    assert store.release(task, "worker w stopped by SIGTERM; not an attempt")
    again = store.claim(exp.id, "w2", "cpu")
    assert (again.member, again.interval, again.attempts) == (task.member, 0, 0)
    [ev] = store.events(exp.id, kinds=("released",))
    assert (ev.member, ev.message) == (task.member, "worker w stopped by SIGTERM; not an attempt")
    assert not store.release(task)  # the lease moved on


def test_every_member_failing_its_first_interval_fails_the_experiment_until_reopened(store):
    exp = store.create_experiment(config(max_attempts=3), "/tmp")
    tasks = [store.claim(exp.id, "w", "cpu") for _ in range(4)]
    for t in tasks[:3]:
        store.fail(t, f"bug {t.member}", detail="Traceback ...\nValueError: bug")
    assert store.progress(exp.id).status == "running"  # one member has not failed yet
    store.fail(tasks[3], "bug 3")
    progress = store.progress(exp.id)
    assert progress.status == "failed" and progress.over and not progress.finished
    assert store.claim(exp.id, "w", "cpu") is None  # nothing is handed out any more
    [why] = store.events(exp.id, kinds=("run_failed",))
    assert why.message == "every member failed its first interval; first error: bug 0"
    first = store.events(exp.id, kinds=("failure",))[0]
    assert (first.member, first.detail, first.worker) == (0, "Traceback ...\nValueError: bug", "w")
    store.reopen(exp.id)  # e.g. the user fixed the bug
    assert store.experiment_by_id(exp.id).status == "running"
    again = store.claim(exp.id, "w", "cpu")
    assert (again.interval, again.attempts) == (0, 0)


def test_an_experiment_whose_members_were_all_given_up_failed(store):
    exp = store.create_experiment(config(population=2, intervals=2, max_attempts=1), "/tmp")
    first_interval(store, exp)
    while (task := store.claim(exp.id, "w", "cpu")) is not None:
        store.fail(task, "boom")
    exp = store.experiment_by_id(exp.id)
    assert exp.failed and not exp.finished
    assert store.events(exp.id, kinds=("run_failed",))[0].message == "every member was given up: no final model"
    with pytest.raises(ConfigError, match="after some members had results"):
        store.reopen(exp.id)


def test_absolve_takes_back_only_the_charges_still_standing(store):
    exp = store.create_experiment(config(max_attempts=2), "/tmp")
    a, b = store.claim(exp.id, "w", "cpu"), store.claim(exp.id, "w", "cpu")
    store.fail(a, "sick host")
    store.fail(b, "sick host")
    retried = store.claim(exp.id, "w2", "cpu")
    assert retried.member == a.member  # the member furthest behind first
    back = store.absolve(exp.id, {a.id: (1, 1), b.id: (1, 1)}, "w", "worker w stops taking work: sick")
    assert back == 1  # a is being retried by w2 already: its charge stands
    rows = {r.member: r for r in store.history(exp.id) if r.interval == 0}
    assert rows[a.member].attempts == 1 and rows[b.member].attempts == 0 and rows[b.member].state == PENDING
    [ev] = store.events(exp.id, kinds=("worker_fault",))
    assert (ev.member, ev.worker, ev.message) == (-1, "w", "worker w stops taking work: sick")


@pytest.mark.parametrize("keep", [False, True])
def test_keep_best_keeps_the_checkpoint_of_the_best_score_ever_seen(store, keep):
    """Member 0 scores best at interval 0 and worse later: that checkpoint is no final model,
    so it goes, unless the experiment keeps the best one."""
    exp = store.create_experiment(config(population=2, intervals=4, search="random", keep_best=keep), "/tmp")
    scores = {0: [10.0, 1.0, 1.0, 1.0], 1: [2.0, 2.0, 2.0, 2.0]}
    drain(store, exp, score=lambda t: scores[t.member][t.interval])
    live = {(c.member, c.interval) for c in store.live_checkpoints(exp.id)}
    assert store.progress(exp.id).finished and {(0, 3), (1, 3)} <= live
    assert ((0, 0) in live) is keep
    assert store.progress(exp.id).best_seen == 10.0 and store.progress(exp.id).best_score == 2.0


def test_a_spec_change_is_recorded_with_the_experiment(store):
    exp = store.create_experiment(config(), "/tmp")
    store.set_spec(exp.id, "new.py", "ab" * 32, "launcher")
    assert store.experiment_by_id(exp.id).config.spec_digest == "ab" * 32
    assert store.config(exp.id).spec == "new.py"
    assert store.events(exp.id, kinds=("spec_changed",))[0].worker == "launcher"


# What each schema version added: undoing it turns a database into an older popbt's.
ADDED = {
    2: ["ALTER TABLE popbt_experiments DROP COLUMN version"],
    3: [
        "ALTER TABLE popbt_experiments DROP COLUMN uid",
        "ALTER TABLE popbt_tasks DROP COLUMN retry_at",
        "ALTER TABLE popbt_events DROP COLUMN detail",
    ],
    4: [
        "DROP TABLE popbt_members",
        "DROP INDEX popbt_events_by_experiment",
        "ALTER TABLE popbt_experiments DROP COLUMN gc_floor",
        "ALTER TABLE popbt_experiments DROP COLUMN best_score",
        "ALTER TABLE popbt_experiments DROP COLUMN best_checkpoint_id",
    ],
}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_database_of_an_older_popbt_is_upgraded_in_place(storage, version):
    store = open_store(storage)
    exp = store.create_experiment(config(), "/tmp")
    first_interval(store, exp, order=[3, 2, 1, 0])  # some history to upgrade
    with store.engine.begin() as conn:
        for added in range(schema_version(), version, -1):
            for statement in ADDED[added]:
                conn.exec_driver_sql(statement)
        conn.execute(update(schema.meta).values(value=str(version)))
    store.close()
    store = open_store(storage)
    try:
        upgraded = store.experiment(exp.name)
        assert len(upgraded.uid) == 32  # its checkpoint files get an identity from now on
        assert [(h.member, h.age, h.score, h.done) for h in store.heads(exp.id)] == [
            (m, 0, float(m), 1) for m in range(4)
        ]
        drain(store, upgraded)
        assert store.progress(exp.id).finished
    finally:
        store.close()


def schema_version() -> int:
    from popbt.store import SCHEMA_VERSION

    assert sorted(ADDED) == list(range(2, SCHEMA_VERSION + 1)), "list the columns the new schema version adds"
    return SCHEMA_VERSION


def test_opening_a_database_of_another_schema_version_fails_clearly(storage):
    store = open_store(storage)
    with store.engine.begin() as conn:
        conn.execute(update(schema.meta).values(value="999"))
    store.close()
    with pytest.raises(StoreError, match="schema version 999"):
        open_store(storage)


def test_pending_state_is_what_a_fresh_experiment_starts_with(store):
    exp = store.create_experiment(config(), "/tmp")
    assert {r.state for r in store.history(exp.id)} == {PENDING}
    assert store.progress(exp.id).total == 12


def test_a_report_retried_after_its_commit_went_through_is_not_refused(store):
    """The connection can drop after the server committed: the retry must not read as a lost lease."""
    exp = store.create_experiment(config(), "/tmp")
    task = store.claim(exp.id, "w", "cpu")
    store.report(task, result(1.0, "/ckpt/a"))
    again = store.report(task, result(1.0, "/ckpt/a"))  # what the store's retry does
    assert again.garbage == []
    assert [c.path for c in store.live_checkpoints(exp.id)].count("/ckpt/a") == 1
    with pytest.raises(LeaseLost):
        store.report(task, result(2.0, "/ckpt/b"))  # a different result is still refused


def test_an_expired_lease_counts_as_an_attempt(store, storage):
    """An interval that kills every worker training it must end in a replacement, not loop."""
    exp = store.create_experiment(config(max_attempts=2), "/tmp")
    first = store.claim(exp.id, "w1", "cpu")
    expire_lease(storage, exp.id, first.member, first.interval)
    second = store.claim(exp.id, "w2", "cpu")
    assert (second.member, second.attempts) == (first.member, 1)
    expire_lease(storage, exp.id, second.member, second.interval)
    third = store.claim(exp.id, "w3", "cpu")
    assert third.attempts == 2  # a worker seeing attempts >= max_attempts fails it at once


def keep(hparams, rng):
    """A spec's explore hook: planning then runs outside the report's transaction."""
    return dict(hparams)


def test_decisions_left_by_a_worker_that_died_after_its_report_are_settled_by_anyone(store, monkeypatch):
    """With a spec's explore hook the result is committed before the plan runs: if the
    reporting worker dies in between, the waiting task is decided by the next caller of
    settle (an idle worker)."""
    import popbt.plan

    exp = store.create_experiment(config(), "/tmp")
    tasks = [store.claim(exp.id, "w", "cpu") for _ in range(4)]
    for t in tasks[1:]:
        store.report(t, result(t.member, f"/ckpt/{t.member}-0"))

    def die(*args, **kwargs):
        raise SystemExit("killed between its report and its plan")

    with monkeypatch.context() as m:
        m.setattr(popbt.plan, "plan", die)
        with pytest.raises(SystemExit):
            store.report(tasks[0], result(0.0, "/ckpt/0-0"), explore=keep)
    assert [r.state for r in store.history(exp.id) if r.member == 0] == ["done", "waiting"]
    assert {store.claim(exp.id, "w", "cpu").member for _ in range(2)} == {2, 3}  # kept as they reported
    assert store.claim(exp.id, "w", "cpu") is None  # 0 and 1 wait for a plan nobody made
    outcome = store.settle(exp.id)
    assert not outcome.finished
    healed = {t.member: t for t in (store.claim(exp.id, "w", "cpu"), store.claim(exp.id, "w", "cpu"))}
    assert healed[0].start.path == "/ckpt/3-0" and healed[1].start.path == "/ckpt/1-0"


def test_a_report_that_fails_while_planning_under_the_lock_leaves_nothing_half_done(store, monkeypatch):
    """The built-in rules plan inside the report's transaction: a failure there rolls the
    whole report back, and the interval is still the worker's, under its lease."""
    import popbt.plan

    exp = store.create_experiment(config(), "/tmp")
    tasks = [store.claim(exp.id, "w", "cpu") for _ in range(4)]
    for t in tasks[1:]:
        store.report(t, result(t.member, f"/ckpt/{t.member}-0"))
    with monkeypatch.context() as m:
        m.setattr(popbt.plan, "plan", lambda *a, **k: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            store.report(tasks[0], result(0.0, "/ckpt/0-0"))
    assert [r.state for r in store.history(exp.id) if r.member == 0] == ["running"]
    store.report(tasks[0], result(0.0, "/ckpt/0-0"))  # its lease still holds: reported once, decided
    assert [r.state for r in store.history(exp.id) if r.member == 0] == ["done", "pending"]
    assert [(x.member, x.donor) for x in store.exploits(exp.id)] == [(0, 3)]


def test_with_the_built_in_rules_a_report_decides_its_member_in_its_own_transaction(store, monkeypatch):
    """No second transaction, so no plan refused because another report moved the population."""
    exp = store.create_experiment(config(), "/tmp")
    tasks = [store.claim(exp.id, "w", "cpu") for _ in range(4)]
    with monkeypatch.context() as m:
        m.setattr(store, "_settle", lambda *a, **k: pytest.fail("planned in a transaction of its own"))
        outcomes = [store.report(t, result(t.member, f"/ckpt/{t.member}-0")) for t in tasks]
    assert not [r for r in store.history(exp.id) if r.state == "waiting"]
    assert [(x.member, x.donor) for x in store.exploits(exp.id)] == [(0, 3)]
    assert outcomes[-1].next_is_mine  # member 3, the best, goes on from its own checkpoint


def test_a_plan_made_from_a_snapshot_that_moved_on_is_refused_and_nothing_is_written(store, monkeypatch):
    import popbt.plan
    from popbt.store import population

    exp = store.create_experiment(config(), "/tmp")
    tasks = [store.claim(exp.id, "w", "cpu") for _ in range(4)]
    with monkeypatch.context() as m:  # the reports record their results, nobody decides yet
        m.setattr(popbt.plan, "plan", lambda *a, **k: popbt.plan.Plan(0))
        for t in tasks[:3]:
            store.report(t, result(t.member, f"/ckpt/{t.member}-0"))
    with store.engine.begin() as conn:
        stale = popbt.plan.plan(population.read_snapshot(conn, store.config(exp.id), exp.id))
    assert {d.member for d in stale.decisions} == {1, 2}  # kept: members scored below them
    store.report(tasks[3], result(3.0, "/ckpt/3-0"))  # the population moves on and decides everyone
    with store.engine.begin() as conn:
        assert population.apply(conn, exp.id, stale) is None
    assert len([r for r in store.history(exp.id) if r.interval == 1]) == 4
    assert [(x.member, x.donor) for x in store.exploits(exp.id)] == [(0, 3)]  # decided once


def test_the_checkpoints_kept_are_the_starts_the_heads_and_the_interval_a_copy_may_still_need():
    """Pure: which checkpoints nothing needs, from the small set not yet deleted."""
    from collections import namedtuple

    from popbt.store.population import dead_checkpoints

    K = namedtuple("K", "id member interval")
    H = namedtuple("H", "member age checkpoint_id given_up_at")
    kept = [K(10 * m + k, m, k) for m in range(3) for k in range(4) if not (m == 2 and k == 3)]
    heads = [H(0, 3, 3, None), H(1, 3, 13, None), H(2, 2, 22, None)]
    # members 0 and 1 reported interval 3, member 2 only 2: interval 3 is the oldest incomplete,
    # so results of interval 2 may still be copied (a replacement of member 2's interval 3)
    dead = {k.id for k in dead_checkpoints(kept, starts={1}, heads=heads)}
    assert dead == {0, 10, 20, 11, 21}  # intervals 0 and 1, except member 0's interval 1 (a start)
    # member 2 given up: the oldest incomplete interval is 4, interval 3 may still be copied
    heads[2] = H(2, 2, 22, 3)
    dead = {k.id for k in dead_checkpoints(kept, starts=set(), heads=heads)}
    assert dead == {0, 1, 2, 10, 11, 12, 20, 21}  # member 2's interval 2 is its final model
    # someone has reported nothing yet: nothing can be dropped but starts of nothing
    heads = [*heads[:2], H(2, 2, 22, None), H(3, -1, None, None)]
    assert dead_checkpoints(kept, starts=set(), heads=heads) == []


def test_a_non_finite_score_is_recorded_as_the_worst_and_the_run_goes_on(store):
    """NaN and infinities are stored as NULL: on PostgreSQL a NULL parameter whose type the
    server cannot infer (``$n IS NULL``) used to fail the report and kill the worker."""
    exp = store.create_experiment(config(), "/tmp")
    scores = {(0, 0): float("nan"), (1, 1): float("-inf"), (2, 2): float("inf")}
    drain(store, exp, score=lambda t: scores.get((t.member, t.interval), t.member))
    rows = {(r.member, r.interval): r for r in store.history(exp.id)}
    assert all(r.state == DONE for r in rows.values()) and len(rows) == 12
    assert [rows[key].score for key in scores] == [None, None, None]
    assert store.experiment(exp.name).status == "finished"


def test_a_store_frozen_past_its_patience_still_retries_before_giving_up(tmp_path):
    """A worker frozen (SIGSTOP, a stalled VM) wakes with its patience spent and its connection
    dead from a server restart meanwhile: it tries again before it gives up."""
    from sqlalchemy.exc import OperationalError

    store = open_store(f"sqlite:///{tmp_path / 'popbt.db'}")
    store.patience = 0.0  # the deadline has passed already, as after a long freeze
    calls = []

    def flaky(conn):
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return "done"

    try:
        assert store._run(flaky) == "done"  # before: StoreError at the first failure
        calls.clear()

        def down(conn):
            calls.append(1)
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))

        with pytest.raises(StoreError, match="server closed the connection"):
            store._run(down)
        assert len(calls) == 3  # a few tries, then one clear error
    finally:
        store.close()
