"""The Store on SQLAlchemy Core: one implementation for sqlite and PostgreSQL.

How transactions run (locks, retries, timeouts, the sqlite file's watch) is ``engine``'s
business; the SQL of a decision (snapshot, apply, garbage) is ``population``'s. This module
is the queue: experiments, claims, leases, reports, failures, and the reads.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, TypeVar

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .. import plan as planning
from .. import strategy
from ..config import ExperimentConfig
from ..errors import ConfigError, NotFound, StoreError
from ..plan import Hook, Snapshot
from . import population as pop
from . import schema as s
from .base import (
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    SCHEMA_VERSION,
    WAITING,
    Checkpoint,
    CheckpointState,
    Event,
    Experiment,
    ExperimentStatus,
    Exploit,
    LeaseLost,
    Outcome,
    Progress,
    Result,
    Row,
    Store,
    Task,
)
from .engine import Database, mask_url

T = TypeVar("T")

REPLANS = 5  # plans refused because the population moved, before leaving it to the next change
MAX_RETRY_DELAY = 60.0  # seconds: the longest wait before a failed interval is retried

__all__ = ["SQLStore", "mask_url"]


class SQLStore(Store):
    """See ``Store`` for the contract; this class only adds how it is done in SQL."""

    def __init__(self, url: str, patience: float = 30.0) -> None:
        self.url = url
        self.db = Database(url, patience)
        self.engine = self.db.engine
        self.dialect = self.db.dialect
        self._configs: dict[int, ExperimentConfig] = {}
        # A database that cannot be opened at all is most often a wrong URL: say so within
        # seconds; the full patience is for connections lost while a run is going on.
        self.db.patience = min(5.0, patience)
        self._run(self._ensure_schema)
        self.db.patience = patience

    @property
    def patience(self) -> float:
        """Seconds a transaction is retried while the database is unreachable (a worker sets
        its lease: past it, its work belongs to others)."""
        return self.db.patience

    @patience.setter
    def patience(self, seconds: float) -> None:
        self.db.patience = seconds

    # -- plumbing -------------------------------------------------------------------

    def _run(self, fn: Callable[[Connection], T], read: bool = False) -> T:
        return self.db.run(fn, read)

    def _ensure_schema(self, conn: Connection) -> None:
        if self.dialect == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7240317)")
        s.metadata.create_all(conn)
        row = conn.execute(select(s.meta.c.value).where(s.meta.c.key == "schema_version")).first()
        if row is None:
            conn.execute(insert(s.meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
            return
        if not row.value.isdigit() or not 1 <= int(row.value) <= SCHEMA_VERSION:
            raise StoreError(
                f"database {mask_url(self.url)} has popbt schema version {row.value}; "
                f"this popbt uses version {SCHEMA_VERSION}"
            )
        if int(row.value) < SCHEMA_VERSION:  # an older popbt's database: upgraded in place
            s.upgrade(conn, int(row.value))
            conn.execute(update(s.meta).where(s.meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))

    def close(self) -> None:
        self.db.dispose()

    def config(self, experiment_id: int) -> ExperimentConfig:
        if experiment_id not in self._configs:
            row = self._run(
                lambda c: c.execute(select(s.experiments.c.config).where(s.experiments.c.id == experiment_id)).one(),
                read=True,
            )
            self._configs[experiment_id] = ExperimentConfig.from_json(row.config)
        return self._configs[experiment_id]

    # -- experiments ----------------------------------------------------------------

    def create_experiment(self, config: ExperimentConfig, checkpoint_dir: str) -> Experiment:
        hparams = strategy.initial_population(config.space, config.population, config.seed)

        def tx(conn: Connection) -> int:
            now = _now(conn)
            try:
                exp_id = conn.execute(
                    insert(s.experiments)
                    .values(
                        name=config.name,
                        config=config.to_json(),
                        status=ExperimentStatus.RUNNING,
                        checkpoint_dir=checkpoint_dir,
                        created_at=now,
                        uid=s.new_uid(),
                    )
                    .returning(s.experiments.c.id)
                ).scalar_one()
            except IntegrityError:
                raise ConfigError(f"experiment {config.name!r} already exists") from None
            conn.execute(
                insert(s.tasks),
                [
                    dict(
                        experiment_id=exp_id, member=m, interval=0, state=PENDING, hparams=h, attempts=0, replacements=0
                    )
                    for m, h in enumerate(hparams)
                ],
            )
            return exp_id

        return self.experiment_by_id(self._run(tx))

    def experiment_by_id(self, experiment_id: int) -> Experiment:
        row = self._run(
            lambda c: c.execute(select(s.experiments).where(s.experiments.c.id == experiment_id)).first(), read=True
        )
        return _experiment(row)

    def experiment(self, name: str) -> Experiment:
        query = select(s.experiments)
        if name == "latest":
            query = query.order_by(s.experiments.c.id.desc()).limit(1)
        else:
            query = query.where(s.experiments.c.name == name)
        row = self._run(lambda c: c.execute(query).first(), read=True)
        if row is None:
            raise NotFound("no experiments yet" if name == "latest" else f"no experiment named {name!r}")
        return _experiment(row)

    def experiments(self) -> list[Experiment]:
        rows = self._run(lambda c: c.execute(select(s.experiments).order_by(s.experiments.c.id)).all(), read=True)
        return [_experiment(r) for r in rows]

    # -- the queue --------------------------------------------------------------------

    def claim(self, experiment_id: int, worker: str, device: str) -> Task | None:
        cfg = self.config(experiment_id)
        t = s.tasks

        def tx(conn: Connection) -> Task | None:
            now = _now(conn)
            due = or_(t.c.retry_at.is_(None), t.c.retry_at <= now)  # a failed attempt's backoff is over
            claimable = or_(and_(t.c.state == PENDING, due), and_(t.c.state == RUNNING, t.c.lease_expires < now))
            running = (
                select(s.experiments.c.id)
                .where(s.experiments.c.id == experiment_id, s.experiments.c.status == ExperimentStatus.RUNNING)
                .exists()
            )
            cand = conn.execute(
                select(t.c.id, t.c.state, t.c.worker, t.c.member, t.c.interval)
                .where(t.c.experiment_id == experiment_id, claimable, running)
                .order_by(t.c.interval, t.c.member)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if cand is None:
                return None
            token = uuid.uuid4().hex
            claimed = conn.execute(
                update(t)
                .where(t.c.id == cand.id, claimable)
                .values(
                    state=RUNNING,
                    lease_token=token,
                    lease_expires=now + cfg.lease_seconds,
                    worker=worker,
                    device=device,
                    started_at=now,
                    # a lease that expired is an attempt that died: count it, so an interval
                    # that kills every worker is replaced, not retried forever
                    attempts=t.c.attempts + (1 if cand.state == RUNNING else 0),
                )
                .returning(
                    t.c.member, t.c.interval, t.c.hparams, t.c.start_checkpoint_id, t.c.attempts, t.c.replacements
                )
            ).first()
            if claimed is None:
                return None
            if cand.state == RUNNING:
                pop.record_event(
                    conn,
                    experiment_id,
                    cand.member,
                    cand.interval,
                    "lease_expired",
                    f"lease of {cand.worker} expired; {worker} takes over",
                    worker,
                    now,
                )
            start = _checkpoint(conn, claimed.start_checkpoint_id)
            return Task(
                cand.id,
                experiment_id,
                claimed.member,
                claimed.interval,
                dict(claimed.hparams),
                start,
                token,
                claimed.attempts,
                claimed.replacements,
                worker,
            )

        return self._run(tx)

    def heartbeat(self, task: Task) -> bool:
        cfg = self.config(task.experiment_id)

        def tx(conn: Connection) -> bool:
            res = conn.execute(
                update(s.tasks).where(*_fence(task)).values(lease_expires=_now(conn) + cfg.lease_seconds)
            )
            return res.rowcount == 1

        return self._run(tx)

    def release(self, task: Task, reason: str | None = None) -> bool:
        def tx(conn: Connection) -> bool:
            res = conn.execute(
                update(s.tasks).where(*_fence(task)).values(state=PENDING, lease_token=None, lease_expires=None)
            )
            if res.rowcount == 1 and reason:
                pop.record_event(
                    conn, task.experiment_id, task.member, task.interval, "released", reason, task.worker, _now(conn)
                )
            return res.rowcount == 1

        return self._run(tx)

    def report(self, task: Task, result: Result, explore: Hook | None = None) -> Outcome:
        """Record the result, then decide what waits on it (see ``settle``). ``explore``: the
        spec's explore(hparams, rng) hook, run by the plan in this (the reporting) process."""
        cfg = self.config(task.experiment_id)
        finite = math.isfinite(result.score)
        nxt = task.interval + 1

        def tx(conn: Connection) -> tuple[Snapshot, list[str], bool]:
            pop.bump(conn, task.experiment_id)
            now = _now(conn)
            ckpt_id = conn.execute(
                insert(s.checkpoints)
                .values(
                    experiment_id=task.experiment_id,
                    member=task.member,
                    interval=task.interval,
                    path=result.path,
                    sha256=result.sha256,
                    size=result.size,
                    state=CheckpointState.LIVE,
                    data=result.data,
                    created_at=now,
                )
                .returning(s.checkpoints.c.id)
            ).scalar_one()
            note = None if finite else f"evaluate() returned {result.score!r}: counted as the worst score"
            done = conn.execute(
                update(s.tasks)
                .where(*_fence(task))
                .values(
                    state=DONE,
                    score=result.score if finite else None,
                    metrics=result.metrics,
                    result_checkpoint_id=ckpt_id,
                    finished_at=now,
                    error=note,
                )
            )
            if done.rowcount != 1:
                if _already_reported(conn, task, result):
                    raise _AlreadyReported  # rolls this retry back; the first attempt stands
                raise LeaseLost(f"member {task.member} interval {task.interval}: lease was taken over")
            if note:
                pop.record_event(conn, task.experiment_id, task.member, task.interval, "nonfinite", note, None, now)
            if nxt < cfg.intervals:
                state = WAITING if planning.needs_decision(cfg, nxt, finite) else PENDING
                pop.add_task(conn, task.experiment_id, task.member, nxt, dict(task.hparams), ckpt_id, state)
            snapshot = pop.read_snapshot(conn, cfg, task.experiment_id)
            # with decisions to take, the plan's transaction collects the garbage once for both
            garbage = [] if snapshot.waiting else pop.collect_garbage(conn, cfg, task.experiment_id)
            return snapshot, garbage, nxt >= cfg.intervals and pop.maybe_finish(conn, cfg, task.experiment_id)

        try:
            snapshot, garbage, finished = self._run(tx)
        except _AlreadyReported:  # its first attempt committed; its decisions may still be open
            settled = self.settle(task.experiment_id, explore)
            return replace(settled, finished=self.progress(task.experiment_id).finished)
        return self._settle(task.experiment_id, snapshot, explore, finished, garbage, [(task.member, nxt)])

    def fail(self, task: Task, message: str, explore: Hook | None = None, detail: str | None = None) -> Outcome:
        """Retry the task after a delay that doubles with each attempt, or once it failed
        ``max_attempts`` times (or starts from a corrupt checkpoint), let it wait for a
        replacement, decided like any other plan. When every member has failed its first
        interval and nothing ever succeeded, the experiment is marked failed."""
        cfg = self.config(task.experiment_id)
        t = s.tasks

        def tx(conn: Connection) -> tuple[Snapshot | None, bool]:
            now = _now(conn)
            row = conn.execute(
                update(t)
                .where(*_fence(task))
                .values(
                    state=PENDING,
                    lease_token=None,
                    lease_expires=None,
                    error=message,
                    attempts=t.c.attempts + 1,
                    finished_at=now,
                    retry_at=now + retry_delay(cfg.retry_delay, task.attempts + 1),
                )
                .returning(t.c.attempts)
            ).first()
            if row is None:
                raise LeaseLost(f"member {task.member} interval {task.interval}: lease was taken over")
            pop.record_event(
                conn,
                task.experiment_id,
                task.member,
                task.interval,
                "failure",
                f"attempt {row.attempts}/{cfg.max_attempts}: {message}",
                task.worker,
                now,
                detail,
            )
            if task.interval == 0 and pop.hopeless(conn, cfg, task.experiment_id):
                first = pop.first_failure(conn, task.experiment_id) or message
                why = f"every member failed its first interval; first error: {first}"
                pop.fail_experiment(conn, task.experiment_id, why, now)
                return None, True
            if row.attempts < cfg.max_attempts and not _starts_from_corrupt(conn, task):
                return None, False  # a plain retry, with a fresh seed: no decision depends on it
            pop.bump(conn, task.experiment_id)
            conn.execute(update(t).where(t.c.id == task.id).values(state=WAITING))
            return pop.read_snapshot(conn, cfg, task.experiment_id), False

        snapshot, over = self._run(tx)
        if snapshot is None:
            return Outcome(over)
        return self._settle(task.experiment_id, snapshot, explore, False, [], [(task.member, task.interval)])

    def absolve(self, experiment_id: int, charged: dict[int, tuple[int, int]], worker: str, reason: str) -> int:
        t = s.tasks

        def tx(conn: Connection) -> int:
            back = 0
            for task_id, (attempts, count) in charged.items():
                # still as that failure left it: pending for a retry, or waiting for a replacement
                res = conn.execute(
                    update(t)
                    .where(t.c.id == task_id, t.c.attempts == attempts, t.c.state.in_((PENDING, WAITING)))
                    .values(state=PENDING, attempts=max(0, attempts - count), retry_at=None)
                )
                back += res.rowcount * min(count, attempts)
            if back:
                pop.bump(conn, experiment_id)  # a task waiting for its replacement may be claimable again
            pop.record_event(conn, experiment_id, -1, -1, "worker_fault", reason, worker, _now(conn))
            return back

        return self._run(tx)

    def reopen(self, experiment_id: int) -> None:
        t = s.tasks

        def tx(conn: Connection) -> None:
            any_done = conn.execute(
                select(t.c.id).where(t.c.experiment_id == experiment_id, t.c.state == DONE).limit(1)
            ).first()
            if any_done is not None:
                raise ConfigError("it failed after some members had results: start a new experiment (--name)")
            conn.execute(
                update(t)
                .where(t.c.experiment_id == experiment_id, t.c.interval == 0, t.c.state.in_((PENDING, WAITING)))
                .values(state=PENDING, attempts=0, retry_at=None)
            )
            e = s.experiments
            conn.execute(
                update(e)
                .where(e.c.id == experiment_id)
                .values(status=ExperimentStatus.RUNNING, version=e.c.version + 1)
            )
            pop.record_event(
                conn, experiment_id, -1, -1, "resumed", "failed experiment resumed from its start", None, _now(conn)
            )

        self._run(tx)

    def set_spec(self, experiment_id: int, ref: str, digest: str | None, worker: str) -> None:
        def tx(conn: Connection) -> None:
            e = s.experiments
            stored = conn.execute(select(e.c.config).where(e.c.id == experiment_id)).scalar_one()
            config = dict(stored, spec=ref, spec_digest=digest)
            conn.execute(update(e).where(e.c.id == experiment_id).values(config=config))
            message = f"the spec changed: now {ref} (sha256 {str(digest)[:12]}), allowed by --allow-spec-change"
            pop.record_event(conn, experiment_id, -1, -1, "spec_changed", message, worker, _now(conn))

        self._run(tx)
        self._configs.pop(experiment_id, None)

    def settle(self, experiment_id: int, explore: Hook | None = None) -> Outcome:
        """Decide every waiting task that can be decided now. Reports and failures do this
        themselves; an idle worker calls it too, so decisions left by a worker that died
        between its report and its decision are taken anyway."""
        cfg = self.config(experiment_id)
        snapshot = self._run(lambda conn: pop.read_snapshot(conn, cfg, experiment_id), read=True)
        return self._settle(experiment_id, snapshot, explore, False, [], [])

    def _settle(
        self,
        exp_id: int,
        snapshot: Snapshot,
        explore: Hook | None,
        finished: bool,
        garbage: list[str],
        mine: list[tuple[int, int]],
    ) -> Outcome:
        """Plan outside any lock, apply with a compare-and-set on the version; when another
        change landed meanwhile, read the new snapshot and plan again, reusing the explorations
        already drawn (a few times: whoever changed the population settles it too)."""
        cfg, explored = self.config(exp_id), {}
        for _ in range(REPLANS):
            decided = planning.plan(snapshot, explore, explored)
            if not decided:
                break
            try:
                applied = self._run(lambda conn, plan=decided: self._apply(conn, cfg, exp_id, plan))
            except pop.Conflict:
                applied = None
            if applied is not None:
                dead, done = applied
                return Outcome(finished or done, pop.donor_of(decided, mine), garbage + dead)
            snapshot = self._run(lambda conn: pop.read_snapshot(conn, cfg, exp_id), read=True)
        return Outcome(finished, None, garbage)

    @staticmethod
    def _apply(
        conn: Connection, cfg: ExperimentConfig, exp_id: int, plan: planning.Plan
    ) -> tuple[list[str], bool] | None:
        """Apply ``plan`` (None if the population moved on); the garbage, and whether that finished the run."""
        if not pop.apply(conn, exp_id, plan, _now(conn)):
            return None
        gave_up = any(d.give_up for d in plan.decisions)
        return pop.collect_garbage(conn, cfg, exp_id), gave_up and pop.maybe_finish(conn, cfg, exp_id)

    def mark_corrupt(self, checkpoint: Checkpoint, message: str) -> None:
        def tx(conn: Connection) -> None:
            conn.execute(
                update(s.checkpoints).where(s.checkpoints.c.id == checkpoint.id).values(state=CheckpointState.CORRUPT)
            )
            exp_id = conn.execute(
                select(s.checkpoints.c.experiment_id).where(s.checkpoints.c.id == checkpoint.id)
            ).scalar_one()
            pop.bump(conn, exp_id)  # it can no longer be copied: a pending plan may have chosen it
            pop.record_event(
                conn, exp_id, checkpoint.member, checkpoint.interval, "corrupt_checkpoint", message, None, _now(conn)
            )

        self._run(tx)

    # -- reading -------------------------------------------------------------------

    def progress(self, experiment_id: int) -> Progress:
        cfg = self.config(experiment_id)
        t = s.tasks

        def tx(conn: Connection) -> Progress:
            counts = dict(
                conn.execute(
                    select(t.c.state, func.count()).where(t.c.experiment_id == experiment_id).group_by(t.c.state)
                ).all()
            )
            order = t.c.score.desc() if cfg.mode == "max" else t.c.score.asc()
            best = conn.execute(
                select(t.c.member, t.c.score)
                .where(t.c.experiment_id == experiment_id, t.c.state == DONE, t.c.score.is_not(None))
                .order_by(order, t.c.member)
                .limit(1)
            ).first()
            status = conn.execute(
                select(s.experiments.c.status).where(s.experiments.c.id == experiment_id)
            ).scalar_one()
            return Progress(
                cfg.population * cfg.intervals,
                counts.get(DONE, 0),
                counts.get(FAILED, 0),
                counts.get(RUNNING, 0),
                best.member if best else None,
                best.score if best else None,
                status == ExperimentStatus.FINISHED,
                status,
            )

        return self._run(tx, read=True)

    def history(self, experiment_id: int) -> list[Row]:
        t, c = s.tasks, s.checkpoints
        start = c.alias("start")
        result = c.alias("result")
        query = (
            select(
                t,
                start.c.member.label("parent"),
                start.c.interval.label("parent_interval"),
                result.c.path.label("result_path"),
            )
            .select_from(
                t.outerjoin(start, start.c.id == t.c.start_checkpoint_id).outerjoin(
                    result, result.c.id == t.c.result_checkpoint_id
                )
            )
            .where(t.c.experiment_id == experiment_id)
            .order_by(t.c.interval, t.c.member)
        )
        rows = self._run(lambda conn: conn.execute(query).all(), read=True)
        return [
            Row(
                r.member,
                r.interval,
                r.state,
                r.score,
                dict(r.metrics or {}),
                dict(r.hparams),
                r.parent,
                r.parent_interval,
                r.result_path,
                r.worker,
                r.device,
                r.attempts,
                r.error,
                r.started_at,
                r.finished_at,
                r.replacements,
            )
            for r in rows
        ]

    def events(self, experiment_id: int, limit: int = 20, kinds: tuple[str, ...] = ()) -> list[Event]:
        e = s.events
        query = select(e).where(e.c.experiment_id == experiment_id)
        if kinds:
            query = query.where(e.c.kind.in_(kinds))
        rows = self._run(lambda conn: conn.execute(query.order_by(e.c.id.desc()).limit(limit)).all(), read=True)
        return [
            Event(r.member, r.interval, r.kind, r.message, r.created_at, r.detail, r.worker) for r in reversed(rows)
        ]

    def exploits(self, experiment_id: int) -> list[Exploit]:
        x = s.exploits
        rows = self._run(
            lambda conn: conn.execute(select(x).where(x.c.experiment_id == experiment_id).order_by(x.c.id)).all(),
            read=True,
        )
        return [
            Exploit(
                r.member,
                r.interval,
                r.donor,
                r.donor_interval,
                r.score,
                r.donor_score,
                dict(r.hparams_before),
                dict(r.hparams_after),
                dict(r.changes),
                r.reason,
                r.created_at,
            )
            for r in rows
        ]

    def checkpoint_data(self, checkpoint: Checkpoint) -> bytes:
        c = s.checkpoints
        data = self._run(
            lambda conn: conn.execute(select(c.c.data).where(c.c.id == checkpoint.id)).scalar_one(), read=True
        )
        if data is None:
            raise StoreError(f"checkpoint {checkpoint.path} has no bytes in the database")
        return bytes(data)

    def live_checkpoints(self, experiment_id: int) -> list[Checkpoint]:
        c = s.checkpoints
        rows = self._run(
            lambda conn: conn.execute(
                select(c).where(c.c.experiment_id == experiment_id, c.c.state == CheckpointState.LIVE).order_by(c.c.id)
            ).all(),
            read=True,
        )
        return [Checkpoint(r.id, r.member, r.interval, r.path, r.sha256, r.size) for r in rows]


# -- helpers over a connection ---------------------------------------------------------


def retry_delay(base: float, attempts: int) -> float:
    """Seconds before attempt ``attempts + 1``: ``base`` doubled at each failed attempt."""
    return min(MAX_RETRY_DELAY, base * 2 ** max(0, attempts - 1)) if base > 0 else 0.0


class _AlreadyReported(Exception):
    """A retried report whose first attempt committed before its connection dropped."""


def _already_reported(conn: Connection, task: Task, result: Result) -> bool:
    """Whether this very result (same lease, same checkpoint file) is already recorded."""
    t, c = s.tasks, s.checkpoints
    return (
        conn.execute(
            select(t.c.id)
            .join(c, c.c.id == t.c.result_checkpoint_id)
            .where(t.c.id == task.id, t.c.state == DONE, t.c.lease_token == task.token, c.c.path == result.path)
        ).first()
        is not None
    )


def _starts_from_corrupt(conn: Connection, task: Task) -> bool:
    """Retrying from a checkpoint known to be corrupt cannot succeed: replace at once."""
    if task.start is None:
        return False
    state = conn.execute(select(s.checkpoints.c.state).where(s.checkpoints.c.id == task.start.id)).scalar()
    return state == CheckpointState.CORRUPT


def _fence(task: Task) -> Iterable:
    return (s.tasks.c.id == task.id, s.tasks.c.state == RUNNING, s.tasks.c.lease_token == task.token)


def _now(conn: Connection) -> float:
    return conn.execute(select(s.db_now())).scalar_one()


def _checkpoint(conn: Connection, checkpoint_id: int | None) -> Checkpoint | None:
    if checkpoint_id is None:
        return None
    r = conn.execute(select(s.checkpoints).where(s.checkpoints.c.id == checkpoint_id)).one()
    return Checkpoint(r.id, r.member, r.interval, r.path, r.sha256, r.size)


def _experiment(row: Any) -> Experiment:
    return Experiment(
        row.id,
        row.name,
        ExperimentConfig.from_json(row.config),
        row.status,
        row.created_at,
        row.checkpoint_dir,
        row.uid or "",
    )
