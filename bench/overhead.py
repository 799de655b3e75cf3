"""What popbt costs around user code: per-interval overhead, worker utilisation, exploit cost.

(a) A no-op spec through the real path (``popbt.run`` spawning ``python -m popbt worker``
    processes): whatever wall time the run takes is popbt's. (b) A spec that sleeps per
    interval: the share of worker time spent in user code. (c) The report() that decides an
    exploit, against copying the donor's checkpoint as a copying design would. (d) Where a
    worker's time goes, stage by stage, to explain (a) and (b).
Run: .venv/bin/python bench/overhead.py [--quick] [--parts a,b,c,d]
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

import common
import popbt
from common import SPECS, Skip, log, median, spread, table
from popbt import checkpoints
from popbt.experiment import ExperimentConfig
from popbt.store import Result, SQLStore, open_store
from popbt.worker import Worker

NOOP = str(SPECS / "noop.py")
SLEEP = str(SPECS / "sleep1.py")
TARGET_MS = 5.0
MB = 1 << 20


@dataclass(frozen=True)
class RunTiming:
    """One popbt.run: its wall time, its CPU time, and what its history says about it."""

    workers: int
    intervals: int
    wall: float  # seconds, the whole popbt.run call (worker start-up included)
    user: float  # seconds spent inside train(), as measured by the spec itself
    cpu: float  # CPU seconds of the launcher and its workers (user + system)
    steady: Window

    def overhead_ms(self) -> float:
        """Worker-time outside user code per interval, over the whole run."""
        return (self.wall * self.workers - self.user) / self.intervals * 1000

    def utilisation(self) -> float:
        return self.user / (self.workers * self.wall)


@dataclass(frozen=True)
class Window:
    """The stretch when every worker was working: from the last worker's first claim to the
    first worker's last report (database clock). Start-up and the tail are left out; rows
    that straddle an edge count by the fraction inside it."""

    seconds: float
    workers: int
    intervals: float
    user: float

    def overhead_ms(self) -> float:
        return (self.seconds * self.workers - self.user) / self.intervals * 1000

    def rate(self) -> float:
        return self.intervals / self.seconds

    def utilisation(self) -> float:
        return self.user / (self.workers * self.seconds)


def steady_window(rows: list) -> Window:
    by_worker: dict[str, list] = {}
    for r in rows:
        by_worker.setdefault(r.worker, []).append(r)
    start = max(min(r.started_at for r in rs) for rs in by_worker.values())
    end = min(max(r.finished_at for r in rs) for rs in by_worker.values())
    if end <= start:
        raise RuntimeError("no stretch of the run had every worker busy; use a larger population")
    intervals = user = 0.0
    for r in rows:
        span = r.finished_at - r.started_at
        inside = max(0.0, min(end, r.finished_at) - max(start, r.started_at))
        share = inside / span if span > 0 else float(start <= r.started_at <= end)
        intervals += share
        user += share * r.metrics["user_seconds"]
    return Window(end - start, len(by_worker), intervals, user)


@contextlib.contextmanager
def storage(backend: str) -> Iterator[tuple[str, str]]:
    """(storage URL, run directory) on a throwaway database; checkpoints on local disk."""
    with common.database(backend) as url, tempfile.TemporaryDirectory(prefix="popbt-bench-") as tmp:
        yield url, tmp


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have been waited for."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed_run(
    spec: str,
    url: str,
    run_dir: str,
    name: str,
    workers: int,
    population: int,
    intervals: int,
    sync: bool = False,
    seed: int = 0,
) -> RunTiming:
    """popbt.run exactly as a user calls it, quietly, and the timings its history holds."""
    cpu, start = cpu_seconds(), time.perf_counter()
    summary = popbt.run(
        spec,
        name=name,
        population=population,
        intervals=intervals,
        workers=workers,
        devices="cpu",
        sync=sync,
        seed=seed,
        storage=url,
        dir=run_dir,
        console=Console(file=io.StringIO()),
    )
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if not summary.finished:
        raise RuntimeError(f"experiment {name} did not finish")
    store = open_store(url)
    try:
        rows = store.history(store.experiment(name).id)
    finally:
        store.close()
    done = [r for r in rows if r.state == "done"]
    if len(done) != population * intervals:
        raise RuntimeError(f"{len(done)} intervals done, expected {population * intervals}")
    user = sum(r.metrics["user_seconds"] for r in done)
    return RunTiming(workers, len(done), wall, user, cpu, steady_window(done))


def startup_cpu(spec: str, url: str, run_dir: str, experiment: str, reps: int = 3) -> float:
    """CPU seconds one ``python -m popbt worker`` costs to start, join and leave a finished
    experiment: subtracted from a run's CPU time to get the per-interval share."""
    cmd = [
        sys.executable,
        "-m",
        "popbt",
        "worker",
        spec,
        "--experiment",
        experiment,
        "--storage",
        url,
        "--dir",
        run_dir,
    ]
    costs = []
    for _ in range(reps):
        before = cpu_seconds()
        subprocess.run(cmd, check=True, capture_output=True, stdin=subprocess.DEVNULL)
        costs.append(cpu_seconds() - before)
    return median(costs)


# -- (a) overhead per interval --------------------------------------------------------------


def part_a(quick: bool) -> str:
    population, intervals = (8, 4) if quick else (32, 10)
    worker_counts, reps = ([1, 2, 8] if quick else [1, 2, 4, 8]), (2 if quick else 3)
    rows, notes, headline = [], [], None
    for backend in common.BACKENDS:
        try:
            with storage(backend) as (url, run_dir):
                for n in worker_counts:
                    runs = [
                        timed_run(NOOP, url, run_dir, f"noop-{n}-{r}", n, population, intervals, seed=r)
                        for r in range(reps)
                    ]
                    start_cpu = startup_cpu(NOOP, url, run_dir, f"noop-{n}-0")
                    steady = [r.steady.overhead_ms() for r in runs]
                    whole = [r.overhead_ms() for r in runs]
                    cpu = [(r.cpu - n * start_cpu) / r.intervals * 1000 for r in runs]
                    log(
                        f"overhead a: {backend} {n} workers: {median(steady):.1f} ms/interval (steady), "
                        f"{median(whole):.1f} ms (whole run), {median(cpu):.1f} CPU ms/interval"
                    )
                    rows.append(
                        [
                            backend,
                            n,
                            f"{median([r.steady.rate() for r in runs]):.1f}",
                            f"{median(steady):.1f}",
                            spread(steady, ".1f"),
                            f"{median(whole):.1f}",
                            spread(whole, ".1f"),
                            f"{median(cpu):.1f}",
                        ]
                    )
                    if backend == "sqlite" and n == max(worker_counts):
                        headline = n, median(steady), median(whole), median(cpu)
        except Skip as e:
            notes.append(f"- {backend} skipped: {e}")
    text = [
        "#### (a) Overhead per interval, no-op training\n",
        f"`bench/specs/noop.py` (16 float64s saved with numpy), population {population}, "
        f"{intervals} intervals ({population * intervals} in all), async, through `popbt.run(workers=N)`: "
        f"N `python -m popbt worker` processes on CPU, checkpoints on local disk. Overhead per "
        f"interval = (wall × workers − time in train()) / intervals, as train() costs ~0. *Steady*: "
        f"only the stretch when all N workers were busy (last worker's first claim to first worker's "
        f"last report, database clock). *Whole run*: the `popbt.run` call, N worker start-ups "
        f"(Python, imports, connect) included. *CPU ms/interval*: CPU time of the launcher and its "
        f"workers per interval, worker start-up subtracted (database server not counted). Median "
        f"of {reps} repetitions (range: min–max).\n",
        table(
            [
                "backend",
                "workers",
                "intervals/s (steady)",
                "ms/interval (steady)",
                "range",
                "ms/interval (whole run)",
                "range",
                "CPU ms/interval",
            ],
            rows,
        ),
    ]
    if headline:
        text.append(target_verdict(*headline))
    return "\n".join(text + notes) + "\n"


def target_verdict(workers: int, steady_ms: float, whole_ms: float, cpu_ms: float) -> str:
    """Say plainly whether the ≤ 5 ms target was met, and why not when it was missed."""
    cores = os.cpu_count() or 1
    verdict = "met" if steady_ms <= TARGET_MS else "missed"
    text = (
        f"\nTarget: ≤ {TARGET_MS:g} ms overhead per interval on sqlite with 8 workers: **{verdict}** "
        f"with {workers} workers here ({steady_ms:.1f} ms steady, {whole_ms:.1f} ms over the whole run)."
    )
    if workers < 8:
        text += " (--quick runs fewer workers; the full run measures 8.)"
    if steady_ms > TARGET_MS and workers > cores:
        text += (
            f" On this {cores}-core machine wall × {workers} workers counts every CPU-second "
            f"{workers / cores:g} times: with a no-op train() the {workers} workers do nothing but "
            f"popbt's own work (about {cpu_ms:.0f} CPU ms per interval here: claim, build, load with "
            f"checksum, save with checksum, fsync and rename, report; see (d) for the uncontended "
            f"breakdown), so each gets about {cores / workers:.2g} of a core and queues for sqlite's "
            f"single writer: {workers} × {cpu_ms:.0f} / {cores} ≈ {workers * cpu_ms / cores:.0f} ms, the "
            f"order of what is measured. The target can only be met where each worker has a core "
            f"and popbt's CPU cost per interval is under 5 ms; (b) shows the cost per interval "
            f"when training, not popbt, occupies the workers."
        )
    elif steady_ms > TARGET_MS:
        text += f" popbt's own work costs {cpu_ms:.1f} CPU ms per interval (see (d) for where it goes)."
    return text


# -- (b) worker utilisation ------------------------------------------------------------------


def part_b(quick: bool) -> str:
    seconds, population, intervals, workers = (0.2, 16, 5, 2) if quick else (1.0, 16, 10, 2)
    reps = 2 if quick else 3
    os.environ["POPBT_BENCH_SLEEP"] = str(seconds)
    rows, verdict = [], ""
    with storage("sqlite") as (url, run_dir):
        for sync in (False, True):
            mode = "sync" if sync else "async"
            runs = [
                timed_run(SLEEP, url, run_dir, f"sleep-{mode}-{r}", workers, population, intervals, sync=sync, seed=r)
                for r in range(reps)
            ]
            steady = [r.steady.utilisation() * 100 for r in runs]
            whole = [r.utilisation() * 100 for r in runs]
            idle = [r.steady.overhead_ms() for r in runs]
            log(f"overhead b: {mode}: utilisation {median(steady):.2f}% steady, {median(whole):.2f}% whole run")
            rows.append(
                [
                    mode,
                    f"{median(steady):.2f}%",
                    spread(steady, ".2f"),
                    f"{median(idle):.1f}",
                    f"{median(whole):.2f}%",
                    spread(whole, ".2f"),
                ]
            )
            verdict += utilisation_verdict(mode, median(steady), median(idle), seconds)
    return (
        "\n".join(
            [
                "#### (b) Worker utilisation, training that sleeps\n",
                f"`bench/specs/sleep1.py` sleeping {seconds:g} s per interval (`POPBT_BENCH_SLEEP`), population "
                f"{population}, {intervals} intervals, {workers} workers through `popbt.run`, sqlite. Utilisation = "
                f"time inside train() (measured by the spec, summed over the history) / (workers × wall). "
                f"*Steady*: the stretch when all {workers} workers were busy (as in (a)); *whole run*: the "
                f"`popbt.run` call, {workers} worker start-ups and the tail included. *ms outside train() per "
                f"interval*: worker-time outside user code in the steady stretch / intervals. Median of {reps} "
                f"repetitions (range: min–max). Targets: ≥ 99.5% async, ≥ 99% sync.\n",
                table(
                    [
                        "mode",
                        "utilisation (steady)",
                        "range",
                        "ms outside train() per interval",
                        "utilisation (whole run)",
                        "range",
                    ],
                    rows,
                ),
                verdict,
            ]
        )
        + "\n"
    )


TARGETS = {"async": 99.5, "sync": 99.0}


def utilisation_verdict(mode: str, steady_pct: float, idle_ms: float, seconds: float) -> str:
    """Whether ``mode`` met its target, and what per-interval cost that target allows."""
    target = TARGETS[mode]
    allowed = seconds * 1000 * (100 / target - 1)
    met = "met" if steady_pct >= target else "missed"
    why = {
        "async": " A worker alone costs about 4.5 ms per interval ((d)); the rest is what two workers and the "
        "launcher pay together on two cores: both sleep exactly as long, so they report at the same instant and "
        "one waits for sqlite's single writer each interval (not broken down further here).",
        "sync": " Beside what async pays, each generation waits for its slowest member before the next is "
        "decided, and a worker that finished its share idles meanwhile.",
    }
    return (
        f"\n- {mode}: target ≥ {target:g}%: **{met}** ({steady_pct:.2f}% steady). At {seconds:g} s per interval "
        f"the target allows {allowed:.1f} ms outside train() per interval; here it is {idle_ms:.1f} ms."
        + (why[mode] if met == "missed" else "")
    )


# -- (c) exploit cost against checkpoint size -----------------------------------------------


def write_file(path: Path, size: int) -> str:
    """``size`` bytes of incompressible data, fsynced; returns its sha256."""
    block = os.urandom(min(size, MB))
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = block[: min(left, len(block))]
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def written_bytes() -> int | None:
    """Bytes this process has passed to write() so far (Linux /proc/self/io), else None."""
    try:
        with open("/proc/self/io") as f:
            return int(next(line for line in f if line.startswith("wchar:")).split()[1])
    except (OSError, StopIteration):
        return None


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


@dataclass(frozen=True)
class ReportCost:
    seconds: float
    file_bytes: int  # growth of the checkpoint directory during report()
    process_bytes: int | None  # write() bytes of this process during report() (sqlite's WAL)


def exploit_report(
    store: SQLStore, ckpt: Path, name: str, donor: tuple[str, str], loser: tuple[str, str], size: int
) -> ReportCost:
    """Member 1 reports a worse score than member 0 in a population of 2: that report decides
    member 1's exploit of member 0's checkpoint. Time it and count the bytes it writes."""
    config = ExperimentConfig(
        name=name, spec="bench-exploit", space={"x": popbt.Uniform(0.0, 1.0)}, population=2, intervals=2, seed=0
    )
    exp = store.create_experiment(config, str(ckpt))
    first, second = store.claim(exp.id, "bench", "cpu"), store.claim(exp.id, "bench", "cpu")
    store.report(first, Result(1.0, {}, donor[0], donor[1], size))
    before_dir, before_io = dir_bytes(ckpt), written_bytes()
    start = time.perf_counter()
    outcome = store.report(second, Result(0.0, {}, loser[0], loser[1], size))
    seconds = time.perf_counter() - start
    after_io = written_bytes()
    if outcome.exploited_from != first.member:
        raise RuntimeError(f"expected member {second.member} to exploit member {first.member}: {outcome}")
    io_bytes = None if before_io is None or after_io is None else after_io - before_io
    return ReportCost(seconds, dir_bytes(ckpt) - before_dir, io_bytes)


def copy_cost(src: Path, dst: Path, fsync: bool) -> float:
    """What a copying design pays per exploit: the donor's file copied for the loser."""
    start = time.perf_counter()
    shutil.copyfile(src, dst)
    if fsync:
        with open(dst, "rb+") as f:
            os.fsync(f.fileno())
    seconds = time.perf_counter() - start
    dst.unlink()
    return seconds


def human(size: int) -> str:
    return f"{size / (1 << 30):g} GB" if size >= 1 << 30 else f"{size / MB:g} MB"


def part_c(quick: bool) -> str:
    sizes = [MB, 100 * MB] if quick else [MB, 100 * MB, 1 << 30]
    reps = 5
    rows, notes = [], []
    for backend in common.BACKENDS:
        try:
            with storage(backend) as (url, tmp):
                ckpt = Path(tmp) / "checkpoints"
                ckpt.mkdir()
                store = SQLStore(url)
                try:
                    for size in sizes:
                        rows.append(exploit_row(store, ckpt, backend, size, reps))
                finally:
                    store.close()
        except Skip as e:
            notes.append(f"- {backend} skipped: {e}")
    return (
        "\n".join(
            [
                "#### (c) Exploit cost against checkpoint size\n",
                "`SQLStore.report()` of the member that loses (population 2: its report decides that its next "
                "task starts from the donor's checkpoint), with real checkpoint files of each size on local disk, "
                "against what a design that copies the donor's file would pay: `shutil.copyfile` (the source is "
                "in the page cache, as just-written checkpoints are), and the copy fsynced as popbt fsyncs its "
                f"own checkpoints. Median of {reps} repetitions (range: min–max). *Checkpoint bytes written* is the "
                "growth of the checkpoint directory during report(); *process write() bytes* is everything the "
                "benchmark process wrote meanwhile (sqlite's WAL; on PostgreSQL the server writes, not us).\n",
                table(
                    [
                        "backend",
                        "checkpoint",
                        "report() ms",
                        "range",
                        "checkpoint bytes written",
                        "process write() bytes",
                        "copyfile ms",
                        "copy+fsync ms",
                        "bytes a copy writes",
                        "copy+fsync / report()",
                    ],
                    rows,
                ),
            ]
            + notes
        )
        + "\n"
    )


def exploit_row(store: SQLStore, ckpt: Path, backend: str, size: int, reps: int) -> list[object]:
    log(f"overhead c: {backend} {human(size)}")
    donor_path, loser_path = ckpt / f"donor-{size}.ckpt", ckpt / f"loser-{size}.ckpt"
    donor = (str(donor_path), write_file(donor_path, size))
    loser = (str(loser_path), write_file(loser_path, size))
    costs = [exploit_report(store, ckpt, f"exploit-{size}-{r}", donor, loser, size) for r in range(reps)]
    copies = [copy_cost(donor_path, ckpt / "copy.tmp", fsync=False) for _ in range(reps)]
    synced = [copy_cost(donor_path, ckpt / "copy.tmp", fsync=True) for _ in range(reps)]
    donor_path.unlink()
    loser_path.unlink()
    report_ms = [c.seconds * 1000 for c in costs]
    io = [c.process_bytes for c in costs if c.process_bytes is not None]
    return [
        backend,
        human(size),
        f"{median(report_ms):.1f}",
        spread(report_ms, ".1f"),
        max(c.file_bytes for c in costs),
        f"{median(io):,.0f}" if io else "n/a",
        f"{median(copies) * 1000:.1f}",
        f"{median(synced) * 1000:.1f}",
        f"{size:,}",
        f"{median(synced) * 1000 / median(report_ms):,.1f}×",
    ]


# -- (d) where the time goes ---------------------------------------------------------------


STAGES = (
    ("claim", SQLStore, "claim"),
    ("report (decide, schedule, collect garbage)", SQLStore, "report"),
    ("checkpoint write (save, fsync, sha256, rename)", checkpoints.CheckpointDir, "write"),
    ("checkpoint verify (sha256)", checkpoints, "verify"),
    ("whole interval (claim excluded)", Worker, "train_one"),
)


@contextlib.contextmanager
def stage_timers() -> Iterator[dict[str, list[float]]]:
    """Time each stage of the worker loop by wrapping the functions that do it."""
    spent: dict[str, list[float]] = {label: [] for label, _, _ in STAGES}
    originals = [(owner, attr, getattr(owner, attr)) for _, owner, attr in STAGES]

    def timed(label: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label].append(time.perf_counter() - start)

        return wrapper

    for (label, owner, attr), (_, _, fn) in zip(STAGES, originals):
        setattr(owner, attr, timed(label, fn))
    try:
        yield spent
    finally:
        for owner, attr, fn in originals:
            setattr(owner, attr, fn)


def part_d(quick: bool) -> str:
    population, intervals = (8, 4) if quick else (32, 10)
    rows, notes = [], []
    for backend in common.BACKENDS:
        try:
            with storage(backend) as (url, tmp):
                spec = popbt.load_spec(NOOP)
                store = SQLStore(url)
                try:
                    exp = store.create_experiment(
                        spec.config("stages", population=population, intervals=intervals, seed=0), f"{tmp}/checkpoints"
                    )
                    with stage_timers() as spent:
                        cpu, start = time.process_time(), time.perf_counter()
                        Worker(store, exp, spec).run()
                        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
                finally:
                    store.close()
        except Skip as e:
            notes.append(f"- {backend} skipped: {e}")
            continue
        n = population * intervals
        for label, values in spent.items():
            rows.append([backend, label, f"{median(values) * 1000:.2f}", f"{sum(values) / n * 1000:.2f}"])
        rows.append(
            [backend, "**worker loop: wall / CPU per interval**", "", f"{wall / n * 1000:.2f} / {cpu / n * 1000:.2f}"]
        )
    return (
        "\n".join(
            [
                "#### (d) Where a worker's time goes, no-op training\n",
                f"One in-process `Worker` on `bench/specs/noop.py`, population {population}, {intervals} intervals, "
                f"alone on the store: each stage of the worker loop timed with `time.perf_counter` (median per "
                f"call, and total per interval). What is not listed is build/load/train/evaluate of the "
                f"no-op spec, the heartbeat thread and seeding.\n",
                table(["backend", "stage", "median ms per call", "ms per interval"], rows),
            ]
            + notes
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--parts", default="a,b,c,d", help="which parts to run, e.g. a or a,c (default a,b,c,d)")
    args = p.parse_args(argv)
    parts = {x.strip() for x in args.parts.split(",")}
    if not parts <= {"a", "b", "c", "d"}:
        p.error(f"--parts takes a, b, c and d, got {args.parts!r}")
    print(common.heading("popbt's overhead around user code"))
    for part, fn in (("a", part_a), ("b", part_b), ("c", part_c), ("d", part_d)):
        if part in parts:
            print(fn(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
