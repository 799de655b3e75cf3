"""``popbt run`` and ``popbt worker`` as Python functions: create or resume an experiment,
start local worker processes, show progress, and hand back the best member.

Local workers are separate processes running ``python -m popbt worker``, exactly what a
user starts by hand on another GPU or machine; the launcher only watches the store.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from . import analysis, checkpoints, live
from .experiment import ConfigError, Spec, check_name, check_resume, load_spec
from .places import DEFAULT_DIR, Place, _make_dir, check_sqlite_path, place  # noqa: F401  (were defined here)
from .store import IN_DATABASE, RUNNING, Experiment, NotFound, SQLStore, mask_url, open_store
from .worker import Worker, WorkerStats

log = logging.getLogger("popbt")


@dataclass(frozen=True)
class RunSummary:
    experiment: str
    finished: bool
    best: analysis.Best | None
    storage: str


def detect_devices() -> list[str]:
    """The GPUs present (when torch is installed and sees them), else the CPU."""
    try:
        import torch
    except ImportError:
        return ["cpu"]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(count)] or ["cpu"]


def parse_devices(devices: str | Sequence[str] | None) -> list[str]:
    if devices is None:
        return detect_devices()
    items = devices.split(",") if isinstance(devices, str) else list(devices)
    items = [d.strip() for d in items if d.strip()]
    if not items:
        raise ConfigError("--devices is empty")
    return items


def open_experiment(
    store: SQLStore,
    spec: Spec,
    place: Place,
    name: str | None,
    overrides: dict[str, Any],
    checkpoints_at: str | None = None,
) -> tuple[Experiment, bool]:
    """Resume the unfinished experiment of that name, or create a new one.

    Without ``--name``, a finished experiment is left as it is and a new one gets the next
    free name (digits, digits-2, ...); so running the same command again resumes or starts
    afresh, and never redoes finished work.
    """
    base = check_name(name, "experiment name") if name else spec.stem
    candidate, n = base, 1
    while True:
        try:
            exp = store.experiment(candidate)
        except NotFound:
            break
        if exp.status != "finished" or name:
            check_resume(exp.config, overrides)
            return exp, False
        n += 1
        candidate = f"{base}-{n}"
    config = spec.config(candidate, **overrides)
    if checkpoints_at == IN_DATABASE:
        where = IN_DATABASE
    else:
        where = str(
            Path(checkpoints_at).absolute() / config.name if checkpoints_at else place.dir / "checkpoints" / config.name
        )
    return store.create_experiment(config, where), True


def run(
    spec: str,
    *,
    name: str | None = None,
    population: int | None = None,
    intervals: int | None = None,
    workers: int | None = None,
    devices: str | Sequence[str] | None = None,
    sync: bool | None = None,
    seed: int | None = None,
    quantile: float | None = None,
    search: str | None = None,
    storage: str | None = None,
    dir: str | os.PathLike | None = None,
    checkpoints: str | None = None,
    console: Console | None = None,
    top: int | None = None,
    exploit: str | None = None,
    ttest_window: int | None = None,
    ttest_alpha: float | None = None,
    ready_every: int | None = None,
    burn_in: int | None = None,
    explore: str | None = None,
    factors: Sequence[float] | None = None,
    resample_probability: float | None = None,
    nonfinite: str | None = None,
) -> RunSummary:
    """Create or resume an experiment and train it with ``workers`` local processes.

    ``workers=0`` only creates the experiment, for workers started elsewhere. ``checkpoints``
    is a directory every worker can reach (default DIR/checkpoints) or ``"db"`` to keep
    checkpoint bytes in the database, so a multi-machine run needs only the storage URL.
    ``top`` ... ``resample_probability`` choose the exploit/explore rules (docs/strategies.md);
    ``nonfinite`` what a NaN or infinite score is (``worst``, the default, or ``fail``).
    """
    console = console or Console()
    loaded = load_spec(spec)
    overrides = dict(
        population=population,
        intervals=intervals,
        sync=sync,
        seed=seed,
        quantile=quantile,
        search=search,
        top=top,
        exploit=exploit,
        ttest_window=ttest_window,
        ttest_alpha=ttest_alpha,
        ready_every=ready_every,
        burn_in=burn_in,
        explore=explore,
        resample_probability=resample_probability,
        nonfinite=nonfinite,
        factors=None if factors is None else tuple(factors),
    )
    loaded.config(name, **overrides)  # invalid settings fail here, before anything is written
    where = place(dir, storage)
    device_list = parse_devices(devices)
    store = open_store(where.storage)
    try:
        exp, created = open_experiment(store, loaded, where, name, overrides, checkpoints)
        verb = "created" if created else "resuming"
        console.print(
            f"popbt: {verb} experiment [bold]{exp.name}[/] "
            f"(population {exp.config.population}, {exp.config.intervals} intervals, "
            f"{'sync' if exp.config.sync else 'async'}, seed {exp.config.seed}) "
            f"in {mask_url(where.storage)}",
            highlight=False,
        )
        if exp.status == "finished":
            if not exp.checkpoints_in_db:
                sweep(store, exp, older_than=0.0)
            return summarize(store, exp, where.storage)
        if not exp.checkpoints_in_db:
            sweep(store, exp)
        n = workers if workers is not None else loaded.defaults.get("workers", default_workers(device_list))
        if n < 0:
            raise ConfigError(f"--workers must be 0 or more, got {n}")
        if n == 0:
            console.print(
                f"popbt: start workers with: popbt worker {spec} --experiment {exp.name} "
                f"--storage {mask_url(where.storage)}",
                highlight=False,
            )
            return summarize(store, exp, where.storage)
        procs = spawn_workers(spec, exp, where, device_list, n)
        console.print(
            f"popbt: {n} workers on {', '.join(sorted(set(device_list[:n])))}; logs in {where.dir / 'logs' / exp.name}",
            highlight=False,
        )
        try:
            live.watch(store, exp, lambda: any(p.poll() is None for p in procs), console)
        except KeyboardInterrupt:
            stop_workers(procs)
            counts = store.progress(exp.id)
            console.print(
                f"\npopbt: stopped with {counts.done}/{counts.total} intervals done; "
                f"run the same command again to resume.",
                highlight=False,
            )
            raise
        codes = [p.wait() for p in procs]
        summary = summarize(store, exp, where.storage)
        if summary.finished and not exp.checkpoints_in_db:
            sweep(store, exp, older_than=0.0)  # what crashed workers left: nothing can commit it now
        if not summary.finished:
            logs = where.dir / "logs" / exp.name
            raise RuntimeError(
                f"all workers exited (codes {codes}) before experiment {exp.name!r} finished; see {logs}"
            )
        return summary
    finally:
        store.close()


def default_workers(devices: Sequence[str]) -> int:
    if all(d == "cpu" for d in devices):
        return max(1, min(2, os.cpu_count() or 1))
    return len(devices)


def sweep(store: SQLStore, exp: Experiment, older_than: float | None = None) -> None:
    """Remove checkpoint files that workers killed before reporting left behind.

    The running tasks are read before the live checkpoints, and their files are kept: a worker
    frozen between writing its checkpoint and reporting it (for longer than any age limit) still
    commits it unless its lease was taken over, and a file read as unreferenced must be one
    that no report can reference any more.
    """
    busy = [(r.member, r.interval) for r in store.history(exp.id) if r.state == RUNNING]
    keep = [c.path for c in store.live_checkpoints(exp.id)]
    if older_than is None:
        older_than = 2 * exp.config.lease_seconds
    removed = checkpoints.CheckpointDir(exp.checkpoint_dir).sweep(keep, older_than=older_than, busy=busy)
    if removed:
        log.info("removed %d orphaned checkpoint files", len(removed))


def spawn_workers(spec: str, exp: Experiment, where: Place, devices: Sequence[str], n: int) -> list[subprocess.Popen]:
    """Start ``n`` worker processes, devices assigned round-robin, CPU cores split evenly."""
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
        cmd = [
            sys.executable,
            "-m",
            "popbt",
            "worker",
            spec,
            "--experiment",
            exp.name,
            "--device",
            device,
            "--threads",
            str(threads),
            "--dir",
            str(where.dir),
        ]
        with open(logs / f"worker-{i}.log", "ab") as out:
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL))
    return procs


def stop_workers(procs: Sequence[subprocess.Popen], grace: float = 30.0) -> None:
    """Ask each worker to stop (it releases its lease), then wait; kill only stragglers."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def summarize(store: SQLStore, exp: Experiment, storage: str) -> RunSummary:
    rows = store.history(exp.id)
    finished = store.experiment_by_id(exp.id).status == "finished"
    return RunSummary(exp.name, finished, analysis.best(rows, exp.config), storage)


def work(
    spec: str,
    *,
    experiment: str = "latest",
    device: str = "cpu",
    storage: str | None = None,
    dir: str | os.PathLike | None = None,
    threads: int | None = None,
    stop: threading.Event | None = None,
) -> WorkerStats:
    """Join an experiment and train its tasks until it is finished (``popbt worker``)."""
    loaded = load_spec(spec)
    where = place(dir, storage, create=False)
    store = open_store(where.storage)
    try:
        exp = store.experiment(experiment)
        store.patience = exp.config.lease_seconds  # past the lease, our work belongs to others
        worker = Worker(store, exp, loaded, device=device, threads=threads)
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
