"""Does an interval cost more as the history grows? One worker, no-op training, 10,000 intervals.

A real ``popbt.worker.Worker`` (in this process: no start-up in the figures) trains
``bench/specs/noop.py``, population 4, 2,500 intervals each: claim, build, load, train, save
(fsync'd checkpoint), report, garbage collection, decisions. The time of each interval is the
gap between consecutive results (database clock). Compared: ms per interval over the first
500 and the last 500 results, on sqlite and PostgreSQL side by side (backends alternate per
repetition), and PostgreSQL's whole-run ms per interval against sqlite's.
Run: .venv/bin/python bench/growth.py [--quick]
"""

from __future__ import annotations

import sys
import tempfile

import common
from common import SPECS, Skip, log, median, spread, table
from popbt.spec import load_spec
from popbt.store import open_store
from popbt.worker import Worker

NOOP = str(SPECS / "noop.py")
WINDOW = 500
TARGET_GROWTH = 1.2
TARGET_RATIO = 1.5


def one_run(backend: str, population: int, intervals: int, seed: int) -> tuple[float, float, float]:
    """ms per interval over the first and the last WINDOW results, and over the whole run."""
    with common.database(backend) as url, tempfile.TemporaryDirectory(prefix="popbt-growth-") as tmp:
        spec = load_spec(NOOP)
        store = open_store(url)
        try:
            config = spec.config("growth", population=population, intervals=intervals, seed=seed, search="pbt")
            exp = store.create_experiment(config, tmp)
            Worker(store, exp, spec, name="bench").run()
            done = sorted(r.finished_at for r in store.history(exp.id) if r.state == "done")
        finally:
            store.close()
    if len(done) != population * intervals:
        raise RuntimeError(f"{len(done)} results, expected {population * intervals}")
    window = min(WINDOW, len(done) // 4)

    def ms(first: int, last: int) -> float:
        return (done[last] - done[first]) / (last - first) * 1000

    return ms(0, window), ms(len(done) - 1 - window, len(done) - 1), ms(0, len(done) - 1)


def main(argv: list[str] | None = None) -> int:
    args = common.parser(__doc__.splitlines()[0]).parse_args(argv)
    population, intervals, reps = (4, 500, 1) if args.quick else (4, 2500, 3)
    results: dict[str, list[tuple[float, float, float]]] = {b: [] for b in common.BACKENDS}
    notes = []
    for rep in range(reps):
        for backend in common.BACKENDS if rep % 2 == 0 else common.BACKENDS[::-1]:
            if backend in notes:
                continue
            try:
                first, last, whole = one_run(backend, population, intervals, seed=rep)
            except Skip as e:
                notes.append(backend)
                log(f"growth: {backend} skipped: {e}")
                continue
            results[backend].append((first, last, whole))
            log(f"growth: {backend} rep {rep}: {first:.2f} ms first, {last:.2f} ms last, {whole:.2f} ms whole")
    rows, growth = [], {}
    for backend, runs in results.items():
        if not runs:
            continue
        ratios = [last / first for first, last, _ in runs]
        growth[backend] = median(ratios)
        rows.append(
            [
                backend,
                f"{median([r[0] for r in runs]):.2f}",
                f"{median([r[1] for r in runs]):.2f}",
                f"{median(ratios):.2f}",
                spread(ratios, ".2f"),
                f"{median([r[2] for r in runs]):.2f}",
            ]
        )
    n = population * intervals
    text = [
        "### Cost per interval as the history grows\n",
        f"Reproduce: `{common.command(argv)}`\n",
        f"One `Worker` in this process trains `bench/specs/noop.py` (population {population}, {intervals} "
        f"intervals: {n} in all, async PBT), through the whole path: claim, build, load, train, fsync'd "
        f"checkpoint, report, decisions, garbage collection. ms per interval = gap between consecutive results "
        f"(database clock) over the first and the last {min(WINDOW, n // 4)} results. Median of {reps} "
        f"repetitions, backends alternating (range: min–max of last/first).\n",
        table(
            ["backend", "ms/interval, first", "ms/interval, last", "last / first", "range", "ms/interval, whole"], rows
        ),
        "",
    ]
    for backend, g in growth.items():
        met = "met" if g <= TARGET_GROWTH else "missed"
        text.append(f"- {backend}: last / first {g:.2f}, target ≤ {TARGET_GROWTH}: **{met}**.")
    if len(growth) == 2:
        pg, lite = (median([r[2] for r in results[b]]) for b in ("postgresql", "sqlite"))
        met = "met" if pg <= TARGET_RATIO * lite else "missed"
        text.append(
            f"- PostgreSQL {pg:.2f} ms per interval against sqlite's {lite:.2f}: {pg / lite:.2f}×, "
            f"target ≤ {TARGET_RATIO}×: **{met}**."
        )
    for backend in notes:
        text.append(f"- {backend} skipped (see the log).")
    print("\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
