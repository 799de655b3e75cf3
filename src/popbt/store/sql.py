"""The Store on SQLAlchemy Core: one implementation for sqlite and PostgreSQL.

How transactions run (locks, retries, timeouts, the sqlite file's watch) is ``engine``'s
business; the SQL of a decision (snapshot, apply, garbage) is ``population``'s. This module
is the queue: experiments, claims, leases, reports, failures, and the reads.
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from sqlalchemy import insert, inspect, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .. import plan as planning
from .. import strategy
from ..config import ExperimentConfig
from ..errors import ConfigError, NotFound, StoreError
from ..plan import Hook, Snapshot
from . import population as pop
from . import queries as q
from . import schema as s
from .base import (
    DONE,
    PENDING,
    RUNNING,
    SCHEMA_VERSION,
    WAITING,
    Checkpoint,
    CheckpointState,
    Experiment,
    ExperimentStatus,
    LeaseLost,
    Outcome,
    Result,
    Store,
    Task,
)
from .engine import Database, mask_url
from .reads import Reads

T = TypeVar("T")

log = logging.getLogger("popbt.store")
REPLANS = 5  # plans refused because the population moved, before leaving it to the next change
MAX_RETRY_DELAY = 60.0  # seconds: the longest wait before a failed interval is retried
SCHEMA_LOCK = 7240317  # PostgreSQL advisory lock held while the schema is created or upgraded

__all__ = ["SQLStore", "mask_url"]


class SQLStore(Reads, Store):
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
        if not self._run(self._schema_current, read=True):
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

    def _schema_current(self, conn: Connection) -> bool:
        """Whether the schema is this popbt's already: a read, no lock, so that many processes
        opening one database at once never queue behind each other (or behind an upgrade)."""
        if not inspect(conn).has_table(s.meta.name):
            return False
        return self._schema_version(conn) == SCHEMA_VERSION

    def _schema_version(self, conn: Connection) -> int | None:
        """The stored schema version (None: none yet); StoreError if no popbt can use it here."""
        row = conn.execute(select(s.meta.c.value).where(s.meta.c.key == "schema_version")).first()
        if row is None:
            return None
        if not row.value.isdigit() or not 1 <= int(row.value) <= SCHEMA_VERSION:
            raise StoreError(
                f"database {mask_url(self.url)} has popbt schema version {row.value}; "
                f"this popbt uses version {SCHEMA_VERSION}"
            )
        return int(row.value)

    def _ensure_schema(self, conn: Connection) -> None:
        """Create or upgrade the schema, one process at a time (the others wait for it)."""
        if self.dialect == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
        s.metadata.create_all(conn)
        version = self._schema_version(conn)
        if version is None:
            conn.execute(insert(s.meta).values(key="schema_version", value=str(SCHEMA_VERSION)))
            return
        if version < SCHEMA_VERSION:  # an older popbt's database: upgraded in place
            s.upgrade(conn, version)
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
            try:
                exp_id = conn.execute(
                    insert(s.experiments)
                    .values(
                        name=config.name,
                        config=config.to_json(),
                        status=ExperimentStatus.RUNNING,
                        checkpoint_dir=checkpoint_dir,
                        created_at=s.db_now(),
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
            conn.execute(insert(s.members), [dict(experiment_id=exp_id, member=m) for m in range(config.population)])
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

    def wait_for_work(self, experiment_id: int, timeout: float, stop: threading.Event | None = None) -> None:
        self.db.wait(_channel(experiment_id), timeout, stop or threading.Event())

    def claim(self, experiment_id: int, worker: str, device: str, prefer: tuple[int, int] | None = None) -> Task | None:
        cfg = self.config(experiment_id)

        def tx(conn: Connection) -> Task | None:
            cand = None
            values = {"exp": experiment_id, "who": worker, "lease": cfg.lease_seconds}
            if prefer is not None:
                preferred = {**values, "pref_member": prefer[0], "pref_interval": prefer[1]}
                cand = conn.execute(q.CLAIM_PREFERRED, preferred).first()
            if cand is None:
                cand = conn.execute(q.CLAIM_NEXT, values).first()
            if cand is None:
                return None
            token = uuid.uuid4().hex
            died = 1 if cand.state == RUNNING else 0
            take = {**values, "task": cand.id, "token": token, "on": device, "died": died}
            claimed = conn.execute(q.TAKE, take).first()
            if claimed is None:
                return None
            if died:
                message = f"lease of {cand.worker} expired; {worker} takes over"
                pop.record_event(conn, experiment_id, cand.member, cand.interval, "lease_expired", message, worker)
            start = None
            if cand.start_id is not None:
                start = Checkpoint(
                    cand.start_id,
                    cand.start_member,
                    cand.start_interval,
                    cand.start_path,
                    cand.start_sha256,
                    cand.start_size,
                )
            hparams = dict(claimed.hparams)
            return Task(
                cand.id,
                experiment_id,
                cand.member,
                cand.interval,
                hparams,
                start,
                token,
                claimed.attempts,
                claimed.replacements,
                worker,
            )

        return self._run(tx)

    def heartbeat(self, task: Task) -> bool:
        lease = self.config(task.experiment_id).lease_seconds
        return self._run(lambda conn: conn.execute(q.HEARTBEAT, {**_fence(task), "lease": lease}).rowcount == 1)

    def release(self, task: Task, reason: str | None = None) -> bool:
        def tx(conn: Connection) -> bool:
            released = conn.execute(q.RELEASE, _fence(task)).rowcount == 1
            if released:
                self.db.notify(conn, _channel(task.experiment_id))
            if released and reason:
                pop.record_event(conn, task.experiment_id, task.member, task.interval, "released", reason, task.worker)
            return released

        return self._run(tx)

    def report(self, task: Task, result: Result, explore: Hook | None = None) -> Outcome:
        """Record the result, then decide what waits on it (see ``settle``). ``explore``: the
        spec's explore(hparams, rng) hook, run by the plan in this (the reporting) process.

        With the built-in rules only (no hook, no PB2) planning is cheap and runs no user code,
        so it runs in the report's own transaction, under the experiment's lock: nothing can
        move the population meanwhile, so no plan is refused and planned again. Under many
        workers a plan made outside the lock was refused almost always (every report moves the
        version), and each retry queued on the lock again."""
        cfg = self.config(task.experiment_id)
        finite = math.isfinite(result.score)
        score = result.score if finite else None
        nxt = task.interval + 1
        exp = task.experiment_id
        mine = [(task.member, nxt)]

        def tx(conn: Connection, inline: bool) -> _Reported:
            # this member's own rows first; the experiment's row lock (bump) only for what the
            # population shares, so that reports queue on it for as short a time as possible
            state = None
            where = {"exp": exp, "who_member": task.member, "at": task.interval}
            stored = {"file": result.path, "digest": result.sha256, "bytes": result.size, "blob": result.data}
            ckpt = conn.execute(q.ADD_CHECKPOINT, {**where, **stored}).scalar_one()
            note = None if finite else f"evaluate() returned {result.score!r}: counted as the worst score"
            outcome = {"result": score, "extra": result.metrics, "ckpt": ckpt, "note": note}
            if conn.execute(q.FINISH, {**_fence(task), **outcome}).rowcount != 1:
                if conn.execute(q.ALREADY_REPORTED, {**_fence(task), "file": result.path}).first() is not None:
                    raise _AlreadyReported  # rolls this retry back; the first attempt stands
                raise LeaseLost(f"member {task.member} interval {task.interval}: lease was taken over")
            conn.execute(q.ADVANCE_HEAD[cfg.mode], {**where, "result": score, "ckpt": ckpt})
            if note:
                pop.record_event(conn, exp, task.member, task.interval, "nonfinite", note, None)
            if nxt < cfg.intervals:
                state = WAITING if planning.needs_decision(cfg, nxt, finite) else PENDING
                pop.add_task(conn, exp, task.member, nxt, dict(task.hparams), ckpt, state)
            version, floor = pop.bump(conn, exp)  # what follows reads every report committed before
            if cfg.keep_best and finite:
                conn.execute(q.RECORD_BEST[cfg.mode], {"exp": exp, "result": score, "ckpt": ckpt})
            snapshot = pop.read_snapshot(conn, cfg, exp, version)
            # with decisions to take, the plan's transaction collects the garbage once for both
            garbage = [] if snapshot.waiting else pop.collect_garbage(conn, cfg, exp, floor)
            claimable = nxt < cfg.intervals and state == PENDING
            finished = nxt >= cfg.intervals and pop.maybe_finish(conn, cfg, exp)
            if not inline:
                return _Reported(snapshot, garbage, finished, claimable)
            decided = planning.plan(snapshot)
            if not decided:  # nothing can be decided yet: the change that allows it will
                return _Reported(snapshot, garbage, finished, claimable, planned=True)
            # the reporting worker claims one task right after this: wake the idle ones only
            # for more than one (else every report wakes them all, to find nothing)
            wake = (state == PENDING) + sum(not d.give_up for d in decided.decisions) > 1
            applied = self._apply(conn, cfg, exp, decided, wake)
            if applied is None:  # cannot be: we hold the lock, the version is ours
                raise pop.Conflict("the population moved under the lock")
            dead, over = applied
            kept = claimable or pop.kept(decided, mine)
            return _Reported(snapshot, garbage + dead, finished or over, kept, pop.donor_of(decided, mine), True)

        inline = explore is None and cfg.explore != "pb2"
        try:
            try:
                reported = self._run(lambda conn: tx(conn, inline))
            except pop.Conflict:  # a decided task changed under the lock after all: plan outside it
                reported = self._run(lambda conn: tx(conn, False))
        except _AlreadyReported:  # its first attempt committed; its decisions may still be open
            settled = self.settle(exp, explore)
            return replace(settled, finished=self.progress(exp).finished)
        if reported.planned:
            return Outcome(reported.finished, reported.donor, reported.garbage, reported.claimable)
        outcome = self._settle(exp, reported.snapshot, explore, reported.finished, reported.garbage, mine)
        return replace(outcome, next_is_mine=reported.claimable or outcome.next_is_mine)

    def fail(self, task: Task, message: str, explore: Hook | None = None, detail: str | None = None) -> Outcome:
        """Retry the task after a delay that doubles with each attempt, or once it failed
        ``max_attempts`` times (or starts from a corrupt checkpoint), let it wait for a
        replacement, decided like any other plan. When every member has failed its first
        interval and nothing ever succeeded, the experiment is marked failed."""
        cfg = self.config(task.experiment_id)
        exp = task.experiment_id

        def tx(conn: Connection) -> tuple[Snapshot | None, bool]:
            delay = retry_delay(cfg.retry_delay, task.attempts + 1)
            row = conn.execute(q.FAIL, {**_fence(task), "message": message, "delay": delay}).first()
            if row is None:
                raise LeaseLost(f"member {task.member} interval {task.interval}: lease was taken over")
            said = f"attempt {row.attempts}/{cfg.max_attempts}: {message}"
            pop.record_event(conn, exp, task.member, task.interval, "failure", said, task.worker, detail)
            if task.interval == 0 and pop.hopeless(conn, cfg, exp):
                first = pop.first_failure(conn, exp) or message
                pop.fail_experiment(conn, exp, f"every member failed its first interval; first error: {first}")
                return None, True
            if row.attempts < cfg.max_attempts and not _starts_from_corrupt(conn, task):
                if not delay:
                    self.db.notify(conn, _channel(exp))
                return None, False  # a plain retry, with a fresh seed: no decision depends on it
            version, _ = pop.bump(conn, exp)
            conn.execute(q.WAIT_FOR_REPLACEMENT, {"task": task.id})
            return pop.read_snapshot(conn, cfg, exp, version), False

        snapshot, over = self._run(tx)
        if snapshot is None:
            return Outcome(over)
        return self._settle(exp, snapshot, explore, False, [], [(task.member, task.interval)])

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
                self.db.notify(conn, _channel(experiment_id))
            pop.record_event(conn, experiment_id, -1, -1, "worker_fault", reason, worker)
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
            pop.record_event(conn, experiment_id, -1, -1, "resumed", "failed experiment resumed from its start", None)
            self.db.notify(conn, _channel(experiment_id))

        self._run(tx)

    def set_spec(self, experiment_id: int, ref: str, digest: str | None, worker: str) -> None:
        def tx(conn: Connection) -> None:
            e = s.experiments
            stored = conn.execute(select(e.c.config).where(e.c.id == experiment_id)).scalar_one()
            config = dict(stored, spec=ref, spec_digest=digest)
            conn.execute(update(e).where(e.c.id == experiment_id).values(config=config))
            message = f"the spec changed: now {ref} (sha256 {str(digest)[:12]}), allowed by --allow-spec-change"
            pop.record_event(conn, experiment_id, -1, -1, "spec_changed", message, worker)

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
        hook_failures: dict[planning.Note, None] = {}  # the user's explore raised in some pass
        for _ in range(REPLANS):
            decided = planning.plan(snapshot, explore, explored)
            if not decided:
                break
            for n in decided.notes:
                if n.kind == "failure" and n not in hook_failures:
                    hook_failures[n] = None
                    log.warning("member %d interval %d: %s\n%s", n.member, n.interval, n.message, n.detail or "")
            try:
                applied = self._run(lambda conn, plan=decided: self._apply(conn, cfg, exp_id, plan))
            except pop.Conflict:
                applied = None
            if applied is not None:
                self._keep_failures([n for n in hook_failures if n not in decided.notes], exp_id)
                dead, done = applied
                return Outcome(finished or done, pop.donor_of(decided, mine), garbage + dead, pop.kept(decided, mine))
            snapshot = self._run(lambda conn: pop.read_snapshot(conn, cfg, exp_id), read=True)
        self._keep_failures(list(hook_failures), exp_id)
        return Outcome(finished, None, garbage)

    def _keep_failures(self, notes: list[planning.Note], exp_id: int) -> None:
        """Failures of user code in plans that were never applied (the population moved on):
        recorded all the same, since the plan that is applied may not call the hook again."""
        if not notes:
            return

        def tx(conn: Connection) -> None:
            for n in notes:
                pop.record_event(conn, exp_id, n.member, n.interval, n.kind, n.message, None, n.detail)

        self._run(tx)

    def _apply(
        self, conn: Connection, cfg: ExperimentConfig, exp_id: int, plan: planning.Plan, wake: bool = True
    ) -> tuple[list[str], bool] | None:
        """Apply ``plan`` (None if the population moved on); the garbage, and whether that
        finished the run. ``wake``: notify idle workers of the tasks it made claimable."""
        floor = pop.apply(conn, exp_id, plan)
        if floor is None:
            return None
        if wake:
            self.db.notify(conn, _channel(exp_id))
        gave_up = any(d.give_up for d in plan.decisions)
        floor = None if gave_up else floor
        return pop.collect_garbage(conn, cfg, exp_id, floor), gave_up and pop.maybe_finish(conn, cfg, exp_id)

    def mark_corrupt(self, checkpoint: Checkpoint, message: str) -> None:
        c = s.checkpoints

        def tx(conn: Connection) -> None:
            conn.execute(update(c).where(c.c.id == checkpoint.id).values(state=CheckpointState.CORRUPT))
            exp_id = conn.execute(select(c.c.experiment_id).where(c.c.id == checkpoint.id)).scalar_one()
            pop.bump(conn, exp_id)  # it can no longer be copied: a pending plan may have chosen it
            where = (exp_id, checkpoint.member, checkpoint.interval)
            pop.record_event(conn, *where, "corrupt_checkpoint", message, None)

        self._run(tx)


# -- helpers over a connection ---------------------------------------------------------


def retry_delay(base: float, attempts: int) -> float:
    """Seconds before attempt ``attempts + 1``: ``base`` doubled at each failed attempt."""
    return min(MAX_RETRY_DELAY, base * 2 ** max(0, attempts - 1)) if base > 0 else 0.0


@dataclass(frozen=True)
class _Reported:
    """What a report's transaction leaves for the rest of ``report``: the snapshot to plan
    from, unless it planned (and applied) the decisions itself (``planned``)."""

    snapshot: Snapshot
    garbage: list[str]
    finished: bool
    claimable: bool
    donor: int | None = None
    planned: bool = False


class _AlreadyReported(Exception):
    """A retried report whose first attempt committed before its connection dropped."""


def _starts_from_corrupt(conn: Connection, task: Task) -> bool:
    """Retrying from a checkpoint known to be corrupt cannot succeed: replace at once."""
    if task.start is None:
        return False
    state = conn.execute(select(s.checkpoints.c.state).where(s.checkpoints.c.id == task.start.id)).scalar()
    return state == CheckpointState.CORRUPT


def _channel(experiment_id: int) -> str:
    """What the workers of an experiment wait on for claimable work."""
    return f"popbt_work_{experiment_id}"


def _fence(task: Task) -> dict[str, Any]:
    """The parameters of ``queries.FENCE``: this task, still running under this lease."""
    return {"task": task.id, "token": task.token}


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
