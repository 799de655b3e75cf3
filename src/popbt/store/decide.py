"""Deciding what comes next, inside the transaction that records a result.

Called by SQLStore.report and SQLStore.fail with the experiment's row locked: it reads a
snapshot of the population, asks the pure functions of ``strategy`` (and ``pb2``) who copies
whom, and writes the next task(s), the exploit records and the events. Nothing here commits.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import Connection

from .. import pb2, strategy
from ..experiment import ExperimentConfig
from ..space import sample_space
from . import schema as s
from .base import ACTIVE, DONE, FAILED, IN_DATABASE, PENDING, Task

Hook = Callable[[dict, random.Random], Any]  # a spec's explore(hparams, rng)

def schedule(conn: Connection, cfg: ExperimentConfig, exp_id: int, member: int,
              interval: int, now: float, hook: Hook | None = None) -> int | None:
    """Create the next task(s) after ``member`` finished ``interval``; return its donor."""
    if interval + 1 >= cfg.intervals:
        return None
    if cfg.sync:
        return _next_generation(conn, cfg, exp_id, interval, now, hook).get(member)
    return _next_async(conn, cfg, exp_id, member, interval, now, hook)

def _next_async(conn: Connection, cfg: ExperimentConfig, exp_id: int, member: int,
                interval: int, now: float, hook: Hook | None = None) -> int | None:
    heads = _heads(conn, exp_id)
    own = heads[member]
    donor = None
    if _may_exploit(cfg, interval + 1, len(heads)) and _warm(conn, exp_id):
        rng = strategy.decision_rng(cfg.seed, "exploit", member, interval)
        donor = _select(conn, cfg, exp_id, heads, [member], rng).get(member)
    if donor is not None and _exploit(conn, cfg, exp_id, own, heads[donor.member], interval + 1,
                                           "exploit", now, hook=hook):
        return donor.member
    add_task(conn, exp_id, member, interval + 1, own.hparams, own.checkpoint_id)
    return None

def _next_generation(conn: Connection, cfg: ExperimentConfig, exp_id: int,
                     interval: int, now: float, hook: Hook | None = None) -> dict[int, int]:
    """Synchronous mode: when generation ``interval`` is complete, create the next one.

    Runs inside the report that completes the generation, so exactly one worker does it.
    """
    t = s.tasks
    unfinished = conn.execute(select(func.count()).where(
        t.c.experiment_id == exp_id, t.c.interval == interval, t.c.state.in_(ACTIVE))).scalar_one()
    if unfinished:
        return {}
    gen = {h.member: h for h in _heads(conn, exp_id, interval=interval).values()}
    donors: dict[int, strategy.Standing] = {}
    if _may_exploit(cfg, interval + 1, len(gen)):
        rng = strategy.decision_rng(cfg.seed, "generation", interval)
        donors = _select(conn, cfg, exp_id, gen, sorted(gen), rng)
    copied: dict[int, int] = {}
    for member in sorted(gen):
        head = gen[member]
        if member in donors and _exploit(conn, cfg, exp_id, head, gen[donors[member].member],
                                              interval + 1, "exploit", now, hook=hook):
            copied[member] = donors[member].member
        else:
            add_task(conn, exp_id, member, interval + 1, head.hparams, head.checkpoint_id)
    return copied

def _exploit(conn: Connection, cfg: ExperimentConfig, exp_id: int, loser: "_Head",
             donor: "_Head", interval: int, reason: str, now: float,
             task_id: int | None = None, hook: Hook | None = None) -> bool:
    """Point ``loser``'s next task at the donor's checkpoint, with explored hyperparameters.

    No bytes move: the new task references the donor's checkpoint row. Returns False,
    having recorded a failure and changed nothing else, when the spec's explore hook
    raises or answers outside the space: the caller then keeps the member as it was.
    """
    rng = strategy.decision_rng(cfg.seed, "explore", loser.member, interval, reason)
    try:
        explored = _explored(conn, cfg, exp_id, loser.member, donor.hparams, interval, rng, hook)
    except strategy.ExploreError as e:
        record_event(conn, exp_id, loser.member, interval, "failure",
               f"member {loser.member} cannot copy member {donor.member}: {e}", None, now)
        return False
    conn.execute(insert(s.exploits).values(
        experiment_id=exp_id, member=loser.member, interval=interval, donor=donor.member,
        donor_interval=donor.interval, score=loser.score, donor_score=donor.score,
        hparams_before=loser.hparams, hparams_after=explored.hparams,
        changes={k: c.rule for k, c in explored.changes.items()}, reason=reason, created_at=now,
    ))
    if task_id is None:
        add_task(conn, exp_id, loser.member, interval, explored.hparams, donor.checkpoint_id)
    else:
        conn.execute(update(s.tasks).where(s.tasks.c.id == task_id).values(
            hparams=explored.hparams, start_checkpoint_id=donor.checkpoint_id, attempts=0))
    return True

def replace(conn: Connection, cfg: ExperimentConfig, task: Task, replacements: int,
             hparams: dict, now: float, hook: Hook | None = None) -> int | None:
    """A member failed ``max_attempts`` times in a row: restart it from a top member."""
    t = s.tasks
    if replacements >= cfg.max_attempts:
        return _give_up(conn, cfg, task, f"failed {replacements + 1} times over", now, hook)
    conn.execute(update(t).where(t.c.id == task.id).values(replacements=replacements + 1))
    others = {m: h for m, h in _heads(conn, task.experiment_id).items() if m != task.member and h.usable}
    if not others:
        fresh = sample_space(cfg.space, strategy.decision_rng(cfg.seed, "fresh", task.member,
                                                               task.interval, replacements))
        conn.execute(update(t).where(t.c.id == task.id).values(
            hparams=fresh, start_checkpoint_id=None, attempts=0))
        record_event(conn, task.experiment_id, task.member, task.interval, "replaced",
               f"member {task.member} restarts with fresh hyperparameters", None, now)
        return None
    rng = strategy.decision_rng(cfg.seed, "replace", task.member, task.interval, replacements)
    ranked = strategy.rank([h.standing for h in others.values()], cfg.mode, rng)
    size = cfg.top if cfg.top is not None else int(len(ranked) * cfg.quantile)
    donor = others[rng.choice(ranked[:max(1, size)]).member]
    loser = _Head(task.member, task.interval - 1, None, hparams, None)
    if not _exploit(conn, cfg, task.experiment_id, loser, donor, task.interval, "replace", now, task.id, hook) \
            and not _exploit(conn, cfg, task.experiment_id, loser, donor, task.interval, "replace", now, task.id):
        return _give_up(conn, cfg, task, "cannot be replaced", now, hook)  # the hook failed: default explore failed too
    record_event(conn, task.experiment_id, task.member, task.interval, "replaced",
           f"member {task.member} copies member {donor.member} after repeated failures", None, now)
    return donor.member

def _give_up(conn: Connection, cfg: ExperimentConfig, task: Task, why: str, now: float,
             hook: Hook | None) -> None:
    """The member stops here; the run completes without it."""
    conn.execute(update(s.tasks).where(s.tasks.c.id == task.id).values(state=FAILED))
    record_event(conn, task.experiment_id, task.member, task.interval, "gave_up",
           f"member {task.member} {why}; it stops here", None, now)
    if cfg.sync:
        _next_generation(conn, cfg, task.experiment_id, task.interval, now, hook)
    return None

def maybe_finish(conn: Connection, exp_id: int) -> bool:
    active = conn.execute(select(func.count()).where(
        s.tasks.c.experiment_id == exp_id, s.tasks.c.state.in_(ACTIVE))).scalar_one()
    if active:
        return False
    conn.execute(update(s.experiments).where(s.experiments.c.id == exp_id).values(status="finished"))
    return True


class _Head:
    """A member's latest result: its score, the hyperparameters it trained with, its checkpoint."""

    __slots__ = ("member", "interval", "score", "hparams", "checkpoint_id", "usable")

    def __init__(self, member: int, interval: int, score: float | None, hparams: dict,
                 checkpoint_id: int | None, usable: bool = True) -> None:
        self.member, self.interval, self.score = member, interval, score
        self.hparams, self.checkpoint_id = hparams, checkpoint_id
        self.usable = usable  # False once its checkpoint was found corrupt: never a donor

    @property
    def standing(self) -> strategy.Standing:
        return strategy.Standing(self.member, self.interval, self.score)


def _latest_done(exp_id: int):
    """Each member's latest done interval, as a subquery."""
    t = s.tasks
    return (select(t.c.member, func.max(t.c.interval).label("interval"))
            .where(t.c.experiment_id == exp_id, t.c.state == DONE)
            .group_by(t.c.member).subquery())


def _heads(conn: Connection, exp_id: int, interval: int | None = None) -> dict[int, _Head]:
    """Each member's latest done task (or, given ``interval``, its task at that interval)."""
    t, c = s.tasks, s.checkpoints
    query = (select(t.c.member, t.c.interval, t.c.score, t.c.hparams, t.c.result_checkpoint_id, c.c.state)
             .outerjoin(c, c.c.id == t.c.result_checkpoint_id))
    if interval is None:
        latest = _latest_done(exp_id)
        query = query.join(latest, and_(t.c.member == latest.c.member, t.c.interval == latest.c.interval))
    else:
        query = query.where(t.c.interval == interval)
    rows = conn.execute(query.where(t.c.experiment_id == exp_id, t.c.state == DONE)
                        .order_by(t.c.member)).all()
    return {r.member: _Head(r.member, r.interval, r.score, dict(r.hparams), r.result_checkpoint_id,
                            r.state != "corrupt") for r in rows}


def _may_exploit(cfg: ExperimentConfig, next_interval: int, members: int) -> bool:
    """Exploit is on, someone is there to copy, and the ready rule allows it now."""
    return (cfg.exploits and members >= 2
            and strategy.is_ready(next_interval, cfg.ready_every, cfg.burn_in))


def _select(conn: Connection, cfg: ExperimentConfig, exp_id: int, heads: dict[int, _Head],
            members: list[int], rng: random.Random) -> dict[int, strategy.Standing]:
    """Who among ``members`` copies whom, by the experiment's exploit rule. A donor whose
    checkpoint was found corrupt is never copied: its member keeps training its own weights."""
    standings = [h.standing for h in heads.values()]
    if cfg.exploit == "tournament":
        decided = strategy.tournament(standings, cfg.mode, rng, members)
    elif cfg.exploit == "ttest":
        recent = strategy.histories(_trained(conn, exp_id), {m: h.checkpoint_id for m, h in heads.items()},
                                    cfg.ttest_window)
        decided = strategy.ttest(standings, recent, cfg.mode, rng, cfg.ttest_window, cfg.ttest_alpha, members)
    else:
        decided = strategy.truncation(standings, cfg.mode, cfg.quantile, rng, cfg.top)
    return {m: d for m, d in decided.items() if m in members and heads[d.member].usable}


def _explored(conn: Connection, cfg: ExperimentConfig, exp_id: int, member: int, hparams: dict,
              interval: int, rng: random.Random, hook: Hook | None) -> strategy.Explored:
    """The copy's new hyperparameters: PB2, else the spec's hook, else PBT's perturbation."""
    if cfg.explore == "pb2":
        history = pb2.points(_trained(conn, exp_id), cfg.mode)
        return pb2.explore(hparams, cfg.space, history, interval, rng, cfg.factors,
                           cfg.resample_probability, pending=_pending(conn, exp_id, member))
    if hook is not None:
        return strategy.explore_with(hook, hparams, cfg.space, rng)
    return strategy.explore(hparams, cfg.space, rng, cfg.factors, cfg.resample_probability)


def _trained(conn: Connection, exp_id: int) -> list[strategy.Trained]:
    """Every completed interval of the experiment, for lineages (t-test) and PB2's fit."""
    t = s.tasks
    rows = conn.execute(
        select(t.c.member, t.c.interval, t.c.score, t.c.hparams, t.c.start_checkpoint_id,
               t.c.result_checkpoint_id)
        .where(t.c.experiment_id == exp_id, t.c.state == DONE).order_by(t.c.interval, t.c.member)).all()
    return [strategy.Trained(r.member, r.interval, r.score, dict(r.hparams), r.start_checkpoint_id,
                             r.result_checkpoint_id) for r in rows]


def _pending(conn: Connection, exp_id: int, member: int) -> list[dict]:
    """The hyperparameters other members are training (or about to), for PB2 to spread out."""
    t = s.tasks
    rows = conn.execute(select(t.c.hparams).where(
        t.c.experiment_id == exp_id, t.c.state.in_(ACTIVE), t.c.member != member).order_by(t.c.member)).all()
    return [dict(r.hparams) for r in rows]


def _warm(conn: Connection, exp_id: int) -> bool:
    """Async exploit waits until every member's first interval is over, so early finishers
    are not ranked against a population of one."""
    t = s.tasks
    return not conn.execute(select(t.c.id).where(
        t.c.experiment_id == exp_id, t.c.interval == 0, t.c.state.in_(ACTIVE)).limit(1)).first()


def collect_garbage(conn: Connection, exp_id: int) -> list[str]:
    """Mark checkpoints no longer live as deleted; return their paths for the caller to unlink.

    Live: the start of a task not yet done, or a member's latest result (a possible donor,
    and at the end the final models).
    """
    t, c = s.tasks, s.checkpoints
    starts = select(t.c.start_checkpoint_id).where(
        t.c.experiment_id == exp_id, t.c.state.in_(ACTIVE), t.c.start_checkpoint_id.is_not(None))
    latest = _latest_done(exp_id)
    heads = select(t.c.result_checkpoint_id).join(
        latest, and_(t.c.member == latest.c.member, t.c.interval == latest.c.interval)).where(
        t.c.experiment_id == exp_id, t.c.state == DONE)
    dead = conn.execute(
        update(c).where(c.c.experiment_id == exp_id, c.c.state.in_(("live", "corrupt")),
                        c.c.id.not_in(starts), c.c.id.not_in(heads))
        .values(state="deleted", data=None).returning(c.c.path)
    ).all()
    return [r.path for r in dead if not r.path.startswith(IN_DATABASE + ":")]


def add_task(conn: Connection, exp_id: int, member: int, interval: int, hparams: dict,
              start_checkpoint_id: int | None) -> None:
    conn.execute(insert(s.tasks).values(
        experiment_id=exp_id, member=member, interval=interval, state=PENDING, hparams=hparams,
        start_checkpoint_id=start_checkpoint_id, attempts=0, replacements=0))


def record_event(conn: Connection, exp_id: int, member: int, interval: int, kind: str, message: str,
           worker: str | None, now: float) -> None:
    conn.execute(insert(s.events).values(experiment_id=exp_id, member=member, interval=interval,
                                         kind=kind, message=message, worker=worker, created_at=now))
