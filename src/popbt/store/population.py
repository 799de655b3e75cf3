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

from sqlalchemy import and_, func, select, update
from sqlalchemy.engine import Connection

from .. import pb2
from ..config import ExperimentConfig
from ..plan import Plan, Result, Snapshot, Waiting
from ..strategy import Trained
from . import queries as q
from . import schema as s
from .base import DONE, IN_DATABASE, PENDING, RUNNING, CheckpointState, ExperimentStatus


def bump(conn: Connection, exp_id: int) -> tuple[int, int]:
    """Mark the population as changed; its new version and the garbage floor. On PostgreSQL
    this also takes the experiment's row lock until the commit, so changes of one experiment
    are serialised (READ COMMITTED would otherwise let two reports each miss the other's)."""
    row = conn.execute(q.BUMP, {"exp": exp_id}).one()
    return row.version, row.gc_floor


def read_snapshot(conn: Connection, cfg: ExperimentConfig, exp_id: int, version: int | None = None) -> Snapshot:
    """What a plan may read. The version is read first (or given: the one this transaction
    just set): whatever changes after it also moves the version, so a plan made from a mixed
    read is refused when applied."""
    if version is None:
        version = conn.execute(q.VERSION, {"exp": exp_id}).scalar_one()
    waiting = [
        Waiting(r.id, r.member, r.interval, dict(r.hparams), r.start_checkpoint_id, r.attempts, r.replacements)
        for r in conn.execute(q.WAITING_TASKS, {"exp": exp_id})
    ]
    if not waiting:
        return Snapshot(version, cfg, (), {})
    ages = sorted({w.interval - 1 for w in waiting if w.interval > 0})
    given_up = dict(conn.execute(q.GIVEN_UP, {"exp": exp_id}).all())
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
    rows = conn.execute(q.RESULTS_AT, {"exp": exp_id, "ages": ages})
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


def apply(conn: Connection, exp_id: int, plan: Plan) -> int | None:
    """Write ``plan`` if the population is still at ``plan.version``, and return the garbage
    floor; None (nothing written) if it moved on. Raises Conflict if a decided task changed
    anyway (the caller rolls back)."""
    moved = conn.execute(q.MOVE_VERSION, {"exp": exp_id, "seen": plan.version}).first()
    if moved is None:
        return None
    for d in plan.decisions:
        if d.give_up:
            res = conn.execute(q.GIVE_UP, {"task": d.task})
            conn.execute(q.HEAD_GIVEN_UP, {"exp": exp_id, "who_member": d.member, "at": d.interval})
        else:
            values = {"task": d.task, "hp": dict(d.hparams), "ckpt": d.start, "n_replaced": d.replacements}
            res = conn.execute(q.DECIDE, values)
        if res.rowcount != 1:
            raise Conflict(f"task {d.task} is no longer waiting")
        if d.copy is not None:
            cp = d.copy
            conn.execute(
                q.RECORD_EXPLOIT,
                {
                    "exp": exp_id,
                    "who_member": d.member,
                    "at": d.interval,
                    "from_member": cp.donor,
                    "from_interval": cp.donor_interval,
                    "own": cp.score,
                    "theirs": cp.donor_score,
                    "before": dict(cp.hparams_before),
                    "after": dict(cp.hparams_after),
                    "rules": dict(cp.changes),
                    "why": cp.reason,
                },
            )
    for note in plan.notes:
        record_event(conn, exp_id, note.member, note.interval, note.kind, note.message, None, note.detail)
    return moved.gc_floor


def collect_garbage(conn: Connection, cfg: ExperimentConfig, exp_id: int, floor: int | None = None) -> list[str]:
    """Mark checkpoints no longer live as deleted; return their paths for the caller to unlink.

    Checkpoints only die when the floor (the youngest age every member still training has
    reached) moves, or a member is given up: ``floor`` is the one last collected at, and
    nothing is read when it has not moved. Otherwise it reads only what can still be live (the
    checkpoints not deleted yet, the unfinished tasks' starts, the members' heads), never the
    whole history, so its cost does not grow with the run.
    """
    now_floor = conn.execute(q.FLOOR, {"exp": exp_id}).scalar()
    now_floor = -1 if now_floor is None else now_floor
    if floor is not None and now_floor <= floor:
        return []
    kept = conn.execute(q.KEPT, {"exp": exp_id}).all()
    starts = {r.start_checkpoint_id for r in conn.execute(q.ACTIVE_STARTS, {"exp": exp_id})}
    heads = conn.execute(q.HEADS, {"exp": exp_id}).all()
    if cfg.keep_best:  # the best score ever's checkpoint stays, as a start does
        starts.add(conn.execute(q.KEPT_BEST, {"exp": exp_id}).scalar())
    dead = dead_checkpoints(kept, starts, heads)
    if dead:
        conn.execute(q.MARK_DELETED, {"ids": [k.id for k in dead]})
    conn.execute(q.SET_FLOOR, {"exp": exp_id, "floor": now_floor})
    return [k.path for k in dead if not k.path.startswith(IN_DATABASE + ":")]


def dead_checkpoints(kept: Sequence[Any], starts: set[int | None], heads: Sequence[Any]) -> list[Any]:
    """Which checkpoints not yet deleted (rows with id, member, interval) nothing needs any more.

    Live: the start of a task not yet done; each member's head (its latest result: the final
    models, and what a member keeps training); and every result a decision may still copy,
    i.e. from the interval before the oldest one some member (given-up ones excepted) has not
    reported yet, on: a donor must be of the copier's age. That window spans the population's
    spread in age, a few intervals, so disk use stays at a few checkpoints per member.
    """
    training = [h.age for h in heads if h.given_up_at is None]
    oldest_incomplete = min(training) + 1 if training else 0
    latest = {h.checkpoint_id for h in heads if h.checkpoint_id is not None}
    return [k for k in kept if k.interval < oldest_incomplete - 1 and k.id not in starts and k.id not in latest]


def maybe_finish(conn: Connection, cfg: ExperimentConfig, exp_id: int) -> bool:
    """Mark the experiment over once no task is left to train: finished, or failed when no
    member reached the last interval (every one was given up)."""
    if conn.execute(q.ANY_ACTIVE, {"exp": exp_id}).first() is not None:
        return False
    if conn.execute(q.ANY_FINAL, {"exp": exp_id, "at": cfg.intervals - 1}).first() is None:
        fail_experiment(conn, exp_id, "every member was given up: no final model")
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


def fail_experiment(conn: Connection, exp_id: int, why: str) -> None:
    """Mark the experiment failed (nothing is claimed from it any more), saying why."""
    conn.execute(
        update(s.experiments)
        .where(s.experiments.c.id == exp_id)
        .values(status=ExperimentStatus.FAILED, version=s.experiments.c.version + 1)
    )
    record_event(conn, exp_id, -1, -1, "run_failed", why, None)


def add_task(
    conn: Connection,
    exp_id: int,
    member: int,
    interval: int,
    hparams: dict,
    start_checkpoint_id: int | None,
    state: str = PENDING,
) -> None:
    values = {"exp": exp_id, "who_member": member, "at": interval, "initial": state, "hp": hparams}
    conn.execute(q.ADD_TASK, {**values, "ckpt": start_checkpoint_id})


def record_event(
    conn: Connection,
    exp_id: int,
    member: int,
    interval: int,
    kind: str,
    message: str,
    worker: str | None,
    detail: str | None = None,
) -> None:
    """One line of what happened (member and interval -1: the experiment as a whole)."""
    values = {"exp": exp_id, "who_member": member, "at": interval, "what": kind, "text": message}
    conn.execute(q.RECORD_EVENT, {**values, "trace": detail, "who": worker})


def kept(plan: Plan, decided: Iterable[tuple[int, int]]) -> bool:
    """Whether a plan let one of the given (member, interval) tasks go on from its own
    checkpoint (no copy, no give-up)."""
    wanted = set(decided)
    return any((d.member, d.interval) in wanted and d.copy is None and not d.give_up for d in plan.decisions)


def donor_of(plan: Plan, decided: Iterable[tuple[int, int]]) -> int | None:
    """The donor a plan chose for one of the given (member, interval) tasks, if it copies."""
    wanted = set(decided)
    return next((d.copy.donor for d in plan.decisions if (d.member, d.interval) in wanted and d.copy), None)
