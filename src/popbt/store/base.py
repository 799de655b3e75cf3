"""The Store contract and the plain records it hands out.

The database is the coordinator: there is no server process. Every worker talks to the
store, and the store alone decides who trains what. Records are frozen dataclasses so that
nothing outside the store can mistake them for live state.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from ..experiment import ExperimentConfig
from ..plan import Hook

SCHEMA_VERSION = 2

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
    attempts: int  # failed attempts so far: a retry trains with a fresh seed
    replacements: int = 0  # restarts from a top member after max_attempts failures


@dataclass(frozen=True)
class Result:
    """What a worker reports after one interval. ``data`` holds the checkpoint's bytes when
    the experiment keeps checkpoints in the database (``--checkpoints db``). A ``score`` that
    is NaN or infinite is recorded as the worst score (stored as NULL)."""

    score: float
    metrics: dict[str, Any]
    path: str
    sha256: str
    size: int
    data: bytes | None = None


@dataclass(frozen=True)
class Outcome:
    """What a report or failure decided: whether the experiment is finished, the donor the
    member's next task copies (if that was decided already), and which checkpoint files are
    now garbage (to unlink after the commit)."""

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
    replacements: int = 0


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

    Contract (every implementation, every backend; ``tests/test_store.py`` checks it on each):

    - ``claim`` hands a pending task, or one whose lease expired by the *database's* clock,
      to exactly one caller, with a fresh lease token; the member furthest behind goes first.
      A ``waiting`` task (its start not decided yet) is never handed out.
    - ``heartbeat``, ``report``, ``fail`` and ``release`` are compare-and-set on the task id,
      the ``running`` state and the token: a caller whose lease was taken over gets
      ``LeaseLost`` (or False) and changes nothing.
    - ``report`` records the result exactly once per (experiment, member, interval) and creates
      the member's next task, waiting for its exploit decision (or claimable at once when no
      exploit is possible then). ``fail`` retries a task up to ``max_attempts`` times, then
      lets it wait for a replacement.
    - Decisions (``popbt.plan``) are taken from a snapshot of the population read under the
      lock, planned outside it (user hooks, PB2), and applied only if the population's version
      has not moved (else re-planned). ``report``, ``fail`` and ``settle`` do it; any caller may.
    - Members are compared at matched age, failing and given-up members are never ranked or
      copied, and every model's age is exact (``docs/strategies.md``).
    - A checkpoint is live while a task not yet done starts from it, it is a member's latest
      result, or a decision may still copy it; calls that change that return the paths that
      stopped being live, which the caller deletes only after the commit.

    Every method raises ``StoreError`` when the database stays unreachable for longer than
    the store's patience; the others it raises are listed per method.
    """

    # -- experiments --------------------------------------------------------------------

    @abc.abstractmethod
    def create_experiment(self, config: ExperimentConfig, checkpoint_dir: str) -> Experiment:
        """Create the experiment and its first interval's tasks (the seeded initial draws).

        Raises: ConfigError if an experiment of that name exists."""

    @abc.abstractmethod
    def experiment(self, name: str) -> Experiment:
        """The experiment called ``name``; ``latest`` is the one created last.

        Raises: NotFound."""

    @abc.abstractmethod
    def experiment_by_id(self, experiment_id: int) -> Experiment:
        """The experiment with this id (as ``Experiment.id`` gave it)."""

    @abc.abstractmethod
    def experiments(self) -> list[Experiment]:
        """Every experiment, oldest first."""

    @abc.abstractmethod
    def config(self, experiment_id: int) -> ExperimentConfig:
        """The experiment's settings (cached: they never change once it exists)."""

    # -- the queue ------------------------------------------------------------------------

    @abc.abstractmethod
    def claim(self, experiment_id: int, worker: str, device: str) -> Task | None:
        """A task leased to ``worker``, or None when nothing is claimable right now."""

    @abc.abstractmethod
    def heartbeat(self, task: Task) -> bool:
        """Renew the lease; False if it was taken over."""

    @abc.abstractmethod
    def report(self, task: Task, result: Result, explore: Hook | None = None) -> Outcome:
        """Record ``result`` and decide what waits on it. ``explore`` is the spec's own
        ``explore(hparams, rng)`` hook, run outside any lock by the plan.

        Raises: LeaseLost if the lease was taken over; Rejected if the database refuses a value."""

    @abc.abstractmethod
    def fail(self, task: Task, message: str, explore: Hook | None = None) -> Outcome:
        """Record a failed attempt; retry, or replace the member (see the contract).

        Raises: LeaseLost if the lease was taken over."""

    @abc.abstractmethod
    def settle(self, experiment_id: int, explore: Hook | None = None) -> Outcome:
        """Decide every waiting task that can be decided now (idempotent)."""

    @abc.abstractmethod
    def release(self, task: Task) -> bool:
        """Hand the task back untouched (a worker that stops); False if the lease was lost."""

    @abc.abstractmethod
    def mark_corrupt(self, checkpoint: Checkpoint, message: str) -> None:
        """Record that a checkpoint's bytes do not match: it is never loaded or copied again."""

    # -- reading --------------------------------------------------------------------------

    @abc.abstractmethod
    def progress(self, experiment_id: int) -> Progress:
        """Counts of tasks by state, the best score so far, whether the run is finished."""

    @abc.abstractmethod
    def history(self, experiment_id: int) -> list[Row]:
        """Every (member, interval) row, ordered by interval then member."""

    @abc.abstractmethod
    def exploits(self, experiment_id: int) -> list[Exploit]:
        """Every recorded copy, in the order they were decided."""

    @abc.abstractmethod
    def events(self, experiment_id: int, limit: int = 20) -> list[Event]:
        """The latest ``limit`` events (failures, replacements, expired leases), oldest first."""

    @abc.abstractmethod
    def checkpoint_data(self, checkpoint: Checkpoint) -> bytes:
        """The bytes of a checkpoint kept in the database.

        Raises: StoreError if it has none (its experiment keeps checkpoints in files)."""

    @abc.abstractmethod
    def live_checkpoints(self, experiment_id: int) -> list[Checkpoint]:
        """The checkpoints still referenced, oldest first."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connections."""
