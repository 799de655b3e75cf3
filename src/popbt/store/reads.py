"""The store's reads: progress, the history, events, exploits, checkpoints, heads.

A mixin of ``SQLStore`` (which brings ``_run`` and ``config``): the hot reads (progress,
heads, what is running) come from the members' head rows and indexed states, so the launcher
and idle workers poll the population, never the whole history; the others (history,
exploits, events) are for analysis and read everything they are asked for.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..errors import StoreError
from . import queries as q
from . import schema as s
from .base import RUNNING, Checkpoint, CheckpointState, Event, ExperimentStatus, Exploit, Head, Progress, Row


class Reads:
    """Read methods of the Store contract (see ``base.Store``)."""

    def progress(self, experiment_id: int) -> Progress:
        cfg = self.config(experiment_id)

        def tx(conn: Connection) -> Progress:
            heads = [_head(r) for r in conn.execute(q.HEADS, {"exp": experiment_id})]
            running = conn.execute(q.RUNNING_COUNT, {"exp": experiment_id}).scalar_one()
            status = conn.execute(q.STATUS, {"exp": experiment_id}).scalar_one()
            best = best_head(heads, cfg.mode)
            seen = [h.best_seen for h in heads if h.best_seen is not None]
            return Progress(
                cfg.population * cfg.intervals,
                sum(h.done for h in heads),
                sum(h.given_up_at is not None for h in heads),
                running,
                best.member if best else None,
                best.score if best else None,
                status == ExperimentStatus.FINISHED,
                status,
                (max(seen) if cfg.mode == "max" else min(seen)) if seen else None,
            )

        return self._run(tx, read=True)

    def heads(self, experiment_id: int) -> list[Head]:
        return self._run(lambda conn: [_head(r) for r in conn.execute(q.HEADS, {"exp": experiment_id})], read=True)

    def running(self, experiment_id: int) -> list[Row]:
        t = s.tasks
        query = (
            select(t).where(t.c.experiment_id == experiment_id, t.c.state == RUNNING).order_by(t.c.worker, t.c.member)
        )
        return [_row(r) for r in self._run(lambda conn: conn.execute(query).all(), read=True)]

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
        return [_row(r, r.parent, r.parent_interval, r.result_path) for r in rows]

    def events(self, experiment_id: int, limit: int = 20, kinds: tuple[str, ...] = ()) -> list[Event]:
        e = s.events
        query = select(e).where(e.c.experiment_id == experiment_id)
        if kinds:
            query = query.where(e.c.kind.in_(kinds))
        rows = self._run(lambda conn: conn.execute(query.order_by(e.c.id.desc()).limit(limit)).all(), read=True)
        return [
            Event(r.member, r.interval, r.kind, r.message, r.created_at, r.detail, r.worker) for r in reversed(rows)
        ]

    def exploits(self, experiment_id: int, latest: int | None = None) -> list[Exploit]:
        x = s.exploits
        query = select(x).where(x.c.experiment_id == experiment_id).order_by(x.c.id.desc())
        if latest is not None:
            query = query.limit(latest)
        rows = self._run(lambda conn: conn.execute(query).all()[::-1], read=True)
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


def best_head(heads: list[Head], mode: str) -> Head | None:
    """The best model so far: the best score at the latest interval any member completed
    (the best final model, once the run is finished); ties go to the lower member."""
    scored = [h for h in heads if h.age >= 0 and h.score is not None]
    if not scored:
        return None
    last = max(h.age for h in scored)
    sign = 1 if mode == "max" else -1
    return max((h for h in scored if h.age == last), key=lambda h: (sign * h.score, -h.member))


def _head(r: Any) -> Head:
    return Head(r.member, r.age, r.score, r.checkpoint_id, r.done, r.best_seen, r.given_up_at)


def _row(r: Any, parent: int | None = None, parent_interval: int | None = None, path: str | None = None) -> Row:
    return Row(
        r.member,
        r.interval,
        r.state,
        r.score,
        dict(r.metrics or {}),
        dict(r.hparams),
        parent,
        parent_interval,
        path,
        r.worker,
        r.device,
        r.attempts,
        r.error,
        r.started_at,
        r.finished_at,
        r.replacements,
    )
