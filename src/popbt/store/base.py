"""The Store contract and the plain records it hands out.

The database is the coordinator: there is no server process. Every worker talks to the
store, and the store alone decides who trains what. Records are frozen dataclasses so that
nothing outside the store can mistake them for live state.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable

from ..experiment import ExperimentConfig

SCHEMA_VERSION = 1

# Task states. A task is "train member m for interval k". WAITING: its start (own weights or
# a donor's, and the hyperparameters) is not decided yet, so nobody may claim it.
WAITING, PENDING, RUNNING, DONE, FAILED = "waiting", "pending", "running", "done", "failed"
ACTIVE = (WAITING, PENDING, RUNNING)  # not yet done: a worker will still train it


class ExperimentStatus:
    """``Experiment.status``."""

    RUNNING = "running"
    FINISHED = "finished"


class CheckpointState:
    """A checkpoint row's state: ``live`` (may be loaded), ``deleted`` (its file is gone or
    going), ``corrupt`` (its bytes no longer match the checksum: never loaded again)."""

    LIVE = "live"
    DELETED = "deleted"
    CORRUPT = "corrupt"


class StoreError(RuntimeError):
    """The database cannot be used (unreachable, another schema version, malformed URL)."""


class NotFound(LookupError):
    """No experiment of that name."""


class Rejected(RuntimeError):
    """The database refused what a worker reported (a value it cannot store)."""


class LeaseLost(RuntimeError):
    """The worker's lease was taken over; its result must be discarded."""


IN_DATABASE = "db"  # the checkpoint_dir of an experiment that keeps checkpoint bytes in the database


@dataclass(frozen=True)
class Experiment:
    id: int
    name: str
    config: ExperimentConfig
    status: str
    created_at: float
    checkpoint_dir: str  # a directory every worker can reach, or IN_DATABASE

    @property
    def checkpoints_in_db(self) -> bool:
        return self.checkpoint_dir == IN_DATABASE


@dataclass(frozen=True)
class Checkpoint:
    id: int
    member: int
    interval: int
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Task:
    """A claimed unit of work, with the lease token that fences its report."""

    id: int
    experiment_id: int
    member: int
    interval: int
    hparams: dict[str, Any]
    start: Checkpoint | None
    token: str
    attempts: int


@dataclass(frozen=True)
class Result:
    """What a worker reports after one interval. ``data`` holds the checkpoint's bytes when
    the experiment keeps checkpoints in the database (``--checkpoints db``)."""

    score: float
    metrics: dict[str, Any]
    path: str
    sha256: str
    size: int
    data: bytes | None = None


@dataclass(frozen=True)
class Outcome:
    """What a report or failure decided, and which checkpoint files are now garbage."""

    finished: bool
    exploited_from: int | None = None
    garbage: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Row:
    """One (member, interval) row of the history, as status, best and export read it."""

    member: int
    interval: int
    state: str
    score: float | None
    metrics: dict[str, Any]
    hparams: dict[str, Any]
    parent: int | None
    parent_interval: int | None
    checkpoint: str | None
    worker: str | None
    device: str | None
    attempts: int
    error: str | None
    started_at: float | None
    finished_at: float | None


@dataclass(frozen=True)
class Exploit:
    """One recorded copy: ``member`` trains ``interval`` from ``donor``'s checkpoint of
    ``donor_interval`` with explored hyperparameters. ``reason`` is ``exploit`` (a decision
    of the exploit rule) or ``replace`` (a restart after repeated failures); ``changes`` names
    the rule that produced each value (``x1.2``, ``resample``, ``pb2``, ``hook``, ...)."""

    member: int
    interval: int
    donor: int
    donor_interval: int
    score: float | None
    donor_score: float | None
    hparams_before: dict[str, Any]
    hparams_after: dict[str, Any]
    changes: dict[str, str]
    reason: str
    created_at: float


@dataclass(frozen=True)
class Event:
    member: int
    interval: int
    kind: str
    message: str
    created_at: float


@dataclass(frozen=True)
class Progress:
    total: int
    done: int
    failed: int
    running: int
    best_member: int | None
    best_score: float | None
    finished: bool


class Store(abc.ABC):
    """Where experiments, tasks, results and checkpoint references live.

    Contract (every implementation, every backend):

    - ``claim`` hands a pending task, or one whose lease expired by the *database's* clock,
      to exactly one caller, with a fresh lease token; the member furthest behind goes first.
    - ``heartbeat``, ``report``, ``fail`` and ``release`` are compare-and-set on the task id,
      the ``running`` state and the token: a caller whose lease was taken over gets
      ``LeaseLost`` (or False) and changes nothing.
    - ``report`` records the result exactly once per (experiment, member, interval), decides
      exploit/explore for what comes next from a snapshot taken in the same transaction, and
      creates the next task(s), all atomically.
    - ``fail`` retries a task up to ``max_attempts`` times, then replaces the member by
      exploiting a top member; a task replaced ``max_attempts`` times ends ``failed``, so a run
      never hangs on a member that cannot train.
    - A checkpoint is live while a task not yet done starts from it or it is a final
      interval's result; ``report`` and ``fail`` return the paths that stopped being live,
      which the caller deletes only after the commit.
    """

    @abc.abstractmethod
    def create_experiment(self, config: ExperimentConfig, checkpoint_dir: str) -> Experiment: ...

    @abc.abstractmethod
    def experiment(self, name: str) -> Experiment:
        """The experiment called ``name``; ``latest`` is the one created last."""

    @abc.abstractmethod
    def experiments(self) -> list[Experiment]: ...

    @abc.abstractmethod
    def claim(self, experiment_id: int, worker: str, device: str) -> Task | None: ...

    @abc.abstractmethod
    def heartbeat(self, task: Task) -> bool: ...

    @abc.abstractmethod
    def report(self, task: Task, result: Result, explore: Callable | None = None) -> Outcome:
        """``explore`` is the spec's own ``explore(hparams, rng)`` hook, when it has one."""

    @abc.abstractmethod
    def fail(self, task: Task, message: str, explore: Callable | None = None) -> Outcome: ...

    @abc.abstractmethod
    def release(self, task: Task) -> bool: ...

    @abc.abstractmethod
    def mark_corrupt(self, checkpoint: Checkpoint, message: str) -> None: ...

    @abc.abstractmethod
    def progress(self, experiment_id: int) -> Progress: ...

    @abc.abstractmethod
    def history(self, experiment_id: int) -> list[Row]: ...

    @abc.abstractmethod
    def events(self, experiment_id: int, limit: int = 20) -> list[Event]: ...

    @abc.abstractmethod
    def checkpoint_data(self, checkpoint: Checkpoint) -> bytes:
        """The bytes of a checkpoint kept in the database."""

    @abc.abstractmethod
    def live_checkpoints(self, experiment_id: int) -> list[Checkpoint]: ...

    @abc.abstractmethod
    def close(self) -> None: ...
