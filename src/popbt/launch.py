"""``popbt run`` and ``popbt worker`` as Python functions: create or resume an experiment,
start local worker processes, show progress, and hand back the best member.

Local workers are separate processes running ``python -m popbt worker``, exactly what a
user starts by hand on another GPU or machine; the launcher only watches the store. It
checks everything before writing anything, stops its workers when it is stopped (SIGINT,
SIGTERM, or killed: they die with it), and says loudly when the run failed.
"""

from __future__ import annotations

import ctypes
import inspect
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from . import analysis, checkpoints, devices, live
from .config import SETTINGS, TUNABLE, check_name, check_resume
from .errors import ConfigError, Interrupted, RunFailed, StoreError
from .history import require_database
from .places import DEFAULT_DIR, Place, locate, place
from .spec import PICKLED, Spec, load_spec, write_pickled
from .store import IN_DATABASE, RUNNING, Experiment, NotFound, SQLStore, mask_url, open_store
from .worker import Worker, WorkerStats, check_spec

log = logging.getLogger("popbt")

__all__ = ["DEFAULT_DIR", "RUN_OPTIONS", "RunSummary", "Option", "run", "work"]


@dataclass(frozen=True)
class Option:
    """A ``popbt run`` option that is not an experiment setting (those are ``config.SETTINGS``).
    ``parse``: turns the command line's text into the value (``bool``: a flag)."""

    name: str
    help: str
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None


RUN_OPTIONS = (
    Option("name", "experiment name (default: the spec's name; resumes it if unfinished)", "NAME"),
    Option("workers", "local worker processes (0: only create the experiment)", "N", int),
    Option("devices", "devices of the local workers, e.g. cuda:0,cuda:1 (default: the GPUs, else cpu)", "LIST"),
    Option(
        "checkpoints",
        "where checkpoints live: a directory every worker reaches (default DIR/checkpoints), or 'db'",
        "DIR|db",
    ),
    Option("log", "also write metrics for tensorboard and/or mlflow, e.g. tensorboard,mlflow", "LIST"),
    Option("allow_spec_change", "resume although the spec's code changed since the experiment began", parse=bool),
    Option("storage", "SQLAlchemy URL (default: env POPBT_STORAGE, else sqlite:///DIR/popbt.db)", "URL"),
    Option("dir", f"run directory for the database, checkpoints and logs (default: ./{DEFAULT_DIR})", "DIR"),
)
OPTION_NAMES = tuple(o.name for o in RUN_OPTIONS)


@dataclass(frozen=True)
class RunSummary:
    experiment: str
    finished: bool
    best: analysis.Best | None
    storage: str
    given_up: tuple[int, ...] = ()  # members the run completed without
    stopped_workers: tuple[str, ...] = ()  # why local workers stopped early (one line each)


def run(spec: Any, *, console: Console | None = None, **options: Any) -> RunSummary:
    """Create or resume an experiment and train it with local worker processes.

    ``spec`` is a spec file or module reference (``"path/to/spec.py"``, ``"pkg.mod:attr"``)
    or a spec object (a module, a class or a namespace of functions, e.g. defined in a
    notebook). Keyword options are the experiment's settings (``population``, ``intervals``,
    ``sync``, ...) and the run's options (``workers``, ``devices``, ``checkpoints``,
    ``storage``, ``dir``, ...); see ``popbt run --help``. ``workers=0`` only creates the
    experiment, for workers started elsewhere.

    Raises: ConfigError/SpecError (bad input, nothing written), RunFailed (the run failed or
    its workers all stopped first), Interrupted (SIGINT/SIGTERM: workers stopped, resumable).
    """
    unknown = sorted(set(options) - set(OPTION_NAMES) - set(TUNABLE))
    if unknown:
        raise TypeError(f"run() got unexpected keyword arguments: {', '.join(unknown)}")
    console = console or Console()
    loaded = load_spec(spec)
    settings = {k: options.get(k) for k in TUNABLE}
    if isinstance(settings.get("factors"), list):
        settings["factors"] = tuple(settings["factors"])
    name = check_name(options["name"], "experiment name") if options.get("name") else None
    loaded.config(name, **settings)  # invalid settings fail here, before anything is written
    device_list = devices.parse_devices(options.get("devices"))
    n = _workers(options.get("workers"), loaded, device_list)
    kinds = _log_kinds(options.get("log"))
    checked = place(options.get("dir"), options.get("storage"), dry_run=True)
    checkpoints_at = _checkpoint_base(options.get("checkpoints"), checked)  # both checked: nothing written yet
    where = place(options.get("dir"), options.get("storage"))
    store = open_store(where.storage)
    try:
        exp, created = open_experiment(
            store, loaded, name, settings, checkpoints_at, bool(options.get("allow_spec_change"))
        )
        verb = "created" if created else "resuming"
        console.print(
            f"popbt: {verb} experiment [bold]{exp.name}[/] "
            f"(population {exp.config.population}, {exp.config.intervals} intervals, "
            f"{'sync' if exp.config.sync else 'async'}, seed {exp.config.seed}) "
            f"in {mask_url(where.storage)}",
            highlight=False,
            soft_wrap=True,
        )
        if exp.over:
            if not exp.checkpoints_in_db:
                sweep(store, exp, older_than=0.0)
            return summarize(store, exp, where.storage)
        if not exp.checkpoints_in_db:
            sweep(store, exp)
        ref = _worker_spec(loaded, exp, where)
        if n == 0:
            console.print(
                f"popbt: start workers with: popbt worker {ref} --experiment {exp.name} "
                f"--storage {mask_url(where.storage)}",
                highlight=False,
                soft_wrap=True,
            )
            return summarize(store, exp, where.storage)
        return _train(store, exp, where, ref, device_list, n, kinds, console)
    finally:
        store.close()


def _train(
    store: SQLStore,
    exp: Experiment,
    where: Place,
    ref: str,
    device_list: list[str],
    n: int,
    kinds: list[str],
    console: Console,
) -> RunSummary:
    """Start ``n`` local workers, watch them until the run is over, and say how it ended."""
    logs = where.dir / "logs" / exp.name
    follower = _follower(kinds, exp, where)
    with _signals_as_interrupts():
        procs = spawn_workers(ref, exp, where, device_list, n)
        console.print(
            f"popbt: {n} workers on {', '.join(sorted(set(device_list[:n])))}; logs in {logs}",
            highlight=False,
            soft_wrap=True,
        )
        try:
            live.watch(store, exp, lambda: any(p.poll() is None for p in procs), console, on_tick=follower)
        except KeyboardInterrupt as e:
            for signum in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the handover short
                signal.signal(signum, signal.SIG_IGN)
            stop_workers(procs)
            counts = store.progress(exp.id)
            if follower is not None:
                follower(store, final=True)
            console.print(
                f"\npopbt: stopped with {counts.done}/{counts.total} intervals done; "
                "run the same command again to resume.",
                highlight=False,
            )
            raise e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT) from None
        except StoreError as e:  # e.g. the database file deleted: the workers stop too
            stop_workers(procs)
            salvaged = store.db.salvaged()
            if salvaged is not None and str(salvaged) not in str(e):
                raise StoreError(f"{e}; the history up to then is saved in {salvaged}") from None
            raise
        codes = [p.wait() for p in procs]
    stopped = tuple(_why_stopped(logs, i, code) for i, code in enumerate(codes) if code != 0)
    current = store.experiment_by_id(exp.id)
    if follower is not None:
        follower(store, final=True)
    if current.failed:
        raise RunFailed(*failure_report(store, current))
    summary = summarize(store, current, where.storage, stopped)
    if summary.finished and not exp.checkpoints_in_db:
        sweep(store, exp, older_than=0.0)  # what crashed workers left: nothing can commit it now
    if not summary.finished:
        raise RunFailed(
            f"all workers stopped before experiment {exp.name!r} finished; run the same command again to resume",
            "\n".join(stopped) + f"\nlogs: {logs}",
        )
    return summary


def open_experiment(
    store: SQLStore,
    spec: Spec,
    name: str | None,
    overrides: dict[str, Any],
    checkpoints_at: str | None = None,
    allow_spec_change: bool = False,
) -> tuple[Experiment, bool]:
    """Resume the unfinished experiment of that name, or create a new one.

    Without ``--name``, a finished experiment is left as it is and a new one gets the next
    free name (digits, digits-2, ...); so running the same command again resumes or starts
    afresh, and never redoes finished work. A failed experiment that never produced a result
    is resumed from its start (the code was presumably fixed). Two launchers creating the same
    experiment at once both end up in it.
    """
    base = name or spec.stem
    candidate, n = base, 1
    for _ in range(1000):
        try:
            exp = store.experiment(candidate)
        except NotFound:
            config = spec.config(candidate, **overrides)
            try:
                return store.create_experiment(config, _checkpoint_dir(checkpoints_at, config.name)), True
            except ConfigError:  # another launcher created it just now: join it
                continue
        if exp.status == "finished" and not name:
            n += 1
            candidate = f"{base}-{n}"
            continue
        return _resume(store, exp, spec, overrides, allow_spec_change), False
    raise ConfigError(f"no free experiment name after {base}-{n}: pass --name")


def _resume(
    store: SQLStore, exp: Experiment, spec: Spec, overrides: dict[str, Any], allow_spec_change: bool
) -> Experiment:
    check_resume(exp.config, overrides)
    check_spec(spec, exp, allow_spec_change)
    if allow_spec_change and spec.digest and spec.digest != exp.config.spec_digest:
        store.set_spec(exp.id, spec.ref, spec.digest, "launcher")
    if exp.failed:
        try:
            store.reopen(exp.id)
        except ConfigError as e:
            raise ConfigError(f"experiment {exp.name!r} failed and cannot be resumed: {e}") from None
    return store.experiment_by_id(exp.id)


def _checkpoint_dir(base: str | None, name: str) -> str:
    return IN_DATABASE if base == IN_DATABASE else str(Path(base) / name)


def _checkpoint_base(checkpoints_at: str | None, where: Place) -> str:
    """Where experiments' checkpoint directories go, checked before anything is written."""
    if checkpoints_at == IN_DATABASE:
        return IN_DATABASE
    if checkpoints_at is not None and (not isinstance(checkpoints_at, (str, os.PathLike)) or not str(checkpoints_at)):
        raise ConfigError(f"--checkpoints must be a directory or 'db', got {checkpoints_at!r}")
    base = Path(checkpoints_at).absolute() if checkpoints_at else where.dir / "checkpoints"
    checkpoints.check_writable(base, leave=False)
    return str(base)


def _workers(workers: Any, spec: Spec, device_list: Sequence[str]) -> int:
    n = workers if workers is not None else spec.defaults.get("workers", default_workers(device_list))
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"--workers must be an integer of at least 0, got {n!r}")
    if n:
        for device in sorted(set(device_list[:n])):
            if device.startswith("cuda") and devices.detect_devices() == ["cpu"]:
                raise ConfigError(f"--devices {device}: this machine has no CUDA device torch can see")
    return n


def _log_kinds(log_option: Any) -> list[str]:
    if not log_option:
        return []
    kinds = log_option.split(",") if isinstance(log_option, str) else list(log_option)
    kinds = [k.strip() for k in kinds if k.strip()]
    try:
        from . import loggers
    except ImportError:  # pragma: no cover - the module is part of popbt
        raise ConfigError("--log is not available in this popbt") from None
    loggers.check(kinds)
    return kinds


def _follower(kinds: list[str], exp: Experiment, where: Place) -> Callable | None:
    """What writes the run's metrics to the loggers asked for, fed from the store."""
    if not kinds:
        return None
    from . import loggers
    from .history import history_of

    follower = loggers.open_follower(kinds, exp, where.dir)

    def feed(store: SQLStore, final: bool = False) -> None:
        history = history_of(store, store.experiment_by_id(exp.id))
        if final:
            follower.close(history)
        else:
            follower.update(history)

    return feed


def _worker_spec(spec: Spec, exp: Experiment, where: Place) -> str:
    """The spec reference workers load: the user's, or a pickle of a spec object."""
    if not spec.is_object:
        return spec.ref
    path = where.dir / "specs" / f"{exp.name}-{(spec.digest or 'spec')[:12]}{PICKLED}"
    return str(write_pickled(spec, path))


def default_workers(devices: Sequence[str]) -> int:
    if all(d == "cpu" for d in devices):
        return max(1, min(2, os.cpu_count() or 1))
    return len(devices)


def sweep(store: SQLStore, exp: Experiment, older_than: float | None = None) -> None:
    """Remove this experiment's checkpoint files that workers killed before reporting left.

    The running tasks are read before the live checkpoints, and their files are kept: a worker
    frozen between writing its checkpoint and reporting it (for longer than any age limit) still
    commits it unless its lease was taken over, and a file read as unreferenced must be one
    that no report can reference any more. Files whose names do not carry this experiment's
    uid (another database's, the user's own) are never touched.
    """
    busy = [(r.member, r.interval) for r in store.history(exp.id) if r.state == RUNNING]
    keep = [c.path for c in store.live_checkpoints(exp.id)]
    if older_than is None:
        older_than = 2 * exp.config.lease_seconds
    removed = checkpoints.CheckpointDir(exp.checkpoint_dir, exp.uid).sweep(keep, older_than=older_than, busy=busy)
    if removed:
        log.info("removed %d orphaned checkpoint files", len(removed))


def spawn_workers(spec: str, exp: Experiment, where: Place, devices: Sequence[str], n: int) -> list[subprocess.Popen]:
    """Start ``n`` worker processes, devices assigned round-robin, CPU cores split evenly.
    Each dies with the launcher (it gets SIGTERM and hands its interval back)."""
    logs = where.dir / "logs" / exp.name
    logs.mkdir(parents=True, exist_ok=True)
    assigned = [devices[i % len(devices)] for i in range(n)]
    # Every worker runs host-side torch ops (GPU workers too): split the cores among all of them.
    threads = max(1, (os.cpu_count() or 1) // n)
    procs = []
    for i, device in enumerate(assigned):
        # The storage URL goes by environment, not argv: a password in it would show in `ps`
        # (any user can read another's command line, not its environment).
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), POPBT_STORAGE=where.storage)
        cmd = [sys.executable, "-m", "popbt", "worker", spec, "--experiment", exp.name, "--device", device]
        cmd += ["--threads", str(threads), "--dir", str(where.dir)]
        with open(logs / f"worker-{i}.log", "ab") as out:
            procs.append(
                subprocess.Popen(
                    cmd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,
                )
            )
    return procs


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when the launcher dies, however it dies (even SIGKILL)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_workers(procs: Sequence[subprocess.Popen], grace: float = 30.0) -> None:
    """Ask each worker to stop (it hands its interval back), then wait; kill only stragglers."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class _signals_as_interrupts:
    """While the launcher watches, SIGTERM interrupts it as SIGINT does (Interrupted)."""

    def __enter__(self) -> None:
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, _raise_interrupted)

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _raise_interrupted(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


def _why_stopped(logs: Path, index: int, code: int) -> str:
    """One line: worker ``index`` exited with ``code``, and the error it printed last."""
    said = ""
    try:
        lines = (logs / f"worker-{index}.log").read_text(errors="replace").splitlines()
        said = next((line for line in reversed(lines) if line.startswith("popbt: error:")), "")
    except OSError:
        pass
    what = {3: "cannot work here", 130: "stopped by SIGINT", 143: "stopped by SIGTERM"}.get(code, f"exit status {code}")
    if code < 0:
        what = f"killed by {signal.Signals(-code).name}"
    return f"worker {index} {what}" + (f": {said[len('popbt: error: ') :]}" if said else "")


def failure_report(store: SQLStore, exp: Experiment) -> tuple[str, str]:
    """Why a failed experiment failed (one line), and the first error with its traceback."""
    ended = store.events(exp.id, limit=1, kinds=("run_failed",))
    why = ended[-1].message if ended else "it failed"
    failures = store.events(exp.id, limit=10**6, kinds=("failure",))
    detail = ""
    if failures:
        first = failures[0]
        detail = f"first error, member {first.member} interval {first.interval}: {first.message}"
        if first.detail:
            detail += "\n" + first.detail
    return f"experiment {exp.name!r} failed: {why}", detail + "\n(popbt status --errors shows every failure)"


def summarize(store: SQLStore, exp: Experiment, storage: str, stopped: Sequence[str] = ()) -> RunSummary:
    rows = store.history(exp.id)
    current = store.experiment_by_id(exp.id)
    given_up = tuple(sorted({r.member for r in rows if r.state == "failed"}))
    return RunSummary(exp.name, current.finished, analysis.best(rows, exp.config), storage, given_up, tuple(stopped))


def work(
    spec: Any,
    *,
    experiment: str = "latest",
    device: str = "cpu",
    storage: str | None = None,
    dir: str | os.PathLike | None = None,
    threads: int | None = None,
    stop: threading.Event | None = None,
    allow_spec_change: bool = False,
) -> WorkerStats:
    """Join an experiment and train its tasks until it is over (``popbt worker``).

    Raises: ConfigError/SpecError/NotFound (bad input, nothing written), WorkerFault (this
    worker cannot work here), RunFailed (the experiment failed), Interrupted (SIGINT/SIGTERM)."""
    loaded = load_spec(spec)
    devices.check_device(device)
    where = locate(dir, storage)
    require_database(where.storage, experiment)  # a worker joins an experiment: it never creates a database
    store = open_store(where.storage)
    try:
        exp = store.experiment(experiment)
        store.patience = exp.config.lease_seconds  # past the lease, our work belongs to others
        worker = Worker(store, exp, loaded, device=device, threads=threads, allow_spec_change=allow_spec_change)
        log.info("worker %s joins experiment %s on %s (%s)", worker.name, exp.name, device, mask_url(where.storage))
        stats = worker.run(stop)
        log.info(
            "worker %s done: %d intervals trained, %d failed, %d lost leases",
            worker.name,
            stats.done,
            stats.failed,
            stats.lost,
        )
        return stats
    finally:
        store.close()


def _signature() -> inspect.Signature:
    """``run``'s signature as tools show it: the spec, the run's options and every setting."""
    params = [inspect.Parameter("spec", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params.append(inspect.Parameter("console", inspect.Parameter.KEYWORD_ONLY, default=None))
    for name in (*OPTION_NAMES, *(f.name for f in SETTINGS)):
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None))
    return inspect.Signature(params, return_annotation="RunSummary")


run.__signature__ = _signature()  # type: ignore[attr-defined]
run.__doc__ = (
    (run.__doc__ or "")
    + "\n    Options:\n"
    + "".join(f"\n    - ``{o.name}``: {o.help}" for o in RUN_OPTIONS)
    + "\n\n    Settings:\n"
    + "".join(f"\n    - ``{f.name}``: {f.metadata['setting']['help']}" for f in SETTINGS)
)
