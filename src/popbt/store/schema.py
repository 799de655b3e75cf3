"""Tables, and the database clock. One definition serves sqlite and PostgreSQL.

Times are seconds since the epoch as floats, read from the database's own clock, so that
leases never depend on a worker's clock being right.
"""

from __future__ import annotations

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
    Column("checkpoint_dir", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    # bumped by every change a decision depends on: a plan made from an older snapshot is refused
    Column("version", Integer, nullable=False, server_default="0"),
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
    Column("worker", Text, nullable=True),
    Column("created_at", Float, nullable=False),
)


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
