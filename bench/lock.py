"""How long a report holds the experiment's write lock, before and after deciding outside it.

While a report holds the lock (sqlite: the database's single writer lock; PostgreSQL: the
experiment's row), no other worker of the experiment can report, and on sqlite none can claim
or renew a lease either. popbt 0.1 decided inside the report's transaction, PB2's Gaussian-
process fit and the spec's explore hook included. Now PB2's fit and any explore hook are planned
outside the lock (only the snapshot read and the plan's application hold it), while the built-in
rules, cheap and free of user code, plan inside the report's own transaction: a plan made
outside was refused and redone whenever another report had moved the population.

One in-process worker trains the toy (``popbt.examples.toy_quadratic``, population 8, 20
intervals, async) with PBT's perturbation and with PB2; every write transaction that runs inside
``report()`` is timed from its BEGIN to its COMMIT (SQLAlchemy engine events). The same
measurement runs on a checkout of ``--before`` (a git commit, default popbt 0.1) and on this
tree, in one run.
Run: .venv/bin/python bench/lock.py [--quick] [--before COMMIT]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
from common import ROOT, log, median, table

BEFORE = "b7ddc43"  # popbt 0.1: decisions inside the report's transaction
EXPLORES = ("perturb", "pb2")


def measure(url: str, explore: str, population: int, intervals: int, seed: int) -> dict:
    """Train one experiment in this process; per report, the ms its write transactions held the lock."""
    from sqlalchemy import event

    from popbt.experiment import load_spec
    from popbt.store import open_store
    from popbt.worker import Worker

    spec = load_spec("popbt.examples.toy_quadratic")
    store = open_store(url)
    held: list[float] = []  # per report: the sum of its write transactions
    longest: list[float] = []  # per report: its longest single write transaction
    state = {"in_report": False, "begun": None, "spans": []}

    @event.listens_for(store.engine, "begin")
    def _begin(conn):
        if state["in_report"] and not conn.get_execution_options().get("popbt_read"):
            state["begun"] = time.perf_counter()

    def _end(conn):
        if state["begun"] is not None:
            state["spans"].append(time.perf_counter() - state["begun"])
            state["begun"] = None

    event.listen(store.engine, "commit", _end)
    event.listen(store.engine, "rollback", _end)
    report = store.report

    def timed_report(*args, **kwargs):
        state["in_report"], state["spans"] = True, []
        try:
            return report(*args, **kwargs)
        finally:
            state["in_report"] = False
            held.append(1000 * sum(state["spans"]))
            longest.append(1000 * max(state["spans"], default=0.0))

    store.report = timed_report
    try:
        config = spec.config(
            f"lock-{explore}-{seed}", population=population, intervals=intervals, seed=seed, explore=explore
        )
        exp = store.create_experiment(config, tempfile.mkdtemp(prefix="popbt-lock-ckpt-"))
        start = time.perf_counter()
        Worker(store, exp, spec).run(poll=0.05)
        wall = time.perf_counter() - start
    finally:
        store.close()
    return {"held": held, "longest": longest, "wall": wall}


def run_child(tree: Path, backend: str, explore: str, population: int, intervals: int, seed: int) -> dict:
    """One measurement in a fresh process importing popbt from ``tree``."""
    with common.database(backend) as url:
        env = dict(os.environ, PYTHONPATH=str(tree / "src"))
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--measure",
            url,
            explore,
            str(population),
            str(intervals),
            str(seed),
        ]
        out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def checkout(commit: str, into: str) -> Path:
    """A work tree of ``commit`` (read only, removed with ``into``)."""
    tree = Path(into) / "before"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(tree), commit],
        check=True,
        capture_output=True,
    )
    return tree


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--measure":
        url, explore, population, intervals, seed = argv[1:6]
        print(json.dumps(measure(url, explore, int(population), int(intervals), int(seed))))
        return 0
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--before", default=BEFORE, help=f"git commit to compare with (default {BEFORE}, popbt 0.1)")
    args = p.parse_args(argv)
    population, intervals, seeds = (8, 8, range(2)) if args.quick else (8, 20, range(3))
    backends = [b for b in common.BACKENDS if b == "sqlite" or not common.postgres_problem()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="popbt-lock-") as tmp:
        trees = {"before": checkout(args.before, tmp), "after": ROOT}
        try:
            for backend in backends:
                for explore in EXPLORES:
                    found = {}
                    for which, tree in trees.items():
                        runs = [run_child(tree, backend, explore, population, intervals, s) for s in seeds]
                        held = [h for r in runs for h in r["held"]]
                        longest = [h for r in runs for h in r["longest"]]
                        found[which] = (median(held), max(held), max(longest), median([r["wall"] for r in runs]))
                        log(
                            f"lock: {backend} {explore} {which}: median {found[which][0]:.2f} ms, "
                            f"max {found[which][1]:.1f} ms"
                        )
                    for which in trees:
                        med, most, single, wall = found[which]
                        rows.append(
                            [backend, explore, which, f"{med:.2f}", f"{most:.1f}", f"{single:.1f}", f"{wall:.1f}"]
                        )
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees["before"])], capture_output=True
            )
    print(common.heading("Lock hold time per report: slow decisions outside the lock"))
    print(
        f"One in-process worker, `popbt.examples.toy_quadratic`, population {population}, {intervals} intervals, "
        f"async, {len(seeds)} seeds; every write transaction inside `report()` timed from BEGIN to COMMIT. "
        f"*before*: git {args.before} (popbt 0.1: decisions, PB2's fit and the explore hook inside the "
        "report's transaction); *after*: this tree (PB2 planned outside the lock, only its snapshot and "
        "apply under it; the built-in perturbation planned inside the report's transaction). "
        "Per report: the lock held in all (median, max) and the longest single hold.\n"
    )
    print(
        table(
            [
                "backend",
                "explore",
                "code",
                "lock held per report, median ms",
                "max ms",
                "longest single hold ms",
                "wall s per run",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
