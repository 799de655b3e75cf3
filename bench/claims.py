"""How fast the store hands out work: claims/s and claim+report round trips/s.

N processes (multiprocessing spawn) hammer one database through SQLStore directly, with no
training at all, so the figure is the queue's own ceiling: the most intervals per second a
population could ever complete, whatever the model. Run: .venv/bin/python bench/claims.py
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import random
import sys
import tempfile
import time
from dataclasses import dataclass

import common
from common import Skip, log, median, spread, table
from popbt import Uniform
from popbt.experiment import ExperimentConfig
from popbt.store import Result, SQLStore

SPACE = {"x": Uniform(0.0, 1.0)}
DUMMY_SHA = "0" * 64


@dataclass(frozen=True)
class Load:
    """One measurement: ``tasks`` claims (or round trips) by ``workers`` processes."""

    workers: int
    population: int
    intervals: int
    report: bool


def create(url: str, name: str, load: Load) -> int:
    """A fresh experiment whose tasks the workers will drain."""
    store = SQLStore(url)
    try:
        config = ExperimentConfig(
            name=name, spec="bench-noop", space=SPACE, population=load.population, intervals=load.intervals, seed=1
        )
        return store.create_experiment(config, tempfile.gettempdir()).id
    finally:
        store.close()


def drain(url: str, exp_id: int, report: bool, name: str, barrier, results) -> None:
    """Worker process: claim (and report) as fast as possible until nothing is left."""
    store = SQLStore(url)
    store.progress(exp_id)  # connect and cache the config before the clock starts
    rng = random.Random(name)
    done = 0
    barrier.wait()
    while True:
        task = store.claim(exp_id, name, "cpu")
        if task is None:
            if not report or store.progress(exp_id).finished:
                break
            time.sleep(0.001)  # the rest is claimed by others; their reports add tasks
            continue
        if report:
            path = f"/nonexistent/m{task.member}-i{task.interval}-{task.token[:8]}.ckpt"
            store.report(task, Result(rng.random(), {}, path, DUMMY_SHA, 0))
        done += 1
    results.put(done)
    store.close()


def collect(procs: list, results) -> list[int]:
    """Each worker's count, failing fast (not hanging) when a worker dies without one."""
    counts: list[int] = []
    while len(counts) < len(procs):
        try:
            counts.append(results.get(timeout=0.5))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"a worker process failed (exit codes {dead}); see its traceback above") from None
    return counts


def measure(url: str, load: Load, name: str) -> float:
    """Tasks per second of wall time, from the moment all workers are ready to the last one's end."""
    exp_id = create(url, name, load)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(load.workers + 1), ctx.Queue()
    procs = [
        ctx.Process(target=drain, args=(url, exp_id, load.report, f"bench-{i}", barrier, results))
        for i in range(load.workers)
    ]
    for p in procs:
        p.start()
    barrier.wait(timeout=120)
    start = time.perf_counter()
    done = sum(collect(procs, results))
    wall = time.perf_counter() - start
    for p in procs:
        p.join()
    expected = load.population * load.intervals if load.report else load.population
    if done != expected:
        raise RuntimeError(f"{done} tasks handled, expected {expected}")
    return done / wall


def bench_backend(backend: str, workers: list[int], tasks: int, reps: int) -> list[list[object]]:
    """One table row per worker count: claims/s and round trips/s, medians of ``reps``."""
    rows = []
    with common.database(backend) as url:
        for n in workers:
            claims = [measure(url, Load(n, tasks, 1, False), f"claims-{n}-{r}") for r in range(reps)]
            trips = [measure(url, Load(n, tasks // 4, 4, True), f"trips-{n}-{r}") for r in range(reps)]
            log(f"claims: {backend} {n} workers: {median(claims):.0f} claims/s, {median(trips):.0f} round trips/s")
            rows.append(
                [
                    backend,
                    n,
                    f"{median(claims):.0f}",
                    spread(claims, ".0f"),
                    f"{median(trips):.0f}",
                    spread(trips, ".0f"),
                ]
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    workers, tasks, reps = ([1, 2], 80, 3) if args.quick else ([1, 2, 4], 400, 3)
    rows, notes = [], []
    for backend in common.BACKENDS:
        try:
            rows += bench_backend(backend, workers, tasks, reps)
        except Skip as e:
            notes.append(f"- {backend} skipped: {e}")
            log(f"claims: {backend} skipped: {e}")
    print(common.heading("Store throughput: claims and round trips per second"))
    print(
        f"No training: {', '.join(map(str, workers))} worker processes (multiprocessing spawn) call "
        f"`SQLStore.claim` / `SQLStore.report` directly. *Claims/s*: {tasks} pending tasks "
        f"(population {tasks}, 1 interval) claimed until none is left. *Round trips/s*: claim + "
        f"report of population {tasks // 4} × 4 intervals, exploit on (each report ranks the "
        f"population and schedules the next task). Median of {reps} repetitions (range: "
        f"min–max), wall time from a barrier once every process is connected.\n"
    )
    print(table(["backend", "workers", "claims/s", "range", "round trips/s", "range"], rows))
    if notes:
        print("\n" + "\n".join(notes))
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
