"""The worker loop: claim a task, train it, report it. The only place user code runs.

A worker never chooses members itself: the store hands out work and decides exploits. A
heartbeat thread renews the lease while user code trains; if the lease is lost anyway
(the worker froze past it), the store refuses the late report and the worker moves on.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import random
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checkpoints
from .experiment import ConfigError, Spec
from .space import space_to_json
from .store import IN_DATABASE, Checkpoint, Experiment, LeaseLost, Rejected, Result, Store, StoreError, Task

log = logging.getLogger("popbt.worker")

SETTLE_AFTER = 2.0  # seconds idle before a worker takes decisions a dead worker left behind


@dataclass(frozen=True)
class Trial:
    """What the worker is training right now, for user code that wants to know."""

    experiment: str
    member: int
    interval: int
    device: str
    seed: int


_current: Trial | None = None


def current() -> Trial:
    """The (experiment, member, interval) being trained; only valid inside spec functions."""
    if _current is None:
        raise RuntimeError("popbt.current() is only available while a worker runs spec code")
    return _current


class ScoreError(ValueError):
    """evaluate() returned something that is not a finite number."""


@dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    lost: int = 0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def seed_for(seed: int, member: int, interval: int, attempts: int = 0, replacements: int = 0) -> int:
    """A seed for one attempt at (member, interval), the same whichever worker trains it.

    A retry gets a fresh seed (a failure that depends on the draw is not repeated for nothing);
    the first attempt keeps the seed of earlier popbt versions, so histories still replay.
    """
    key = f"popbt:{seed}:{member}:{interval}"
    if attempts or replacements:
        key += f":{replacements}:{attempts}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")


def seed_everything(seed: int) -> None:
    """Seed the RNGs user code is likely to use: random, numpy and torch when imported."""
    random.seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def set_threads(threads: int | None) -> None:
    """Split a CPU between the workers sharing it, so they do not oversubscribe it."""
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def split_score(evaluated: Any, metric: str, nonfinite: bool = False) -> tuple[float, dict[str, Any]]:
    """evaluate() returns a number or a dict holding ``metric``; reject non-numbers, and NaN
    or infinities unless ``nonfinite`` (the experiment counts them as the worst score)."""
    metrics: dict[str, Any] = {}
    if isinstance(evaluated, dict):
        if metric not in evaluated:
            raise ScoreError(f"evaluate() returned {sorted(evaluated)} without the metric {metric!r}")
        metrics = {k: _plain(v) for k, v in evaluated.items() if k != metric}
        evaluated = evaluated[metric]
    try:
        if isinstance(evaluated, (str, bytes)):
            raise TypeError
        score = float(evaluated)
    except (TypeError, ValueError):
        raise ScoreError(f"evaluate() returned {evaluated!r}, not a number") from None
    if isinstance(evaluated, bool):
        raise ScoreError(f"evaluate() returned {evaluated!r}, not a number")
    if not math.isfinite(score) and not nonfinite:
        raise ScoreError(f"evaluate() returned {evaluated!r}, not a finite number")
    return score, metrics


def _plain(value: Any) -> Any:
    """Metrics go to JSON: numpy/torch scalars become floats, NaN and infinities None (JSON
    has no word for them), anything else its text."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return None
    return value if isinstance(value, int) else number


class Heartbeat:
    """Renews the lease of the task being trained every third of the lease time.

    One thread per worker for all its tasks: starting a thread per interval costs milliseconds
    on a busy machine, which is popbt's overhead on every interval.
    """

    def __init__(self, store: Store, period: float) -> None:
        self.store, self.period = store, period
        self._current: Task | None = None
        self._lost = False
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def keep(self, task: Task) -> Iterator[Callable[[], bool]]:
        """Keep ``task``'s lease alive inside the block; yields "was the lease lost?"."""
        with self._guard:
            self._current, self._lost = task, False
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="popbt-heartbeat", daemon=True)
            self._thread.start()
        try:
            yield lambda: self._lost
        finally:
            with self._guard:
                self._current = None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._thread, self._stop = None, threading.Event()

    def _beat(self) -> None:
        while not self._stop.wait(self.period):
            with self._guard:
                task = None if self._lost else self._current
            if task is None:
                continue
            try:
                held = self.store.heartbeat(task)
            except Exception as e:  # keep trying: the lease may still hold when the db is back
                log.warning("heartbeat for member %d failed: %s", task.member, e)
                continue
            with self._guard:
                if not held and self._current is task:
                    self._lost = True


class Worker:
    """Trains tasks of one experiment until it is finished (or ``stop`` is set)."""

    def __init__(
        self,
        store: Store,
        experiment: Experiment,
        spec: Spec,
        device: str = "cpu",
        name: str | None = None,
        threads: int | None = None,
    ) -> None:
        if space_to_json(spec.space) != space_to_json(experiment.config.space):
            raise ConfigError(
                f"spec {spec.ref!r} declares another search space than experiment {experiment.name!r} was created with"
            )
        self.store, self.experiment, self.spec, self.device = store, experiment, spec, device
        self.name = name or worker_name()
        self.config = experiment.config
        self.ckpt_dir = checkpoints.CheckpointDir(
            _local_cache(experiment) if experiment.checkpoints_in_db else experiment.checkpoint_dir
        )
        self.stats = WorkerStats()
        self.heartbeat = Heartbeat(store, self.config.lease_seconds / 3)
        set_threads(threads)

    def run(self, stop: threading.Event | None = None, poll: float = 1.0) -> WorkerStats:
        """Train until the experiment is finished. If the database stays unreachable for
        longer than a lease (the store's patience), stop taking work with a StoreError: by
        then any task this worker held belongs to another worker, so nothing partial is written."""
        try:
            return self._loop(stop or threading.Event(), poll)
        except StoreError as e:
            raise StoreError(
                f"worker {self.name} stops taking work: the database was unreachable for "
                f"longer than its {self.config.lease_seconds:g} s lease ({e})"
            ) from None
        finally:
            self.heartbeat.close()

    def _loop(self, stop: threading.Event, poll: float) -> WorkerStats:
        idle, idle_since = 0.05, None
        while not stop.is_set():
            task = self.store.claim(self.experiment.id, self.name, self.device)
            if task is None:
                if self.store.progress(self.experiment.id).finished:
                    break
                now = time.monotonic()
                idle_since = idle_since or now
                if now - idle_since >= SETTLE_AFTER:  # a decision nobody took (its reporter died)?
                    checkpoints.delete(self.store.settle(self.experiment.id, self.spec.explore).garbage)
                    idle_since = now
                stop.wait(idle)  # others are training the rest (sync: the generation)
                idle = min(idle * 2, poll)
                continue
            idle, idle_since = 0.05, None
            self.train_one(task)
        return self.stats

    def train_one(self, task: Task) -> None:
        """One interval of one member, from claim to report; failures go to the store."""
        cfg = self.config
        if task.attempts >= cfg.max_attempts:  # workers kept dying on it (leases expired)
            self._fail(task, f"no worker finished it in {task.attempts} attempts (each one's lease expired)")
            return
        with self.heartbeat.keep(task) as lost:
            try:
                score, metrics, written = self._train(task)
            except KeyboardInterrupt:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
                self.store.release(task)
                raise
            except BaseException as e:  # SystemExit from user code is a failure too, not our exit
                self._fail(task, f"{type(e).__name__}: {_one_line(e)}")
                return
            if lost():
                self._lost(task, written.path)
                return
        try:
            outcome = self.store.report(task, self._result(score, metrics, written), explore=self.spec.explore)
        except LeaseLost:
            self._lost(task, written.path)
            return
        except Rejected as e:
            checkpoints.delete([written.path])
            self._fail(task, str(e))
            return
        finally:
            if self.experiment.checkpoints_in_db:
                checkpoints.delete([written.path])  # the bytes are in the database now
        checkpoints.delete(outcome.garbage)
        self.stats.done += 1
        copied = f" -> next copies member {outcome.exploited_from}" if outcome.exploited_from is not None else ""
        log.info("member %d interval %d: %s=%.6g%s", task.member, task.interval, cfg.metric, score, copied)

    def _train(self, task: Task) -> tuple[float, dict, checkpoints.Written]:
        global _current
        spec, hparams, device = self.spec, dict(task.hparams), self.device
        seed = seed_for(self.config.seed, task.member, task.interval, task.attempts, task.replacements)
        _current = Trial(self.experiment.name, task.member, task.interval, device, seed)
        seed_everything(seed)
        state = spec.build(hparams, device)
        if task.start is not None:
            path = self._fetch(task.start)
            try:
                loaded = spec.load(state, path)
            finally:
                if path != task.start.path:  # a scratch copy of bytes kept in the database
                    checkpoints.delete([path])
            state = state if loaded is None else loaded
            if spec.apply is not None:
                spec.apply(state, hparams)
        extra = spec.train(state, hparams, task.interval, device)
        score, metrics = split_score(
            spec.evaluate(state, device), self.config.metric, nonfinite=self.config.nonfinite == "worst"
        )
        if isinstance(extra, dict):
            metrics = {**{k: _plain(v) for k, v in extra.items()}, **metrics}
        written = self.ckpt_dir.write(task.member, task.interval, task.token, lambda p: spec.save(state, p))
        return score, metrics, written

    def _fetch(self, start: Checkpoint) -> str:
        """A verified local path of the checkpoint a task starts from."""
        path = start.path
        if self.experiment.checkpoints_in_db:
            data = self.store.checkpoint_data(start)
            path = self.ckpt_dir.write(
                start.member, start.interval, f"load-{os.getpid()}", lambda p: Path(p).write_bytes(data)
            ).path
        try:
            checkpoints.verify(path, start.sha256)
        except checkpoints.CorruptCheckpoint as e:
            self.store.mark_corrupt(start, str(e))
            raise
        return path

    def _result(self, score: float, metrics: dict, written: checkpoints.Written) -> Result:
        if not self.experiment.checkpoints_in_db:
            return Result(score, metrics, written.path, written.sha256, written.size)
        name = f"{IN_DATABASE}:{self.experiment.name}/{Path(written.path).name}"
        return Result(score, metrics, name, written.sha256, written.size, Path(written.path).read_bytes())

    def _fail(self, task: Task, message: str) -> None:
        self.stats.failed += 1
        log.warning("member %d interval %d failed: %s", task.member, task.interval, message)
        try:
            outcome = self.store.fail(task, message, explore=self.spec.explore)
        except LeaseLost:
            return
        checkpoints.delete(outcome.garbage)

    def _lost(self, task: Task, path: str) -> None:
        self.stats.lost += 1
        checkpoints.delete([path])
        log.warning(
            "member %d interval %d: lease was taken over by another worker; result discarded",
            task.member,
            task.interval,
        )


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "(no message)"


def _local_cache(experiment: Experiment) -> str:
    """Scratch space for checkpoints that live in the database, on this machine only."""
    return os.path.join(tempfile.gettempdir(), f"popbt-{os.getuid()}", f"{experiment.name}-{experiment.id}")
