"""Tables, and the database clock. One definition serves sqlite and PostgreSQL.

Times are seconds since the epoch as floats, read from the database's own clock, so that
leases never depend on a worker's clock being right.
"""

from __future__ import annotations

import uuid

from sqlalchemy import (
    JSON,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
    select,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

metadata = MetaData()

meta = Table(
    "popbt_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

experiments = Table(
    "popbt_experiments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("config", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # ExperimentStatus
    # random at creation: checkpoint file names carry it, so a sweep touches only this
    # database's and this experiment's files, whoever else shares the directory
    Column("uid", String(32), nullable=True),
    Column("checkpoint_dir", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    # bumped by every change a decision depends on: a plan made from an older snapshot is refused
    Column("version", Integer, nullable=False, server_default="0"),
    # the youngest age every member still training has reached when garbage was last collected:
    # checkpoints only die when it moves, so a report collects garbage only then
    Column("gc_floor", Integer, nullable=False, server_default="-1"),
    # the best score ever reported and its checkpoint, kept alive with --keep-best
    Column("best_score", Float, nullable=True),
    Column("best_checkpoint_id", Integer, nullable=True),
)

# One row per member, kept up to date by every report: its head (latest result), so that
# decisions, progress and garbage collection read the population, never the whole history.
members = Table(
    "popbt_members",
    metadata,
    Column("experiment_id", Integer, ForeignKey("popbt_experiments.id"), primary_key=True),
    Column("member", Integer, primary_key=True),
    Column("age", Integer, nullable=False, server_default="-1"),  # its latest interval with a result
    Column("score", Float, nullable=True),  # that result's score (NULL: none yet, or non-finite)
    Column("checkpoint_id", Integer, nullable=True),  # that result's checkpoint
    Column("done", Integer, nullable=False, server_default="0"),  # results so far
    Column("best_seen", Float, nullable=True),  # its best score ever (its checkpoint may be gone)
    Column("given_up_at", Integer, nullable=True),  # the interval it stopped at, when given up
)

checkpoints = Table(
    "popbt_checkpoints",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("experiment_id", Integer, ForeignKey("popbt_experiments.id"), nullable=False),
    Column("member", Integer, nullable=False),
    Column("interval", Integer, nullable=False),
    Column("path", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("state", String(16), nullable=False),  # CheckpointState
    Column("data", LargeBinary, nullable=True),  # bytes, when checkpoints live in the database
    Column("created_at", Float, nullable=False),
    Index("popbt_checkpoints_live", "experiment_id", "state"),
)

tasks = Table(
    "popbt_tasks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("experiment_id", Integer, ForeignKey("popbt_experiments.id"), nullable=False),
    Column("member", Integer, nullable=False),
    Column("interval", Integer, nullable=False),
    Column("state", String(16), nullable=False),  # waiting | pending | running | done | failed
    Column("hparams", JSON, nullable=False),
    Column("start_checkpoint_id", Integer, ForeignKey("popbt_checkpoints.id"), nullable=True),
    Column("lease_token", String(32), nullable=True),
    Column("lease_expires", Float, nullable=True),
    Column("worker", Text, nullable=True),
    Column("device", Text, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("retry_at", Float, nullable=True),  # a failed attempt is retried from then on (backoff)
    Column("replacements", Integer, nullable=False, default=0),
    Column("score", Float, nullable=True),  # NULL once done: evaluate() returned NaN or an infinity
    Column("metrics", JSON, nullable=True),
    Column("result_checkpoint_id", Integer, ForeignKey("popbt_checkpoints.id"), nullable=True),
    Column("error", Text, nullable=True),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    UniqueConstraint("experiment_id", "member", "interval", name="popbt_tasks_once"),
    Index("popbt_tasks_queue", "experiment_id", "state", "interval", "member"),
)

exploits = Table(
    "popbt_exploits",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("experiment_id", Integer, ForeignKey("popbt_experiments.id"), nullable=False),
    Column("member", Integer, nullable=False),
    Column("interval", Integer, nullable=False),  # the interval the member trains next
    Column("donor", Integer, nullable=False),
    Column("donor_interval", Integer, nullable=False),
    Column("score", Float, nullable=True),  # NULL once done: evaluate() returned NaN or an infinity
    Column("donor_score", Float, nullable=True),
    Column("hparams_before", JSON, nullable=False),
    Column("hparams_after", JSON, nullable=False),
    Column("changes", JSON, nullable=False),  # name -> rule (x1.2, x0.8, resample, neighbour)
    Column("reason", String(16), nullable=False),  # exploit | replace
    Column("created_at", Float, nullable=False),
)

events = Table(
    "popbt_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("experiment_id", Integer, ForeignKey("popbt_experiments.id"), nullable=False),
    Column("member", Integer, nullable=False),
    Column("interval", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("message", Text, nullable=False),
    Column("detail", Text, nullable=True),  # the full traceback of a failure in user code
    Column("worker", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Index("popbt_events_by_experiment", "experiment_id", "kind"),
)


def upgrade(conn, version: int) -> None:
    """Bring a database written by an older popbt (schema ``version``) to this one, in place;
    its experiments resume as they are."""
    if version < 2:  # 0.1: the population's version
        conn.exec_driver_sql("ALTER TABLE popbt_experiments ADD COLUMN version INTEGER NOT NULL DEFAULT 0")
    if version < 3:  # identities of checkpoint files, retry backoff, tracebacks
        conn.exec_driver_sql("ALTER TABLE popbt_experiments ADD COLUMN uid VARCHAR(32)")
        conn.exec_driver_sql("ALTER TABLE popbt_tasks ADD COLUMN retry_at FLOAT")
        conn.exec_driver_sql("ALTER TABLE popbt_events ADD COLUMN detail TEXT")
        for (exp_id,) in conn.execute(select(experiments.c.id)).all():
            conn.execute(update(experiments).where(experiments.c.id == exp_id).values(uid=new_uid()))
    if version < 4:  # members' heads (the table is new: create_all made it), garbage's floor
        conn.exec_driver_sql("ALTER TABLE popbt_experiments ADD COLUMN gc_floor INTEGER NOT NULL DEFAULT -1")
        conn.exec_driver_sql("ALTER TABLE popbt_experiments ADD COLUMN best_score FLOAT")
        conn.exec_driver_sql("ALTER TABLE popbt_experiments ADD COLUMN best_checkpoint_id INTEGER")
        conn.exec_driver_sql(
            "CREATE INDEX IF NOT EXISTS popbt_events_by_experiment ON popbt_events (experiment_id, kind)"
        )
        for row in conn.execute(select(experiments.c.id, experiments.c.config)).all():
            conn.execute(
                insert(members), heads_from_history(conn, row.id, row.config["population"], row.config["mode"])
            )


def heads_from_history(conn, exp_id: int, population: int, mode: str) -> list[dict]:
    """Each member's head as its tasks say (for a database written before heads were kept)."""
    heads = {
        m: dict(experiment_id=exp_id, member=m, age=-1, score=None, checkpoint_id=None, done=0)
        for m in range(population)
    }
    seen: dict[int, list[float]] = {m: [] for m in range(population)}
    rows = conn.execute(
        select(tasks.c.member, tasks.c.interval, tasks.c.state, tasks.c.score, tasks.c.result_checkpoint_id)
        .where(tasks.c.experiment_id == exp_id)
        .order_by(tasks.c.interval)
    ).all()
    for r in rows:
        head = heads.setdefault(
            r.member, dict(experiment_id=exp_id, member=r.member, age=-1, score=None, checkpoint_id=None, done=0)
        )
        if r.state == "done":
            head.update(age=r.interval, score=r.score, checkpoint_id=r.result_checkpoint_id, done=head["done"] + 1)
            if r.score is not None:
                seen.setdefault(r.member, []).append(r.score)
        elif r.state == "failed" and "given_up_at" not in head:
            head["given_up_at"] = r.interval
    for m, head in heads.items():
        head.setdefault("given_up_at", None)
        scores = seen.get(m) or []
        head["best_seen"] = (max(scores) if mode == "max" else min(scores)) if scores else None
    return list(heads.values())


def new_uid() -> str:
    return uuid.uuid4().hex


class db_now(FunctionElement):
    """The database server's clock, in seconds since the epoch."""

    type = Float()
    inherit_cache = True


@compiles(db_now, "sqlite")
def _sqlite_now(element, compiler, **kw):
    return "((julianday('now') - 2440587.5) * 86400.0)"


@compiles(db_now, "postgresql")
def _postgresql_now(element, compiler, **kw):
    return "extract(epoch from clock_timestamp())::float8"
