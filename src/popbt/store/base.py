"""The Store contract and the plain records it hands out.

The database is the coordinator: there is no server process. Every worker talks to the
store, and the store alone decides who trains what. Records are frozen dataclasses so that
nothing outside the store can mistake them for live state.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field
from typing import Any

from ..config import ExperimentConfig
from ..errors import PopbtError
from ..plan import Hook

SCHEMA_VERSION = 4

# Task states. A task is "train member m for interval k". WAITING: its start (own weights or
# a donor's, and the hyperparameters) is not decided yet, so nobody may claim it.
WAITING, PENDING, RUNNING, DONE, FAILED = "waiting", "pending", "running", "done", "failed"
ACTIVE = (WAITING, PENDING, RUNNING)  # not yet done: a worker will still train it


class ExperimentStatus:
    """``Experiment.status``."""

    RUNNING = "running"
    FINISHED = "finished"  # every member trained every interval (or was given up, not all of them)
    FAILED = "failed"  # it cannot succeed: every member failed its first interval, or all were given up


class CheckpointState:
    """A checkpoint row's state: ``live`` (may be loaded), ``deleted`` (its file is gone or
    going), ``corrupt`` (its bytes no longer match the checksum: never loaded again)."""

    LIVE = "live"
    DELETED = "deleted"
    CORRUPT = "corrupt"


class Rejected(PopbtError):
    """The database refused what a worker reported (a value it cannot store)."""


class LeaseLost(PopbtError):
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
    uid: str = ""  # random at creation; checkpoint file names carry it (the sweep's proof of ownership)

    @property
    def checkpoints_in_db(self) -> bool:
        return self.checkpoint_dir == IN_DATABASE

    @property
    def finished(self) -> bool:
        return self.status == ExperimentStatus.FINISHED

    @property
    def failed(self) -> bool:
        return self.status == ExperimentStatus.FAILED

    @property
    def over(self) -> bool:
        """Nothing is left to train: finished or failed."""
        return self.status != ExperimentStatus.RUNNING


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
    worker: str = ""  # who holds the lease


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
    member's next task copies (if that was decided already), which checkpoint files are now
    garbage (to unlink after the commit), and whether the member's next task may be claimed
    now from the checkpoint just reported (a worker holding that state claims it first)."""

    finished: bool
    exploited_from: int | None = None
    garbage: list[str] = field(default_factory=list)
    next_is_mine: bool = False


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
    """One line of what happened: ``failure``, ``replaced``, ``gave_up``, ``lease_expired``,
    ``released``, ``corrupt_checkpoint``, ``nonfinite``, ``worker_fault``, ``run_failed``,
    ``resumed``, ``spec_changed``. A failure in user code keeps its traceback in ``detail``."""

    member: int
    interval: int
    kind: str
    message: str
    created_at: float
    detail: str | None = None
    worker: str | None = None


@dataclass(frozen=True)
class Head:
    """A member as the population stands: its latest result (``age`` -1: none yet), how many
    results it has, its best score ever, and the interval it was given up at (if it was)."""

    member: int
    age: int
    score: float | None
    checkpoint: int | None
    done: int
    best_seen: float | None
    given_up_at: int | None


@dataclass(frozen=True)
class Progress:
    """``best_member``/``best_score``: the best model so far (best score at the latest interval
    any member completed; the best final model once finished). ``best_seen``: the best score
    ever reported, whose checkpoint may be gone: label it so wherever it is shown."""

    total: int
    done: int
    failed: int
    running: int
    best_member: int | None
    best_score: float | None
    finished: bool
    status: str = ExperimentStatus.RUNNING
    best_seen: float | None = None

    @property
    def over(self) -> bool:
        """Nothing is left to train: finished, or failed."""
        return self.status != ExperimentStatus.RUNNING


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
      exploit is possible then). ``fail`` retries a task up to ``max_attempts`` times (each
      retry claimable only after a delay that doubles, by the database's clock), then lets it
      wait for a replacement. ``release`` hands a task back without counting an attempt (a
      worker stopped by a signal); ``absolve`` takes back attempts a faulty worker charged.
    - An experiment that cannot succeed is marked ``failed``: every member failed its first
      interval with no result anywhere, or every member was given up. Nothing is claimed
      from it; ``reopen`` lets a failed-at-the-start experiment run again (after a fix).
    - Decisions (``popbt.plan``) are taken from a snapshot of the population read under the
      lock; planned outside it when planning runs user code or PB2's fit, and then applied only
      if the population's version has not moved (else re-planned); with the built-in rules
      alone, planned and applied under the lock in the report's transaction. ``report``,
      ``fail`` and ``settle`` decide; any caller may.
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
    def claim(self, experiment_id: int, worker: str, device: str, prefer: tuple[int, int] | None = None) -> Task | None:
        """A task leased to ``worker``, or None when nothing is claimable right now.
        ``prefer`` (member, interval): that task if it is claimable and its member is not more
        than a few intervals ahead of the slowest (affinity: the worker still holds its state).
        A failed task goes to another worker while there is one (another worker held a lease
        here in the last two leases): one bad host cannot spend a member's attempts alone."""

    @abc.abstractmethod
    def wait_for_work(self, experiment_id: int, timeout: float, stop: threading.Event | None = None) -> None:
        """Block until work may have become claimable (a report, a decision, a hand-back),
        ``stop`` is set, or ``timeout`` seconds passed. Spurious wake-ups are allowed."""

    @abc.abstractmethod
    def heartbeat(self, task: Task) -> bool:
        """Renew the lease; False if it was taken over."""

    @abc.abstractmethod
    def report(self, task: Task, result: Result, explore: Hook | None = None) -> Outcome:
        """Record ``result`` and decide what waits on it. ``explore`` is the spec's own
        ``explore(hparams, rng)`` hook, run outside any lock by the plan.

        Raises: LeaseLost if the lease was taken over; Rejected if the database refuses a value."""

    @abc.abstractmethod
    def fail(self, task: Task, message: str, explore: Hook | None = None, detail: str | None = None) -> Outcome:
        """Record a failed attempt (``message``: one line; ``detail``: the traceback); retry,
        replace the member, or mark the experiment failed (see the contract).

        Raises: LeaseLost if the lease was taken over."""

    @abc.abstractmethod
    def absolve(self, experiment_id: int, charged: dict[int, tuple[int, int]], worker: str, reason: str) -> int:
        """Take back the attempts a faulty worker charged: ``charged`` maps a task id to (its
        attempts after the worker's last failure of it, how many failures to take back). Only
        tasks still as that last failure left them change. Returns how many attempts were taken
        back; records a ``worker_fault`` event with ``reason``."""

    @abc.abstractmethod
    def settle(self, experiment_id: int, explore: Hook | None = None) -> Outcome:
        """Decide every waiting task that can be decided now (idempotent)."""

    @abc.abstractmethod
    def release(self, task: Task, reason: str | None = None) -> bool:
        """Hand the task back untouched, no attempt counted (a worker that stops); with a
        ``reason``, a ``released`` event says why. False if the lease was lost."""

    @abc.abstractmethod
    def reopen(self, experiment_id: int) -> None:
        """Let an experiment marked failed before any result run again: its first interval's
        attempts start from zero. Raises: ConfigError if it failed after results existed."""

    @abc.abstractmethod
    def set_spec(self, experiment_id: int, ref: str, digest: str | None, worker: str) -> None:
        """Record that the experiment now runs other spec code (``--allow-spec-change``)."""

    @abc.abstractmethod
    def mark_corrupt(self, checkpoint: Checkpoint, message: str) -> None:
        """Record that a checkpoint's bytes do not match: it is never loaded or copied again."""

    # -- reading --------------------------------------------------------------------------

    @abc.abstractmethod
    def progress(self, experiment_id: int) -> Progress:
        """Intervals done, members given up, tasks running, the best model so far, the status;
        read from the members' heads (its cost is the population's, not the history's)."""

    @abc.abstractmethod
    def heads(self, experiment_id: int) -> list[Head]:
        """Each member's head (latest result, results so far, best score ever, given up at)."""

    @abc.abstractmethod
    def running(self, experiment_id: int) -> list[Row]:
        """The tasks being trained now (who trains what), read by index, not from the history."""

    @abc.abstractmethod
    def history(self, experiment_id: int) -> list[Row]:
        """Every (member, interval) row, ordered by interval then member."""

    @abc.abstractmethod
    def exploits(self, experiment_id: int, latest: int | None = None) -> list[Exploit]:
        """Every recorded copy (or the ``latest`` few), in the order they were decided."""

    @abc.abstractmethod
    def events(self, experiment_id: int, limit: int = 20, kinds: tuple[str, ...] = ()) -> list[Event]:
        """The latest ``limit`` events (of these ``kinds``, or all), oldest first."""

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
