"""Every statement on the hot path, built once: claims, leases, reports, heads, decisions.

Building a SQLAlchemy statement costs about a millisecond of Python; executing a prebuilt
one with bound parameters costs a few tens of microseconds. So the statements a worker runs
every interval live here, named, with ``:name`` parameters, and the store only binds values.
They read as SQL, in one place (the way procrastinate keeps its queries), and run the same
on sqlite and PostgreSQL. Times come from the database's clock (``NOW``), inline: no round
trip to ask for it. Parameter names never repeat a column name (SQLAlchemy reserves those in
an UPDATE's SET clause).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    and_,
    bindparam,
    case,
    cast,
    func,
    insert,
    or_,
    select,
    update,
)

from . import schema as s
from .base import DONE, PENDING, RUNNING, WAITING, CheckpointState, ExperimentStatus

e, t, c, m, x, ev = s.experiments, s.tasks, s.checkpoints, s.members, s.exploits, s.events
NOW = s.db_now()
EXP = bindparam("exp", type_=Integer)

# -- the clock ---------------------------------------------------------------------------

CLOCK = select(NOW)

# -- claims ------------------------------------------------------------------------------

WHO = bindparam("who", type_=Text)
LEASE = bindparam("lease", type_=Float)
# the youngest age of the members still in the run: every running task and every member's
# latest result is at that interval or later
_SLOWEST = select(func.min(m.c.age)).where(m.c.experiment_id == EXP, m.c.given_up_at.is_(None)).scalar_subquery()
_peer = t.alias("peer")
# another worker trained here lately: it holds a lease, or the lease of a result it reported
# ran out less than two leases ago (one frozen or locked out for a while still counts)
_OTHERS_AROUND = (
    select(_peer.c.id)
    .where(
        _peer.c.experiment_id == EXP,
        _peer.c.state.in_((RUNNING, DONE)),
        _peer.c.interval >= _SLOWEST,
        _peer.c.worker != WHO,
        _peer.c.lease_expires > NOW - 2 * LEASE,
    )
    .exists()
)
# A failed task is retried by another worker while there is one: a worker whose own device is
# broken never spends one member's attempts by itself, and a member failing everywhere is met
# by more than one worker (popbt/blame.py). Alone, a worker retries its own failures.
_RETRY_HERE = or_(t.c.worker != WHO, ~_OTHERS_AROUND)
# pending and past its retry delay, or running with a lease that expired (its worker died)
CLAIMABLE = or_(
    and_(t.c.state == PENDING, or_(t.c.retry_at.is_(None), and_(t.c.retry_at <= NOW, _RETRY_HERE))),
    and_(t.c.state == RUNNING, t.c.lease_expires < NOW),
)
_EXPERIMENT_RUNNING = select(e.c.id).where(e.c.id == EXP, e.c.status == ExperimentStatus.RUNNING).exists()
_CANDIDATE = (
    select(
        t.c.id,
        t.c.state,
        t.c.worker,
        t.c.member,
        t.c.interval,
        c.c.id.label("start_id"),
        c.c.member.label("start_member"),
        c.c.interval.label("start_interval"),
        c.c.path.label("start_path"),
        c.c.sha256.label("start_sha256"),
        c.c.size.label("start_size"),
    )
    .select_from(t.outerjoin(c, c.c.id == t.c.start_checkpoint_id))
    .where(t.c.experiment_id == EXP, t.c.state.in_((PENDING, RUNNING)), CLAIMABLE, _EXPERIMENT_RUNNING)
)
# the member furthest behind first (FOR UPDATE SKIP LOCKED on PostgreSQL; sqlite's BEGIN
# IMMEDIATE already serialises claims)
CLAIM_NEXT = _CANDIDATE.order_by(t.c.interval, t.c.member).limit(1).with_for_update(skip_locked=True, of=t)
# affinity: the task the worker just made claimable (the same member's next interval), unless
# that member would run more than two intervals ahead of the slowest member still training
CLAIM_PREFERRED = (
    _CANDIDATE.where(
        t.c.member == bindparam("pref_member", type_=Integer),
        t.c.interval == bindparam("pref_interval", type_=Integer),
        t.c.interval <= _SLOWEST + 3,
    )
    .limit(1)
    .with_for_update(skip_locked=True, of=t)
)
TAKE = (
    update(t)
    .where(t.c.id == bindparam("task", type_=Integer), CLAIMABLE)
    .values(
        state=RUNNING,
        lease_token=bindparam("token", type_=String),
        lease_expires=NOW + LEASE,
        worker=WHO,
        device=bindparam("on", type_=Text),
        started_at=NOW,
        # a lease that expired is an attempt that died: count it, so an interval that kills
        # every worker is replaced, not retried forever
        attempts=t.c.attempts + bindparam("died", type_=Integer),
    )
    .returning(t.c.hparams, t.c.attempts, t.c.replacements)
)

# -- leases (every one fenced on the id, the running state and the lease token) ----------

FENCE = and_(
    t.c.id == bindparam("task", type_=Integer),
    t.c.state == RUNNING,
    t.c.lease_token == bindparam("token", type_=String),
)
HEARTBEAT = update(t).where(FENCE).values(lease_expires=NOW + bindparam("lease", type_=Float))
RELEASE = update(t).where(FENCE).values(state=PENDING, lease_token=None, lease_expires=None)
FAIL = (
    update(t)
    .where(FENCE)
    .values(
        state=PENDING,
        lease_token=None,
        lease_expires=None,
        error=bindparam("message", type_=Text),
        attempts=t.c.attempts + 1,
        finished_at=NOW,
        retry_at=NOW + bindparam("delay", type_=Float),
    )
    .returning(t.c.attempts)
)
WAIT_FOR_REPLACEMENT = update(t).where(t.c.id == bindparam("task", type_=Integer)).values(state=WAITING)

# -- reports ------------------------------------------------------------------------------

# the population's version moves, and on PostgreSQL the experiment's row is locked until the
# commit: changes of one experiment are serialised
BUMP = update(e).where(e.c.id == EXP).values(version=e.c.version + 1).returning(e.c.version, e.c.gc_floor)
ADD_CHECKPOINT = (
    insert(c)
    .values(
        experiment_id=EXP,
        member=bindparam("who_member", type_=Integer),
        interval=bindparam("at", type_=Integer),
        path=bindparam("file", type_=Text),
        sha256=bindparam("digest", type_=String),
        size=bindparam("bytes", type_=Integer),
        state=CheckpointState.LIVE,
        data=bindparam("blob", type_=LargeBinary),
        created_at=NOW,
    )
    .returning(c.c.id)
)
FINISH = (
    update(t)
    .where(FENCE)
    .values(
        state=DONE,
        score=bindparam("result", type_=Float),
        metrics=bindparam("extra", type_=JSON),
        result_checkpoint_id=bindparam("ckpt", type_=Integer),
        finished_at=NOW,
        error=bindparam("note", type_=Text),
    )
)
ALREADY_REPORTED = (
    select(t.c.id)
    .join(c, c.c.id == t.c.result_checkpoint_id)
    .where(
        t.c.id == bindparam("task", type_=Integer),
        t.c.state == DONE,
        t.c.lease_token == bindparam("token", type_=String),
        c.c.path == bindparam("file", type_=Text),
    )
)
ADD_TASK = insert(t).values(
    experiment_id=EXP,
    member=bindparam("who_member", type_=Integer),
    interval=bindparam("at", type_=Integer),
    state=bindparam("initial", type_=String),
    hparams=bindparam("hp", type_=JSON),
    start_checkpoint_id=bindparam("ckpt", type_=Integer),
    attempts=0,
    replacements=0,
)


def _better(mode: str):
    """``best_seen`` kept as the better of itself and the new score (NULL scores never win)."""
    new = bindparam("result", type_=Float)
    wins = new > m.c.best_seen if mode == "max" else new < m.c.best_seen
    # cast: alone in ``$n IS NULL``, PostgreSQL cannot tell a NULL parameter's type
    unknown = cast(new, Float).is_(None)
    return case((unknown, m.c.best_seen), (m.c.best_seen.is_(None), new), (wins, new), else_=m.c.best_seen)


def _advance(mode: str):
    return (
        update(m)
        .where(m.c.experiment_id == EXP, m.c.member == bindparam("who_member", type_=Integer))
        .values(
            age=bindparam("at", type_=Integer),
            score=bindparam("result", type_=Float),
            checkpoint_id=bindparam("ckpt", type_=Integer),
            done=m.c.done + 1,
            best_seen=_better(mode),
        )
    )


ADVANCE_HEAD = {"max": _advance("max"), "min": _advance("min")}


def _record_best(mode: str):
    new = bindparam("result", type_=Float)
    beats = new > e.c.best_score if mode == "max" else new < e.c.best_score
    return (
        update(e)
        .where(e.c.id == EXP, or_(e.c.best_score.is_(None), beats))
        .values(best_score=new, best_checkpoint_id=bindparam("ckpt", type_=Integer))
    )


RECORD_BEST = {"max": _record_best("max"), "min": _record_best("min")}  # --keep-best
KEPT_BEST = select(e.c.best_checkpoint_id).where(e.c.id == EXP)
FLOOR = select(func.min(m.c.age)).where(m.c.experiment_id == EXP, m.c.given_up_at.is_(None))
SET_FLOOR = update(e).where(e.c.id == EXP).values(gc_floor=bindparam("floor", type_=Integer))

# -- decisions ----------------------------------------------------------------------------

VERSION = select(e.c.version).where(e.c.id == EXP)
WAITING_TASKS = (
    select(t.c.id, t.c.member, t.c.interval, t.c.hparams, t.c.start_checkpoint_id, t.c.attempts, t.c.replacements)
    .where(t.c.experiment_id == EXP, t.c.state == WAITING)
    .order_by(t.c.interval, t.c.member)
)
RESULTS_AT = (
    select(t.c.member, t.c.interval, t.c.score, t.c.hparams, t.c.result_checkpoint_id, c.c.state)
    .join(c, c.c.id == t.c.result_checkpoint_id)
    .where(t.c.experiment_id == EXP, t.c.state == DONE, t.c.interval.in_(bindparam("ages", expanding=True)))
)
GIVEN_UP = select(m.c.member, m.c.given_up_at).where(m.c.experiment_id == EXP, m.c.given_up_at.is_not(None))
MOVE_VERSION = (
    update(e)
    .where(e.c.id == EXP, e.c.version == bindparam("seen", type_=Integer))
    .values(version=e.c.version + 1)
    .returning(e.c.gc_floor)
)
DECIDE = (
    update(t)
    .where(t.c.id == bindparam("task", type_=Integer), t.c.state == WAITING)
    .values(
        state=PENDING,
        hparams=bindparam("hp", type_=JSON),
        start_checkpoint_id=bindparam("ckpt", type_=Integer),
        replacements=bindparam("n_replaced", type_=Integer),
        attempts=0,
        retry_at=None,  # a replacement starts afresh: no backoff left over from the failures
    )
)
GIVE_UP = update(t).where(t.c.id == bindparam("task", type_=Integer), t.c.state == WAITING).values(state="failed")
HEAD_GIVEN_UP = (
    update(m)
    .where(m.c.experiment_id == EXP, m.c.member == bindparam("who_member", type_=Integer))
    .values(given_up_at=bindparam("at", type_=Integer))
)
RECORD_EXPLOIT = insert(x).values(
    experiment_id=EXP,
    member=bindparam("who_member", type_=Integer),
    interval=bindparam("at", type_=Integer),
    donor=bindparam("from_member", type_=Integer),
    donor_interval=bindparam("from_interval", type_=Integer),
    score=bindparam("own", type_=Float),
    donor_score=bindparam("theirs", type_=Float),
    hparams_before=bindparam("before", type_=JSON),
    hparams_after=bindparam("after", type_=JSON),
    changes=bindparam("rules", type_=JSON),
    reason=bindparam("why", type_=String),
    created_at=NOW,
)
RECORD_EVENT = insert(ev).values(
    experiment_id=EXP,
    member=bindparam("who_member", type_=Integer),
    interval=bindparam("at", type_=Integer),
    kind=bindparam("what", type_=String),
    message=bindparam("text", type_=Text),
    detail=bindparam("trace", type_=Text),
    worker=bindparam("who", type_=Text),
    created_at=NOW,
)

# -- garbage ------------------------------------------------------------------------------

KEPT = select(c.c.id, c.c.member, c.c.interval, c.c.path).where(
    c.c.experiment_id == EXP, c.c.state.in_((CheckpointState.LIVE, CheckpointState.CORRUPT))
)
ACTIVE_STARTS = select(t.c.start_checkpoint_id).where(
    t.c.experiment_id == EXP, t.c.state.in_((WAITING, PENDING, RUNNING))
)
HEADS = select(m).where(m.c.experiment_id == EXP).order_by(m.c.member)
MARK_DELETED = (
    update(c).where(c.c.id.in_(bindparam("ids", expanding=True))).values(state=CheckpointState.DELETED, data=None)
)
ANY_ACTIVE = select(t.c.id).where(t.c.experiment_id == EXP, t.c.state.in_((WAITING, PENDING, RUNNING))).limit(1)
ANY_FINAL = (
    select(t.c.id)
    .where(t.c.experiment_id == EXP, t.c.interval == bindparam("at", type_=Integer), t.c.state == DONE)
    .limit(1)
)

# -- reading ------------------------------------------------------------------------------

RUNNING_COUNT = select(func.count()).where(t.c.experiment_id == EXP, t.c.state == RUNNING)
STATUS = select(e.c.status).where(e.c.id == EXP)
