"""The SQL edges of a decision: read a population snapshot, apply a plan, collect garbage.

``popbt.plan`` decides, purely; this module only reads what it needs and writes what it
decided. ``apply`` is a compare-and-set on the experiment's ``version``: a plan made from a
snapshot that is no longer current is refused (the caller reads a new one and plans again).
Nothing here commits: SQLStore runs these inside its transactions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import Connection

from .. import pb2
from ..config import ExperimentConfig
from ..plan import Plan, Result, Snapshot, Waiting
from ..strategy import Trained
from . import schema as s
from .base import ACTIVE, DONE, FAILED, IN_DATABASE, PENDING, RUNNING, WAITING, CheckpointState, ExperimentStatus


def bump(conn: Connection, exp_id: int) -> None:
    """Mark the population as changed. On PostgreSQL this also takes the experiment's row lock
    until the commit, so changes of one experiment are serialised (READ COMMITTED would
    otherwise let two reports each miss the other's result)."""
    conn.execute(update(s.experiments).where(s.experiments.c.id == exp_id).values(version=s.experiments.c.version + 1))


def read_snapshot(conn: Connection, cfg: ExperimentConfig, exp_id: int) -> Snapshot:
    """What a plan may read. The version is read first: whatever changes after it also moves
    the version, so a plan made from a mixed read is refused when applied."""
    t = s.tasks
    version = conn.execute(select(s.experiments.c.version).where(s.experiments.c.id == exp_id)).scalar_one()
    waiting = [
        Waiting(r.id, r.member, r.interval, dict(r.hparams), r.start_checkpoint_id, r.attempts, r.replacements)
        for r in conn.execute(
            select(
                t.c.id, t.c.member, t.c.interval, t.c.hparams, t.c.start_checkpoint_id, t.c.attempts, t.c.replacements
            )
            .where(t.c.experiment_id == exp_id, t.c.state == WAITING)
            .order_by(t.c.interval, t.c.member)
        )
    ]
    if not waiting:
        return Snapshot(version, cfg, (), {})
    ages = sorted({w.interval - 1 for w in waiting if w.interval > 0})
    given_up = dict(
        conn.execute(
            select(t.c.member, func.min(t.c.interval))
            .where(t.c.experiment_id == exp_id, t.c.state == FAILED)
            .group_by(t.c.member)
        ).all()
    )
    return Snapshot(
        version,
        cfg,
        waiting,
        _results(conn, exp_id, ages),
        given_up,
        _trained(conn, cfg, exp_id, ages),
        _busy(conn, cfg, exp_id),
    )


def _results(conn: Connection, exp_id: int, ages: list[int]) -> dict[tuple[int, int], Result]:
    """Every result of the intervals the waiting tasks compare."""
    if not ages:
        return {}
    t, c = s.tasks, s.checkpoints
    rows = conn.execute(
        select(t.c.member, t.c.interval, t.c.score, t.c.hparams, t.c.result_checkpoint_id, c.c.state)
        .join(c, c.c.id == t.c.result_checkpoint_id)
        .where(t.c.experiment_id == exp_id, t.c.state == DONE, t.c.interval.in_(ages))
    )
    return {
        (r.member, r.interval): Result(
            r.member, r.interval, r.score, dict(r.hparams), r.result_checkpoint_id, r.state != CheckpointState.CORRUPT
        )
        for r in rows
    }


def _trained(conn: Connection, cfg: ExperimentConfig, exp_id: int, ages: list[int]) -> list[Trained]:
    """Recent completed intervals with their lineage, for the rules that need them: the t-test
    (the last ``ttest_window`` scores of each model) and PB2 (its window of recent data).
    Ages are exact, so a lineage of n scores spans exactly n intervals."""
    if not ages:
        return []
    lows = []
    if cfg.exploits and cfg.exploit == "ttest":
        lows.append(ages[0] - cfg.ttest_window)
    if cfg.explore == "pb2":
        lows.append(ages[-1] - math.ceil(pb2.WINDOW / cfg.population) - 1)
    if not lows:
        return []
    t = s.tasks
    rows = conn.execute(
        select(t.c.member, t.c.interval, t.c.score, t.c.hparams, t.c.start_checkpoint_id, t.c.result_checkpoint_id)
        .where(t.c.experiment_id == exp_id, t.c.state == DONE, t.c.interval >= min(lows))
        .order_by(t.c.interval, t.c.member)
    )
    return [
        Trained(r.member, r.interval, r.score, dict(r.hparams), r.start_checkpoint_id, r.result_checkpoint_id)
        for r in rows
    ]


def _busy(conn: Connection, cfg: ExperimentConfig, exp_id: int) -> list[pb2.Busy]:
    """PB2: the configurations being trained now, with the score of the checkpoint each
    started from (its context)."""
    if cfg.explore != "pb2":
        return []
    t, c = s.tasks, s.checkpoints
    parent = t.alias("parent")
    rows = conn.execute(
        select(t.c.hparams, parent.c.score)
        .select_from(
            t.outerjoin(c, c.c.id == t.c.start_checkpoint_id).outerjoin(
                parent,
                and_(
                    parent.c.experiment_id == t.c.experiment_id,
                    parent.c.member == c.c.member,
                    parent.c.interval == c.c.interval,
                ),
            )
        )
        .where(t.c.experiment_id == exp_id, t.c.state.in_((PENDING, RUNNING)))
        .order_by(t.c.interval, t.c.member)
    )
    sign = 1.0 if cfg.mode == "max" else -1.0
    return [pb2.Busy(dict(r.hparams), None if r.score is None else sign * r.score) for r in rows]


class Conflict(Exception):
    """A task the plan decides is no longer waiting: the plan is stale."""


def apply(conn: Connection, exp_id: int, plan: Plan, now: float) -> bool:
    """Write ``plan`` if the population is still at ``plan.version``; False (nothing written)
    if it moved on. Raises Conflict if a decided task changed anyway (the caller rolls back)."""
    e, t = s.experiments, s.tasks
    moved = (
        conn.execute(
            update(e).where(e.c.id == exp_id, e.c.version == plan.version).values(version=e.c.version + 1)
        ).rowcount
        != 1
    )
    if moved:
        return False
    for d in plan.decisions:
        values = (
            dict(state=FAILED)
            if d.give_up
            else dict(
                state=PENDING,
                hparams=dict(d.hparams),
                start_checkpoint_id=d.start,
                replacements=d.replacements,
                attempts=0,
                retry_at=None,  # a replacement starts afresh: no backoff left from the failures
            )
        )
        if conn.execute(update(t).where(t.c.id == d.task, t.c.state == WAITING).values(**values)).rowcount != 1:
            raise Conflict(f"task {d.task} is no longer waiting")
        if d.copy is not None:
            x = d.copy
            conn.execute(
                insert(s.exploits).values(
                    experiment_id=exp_id,
                    member=d.member,
                    interval=d.interval,
                    donor=x.donor,
                    donor_interval=x.donor_interval,
                    score=x.score,
                    donor_score=x.donor_score,
                    hparams_before=dict(x.hparams_before),
                    hparams_after=dict(x.hparams_after),
                    changes=dict(x.changes),
                    reason=x.reason,
                    created_at=now,
                )
            )
    for note in plan.notes:
        record_event(conn, exp_id, note.member, note.interval, note.kind, note.message, None, now)
    return True


def collect_garbage(conn: Connection, cfg: ExperimentConfig, exp_id: int) -> list[str]:
    """Mark checkpoints no longer live as deleted; return their paths for the caller to unlink.

    Reads only what can still be live (the checkpoints not deleted yet, the unfinished tasks'
    starts, the members given up), never the whole history, so its cost does not grow with
    the run.
    """
    t, c = s.tasks, s.checkpoints
    kept = conn.execute(
        select(c.c.id, c.c.member, c.c.interval, c.c.path).where(
            c.c.experiment_id == exp_id, c.c.state.in_((CheckpointState.LIVE, CheckpointState.CORRUPT))
        )
    ).all()
    active = select(t.c.start_checkpoint_id).where(t.c.experiment_id == exp_id, t.c.state.in_(ACTIVE))
    starts = {r.start_checkpoint_id for r in conn.execute(active)}
    failed = select(t.c.member).where(t.c.experiment_id == exp_id, t.c.state == FAILED)
    stopped = {r.member for r in conn.execute(failed)}
    dead = dead_checkpoints(kept, starts, stopped, cfg.population)
    if dead:
        ids = [k.id for k in dead]
        conn.execute(update(c).where(c.c.id.in_(ids)).values(state=CheckpointState.DELETED, data=None))
    return [k.path for k in dead if not k.path.startswith(IN_DATABASE + ":")]


def dead_checkpoints(kept: Sequence[Any], starts: set[int | None], stopped: set[int], population: int) -> list[Any]:
    """Which checkpoints not yet deleted (rows with id, member, interval) nothing needs any more.

    Live: the start of a task not yet done; each member's latest result (the final models, and
    what a member keeps training); and every result a decision may still copy, i.e. from the
    interval before the oldest one some member (given-up ones excepted) has not reported yet,
    on: a donor must be of the copier's age. That window spans the population's spread in age,
    a few intervals, so disk use stays at a few checkpoints per member. A member's latest
    result is its newest checkpoint: one is written per reported interval, and kept until then.
    """
    latest: dict[int, Any] = {}
    for k in kept:
        if k.member not in latest or k.interval > latest[k.member].interval:
            latest[k.member] = k
    reached = [k.interval for m, k in latest.items() if m not in stopped]
    everyone = len(reached) == population - len(stopped)
    oldest_incomplete = min(reached) + 1 if everyone and reached else 0
    heads = {k.id for k in latest.values()}
    return [k for k in kept if k.interval < oldest_incomplete - 1 and k.id not in starts and k.id not in heads]


def maybe_finish(conn: Connection, cfg: ExperimentConfig, exp_id: int) -> bool:
    """Mark the experiment over once no task is left to train: finished, or failed when no
    member reached the last interval (every one was given up)."""
    t = s.tasks
    active = conn.execute(select(t.c.id).where(t.c.experiment_id == exp_id, t.c.state.in_(ACTIVE)).limit(1)).first()
    if active is not None:
        return False
    final = conn.execute(
        select(t.c.id).where(t.c.experiment_id == exp_id, t.c.interval == cfg.intervals - 1, t.c.state == DONE).limit(1)
    ).first()
    if final is None:
        fail_experiment(conn, exp_id, "every member was given up: no final model", _db_now(conn))
        return True
    conn.execute(update(s.experiments).where(s.experiments.c.id == exp_id).values(status=ExperimentStatus.FINISHED))
    return True


def hopeless(conn: Connection, cfg: ExperimentConfig, exp_id: int) -> bool:
    """Nothing ever succeeded and every member has failed its first interval at least once:
    the code, not one member, is broken. Unless one worker failed them all while another is
    at work too: then that worker may be the broken thing (it blames itself soon enough).
    Reads interval 0 only (and one row for any result)."""
    t, e = s.tasks, s.events
    any_done = conn.execute(select(t.c.id).where(t.c.experiment_id == exp_id, t.c.state == DONE).limit(1)).first()
    if any_done is not None:
        return False
    failed_first = conn.execute(
        select(func.count()).where(t.c.experiment_id == exp_id, t.c.interval == 0, t.c.attempts > 0)
    ).scalar_one()
    if failed_first < cfg.population:
        return False
    failing = {
        w
        for (w,) in conn.execute(
            select(e.c.worker).where(e.c.experiment_id == exp_id, e.c.kind == "failure", e.c.interval == 0).distinct()
        )
    }
    claimers = {w for (w,) in conn.execute(select(t.c.worker).where(t.c.experiment_id == exp_id).distinct()) if w}
    return len(failing) > 1 or claimers <= failing


def first_failure(conn: Connection, exp_id: int) -> str | None:
    """The message of the experiment's first failure, without its attempt count."""
    e = s.events
    message = conn.execute(
        select(e.c.message).where(e.c.experiment_id == exp_id, e.c.kind == "failure").order_by(e.c.id).limit(1)
    ).scalar()
    return message.split(": ", 1)[1] if message and message.startswith("attempt ") else message


def fail_experiment(conn: Connection, exp_id: int, why: str, now: float) -> None:
    """Mark the experiment failed (nothing is claimed from it any more), saying why."""
    conn.execute(
        update(s.experiments)
        .where(s.experiments.c.id == exp_id)
        .values(status=ExperimentStatus.FAILED, version=s.experiments.c.version + 1)
    )
    record_event(conn, exp_id, -1, -1, "run_failed", why, None, now)


def _db_now(conn: Connection) -> float:
    return conn.execute(select(s.db_now())).scalar_one()


def add_task(
    conn: Connection,
    exp_id: int,
    member: int,
    interval: int,
    hparams: dict,
    start_checkpoint_id: int | None,
    state: str = PENDING,
) -> None:
    conn.execute(
        insert(s.tasks).values(
            experiment_id=exp_id,
            member=member,
            interval=interval,
            state=state,
            hparams=hparams,
            start_checkpoint_id=start_checkpoint_id,
            attempts=0,
            replacements=0,
        )
    )


def record_event(
    conn: Connection,
    exp_id: int,
    member: int,
    interval: int,
    kind: str,
    message: str,
    worker: str | None,
    now: float,
    detail: str | None = None,
) -> None:
    """One line of what happened (member and interval -1: the experiment as a whole)."""
    conn.execute(
        insert(s.events).values(
            experiment_id=exp_id,
            member=member,
            interval=interval,
            kind=kind,
            message=message,
            detail=detail,
            worker=worker,
            created_at=now,
        )
    )


def donor_of(plan: Plan, decided: Iterable[tuple[int, int]]) -> int | None:
    """The donor a plan chose for one of the given (member, interval) tasks, if it copies."""
    wanted = set(decided)
    return next((d.copy.donor for d in plan.decisions if (d.member, d.interval) in wanted and d.copy), None)
