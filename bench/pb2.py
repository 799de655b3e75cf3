"""PBT against PB2 (``--explore pb2``): the best final score on the toy problem and on digits.

For each problem, population (4 and 8) and seed, one synchronous experiment per explore
rule trains in this process (load_spec(...).config(...), store.create_experiment,
Worker(...).run()), so both rules see the same seeds, initial populations and exploit
decisions until their explore steps differ. Printed: a markdown table with the median and
the min–max of the best final score over the seeds, and the wall time per run.

    .venv/bin/python bench/pb2.py            # 5 seeds, full length
    .venv/bin/python bench/pb2.py --quick    # 2 seeds, shorter runs (a few minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from popbt import analysis  # noqa: E402
from popbt.experiment import load_spec  # noqa: E402
from popbt.store import open_store  # noqa: E402
from popbt.worker import Worker  # noqa: E402

PROBLEMS = {  # name: (spec, intervals, quick intervals)
    "toy": (str(ROOT / "examples" / "toy_quadratic.py"), 50, 20),
    "digits": ("popbt.examples.digits", 10, 5),
}
RULES = ("perturb", "pb2")


@dataclass(frozen=True)
class Outcome:
    best: float
    seconds: float


def one_run(spec_ref: str, population: int, intervals: int, seed: int, explore: str) -> Outcome:
    """One experiment in a throwaway sqlite database, trained by one in-process worker."""
    spec = load_spec(spec_ref)
    with tempfile.TemporaryDirectory(prefix="popbt-bench-pb2-") as tmp:
        store = open_store(f"sqlite:///{tmp}/popbt.db")
        try:
            config = spec.config(f"{explore}-{population}-{seed}", population=population,
                                 intervals=intervals, seed=seed, sync=True, explore=explore)
            exp = store.create_experiment(config, f"{tmp}/checkpoints")
            start = time.perf_counter()
            Worker(store, exp, spec, threads=1).run(poll=0.05)
            seconds = time.perf_counter() - start
            best = analysis.best(store.history(exp.id), config)
        finally:
            store.close()
    assert best is not None and best.interval == intervals - 1, "the run did not finish"
    return Outcome(best.score, seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 seeds and shorter runs")
    p.add_argument("--seeds", type=int, help="seeds per cell (default 5, --quick 2)")
    p.add_argument("--problems", default=",".join(PROBLEMS), help="comma-separated: toy,digits")
    p.add_argument("--populations", default="4,8")
    args = p.parse_args(argv)
    logging.getLogger("popbt").setLevel(logging.WARNING)
    seeds = range(args.seeds or (2 if args.quick else 5))
    rows = []
    for problem in args.problems.split(","):
        spec, full, quick = PROBLEMS[problem]
        intervals = quick if args.quick else full
        try:
            load_spec(spec)
        except Exception as e:  # digits needs torch and scikit-learn
            print(f"skipping {problem}: {e}", file=sys.stderr)
            continue
        for population in map(int, args.populations.split(",")):
            for explore in RULES:
                runs = []
                for seed in seeds:
                    runs.append(one_run(spec, population, intervals, seed, explore))
                    print(f"{problem} population {population} {explore} seed {seed}: "
                          f"best {runs[-1].best:.4f} in {runs[-1].seconds:.1f}s", file=sys.stderr, flush=True)
                scores = [r.best for r in runs]
                rows.append((problem, population, intervals, "PBT" if explore == "perturb" else "PB2",
                             f"{statistics.median(scores):.4f}", f"{min(scores):.4f}–{max(scores):.4f}",
                             len(runs), f"{statistics.median(r.seconds for r in runs):.1f}"))
    print("| problem | population | intervals | explore | median best final | min–max | seeds | s/run |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(map(str, row)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
