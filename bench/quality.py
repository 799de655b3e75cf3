"""PBT, PB2 and random search at equal budget on real tasks: whose best model generalises best?

For each task and seed, the three searches train the same population for the same number of
intervals from popbt's same seeded initial draw, asynchronously with two worker processes
(``popbt.run``). The best final member's weights are then scored on a test set that no search
decision sees: digits' held-out test split and Fashion-MNIST's t10k images.
Run: .venv/bin/python bench/quality.py [--quick] [--tasks digits,fashion] [--seeds N]
     [--population N] [--intervals N] [--limit N]   (the last three size the Fashion-MNIST task)
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

import common
import popbt
from common import Skip, log, median, spread, table
from popbt.experiment import load_spec
from popbt.store import open_store

WORKERS = 2  # worker processes per run: the cores of the machine the figures come from


@dataclass(frozen=True)
class Method:
    label: str
    settings: dict[str, Any]


PBT = Method("PBT", {"search": "pbt", "explore": "perturb"})
PB2 = Method("PB2", {"search": "pbt", "explore": "pb2"})
RANDOM = Method("random search", {"search": "random"})
METHODS = (PBT, PB2, RANDOM)


@dataclass(frozen=True)
class Task:
    """A spec (whose module has ``test_accuracy(state)``: data no search decision sees) and its size."""

    name: str
    title: str
    spec: str
    population: int
    intervals: int
    limit: int | None  # training images (POPBT_MNIST_LIMIT), None: the spec's own data
    describe: str


@dataclass(frozen=True)
class Outcome:
    task: str
    method: Method
    seed: int
    validation: float  # the best final member's score, the one the search optimises
    test: float  # the same weights on the test set
    exploits: int
    wall: float  # seconds for popbt.run: worker start-up, training, decisions
    cpu: float  # the worker processes' CPU seconds: what the run costs, however busy the machine


DIGITS = Task(
    "digits",
    "scikit-learn digits (MLP)",
    "popbt.examples.digits",
    8,
    10,
    None,
    "`popbt.examples.digits`: an MLP on scikit-learn's 8×8 digits, SGD's lr, momentum and weight decay "
    "searched; an interval is one pass over the 1,079 training images. *Validation*: accuracy on the "
    "359-image validation split (the score the search sees). *Test*: accuracy on the 359-image test "
    "split, which no decision sees; one image is 0.28 points, so equal accuracies are common.",
)
FASHION = Task(
    "fashion",
    "Fashion-MNIST subset (ConvNet)",
    "popbt.examples.mnist",
    8,
    10,
    10_000,
    "`popbt.examples.mnist` (the original PyTorch PBT tool's ConvNet, SGD's lr and momentum searched) "
    "on Fashion-MNIST. An interval is half an epoch. *Validation*: accuracy on the 20% of the "
    "training images held out for the score. *Test*: accuracy on the 10,000 t10k images.",
)


# -- running ---------------------------------------------------------------------------------


def quiet() -> Console:
    return Console(file=io.StringIO())


def test_accuracy(task: Task, best: popbt.Best) -> float:
    """Rebuild the best member with the spec's own build and load, then score it on the test set."""
    spec = load_spec(task.spec)
    state = spec.load(spec.build(best.schedule[-1].hparams, "cpu"), best.weights)
    return importlib.import_module(task.spec).test_accuracy(state)


def count_exploits(storage: str, name: str) -> int:
    store = open_store(storage)
    try:
        return sum(x.reason == "exploit" for x in store.exploits(store.experiment(name).id))
    finally:
        store.close()


def children_cpu() -> float:
    """User + system seconds of the finished child processes (popbt.run's workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def worker_logs(run_dir: str, lines: int = 15) -> str:
    """The last lines of every worker log under ``run_dir``."""
    tails = []
    for path in sorted(Path(run_dir, "logs").glob("*/*.log")):
        tails.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
    return "\n".join(tails)


def one_run(task: Task, method: Method, seed: int) -> Outcome:
    """One experiment in a throwaway directory, trained by WORKERS processes, then tested."""
    name = f"{task.name}-{method.settings['search']}-{method.settings.get('explore', 'none')}-s{seed}"
    with tempfile.TemporaryDirectory(prefix="popbt-quality-") as run_dir:
        storage = f"sqlite:///{run_dir}/popbt.db"
        start, cpu_start = time.perf_counter(), children_cpu()
        try:
            summary = popbt.run(
                task.spec,
                name=name,
                population=task.population,
                intervals=task.intervals,
                workers=WORKERS,
                devices="cpu",
                seed=seed,
                sync=False,
                storage=storage,
                dir=run_dir,
                console=quiet(),
                **method.settings,
            )
        except RuntimeError as e:  # the logs die with the directory: show their ends
            raise RuntimeError(f"{e}\n{worker_logs(run_dir)}") from None
        wall, cpu = time.perf_counter() - start, children_cpu() - cpu_start
        best = summary.best
        if not summary.finished or best is None or best.weights is None or best.interval != task.intervals - 1:
            raise RuntimeError(f"experiment {name} did not finish")
        outcome = Outcome(
            task.name, method, seed, best.score, test_accuracy(task, best), count_exploits(storage, name), wall, cpu
        )
    log(
        f"quality: {task.name} {method.label} seed {seed}: validation {outcome.validation:.4f}, "
        f"test {outcome.test:.4f}, {outcome.exploits} exploits, {wall:.0f} s, {cpu:.0f} CPU s"
    )
    return outcome


def fashion_problem() -> str | None:
    """Why the Fashion-MNIST files cannot be read, or None."""
    from popbt.examples import mnist

    try:
        for name in (
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ):
            mnist.find_idx(mnist.data_dir(), name)
    except FileNotFoundError as e:
        return str(e)
    return None


def run_task(task: Task, seeds: Sequence[int]) -> list[Outcome]:
    if task.limit:
        os.environ["POPBT_MNIST_LIMIT"] = str(task.limit)  # the worker processes inherit it
    if task.name == FASHION.name and (problem := fashion_problem()):
        raise Skip(problem)
    return [one_run(task, method, seed) for seed in seeds for method in METHODS]


# -- report ----------------------------------------------------------------------------------


def by_seed(outcomes: list[Outcome], method: Method) -> dict[int, Outcome]:
    return {o.seed: o for o in outcomes if o.method == method}


def duel(mine: dict[int, Outcome], random: dict[int, Outcome]) -> str:
    """Same-seed wins–ties–losses against random search, on test accuracy."""
    wins = sum(mine[s].test > random[s].test for s in mine)
    ties = sum(mine[s].test == random[s].test for s in mine)
    return f"{wins}–{ties}–{len(mine) - wins - ties}"


def summary_table(outcomes: list[Outcome]) -> str:
    random = by_seed(outcomes, RANDOM)
    rows = []
    for method in METHODS:
        mine = by_seed(outcomes, method)
        tests, vals = [o.test for o in mine.values()], [o.validation for o in mine.values()]
        rows.append(
            [
                method.label,
                f"{median(tests):.4f}",
                spread(tests, ".4f"),
                f"{median(vals):.4f}",
                spread(vals, ".4f"),
                f"{median([o.exploits for o in mine.values()]):g}",
                f"{median([o.wall for o in mine.values()]):.0f}",
                f"{median([o.cpu for o in mine.values()]):.0f}",
                "—" if method is RANDOM else duel(mine, random),
            ]
        )
    return table(
        [
            "method",
            "test accuracy (median)",
            "test min–max",
            "validation (median)",
            "validation min–max",
            "exploits per run",
            "wall s/run",
            "worker CPU s/run",
            "same-seed test wins–ties–losses vs random",
        ],
        rows,
    )


def seed_table(outcomes: list[Outcome], seeds: Sequence[int]) -> str:
    columns = [by_seed(outcomes, m) for m in METHODS]
    rows = [[seed, *(f"{c[seed].test:.4f} ({c[seed].validation:.4f})" for c in columns)] for seed in seeds]
    return table(["seed", *(f"{m.label}: test (validation)" for m in METHODS)], rows)


def section(task: Task, seeds: Sequence[int], outcomes: list[Outcome] | None, skipped: str | None) -> str:
    images = f"the first {task.limit:,} training images" if task.limit else "all its training images"
    size = (
        f"Population {task.population}, {task.intervals} intervals"
        f"{', ' + images if task.name == FASHION.name else ''}, {len(seeds)} seeds ({seeds[0]}–{seeds[-1]}) "
        f"per method."
    )
    head = f"#### {task.title}\n\n{task.describe} {size}\n"
    if skipped:
        return f"{head}\nSkipped: {skipped}\n"
    assert outcomes is not None
    return "\n".join(
        [head, summary_table(outcomes), "", "Each seed's best final model:", "", seed_table(outcomes, seeds), ""]
    )


def preamble() -> str:
    return f"""{common.heading("Search quality on real tasks: PBT, PB2 and random search at equal budget")}
Every run: `popbt.run` with {WORKERS} worker processes on the CPU (one core each), asynchronous mode, a fresh
sqlite database. *PBT*: `search="pbt"` with popbt's defaults (truncation, quantile 0.2, ×0.8/×1.2
perturbation, resample with probability 0.25). *PB2*: the same exploit with `explore="pb2"`. *random
search*: `search="random"` (the same initial draw, trained to the end with no exploit and no explore). For
each seed the three methods start from popbt's same seeded initial hyperparameters and train the same
population for the same number of intervals. The result of a run is its best member at the final interval
(by validation score); its weights are then scored on the test set. *wins–ties–losses*: seeds on which the
method's test accuracy is above, equal to, below random search's on the same seed. *wall s/run* includes
starting the worker processes; *worker CPU s/run* is their user + system time, which does not depend on how
busy the machine was (on two idle cores a run takes about half of it).
"""


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--tasks", default="digits,fashion", help="comma-separated: digits,fashion")
    p.add_argument("--seeds", type=int, help="seeds per method (default 5, --quick 2)")
    p.add_argument("--population", type=int, help=f"Fashion-MNIST population (default {FASHION.population})")
    p.add_argument("--intervals", type=int, help=f"Fashion-MNIST intervals (default {FASHION.intervals})")
    p.add_argument("--limit", type=int, help=f"Fashion-MNIST training images (default {FASHION.limit})")
    return p.parse_args(argv)


def chosen_tasks(args: argparse.Namespace) -> list[Task]:
    digits, fashion = DIGITS, FASHION
    if args.quick:
        digits = replace(digits, intervals=4)
        fashion = replace(fashion, population=4, intervals=4, limit=3000)
    fashion = replace(
        fashion,
        population=args.population or fashion.population,
        intervals=args.intervals or fashion.intervals,
        limit=args.limit or fashion.limit,
    )
    known = {t.name: t for t in (digits, fashion)}
    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"quality.py: unknown task {', '.join(unknown)} (known: {', '.join(known)})")
    return [known[n] for n in names]


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    tasks = chosen_tasks(args)
    seeds = list(range(args.seeds or (2 if args.quick else 5)))
    sections = []
    for task in tasks:
        start = time.perf_counter()
        try:
            outcomes, skipped = run_task(task, seeds), None
        except Skip as e:
            outcomes, skipped = None, str(e)
            log(f"quality: {task.name} skipped: {e}")
        log(f"quality: {task.name} took {(time.perf_counter() - start) / 60:.1f} min")
        sections.append(section(task, seeds, outcomes, skipped))
    print("\n".join([preamble(), *sections]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
