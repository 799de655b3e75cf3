"""Toward internet scale: hundreds of simulated workers on one experiment in one PostgreSQL database.

Each simulated worker is a thread with its own SQLStore (its own connection, and its own
LISTEN connection while idle), running worker.py's loop with no-op training: claim (preferring
the member it just reported, as a worker that keeps its state does), report, and when nothing
is claimable read the progress and wait for work. So the figures are popbt's store, queue and
wake-ups under load, not a toy. Threads are spread over a few processes (the GIL). Loopback
only; the database is created and dropped. Run: .venv/bin/python bench/scale.py
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import event

import common
import pgserver
from common import Skip, log, median, percentile, spread, table
from popbt import Uniform
from popbt.experiment import ExperimentConfig
from popbt.store import Result, SQLStore

SPACE = {"x": Uniform(0.0, 1.0)}
DUMMY_SHA = "0" * 64
INTERVALS = 1_000_000  # never reached: a point runs for its seconds
POLL = 1.0  # an idle worker's longest wait, as worker.py's
LOCKING = "UPDATE popbt_experiments SET version"  # the statements that take the experiment's row lock
SLACK = 10  # connections left free on the server for others
GAIN = 1.10  # saturated: the next worker count adds less than 10% reports/s


@dataclass
class Tally:
    """One simulated worker's measurements inside the window."""

    claims: int = 0
    reports: int = 0
    claim_ms: list[float] = field(default_factory=list)
    report_ms: list[float] = field(default_factory=list)
    lock_ms: list[float] = field(default_factory=list)
    empty_claims: int = 0
    plans: int = 0  # decisions' compare-and-sets tried
    refused: int = 0  # of which refused: the population moved on while planning


def time_locks(store: SQLStore, tally: Tally, window: list[float]) -> None:
    """Time every statement that takes the experiment's row lock (the version's UPDATE of a
    report or a decision): on PostgreSQL it returns once the lock is granted, so its duration
    is the wait for the lock (plus one short statement)."""

    @event.listens_for(store.engine, "before_cursor_execute")
    def _before(conn, _cursor, statement, _params, _context, _many):
        if statement.startswith(LOCKING):
            conn.info["popbt_lock_t"] = time.perf_counter()

    @event.listens_for(store.engine, "after_cursor_execute")
    def _after(conn, _cursor, _statement, _params, _context, _many):
        began = conn.info.pop("popbt_lock_t", None)
        if began is not None and window[0] <= time.monotonic() < window[1]:
            tally.lock_ms.append((time.perf_counter() - began) * 1000)
            if "%(seen)s" in _statement:  # a decision's compare-and-set on the version
                tally.plans += 1
                tally.refused += _cursor.rowcount == 0


def simulate(store: SQLStore, exp_id: int, name: str, window: list[float], tally: Tally) -> None:
    """worker.py's loop, training nothing, until the window closes."""
    rng = random.Random(name)
    prefer, idle = None, 0.05
    while (now := time.monotonic()) < window[1]:
        began = time.perf_counter()
        task = store.claim(exp_id, name, "cpu", prefer=prefer)
        took = (time.perf_counter() - began) * 1000
        counted = window[0] <= time.monotonic() < window[1]
        if task is None:
            tally.empty_claims += counted
            if store.progress(exp_id).over:
                return
            store.wait_for_work(exp_id, min(idle, max(0.0, window[1] - now)))
            idle = min(idle * 2, POLL)
            continue
        idle = 0.05
        if counted:
            tally.claims += 1
            tally.claim_ms.append(took)
        path = f"/nonexistent/{name}-m{task.member}-i{task.interval}.ckpt"
        began = time.perf_counter()
        outcome = store.report(task, Result(rng.random(), {}, path, DUMMY_SHA, 0))
        if window[0] <= time.monotonic() < window[1]:
            tally.reports += 1
            tally.report_ms.append((time.perf_counter() - began) * 1000)
        prefer = (task.member, task.interval + 1) if outcome.next_is_mine else None


def process_main(url: str, exp_id: int, names: list[str], warm: float, seconds: float, barrier, results) -> None:
    """One process: a thread per simulated worker, each with its own store, started together."""
    stores = []
    for _ in names:
        store = SQLStore(url)
        store.progress(exp_id)  # connected, the config cached
        stores.append(store)
    tallies = [Tally() for _ in names]
    window = [0.0, 0.0]
    for store, tally in zip(stores, tallies):
        time_locks(store, tally, window)
    barrier.wait()
    start = time.monotonic()
    window[:] = [start + warm, start + warm + seconds]
    threads = [
        threading.Thread(target=simulate, args=(s, exp_id, n, window, t), daemon=True)
        for s, n, t in zip(stores, names, tallies)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    results.put(tallies)


def collect(procs: list, results, deadline: float) -> list[Tally]:
    """Every process's tallies, failing (not hanging) when one dies or overruns."""
    got: list[Tally] = []
    waiting = len(procs)
    while waiting:
        try:
            got += results.get(timeout=0.5)
            waiting -= 1
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                why = f"exit codes {dead}" if dead else "it overran its time"
                raise RuntimeError(f"a simulation process failed ({why}); see its traceback above") from None
    return got


@dataclass(frozen=True)
class Measure:
    claims_s: float
    reports_s: float
    claim_p50: float
    claim_p99: float
    report_p50: float
    report_p99: float
    lock_p50: float
    lock_p99: float
    lock_share: float  # of the reporting time, the part spent waiting for the row lock
    refused: float  # of the decisions' compare-and-sets, the part refused (planned from a stale snapshot)


def run_point(url: str, workers: int, population: int, seconds: float, procs: int, name: str) -> Measure:
    """One run: a fresh experiment, ``workers`` simulated workers for ``seconds`` after a warm-up."""
    store = SQLStore(url)
    try:
        config = ExperimentConfig(
            name=name, spec="bench-noop", space=SPACE, population=population, intervals=INTERVALS, seed=1
        )
        exp_id = store.create_experiment(config, tempfile.gettempdir()).id
    finally:
        store.close()
    warm = min(2.0, seconds / 5)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(procs + 1), ctx.Queue()
    names = [f"sim-{i}" for i in range(workers)]
    parts = [names[i::procs] for i in range(procs)]
    children = [
        ctx.Process(target=process_main, args=(url, exp_id, part, warm, seconds, barrier, results)) for part in parts
    ]
    for p in children:
        p.start()
    barrier.wait(timeout=300)
    tallies = collect(children, results, time.monotonic() + warm + seconds + 120)
    for p in children:
        p.join(timeout=30)
    claim_ms = [x for t in tallies for x in t.claim_ms] or [float("nan")]
    report_ms = [x for t in tallies for x in t.report_ms] or [float("nan")]
    lock_ms = [x for t in tallies for x in t.lock_ms] or [float("nan")]
    return Measure(
        sum(t.claims for t in tallies) / seconds,
        sum(t.reports for t in tallies) / seconds,
        percentile(claim_ms, 50),
        percentile(claim_ms, 99),
        percentile(report_ms, 50),
        percentile(report_ms, 99),
        percentile(lock_ms, 50),
        percentile(lock_ms, 99),
        sum(lock_ms) / max(1e-9, sum(report_ms)),
        sum(t.refused for t in tallies) / max(1, sum(t.plans for t in tallies)),
    )


def connections(admin: str) -> tuple[int, int]:
    """The server's max_connections, and how many are free for us (reserved and used ones aside)."""
    with common._pg_connect(admin=admin) as conn:
        limit = int(conn.execute("SHOW max_connections").fetchone()[0])
        reserved = int(conn.execute("SHOW superuser_reserved_connections").fetchone()[0])
        used = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
        return limit, limit - reserved - used.fetchone()[0] - SLACK


def needed(workers: int) -> int:
    """Connections ``workers`` simulated workers may hold: their store's, and their LISTEN one."""
    return 2 * workers + 2


@contextlib.contextmanager
def server_for(workers: int) -> Iterator[tuple[str, str]]:
    """The shared server when the connections fit, else a throwaway one with room: (admin URL, what was used)."""
    problem = common.postgres_problem()
    if problem:
        raise Skip(problem)
    limit, free = connections(common.PG_ADMIN)
    if needed(workers) <= free:
        yield common.PG_ADMIN, f"the shared server (max_connections {limit}, {free} free)"
        return
    raise_to = needed(workers) + 50
    log(f"scale: {needed(workers)} connections do not fit in max_connections {limit}: a throwaway server")
    with pgserver.server(raise_to) as admin:
        yield (
            admin,
            f"a throwaway server (initdb, defaults but max_connections {raise_to}): the shared one "
            f"allows {limit} (about {free} free), and {workers} workers hold up to {needed(workers)}",
        )


def saturation(rows: dict[int, float]) -> int | None:
    """The worker count past which reports/s stops growing (< 10% more at the next count)."""
    counts = sorted(rows)
    for a, b in zip(counts, counts[1:]):
        if rows[b] < GAIN * rows[a]:
            return a
    return None


def parse_counts(text: str, what: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        print(f"scale: --{what} wants positive integers separated by commas, got {text!r}", file=sys.stderr)
        sys.exit(2)
    return sorted(set(counts))


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--workers", default="16,64,128,256", help="simulated workers per point (comma-separated)")
    p.add_argument("--population", default="64,256,1000", help="population sizes (comma-separated)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run (after a warm-up)")
    p.add_argument("--repeats", type=int, default=3, help="runs per point (medians are reported)")
    p.add_argument("--procs", type=int, default=2, help="processes the simulated workers are spread over")
    args = p.parse_args(argv)
    if args.quick:
        args.workers, args.population, args.seconds = "8,32", "64", 3.0
    workers = parse_counts(args.workers, "workers")
    populations = parse_counts(args.population, "population")
    if args.seconds <= 0 or args.repeats < 1 or args.procs < 1:
        print("scale: --seconds must be > 0, --repeats and --procs >= 1", file=sys.stderr)
        return 2
    try:
        rows, capacity, where = measure_all(workers, populations, args.seconds, args.repeats, args.procs)
    except Skip as e:
        print(common.heading("Scale: simulated workers on one PostgreSQL database"))
        print(f"Skipped: {e}\n")
        return 0
    print(common.heading("Scale: simulated workers on one PostgreSQL database"))
    print(
        f"{', '.join(map(str, workers))} simulated workers (threads over {args.procs} processes, each "
        "with its own `SQLStore` and connection) run worker.py's loop with no-op training on one "
        f"async experiment (population {', '.join(map(str, populations))}, truncation, exploit "
        "decisions on every report): claim, report, and when nothing is claimable read the progress "
        f"and wait for work (LISTEN/NOTIFY, polling up to {POLL:.0f} s). Every figure is the median of "
        f"{args.repeats} runs of {args.seconds:g} s each after a warm-up; the range is min–max of "
        "reports/s. *Lock wait*: the duration of each statement that takes the experiment's row "
        "lock (a report's and a decision's version update), which returns once the lock is "
        "granted; *lock share*: that wait as a part of the time spent in `report()`; *plans "
        "refused*: decisions whose compare-and-set on the population's version failed (another "
        "report moved it while the plan was made), so they were read and planned again. Loopback, "
        f"client and server on the same {os.cpu_count()} cores. Database: {where}.\n"
    )
    print(
        table(
            [
                "population",
                "workers",
                "claims/s",
                "reports/s",
                "range",
                "claim p50 / p99 ms",
                "report p50 / p99 ms",
                "lock wait p50 / p99 ms",
                "lock share",
                "plans refused",
            ],
            rows,
        )
    )
    print()
    for population, by_workers in capacity.items():
        at = saturation(by_workers)
        best = max(by_workers.values())
        if at is None:
            print(f"- population {population}: reports/s still grows at {max(by_workers)} workers ({best:.0f}/s).")
        else:
            print(
                f"- population {population}: saturated at {at} workers (the next count adds < 10% "
                f"reports/s); the most measured: {best:.0f} reports/s."
            )
    top = max(workers)
    reached = {pop: by_workers.get(top) for pop, by_workers in capacity.items()}
    verdicts = ", ".join(f"population {pop}: {value:.0f}/s" for pop, value in reached.items())
    met = all(v is not None and v >= 200 for v in reached.values())
    print(f"\nTarget ≥ 200 reports/s with {top} workers: **{'met' if met else 'missed'}** ({verdicts}).\n")
    return 0


def measure_all(
    workers: list[int], populations: list[int], seconds: float, repeats: int, procs: int
) -> tuple[list[list[object]], dict[int, dict[int, float]], str]:
    rows: list[list[object]] = []
    capacity: dict[int, dict[int, float]] = {}
    with server_for(max(workers)) as (admin, where), common.postgres_database(admin) as url:
        for population in populations:
            capacity[population] = {}
            for n in workers:
                runs = [
                    run_point(url, n, population, seconds, min(procs, n), f"scale-{population}-{n}-{r}")
                    for r in range(repeats)
                ]
                m = {k: median([getattr(r, k) for r in runs]) for k in Measure.__dataclass_fields__}
                capacity[population][n] = m["reports_s"]
                log(f"scale: population {population}, {n} workers: {m['reports_s']:.0f} reports/s")
                rows.append(
                    [
                        population,
                        n,
                        f"{m['claims_s']:.0f}",
                        f"{m['reports_s']:.0f}",
                        spread([r.reports_s for r in runs], ".0f"),
                        f"{m['claim_p50']:.1f} / {m['claim_p99']:.1f}",
                        f"{m['report_p50']:.1f} / {m['report_p99']:.1f}",
                        f"{m['lock_p50']:.1f} / {m['lock_p99']:.1f}",
                        f"{m['lock_share']:.0%}",
                        f"{m['refused']:.0%}",
                    ]
                )
    return rows, capacity, where


if __name__ == "__main__":
    sys.exit(main())
