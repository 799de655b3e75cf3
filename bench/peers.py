"""popbt side by side with Ray Tune's PopulationBasedTraining and PB2 schedulers.

Both tools train the same examples (the PBT paper's toy, popbt.examples.toy_quadratic, and
the digits MLP, popbt.examples.digits) with the same population, intervals, seeds, first
hyperparameters (popbt.strategy.initial_population), exploit fraction (quantile 0.25),
explore (×0.8/×1.2, resample with probability 0.25, clipped into the bounds) and compute
(two popbt workers against two concurrent 1-CPU Ray trials). Ray's trainables
(bench/peers/ray_side.py) call the examples' own build/load/apply/train/evaluate/save each
interval, as a popbt worker does. Measured in one run, interleaved so that both tools see
the same machine load: the best final member's score (true Q; validation and test accuracy
for digits) and the wall time, as medians over seeds.

popbt runs in this process through the public API (popbt.run, popbt.best, popbt.export);
Ray runs in its own environment, .venv-peers, one subprocess per run. Both import popbt (and
its examples) from a snapshot of HEAD's src/, so that edits and commits made in the checkout
during the long run do not change what is measured (--working-tree measures the checkout).

    make bench-peers                          # creates .venv-peers, then runs this script
    .venv/bin/python bench/peers.py [--quick] [--seeds N] [--problems toy,digits] [--methods pbt,pb2]
                                    [--working-tree]
    .venv/bin/python bench/run_all.py --only peers
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import common
from common import BENCH, ROOT, Skip, log, median, spread, table
from run_all import git_commit

PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PEERS_STAMP = ROOT / ".venv-peers" / ".installed"
RAY_SIDE = BENCH / "peers" / "ray_side.py"
POPULATION = 8
WORKERS = 2  # popbt worker processes = Ray's CPUs = concurrent Ray trials
QUANTILE = 0.25  # Ray's default; see group_sizes()
FACTORS = (0.8, 1.2)
RESAMPLE = 0.25
RAY_TIMEOUT = 1800  # seconds for one Ray run before it counts as failed
EXPLORE = {"pbt": "perturb", "pb2": "pb2"}  # our method name -> popbt's explore setting
TOOLS = ("popbt", "Ray Tune")


@dataclass(frozen=True)
class Problem:
    name: str
    spec: str
    intervals: int
    quick_intervals: int
    metric: str


PROBLEMS = {
    "toy": Problem("toy", "popbt.examples.toy_quadratic", 50, 10, "true Q (max 1.2)"),
    "digits": Problem("digits", "popbt.examples.digits", 10, 3, "validation accuracy"),
}


@dataclass(frozen=True)
class Outcome:
    """One run of one tool: the best final member and what the run cost."""

    score: float
    test: float | None  # test accuracy of the best final model (digits)
    wall: float  # seconds: popbt.run, or Ray's ray.init + tuner.fit
    exploits: int
    trained: int  # intervals actually trained
    initial: list[dict]  # each member's first hyperparameters, as the tool used them
    extra: dict[str, Any]


# -- popbt --------------------------------------------------------------------------------------


def popbt_run(problem: Problem, method: str, seed: int, intervals: int) -> Outcome:
    """One popbt experiment with two local worker processes; the wall time is the whole popbt.run."""
    from rich.console import Console

    import popbt

    with tempfile.TemporaryDirectory(prefix="popbt-peers-") as tmp:
        start = time.perf_counter()
        summary = popbt.run(
            problem.spec,
            workers=WORKERS,
            seed=seed,
            population=POPULATION,
            intervals=intervals,
            dir=tmp,
            explore=EXPLORE[method],
            quantile=QUANTILE,
            factors=FACTORS,
            resample_probability=RESAMPLE,
            console=Console(file=io.StringIO()),
        )
        wall = time.perf_counter() - start
        best = popbt.best(summary.experiment, dir=tmp)
        if best is None or not best["finished"] or best["interval"] != intervals - 1:
            raise RuntimeError(f"popbt {problem.name} {method} seed {seed} did not finish")
        rows = json.loads(popbt.export(summary.experiment, format="json", dir=tmp))["results"]
        test = test_accuracy(problem, best["weights"]) if problem.name == "digits" else None
    names = list(load_space(problem))
    initial = [{k: r[k] for k in names} for r in sorted(rows, key=lambda r: r["member"]) if r["interval"] == 0]
    exploits = sum(1 for r in rows if r["parent"] is not None and r["parent"] != r["member"])
    return Outcome(best["score"], test, wall, exploits, len(rows), initial, {})


def test_accuracy(problem: Problem, weights: str) -> float:
    """The digits example's own test score of popbt's best final weights."""
    from popbt.examples import digits
    from popbt.torch import load_weights

    return digits.test_accuracy(load_weights(digits.make_model({}), weights))


def load_space(problem: Problem) -> dict:
    import popbt

    return popbt.load_spec(problem.spec).space


def initial_hparams(problem: Problem, seed: int) -> list[dict]:
    """The first hyperparameters popbt draws for this seed; Ray's trials start from the same."""
    from popbt import strategy

    return strategy.initial_population(load_space(problem), POPULATION, seed)


# -- Ray Tune -----------------------------------------------------------------------------------


def ray_run(problem: Problem, method: str, seed: int, intervals: int, initial: list[dict]) -> Outcome:
    """One Ray Tune run in .venv-peers; its last stdout line is the JSON summary."""
    cmd = [
        str(PEERS_PYTHON),
        str(RAY_SIDE),
        "--problem",
        problem.name,
        "--method",
        method,
        "--seed",
        str(seed),
        "--population",
        str(POPULATION),
        "--intervals",
        str(intervals),
        "--initial",
        json.dumps(initial),
        "--quantile",
        str(QUANTILE),
        "--resample",
        str(RESAMPLE),
        "--factors",
        *map(str, FACTORS),
        "--cpus",
        str(WORKERS),
    ]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONWARNINGS="ignore")
    done = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RAY_TIMEOUT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stderr.strip().splitlines() or ["(no stderr)"])[-15:])
        raise RuntimeError(f"Ray {problem.name} {method} seed {seed} exited {done.returncode}:\n{tail}")
    data = json.loads(lines[-1])
    if data["errors"]:
        raise RuntimeError(f"Ray {problem.name} {method} seed {seed}: {data['errors']} trials errored")
    if any(i != intervals for i in data["final_iterations"]):
        raise RuntimeError(f"Ray {problem.name} {method} seed {seed}: trials ended at {data['final_iterations']}")
    extra = {k: data[k] for k in ("init_s", "fit_s", "explore_s", "final_iterations")}
    return Outcome(
        data["score"],
        data.get("test_accuracy"),
        data["wall_s"],
        data["exploits"],
        data["intervals_trained"],
        data["initial"],
        extra,
    )


def peers_problem() -> str | None:
    """Why Ray cannot run here (its environment missing and not creatable), or None."""
    if not PEERS_STAMP.exists():
        if not shutil.which("make"):
            return ".venv-peers is missing; create it with `make bench-peers`"
        log("peers: creating .venv-peers (make .venv-peers/.installed)")
        made = subprocess.run(
            ["make", "-s", ".venv-peers/.installed"], check=False, cwd=ROOT, capture_output=True, text=True
        )
        if made.returncode != 0:
            last = (made.stderr.strip().splitlines() or ["no message"])[-1]
            return f"could not create .venv-peers (`make .venv-peers/.installed`): {last}"
    return None


def ray_about() -> dict[str, Any]:
    done = subprocess.run(
        [str(PEERS_PYTHON), str(RAY_SIDE), "--about"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"),
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise Skip(f"Ray Tune does not import in .venv-peers: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def popbt_source(working_tree: bool) -> Iterator[str]:
    """Make popbt importable from a snapshot of HEAD's src/ (here, in the worker processes and
    in Ray's), and say which popbt is measured; with ``working_tree``, the checkout as it is."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], check=False, cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    if working_tree or not commit:
        yield f"the working tree (git {git_commit()} at start)"
        return
    archive = subprocess.run(["git", "archive", commit, "src"], check=True, cwd=ROOT, capture_output=True).stdout
    with tempfile.TemporaryDirectory(prefix="popbt-peers-src-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        src = os.path.join(tmp, "src")
        sys.path.insert(0, src)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
        os.environ["POPBT_PEERS_SRC"] = src  # ray_side checks that its trainables import popbt from here
        import popbt

        if not popbt.__file__.startswith(src):
            raise RuntimeError(f"popbt was imported from {popbt.__file__}, not from the snapshot")
        yield f"git commit {commit}, its src/ snapshotted at start"


# -- the comparison -----------------------------------------------------------------------------


@dataclass
class Cell:
    """One (problem, method, tool): its outcomes over the seeds, and the failures."""

    outcomes: list[Outcome]
    failures: list[str]


def run_seed(problem: Problem, method: str, seed: int, intervals: int, cells: dict, mismatches: list[str]) -> None:
    """Both tools on one seed, the order alternating with the seed so neither always runs first."""
    initial = initial_hparams(problem, seed)
    tools = TOOLS if seed % 2 == 0 else TOOLS[::-1]
    for tool in tools:
        cell = cells.setdefault((problem.name, method, tool), Cell([], []))
        try:
            if tool == "popbt":
                out = popbt_run(problem, method, seed, intervals)
            else:
                out = ray_run(problem, method, seed, intervals, initial)
        except Exception as e:  # noqa: BLE001 - one failed run, whatever the cause, must not lose the others
            cell.failures.append(str(e))
            log(f"peers: {tool} {problem.name} {method} seed {seed} FAILED: {e}")
            continue
        cell.outcomes.append(out)
        if not same_hparams(out.initial, initial):
            mismatches.append(f"{tool} {problem.name} {method} seed {seed}")
        test = f", test {out.test:.4f}" if out.test is not None else ""
        log(
            f"peers: {tool:8} {problem.name} {method} seed {seed}: best {out.score:.4f}{test}, "
            f"{out.wall:.1f}s, {out.trained} intervals, {out.exploits} exploits"
        )


def same_hparams(a: list[dict], b: list[dict]) -> bool:
    """Equal up to float round-off (Ray's PB2 runs a LogUniform through log and exp)."""
    return len(a) == len(b) and all(
        x is not None and x.keys() == y.keys() and all(math.isclose(x[k], y[k], rel_tol=1e-9) for k in y)
        for x, y in zip(a, b, strict=True)
    )


def group_sizes() -> str:
    """How many of the population each tool puts in its top and bottom groups."""
    ray = min(math.ceil(POPULATION * QUANTILE), POPULATION // 2)  # ray/tune/schedulers/pbt.py, _quantiles
    try:
        from popbt.strategy import cut_size

        ours, default = cut_size(POPULATION, QUANTILE), cut_size(POPULATION, 0.2)
    except (ImportError, TypeError):
        return f"Ray {ray} of {POPULATION}; popbt's count could not be read from popbt.strategy"
    return (
        f"{ours} of {POPULATION} in popbt (`popbt.strategy.cut_size`), {ray} of {POPULATION} in Ray "
        f"(ceil, `ray/tune/schedulers/pbt.py`); popbt's default quantile 0.2 would give {default} of {POPULATION}"
    )


# -- output -------------------------------------------------------------------------------------


def rows_of(cells: dict, problems: list[Problem], methods: list[str], seeds: int) -> list[list[str]]:
    rows = []
    for problem in problems:
        for method in methods:
            walls = {}
            for tool in TOOLS:
                cell = cells.get((problem.name, method, tool))
                if cell is None:
                    continue
                runs = cell.outcomes
                if not runs:
                    rows.append([problem.name, method.upper(), tool, "failed", "", "", "", "", "", "", f"0/{seeds}"])
                    continue
                scores = [o.score for o in runs]
                tests = [o.test for o in runs if o.test is not None]
                walls[tool] = median([o.wall for o in runs])
                wall = f"{walls[tool]:.1f} ({spread([o.wall for o in runs], '.1f')})"
                ratio = f"{walls[tool] / walls['popbt']:.1f}×" if tool != "popbt" and "popbt" in walls else ""
                rows.append(
                    [
                        problem.name,
                        method.upper(),
                        tool,
                        f"{median(scores):.4f}",
                        spread(scores, ".4f"),
                        f"{median(tests):.4f} ({spread(tests, '.4f')})" if tests else "",
                        wall,
                        ratio,
                        f"{median([o.trained for o in runs]):g}",
                        f"{median([o.exploits for o in runs]):g}",
                        f"{len(runs)}/{seeds}",
                    ]
                )
    return rows


def ray_init_note(cells: dict) -> str:
    inits = [o.extra["init_s"] for (_, _, tool), c in cells.items() if tool != "popbt" for o in c.outcomes]
    ray = {k: c.outcomes for k, c in cells.items() if k[2] != "popbt" and c.outcomes}
    fits = {k: median([o.extra["fit_s"] for o in runs]) for k, runs in ray.items()}
    if not inits:
        return ""
    explore = {k: median([o.extra["explore_s"] for o in runs]) for k, runs in ray.items()}
    per = ", ".join(
        f"{p} {m.upper()} {s:.1f} s (of which {explore[p, m, t]:.1f} s choosing new hyperparameters)"
        for (p, m, t), s in fits.items()
    )
    return (
        f"`ray.init` took {median(inits):.1f} s (median of all Ray runs); `tuner.fit` alone, median: {per}. "
        "Ray chooses them in its driver loop, which handles no other trial's result meanwhile."
    )


def verdicts(cells: dict, problems: list[Problem], methods: list[str]) -> list[str]:
    """The team's targets, read off the medians: popbt >= Ray on quality, >= 50x faster on the toy."""
    out = []
    for problem in problems:
        for method in methods:
            ours, theirs = cells.get((problem.name, method, "popbt")), cells.get((problem.name, method, "Ray Tune"))
            if not ours or not theirs or not ours.outcomes or not theirs.outcomes:
                continue
            a, b = median([o.score for o in ours.outcomes]), median([o.score for o in theirs.outcomes])
            ratio = median([o.wall for o in theirs.outcomes]) / median([o.wall for o in ours.outcomes])
            verdict = "meets" if ratio >= 50 else "misses"
            speed = f"; {ratio:.1f}× faster ({verdict} 50×)" if problem.name == "toy" else ""
            out.append(
                f"{problem.name} {method.upper()}: median best {a:.4f} vs {b:.4f} "
                f"({'popbt ≥ Ray' if a >= b else 'popbt < Ray'}){speed}"
            )
    return out


def notes(cells: dict, about: dict, mismatches: list[str]) -> list[str]:
    """How the comparison is set up, what differs between the tools, and what failed."""
    same = (
        "identical in both tools (checked for every run)"
        if not mismatches
        else f"**differ** in {', '.join(mismatches)}"
    )
    gpy = (
        "fits its Gaussian process with scikit-learn (`ray/tune/schedulers/pb2_utils.py`) and never imports "
        "GPy, so .venv-peers does not install GPy"
        if about.get("pb2_gp") == "scikit-learn" and not about.get("gpy_imported")
        else "imports GPy"
    )
    failures = [f"- {tool} {p} {m}: {f.splitlines()[0]}" for (p, m, tool), c in cells.items() for f in c.failures]
    return [
        (
            f"- Compute: popbt with {WORKERS} worker processes (`popbt.run(..., workers={WORKERS})`), Ray with "
            f"`ray.init(num_cpus={WORKERS})` and 1 CPU per trial, so {WORKERS} trials at a time; one torch thread "
            "each."
        ),
        (
            "- Wall time: popbt's is the whole `popbt.run` call (experiment creation, worker process start-up, "
            "training, shutdown); Ray's is `ray.init` + `tuner.fit()` (Python and Ray imports not counted). "
            + ray_init_note(cells)
        ),
        (
            f"- Same settings: asynchronous, ready after every interval (`perturbation_interval=1`), quantile "
            f"{QUANTILE}: {group_sizes()}. Explore ×{FACTORS[0]}/×{FACTORS[1]} or resample with probability "
            f"{RESAMPLE}; Ray's PBT does not clip a perturbed value, so a `custom_explore_fn` clips it into the "
            "bounds as popbt does. LogUniform is `tune.loguniform` for Ray's PBT; Ray's PB2 takes linear bounds, "
            "so it searches log(lr) and log(weight_decay) within log bounds (popbt's PB2 also works in log scale)."
        ),
        (
            f"- First hyperparameters: `popbt.strategy.initial_population(space, {POPULATION}, seed)`, given to Ray "
            f"as `points_to_evaluate`; {same}."
        ),
        (
            "- Ray's trainables do what a popbt worker does each interval, with the example's own functions: seed "
            "(the same seed per member and interval), build, load the previous checkpoint, apply the "
            "hyperparameters, train, evaluate, save. Ray checkpoints every interval, with `reuse_actors=True`, as Ray "
            "advises for PBT (with its default, False, a trial starts a new process each time it is paused)."
        ),
        (
            "- *intervals trained*: popbt trains exactly population × intervals. Ray's exploit resumes a trial from "
            "its donor's latest checkpoint, of whatever age, so a trial may skip or retrain intervals; Ray ranks "
            "the latest scores of the trials not yet finished, whatever their age, and skips an exploit when the "
            "donor it drew was not in the top group at its own last report (`_checkpoint_or_exploit` in "
            "`ray/tune/schedulers/pbt.py`)."
        ),
        f"- PB2: Ray's PB2 {gpy}; it never resamples.",
        *(["", "Failed runs:", *failures] if failures else []),
    ]


def report(
    args,
    cells: dict,
    problems: list[Problem],
    methods: list[str],
    seeds: range,
    about: dict,
    mismatches: list[str],
    load: tuple[str, str],
    source: str,
) -> str:
    n = len(seeds)
    sizes = ", ".join(f"{p.name} {p.quick_intervals if args.quick else p.intervals}" for p in problems)
    metrics = ", ".join(f"{p.name}: {p.metric}" for p in problems)
    test = (
        "; for digits also the test accuracy of that member's final weights (`digits.test_accuracy`)"
        if "digits" in [p.name for p in problems]
        else ""
    )
    headers = [
        "problem",
        "explore",
        "tool",
        "best final: median",
        "min–max",
        "test accuracy: median (min–max)",
        "wall s: median (min–max)",
        "Ray wall / popbt wall",
        "intervals trained",
        "exploits",
        "runs",
    ]
    intro = (
        f"popbt ({source}) against Ray Tune {about.get('ray')} (`PopulationBasedTraining`, `PB2`) "
        f"on the same problems, population {POPULATION}, intervals ({sizes}), seeds 0–{n - 1} and first "
        f"hyperparameters. Score: the best final member's {metrics}{test}. Both tools in one run, "
        f"interleaved; load average at start {load[0]}, at end {load[1]} ({os.cpu_count()} cores).\n"
    )
    targets = verdicts(cells, problems, methods)
    return "\n".join(
        [
            common.heading("Side by side with Ray Tune: PBT and PB2"),
            intro,
            table(headers, rows_of(cells, problems, methods, n)),
            "",
            *(
                ["Targets (popbt ≥ Ray on quality; ≥ 50× faster on the toy): " + "; ".join(targets) + ".", ""]
                if targets
                else []
            ),
            *notes(cells, about, mismatches),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 5, --quick 2)")
    p.add_argument("--problems", default=",".join(PROBLEMS), help="comma-separated: toy,digits")
    p.add_argument("--methods", default="pbt,pb2", help="comma-separated: pbt,pb2")
    p.add_argument(
        "--working-tree", action="store_true", help="measure the checkout as it is, not a snapshot of HEAD's src/"
    )
    args = p.parse_args(argv)
    problems = [PROBLEMS[name] for name in args.problems.split(",")]
    methods = [m for m in args.methods.split(",") if m in EXPLORE]
    seeds = range(args.seeds or (2 if args.quick else 5))
    problem = peers_problem()
    if problem:
        print(common.heading("Side by side with Ray Tune: PBT and PB2") + f"\nSkipped: {problem}")
        return 0
    start_load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    cells: dict = {}
    mismatches: list[str] = []
    with popbt_source(args.working_tree) as source:
        about = ray_about()
        for seed in seeds:
            for prob in problems:
                for method in methods:
                    intervals = prob.quick_intervals if args.quick else prob.intervals
                    run_seed(prob, method, seed, intervals, cells, mismatches)
    end_load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(report(args, cells, problems, methods, seeds, about, mismatches, (start_load, end_load), source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
