"""The worker loop: claim a task, train it, report it. The only place user code runs.

A worker never chooses members itself: the store hands out work and decides exploits. A
heartbeat thread renews the lease while user code trains; if the lease is lost anyway
(the worker froze past it), the store refuses the late report and the worker moves on.

A worker tells its own faults from its members': it probes its device and checkpoint
directory before claiming anything, a disk the system refuses (full, read-only) releases the
interval uncharged, and a worker that fails several different members in a row, the same
way, while others succeed, stops and takes those charges back (the rule: popbt/blame.py).
SIGINT and SIGTERM hand the running interval back at once, without counting an attempt.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import math
import os
import random
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checkpoints, devices
from .blame import Streak, convicting, error_kind
from .errors import ConfigError, Interrupted, RunFailed, StoreError, WorkerFault
from .space import space_to_json
from .spec import Spec
from .store import IN_DATABASE, Checkpoint, Experiment, LeaseLost, Rejected, Result, Store, Task

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
    intervals: int = 0  # how many intervals the experiment has (what a schedule may span)


_current: contextvars.ContextVar[Trial | None] = contextvars.ContextVar("popbt_trial", default=None)


def current() -> Trial:
    """The (experiment, member, interval) being trained; only valid inside spec functions."""
    trial = _current.get()
    if trial is None:
        raise RuntimeError("popbt.current() is only available while a worker runs spec code")
    return trial


@contextlib.contextmanager
def in_trial(trial: Trial) -> Iterator[Trial]:
    """``popbt.current()`` is ``trial`` inside the block (a ContextVar: threads and async
    tasks each see their own)."""
    token = _current.set(trial)
    try:
        yield trial
    finally:
        _current.reset(token)


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


def train_seed(seed: int) -> int:
    """The seed train() starts from, drawn from the attempt's seed: train sees the same random
    stream whether its state was just built and loaded or kept in memory from the interval
    before (build's draws do not shift it)."""
    return int.from_bytes(hashlib.sha256(f"popbt-train:{seed}".encode()).digest()[:4], "little")


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


class Stopper:
    """SIGINT and SIGTERM as a graceful stop. Inside user code the signal raises Interrupted
    at once (the interval is handed back, not counted); anywhere else (a claim, a report) the
    worker finishes that step and stops before the next claim. A second signal while stopping
    is ignored, so a handover is never cut short."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.signum: int | None = None
        self._in_user_code = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:
            return
        self.signum = signum
        self.event.set()
        if self._in_user_code:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def user_code(self) -> Iterator[None]:
        if self.signum is not None:
            raise Interrupted(self.signum)
        self._in_user_code = True
        try:
            yield
        finally:
            self._in_user_code = False


@dataclass
class Kept:
    """The state this worker just saved for ``member``: the start of its next interval, which
    the worker trains without rebuilding or reloading it when it claims that interval next."""

    member: int
    interval: int
    path: str
    state: Any


class Worker:
    """Trains tasks of one experiment until it is over (or ``stop`` is set)."""

    def __init__(
        self,
        store: Store,
        experiment: Experiment,
        spec: Spec,
        device: str = "cpu",
        name: str | None = None,
        threads: int | None = None,
        allow_spec_change: bool = False,
    ) -> None:
        check_spec(spec, experiment, allow_spec_change)
        self.store, self.experiment, self.spec = store, experiment, spec
        self.device = devices.check_device(device)
        self.name = name or worker_name()
        self.config = experiment.config
        self.scratch: Path | None = None
        root = experiment.checkpoint_dir
        if experiment.checkpoints_in_db:
            self.scratch = checkpoints.private_dir(f"popbt-{experiment.name}-")
            root = str(self.scratch)
        self.ckpt_dir = checkpoints.CheckpointDir(root, experiment.uid)
        self.stats = WorkerStats()
        self.heartbeat = Heartbeat(store, self.config.lease_seconds / 3)
        self.streak = Streak()
        self.kept: Kept | None = None
        self._state: Any = None  # the state of the interval just trained, until it is kept or dropped
        self.reused = 0  # intervals trained on a state kept in memory
        self.stopper: Stopper | None = None
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"--threads must be a positive integer, got {threads!r}")
        set_threads(threads)

    def preflight(self) -> None:
        """Before the first claim: the device and the checkpoint directory must work here."""
        devices.probe(self.device)
        self.ckpt_dir.probe()

    def run(self, stop: threading.Event | None = None, poll: float = 1.0) -> WorkerStats:
        """Train until the experiment is over. If the database stays unreachable for longer
        than a lease (the store's patience), stop taking work with a StoreError: by then any
        task this worker held belongs to another worker, so nothing partial is written.

        Raises: WorkerFault (this worker cannot work here), RunFailed (the experiment failed),
        Interrupted (SIGINT or SIGTERM; the running interval was handed back)."""
        self.stopper = Stopper(stop or threading.Event())
        self.stopper.install()
        try:
            self.preflight()
            self._loop(self.stopper.event, poll)
        except StoreError as e:
            raise StoreError(
                f"worker {self.name} stops taking work: the database was unreachable for "
                f"longer than its {self.config.lease_seconds:g} s lease ({e})"
            ) from None
        finally:
            self.stopper.uninstall()
            self.heartbeat.close()
            if self.scratch is not None:
                checkpoints.remove_dir(self.scratch)
        if self.stopper.signum is not None:
            raise Interrupted(self.stopper.signum)
        return self.stats

    def _loop(self, stop: threading.Event, poll: float) -> None:
        idle, idle_since = 0.05, None
        while not stop.is_set():
            prefer = (self.kept.member, self.kept.interval) if self.kept else None
            task = self.store.claim(self.experiment.id, self.name, self.device, prefer=prefer)
            if task is None:
                progress = self.store.progress(self.experiment.id)
                if progress.over:
                    if progress.status == "failed":
                        raise RunFailed(f"experiment {self.experiment.name!r} failed; see popbt status --errors")
                    return
                now = time.monotonic()
                idle_since = idle_since or now
                if now - idle_since >= SETTLE_AFTER:  # a decision nobody took (its reporter died)?
                    checkpoints.delete(self.store.settle(self.experiment.id, self.spec.explore).garbage)
                    idle_since = now
                # others are training the rest (sync: the generation); a report wakes us at once
                self.store.wait_for_work(self.experiment.id, idle, stop)
                idle = min(idle * 2, poll)
                continue
            idle, idle_since = 0.05, None
            self.train_one(task)

    def train_one(self, task: Task) -> None:
        """One interval of one member, from claim to report; failures go to the store."""
        cfg = self.config
        if task.attempts >= cfg.max_attempts:  # workers kept dying on it (leases expired)
            message = f"no worker finished it in {task.attempts} attempts (each one's lease expired)"
            self._fail(task, message, None, mine=False)
            return
        with self.heartbeat.keep(task) as lost:
            try:
                score, metrics, written = self._train(task)
            except KeyboardInterrupt as e:
                signum = getattr(e, "signum", signal.SIGINT)
                self._release(task, f"worker {self.name} stopped by {signal.Signals(signum).name}; not an attempt")
                raise
            except BaseException as e:  # SystemExit from user code is a failure too, not our exit
                cause = e.__cause__ if isinstance(e, _SaveFailed) and e.__cause__ is not None else e
                if isinstance(e, _SaveFailed) or checkpoints.is_disk_fault(e):
                    self._disk_fault(task, cause)  # raises WorkerFault if the disk is to blame
                corrupt = isinstance(cause, checkpoints.CorruptCheckpoint)  # the file's fault, not ours
                self._fail(task, f"{type(cause).__name__}: {_one_line(cause)}", _traceback(cause), mine=not corrupt)
                return
            if lost():
                self._lost(task, written.path)
                return
        self.kept = None
        try:
            outcome = self.store.report(task, self._result(score, metrics, written), explore=self.spec.explore)
        except LeaseLost:
            self._lost(task, written.path)
            return
        except Rejected as e:
            checkpoints.delete([written.path])
            self._fail(task, str(e), None)
            return
        finally:
            if self.experiment.checkpoints_in_db:
                checkpoints.delete([written.path])  # the bytes are in the database now
        checkpoints.delete(outcome.garbage)
        self.stats.done += 1
        self.streak = Streak()
        if self.spec.reuse_state and not self.experiment.checkpoints_in_db and outcome.next_is_mine:
            self.kept = Kept(task.member, task.interval + 1, written.path, self._state)
        copied = f" -> next copies member {outcome.exploited_from}" if outcome.exploited_from is not None else ""
        log.info("member %d interval %d: %s=%.6g%s", task.member, task.interval, cfg.metric, score, copied)

    def _train(self, task: Task) -> tuple[float, dict, checkpoints.Written]:
        spec, hparams, device, cfg = self.spec, dict(task.hparams), self.device, self.config
        seed = seed_for(cfg.seed, task.member, task.interval, task.attempts, task.replacements)
        kept, self.kept, self._state = self.kept, None, None
        reuse = (
            kept is not None and task.start is not None and (task.member, task.start.path) == (kept.member, kept.path)
        )
        if not reuse:
            kept = None  # let it go before building another: a GPU may not hold two models
        with in_trial(Trial(self.experiment.name, task.member, task.interval, device, seed, cfg.intervals)):
            path = self._fetch(task.start) if task.start is not None and not reuse else None
            with self.stopper.user_code() if self.stopper else contextlib.nullcontext():
                seed_everything(seed)
                if reuse:  # the state this worker saved at the end of the member's interval before
                    state = kept.state
                    self.reused += 1
                else:
                    state = spec.build(hparams, device)
                if path is not None:
                    try:
                        loaded = spec.load(state, path)
                    finally:
                        if path != task.start.path:  # a scratch copy of bytes kept in the database
                            checkpoints.delete([path])
                    state = state if loaded is None else loaded
                if task.start is not None and spec.apply is not None:
                    spec.apply(state, hparams)
                seed_everything(train_seed(seed))
                extra = spec.train(state, hparams, task.interval, device)
                score, metrics = split_score(
                    spec.evaluate(state, device), cfg.metric, nonfinite=cfg.nonfinite == "worst"
                )
                if isinstance(extra, dict):
                    metrics = {**{k: _plain(v) for k, v in extra.items()}, **metrics}
                try:
                    written = self.ckpt_dir.write(task.member, task.interval, task.token, lambda p: spec.save(state, p))
                except Exception as e:
                    raise _SaveFailed(e) from e
        self._state = state
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

    def _fail(self, task: Task, message: str, detail: str | None, mine: bool = True) -> None:
        """Charge the member an attempt; when this worker failed several different members in
        a row with an error no other worker met, while others succeed, the fault is this
        worker's: hand this interval back uncharged, take the earlier charges back and stop
        (WorkerFault). ``mine``: whether the failure may be this worker's at all (not a
        corrupt checkpoint, not an interval whose workers died)."""
        self.stats.failed += 1
        log.warning(
            "member %d interval %d failed: %s%s", task.member, task.interval, message, f"\n{detail}" if detail else ""
        )
        if mine:
            self.streak.failed.append((task.member, task.interval, message))
            why = self._to_blame()
            if why is not None:  # charged, this failure could be the one that replaces a member
                self._blame_self(why, task)
        try:
            outcome = self.store.fail(task, message, explore=self.spec.explore, detail=detail)
        except LeaseLost:
            return
        checkpoints.delete(outcome.garbage)
        self.streak.charged[task.id] = (task.attempts + 1, self.streak.charged.get(task.id, (0, 0))[1] + 1)

    def _to_blame(self) -> str | None:
        """Why this worker's streak is its own fault (popbt/blame.py), or None: the code works
        elsewhere (other workers have results, this one none since the streak began)."""
        if not convicting(self.streak.failed, set()):
            return None
        elsewhere = {
            error_kind(e.message)
            for e in self.store.events(self.experiment.id, limit=1000, kinds=("failure",))
            if e.worker != self.name
        }
        own = convicting(self.streak.failed, elsewhere)
        if not own or self.store.progress(self.experiment.id).done <= self.stats.done:
            return None
        return (
            f"it failed {len(own)} intervals of {len({m for m, _, _ in own})} different members "
            f"in a row while other workers succeeded, each time with {own[-1][2]}"
        )

    def _blame_self(self, why: str, task: Task) -> None:
        reason = f"worker {self.name} on {self.device} stops taking work: {why}; its failures are not counted"
        self._release(task, reason)
        back = self.store.absolve(self.experiment.id, self.streak.charged, self.name, reason)
        log.error("%s (%d attempts taken back)", reason, back)
        raise WorkerFault(reason)

    def _disk_fault(self, task: Task, cause: BaseException) -> None:
        """The system refused the checkpoint disk (full, read-only, I/O error), or writing the
        checkpoint failed and the directory no longer takes a file: the host's fault, not the
        member's. The interval goes back uncharged and this worker stops."""
        if not checkpoints.is_disk_fault(cause):
            try:
                self.ckpt_dir.probe()
                return  # the directory works: the spec's save itself failed (the member's)
            except WorkerFault:
                pass
        why = f"checkpoint directory {self.ckpt_dir.root} is unusable: {type(cause).__name__}: {_one_line(cause)}"
        reason = (
            f"worker {self.name} stops taking work: {why}; member {task.member} interval {task.interval} handed back"
        )
        self._release(task, reason)
        self.store.absolve(self.experiment.id, self.streak.charged, self.name, reason)
        log.error("%s", reason)
        raise WorkerFault(reason)

    def _release(self, task: Task, reason: str) -> None:
        try:
            self.store.release(task, reason)
        except StoreError as e:  # the lease expires by itself; nothing is lost
            log.warning("could not hand member %d interval %d back: %s", task.member, task.interval, e)
        log.info("member %d interval %d handed back: %s", task.member, task.interval, reason)

    def _lost(self, task: Task, path: str) -> None:
        self.stats.lost += 1
        checkpoints.delete([path])
        log.warning(
            "member %d interval %d: lease was taken over by another worker; result discarded",
            task.member,
            task.interval,
        )


class _SaveFailed(Exception):
    """Writing the checkpoint failed (the spec's save, or popbt's fsync and rename)."""


def check_spec(spec: Spec, experiment: Experiment, allow_change: bool = False) -> None:
    """Refuse code other than the experiment's: another search space always, another source
    (digest) unless ``allow_change``."""
    if space_to_json(spec.space) != space_to_json(experiment.config.space):
        raise ConfigError(
            f"spec {spec.ref!r} declares another search space than experiment {experiment.name!r} was created with"
        )
    stored = experiment.config.spec_digest
    if allow_change or stored is None or spec.digest is None or spec.digest == stored:
        return
    raise ConfigError(
        f"spec {spec.ref!r} is not the code experiment {experiment.name!r} was created with "
        f"({experiment.config.spec}, sha256 {stored[:12]}; this one {spec.digest[:12]}); "
        "pass --allow-spec-change if you changed it on purpose"
    )


def _traceback(e: BaseException) -> str:
    """The traceback of a failure in user code, from the user's first frame (popbt's own
    frames above it say nothing about the bug)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename.startswith(_POPBT_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb)).rstrip()


_POPBT_DIR = str(Path(__file__).resolve().parent) + os.sep


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "(no message)"
