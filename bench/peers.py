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

Ray runs in two configurations. "Ray Tune, reuse_actors=True" is Ray tuned for PBT, as Ray
advises: a paused trial resumes in an existing actor process. "Ray Tune, defaults
(reuse_actors=False)" leaves TuneConfig at Ray's default, which a user gets unless told
otherwise: Ray stops a trial's actor whenever PBT pauses the trial (after every interval here)
and starts a new one when it resumes. That costs minutes per toy run, so the default
configuration runs on the first --default-seeds seeds only (a subset of popbt's), for the
problems in --default-problems (the toy by default), and its wall-time ratio and quality are
compared with popbt's on those same seeds.

popbt runs in this process through the public API (popbt.run, popbt.best, popbt.export);
Ray runs in its own environment, .venv-peers, one subprocess per run. Both import popbt (and
its examples) from a snapshot of HEAD's src/, so that edits and commits made in the checkout
during the long run do not change what is measured (--working-tree measures the checkout).

    make bench-peers                          # creates .venv-peers, then runs this script
    .venv/bin/python bench/peers.py [--quick] [--seeds N] [--problems toy,digits] [--methods pbt,pb2]
                                    [--default-seeds K] [--default-problems toy[,digits]] [--working-tree]
    .venv/bin/python bench/run_all.py --only peers
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
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
RAY_TIMEOUT = 1800  # seconds for one Ray run (reuse_actors=True) before it counts as failed
RAY_DEFAULT_TIMEOUT = 3600  # the same at Ray's defaults, which restart an actor at every pause
EXPLORE = {"pbt": "perturb", "pb2": "pb2"}  # our method name -> popbt's explore setting
POPBT = "popbt"
RAY_TUNED = "Ray Tune, reuse_actors=True"
RAY_DEFAULT = "Ray Tune, defaults (reuse_actors=False)"
TOOLS = (POPBT, RAY_TUNED, RAY_DEFAULT)
RAY_TOOLS = {  # table label -> (ray_side.py --reuse-actors, the reuse_actors Ray must report, short name)
    RAY_TUNED: ("true", True, "Ray reuse_actors=True"),
    RAY_DEFAULT: ("default", False, "Ray defaults"),
}


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
    seed: int


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
    return Outcome(best["score"], test, wall, exploits, len(rows), initial, {}, seed)


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


def ray_run(problem: Problem, method: str, seed: int, intervals: int, initial: list[dict], tool: str) -> Outcome:
    """One Ray Tune run in .venv-peers, configured as ``tool``; its last stdout line is the JSON summary."""
    reuse, expected_reuse, name = RAY_TOOLS[tool]
    timeout = RAY_TIMEOUT if expected_reuse else RAY_DEFAULT_TIMEOUT
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
        "--reuse-actors",
        reuse,
    ]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONWARNINGS="ignore")
    what = f"{name} {problem.name} {method} seed {seed}"
    returncode, stdout, stderr = run_group(cmd, env, timeout, what)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if returncode != 0 or not lines:
        tail = "\n".join((stderr.strip().splitlines() or ["(no stderr)"])[-15:])
        raise RuntimeError(f"{what} exited {returncode}:\n{tail}")
    data = json.loads(lines[-1])
    if data["errors"]:
        raise RuntimeError(f"{what}: {data['errors']} trials errored")
    if any(i != intervals for i in data["final_iterations"]):
        raise RuntimeError(f"{what}: trials ended at {data['final_iterations']}")
    if data["reuse_actors"] is not expected_reuse:
        raise RuntimeError(f"{what}: ran with reuse_actors={data['reuse_actors']}, not {expected_reuse}")
    extra = {k: data[k] for k in ("init_s", "fit_s", "explore_s", "final_iterations")}
    return Outcome(
        data["score"],
        data.get("test_accuracy"),
        data["wall_s"],
        data["exploits"],
        data["intervals_trained"],
        data["initial"],
        extra,
        seed,
    )


def run_group(cmd: list[str], env: dict, timeout: float, what: str) -> tuple[int, str, str]:
    """Run ``cmd`` in a session of its own; past ``timeout`` seconds, kill that session (the Ray
    driver and every process it started) and raise, saying the run timed out."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        raise RuntimeError(f"{what} timed out: killed after {timeout:.0f} s") from None
    except BaseException:
        kill_session(proc)
        raise
    return proc.returncode, stdout, stderr


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the session that ``proc`` leads: Ray puts its workers in process groups of their
    own, within that session, so killing ``proc``'s group alone would leave them running."""
    members = [proc.pid]
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(entry.path, "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[3]) == proc.pid:  # field 6, the session id
                        members.append(int(entry.name))
    for pid in dict.fromkeys(members):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.communicate()


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
    failures: list[tuple[int, str]]  # (seed, why)

    @property
    def attempted(self) -> int:
        return len(self.outcomes) + len(self.failures)


def run_seed(
    problem: Problem,
    method: str,
    seed: int,
    intervals: int,
    tools: tuple[str, ...],
    cells: dict,
    mismatches: list[str],
) -> None:
    """The tools on one seed, their order rotating with the seed so none always runs first."""
    initial = initial_hparams(problem, seed)
    turn = seed % len(tools)
    for tool in tools[turn:] + tools[:turn]:
        cell = cells.setdefault((problem.name, method, tool), Cell([], []))
        try:
            if tool == POPBT:
                out = popbt_run(problem, method, seed, intervals)
            else:
                out = ray_run(problem, method, seed, intervals, initial, tool)
        except Exception as e:  # noqa: BLE001 - one failed run, whatever the cause, must not lose the others
            cell.failures.append((seed, str(e)))
            log(f"peers: {tool} {problem.name} {method} seed {seed} FAILED: {e}")
            continue
        cell.outcomes.append(out)
        if not same_hparams(out.initial, initial):
            mismatches.append(f"{tool} {problem.name} {method} seed {seed}")
        test = f", test {out.test:.4f}" if out.test is not None else ""
        log(
            f"peers: {tool} {problem.name} {method} seed {seed}: best {out.score:.4f}{test}, "
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


def seeds_label(seeds: list[int]) -> str:
    """'seed 0', 'seeds 0–2', or 'seeds 0, 2, 3'."""
    seeds = sorted(seeds)
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}–{seeds[-1]}"
    return "seeds " + ", ".join(map(str, seeds))


@dataclass(frozen=True)
class Paired:
    """A Ray cell next to popbt's runs on the same seeds (those where both finished)."""

    seeds: list[int]
    popbt_score: float  # medians over those seeds
    ray_score: float
    popbt_wall: float
    ray_wall: float

    @property
    def ratio(self) -> float:
        return self.ray_wall / self.popbt_wall


def paired(cells: dict, problem: str, method: str, tool: str) -> Paired | None:
    ours, theirs = cells.get((problem, method, POPBT)), cells.get((problem, method, tool))
    if ours is None or theirs is None:
        return None
    mine = {o.seed: o for o in ours.outcomes}
    both = sorted(o.seed for o in theirs.outcomes if o.seed in mine)
    if not both:
        return None
    ray = {o.seed: o for o in theirs.outcomes}
    return Paired(
        both,
        median([mine[s].score for s in both]),
        median([ray[s].score for s in both]),
        median([mine[s].wall for s in both]),
        median([ray[s].wall for s in both]),
    )


def rows_of(cells: dict, problems: list[Problem], methods: list[str], seeds: range) -> list[list[str]]:
    rows = []
    for problem in problems:
        for method in methods:
            for tool in TOOLS:
                cell = cells.get((problem.name, method, tool))
                if cell is None:
                    continue
                tried = sorted({o.seed for o in cell.outcomes} | {seed for seed, _ in cell.failures})
                which = "" if tried == list(seeds) else f" ({seeds_label(tried)})"
                runs = cell.outcomes
                if not runs:
                    rows.append(
                        [
                            problem.name,
                            method.upper(),
                            tool,
                            "failed",
                            "",
                            "",
                            "",
                            "",
                            "",
                            "",
                            f"0/{cell.attempted}{which}",
                        ]
                    )
                    continue
                scores = [o.score for o in runs]
                tests = [o.test for o in runs if o.test is not None]
                walls = [o.wall for o in runs]
                ratio = ""
                pair = paired(cells, problem.name, method, tool) if tool != POPBT else None
                if pair is not None:
                    ours = cells[problem.name, method, POPBT].outcomes
                    same = sorted(pair.seeds) == sorted(o.seed for o in ours) and len(pair.seeds) == len(runs)
                    ratio = f"{pair.ratio:.1f}×" + ("" if same else f" (popbt on {seeds_label(pair.seeds)})")
                rows.append(
                    [
                        problem.name,
                        method.upper(),
                        tool,
                        f"{median(scores):.4f}",
                        spread(scores, ".4f"),
                        f"{median(tests):.4f} ({spread(tests, '.4f')})" if tests else "",
                        f"{median(walls):.1f} ({spread(walls, '.1f')})",
                        ratio,
                        f"{median([o.trained for o in runs]):g}",
                        f"{median([o.exploits for o in runs]):g}",
                        f"{len(runs)}/{cell.attempted}{which}",
                    ]
                )
    return rows


def ray_init_note(cells: dict) -> str:
    ray = {k: c.outcomes for k, c in cells.items() if k[2] != POPBT and c.outcomes}
    if not ray:
        return ""
    inits = [o.extra["init_s"] for runs in ray.values() for o in runs]
    fits = {k: median([o.extra["fit_s"] for o in runs]) for k, runs in ray.items()}
    explore = {k: median([o.extra["explore_s"] for o in runs]) for k, runs in ray.items()}
    per = ", ".join(
        f"{p} {m.upper()} {RAY_TOOLS[t][2]} {s:.1f} s (of which {explore[p, m, t]:.1f} s choosing new hyperparameters)"
        for (p, m, t), s in fits.items()
    )
    return (
        f"`ray.init` took {median(inits):.1f} s (median of all Ray runs); `tuner.fit` alone, median: {per}. "
        "Ray chooses them in its driver loop, which handles no other trial's result meanwhile."
    )


def verdicts(cells: dict, problems: list[Problem], methods: list[str]) -> list[str]:
    """The team's targets, read off the medians against each Ray configuration that ran, on the
    seeds both tools finished: popbt >= Ray on quality, >= 50x faster on the toy."""
    lines, quality, speed = [], [], []
    for tool, (_, _, short) in RAY_TOOLS.items():
        parts = []
        for problem in problems:
            for method in methods:
                cell = cells.get((problem.name, method, tool))
                if cell is None:
                    continue  # not run in this configuration (see the notes)
                case = f"{problem.name} {method.upper()}"
                failed = f", {len(cell.failures)} of {cell.attempted} Ray runs failed" if cell.failures else ""
                pair = paired(cells, problem.name, method, tool)
                if pair is None:
                    parts.append(f"{case}: no verdict (no seed where both tools finished{failed})")
                    quality.append((False, f"{case} vs {short}: no verdict"))
                    if problem.name == "toy":
                        speed.append((False, f"{case} vs {short}: no verdict"))
                    continue
                better = pair.popbt_score >= pair.ray_score
                quality.append((better, f"{case} vs {short}"))
                text = (
                    f"{case} ({seeds_label(pair.seeds)}{failed}): median best {pair.popbt_score:.4f} vs "
                    f"{pair.ray_score:.4f} ({'popbt ≥ Ray' if better else 'popbt < Ray'})"
                )
                if problem.name == "toy":
                    fast = pair.ratio >= 50
                    speed.append((fast, f"{case} vs {short} {pair.ratio:.1f}×"))
                    text += f", {pair.ratio:.1f}× faster ({'meets' if fast else 'misses'} 50×)"
                parts.append(text)
        if parts:
            lines.append(f"- against {tool}: " + "; ".join(parts) + ".")
    if not lines:
        return []

    def tally(name: str, results: list[tuple[bool, str]]) -> str:
        met = [what for ok, what in results if ok]
        missed = [what for ok, what in results if not ok]
        return f"{name} met in {len(met)} of {len(results)}" + (f" (missed: {', '.join(missed)})" if missed else "")

    lines.append(
        "- In all: "
        + tally("popbt ≥ Ray on quality", quality)
        + ("; " + tally("≥ 50× faster on the toy", speed) if speed else "")
        + "."
    )
    return lines


def notes(
    cells: dict, about: dict, mismatches: list[str], seeds: range, defaults: tuple[list[int], list[str]]
) -> list[str]:
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
    failures = [
        f"- {tool}, {p} {m.upper()}, seed {seed}: {(why.strip().splitlines() or ['(no message)'])[0]}"
        for (p, m, tool), c in cells.items()
        for seed, why in c.failures
    ]
    default_seeds, default_problems = defaults
    ran = {problem for problem, _, _ in cells}
    left_out = [p for p in PROBLEMS if p in ran and p not in default_problems]
    if default_seeds and default_problems:
        at_defaults = (
            f"- {RAY_DEFAULT}: `TuneConfig` without `reuse_actors`, so Ray's own default, False (each run reports "
            "the value it ran with, checked), everything else as in the reuse_actors=True runs. With 8 trials on 2 "
            "CPUs, Ray's asynchronous PBT pauses a trial after each interval while others wait "
            "(`on_trial_result` in `ray/tune/schedulers/pbt.py`), and at this default Ray stops the paused trial's "
            "actor and starts a new process when it resumes, so nearly every trained interval pays for an actor "
            f"start. That is slow (see its wall times), so it ran on {seeds_label(default_seeds)} only, a subset of "
            f"popbt's {seeds_label(list(seeds))} (`--default-seeds`), for {' and '.join(default_problems)} "
            "(`--default-problems`); its wall ratio and its quality verdict compare it with popbt's runs on the "
            "same seeds."
            + (
                f" Not run at Ray's defaults, to keep the run's length down: {', '.join(left_out)} "
                "(`--default-problems toy,digits` adds it); there too every interval starts a new actor, which "
                "also imports torch."
                if "digits" in left_out
                else ""
            )
        )
    else:
        at_defaults = f"- {RAY_DEFAULT}: not run (`--default-seeds 0`, or no problem in `--default-problems`)."
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
            "hyperparameters, train, evaluate, save. Ray checkpoints every interval. "
            f"{RAY_TUNED}: `TuneConfig(reuse_actors=True)`, as Ray advises for PBT (`TuneConfig`'s docstring: it "
            "“can drastically speed up experiments that start and stop actors often (e.g., PBT in time-multiplexing "
            "mode)”), so a paused trial resumes in an existing actor process."
        ),
        at_defaults,
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
    defaults: tuple[list[int], list[str]],
) -> str:
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
    default_seeds, default_problems = defaults
    at_defaults = (
        f", the latter on {seeds_label(default_seeds)} and for {' and '.join(default_problems)} only (see the notes)"
        if default_seeds and default_problems
        else ", the latter not run"
    )
    intro = (
        f"popbt ({source}) against Ray Tune {about.get('ray')} (`PopulationBasedTraining`, `PB2`) "
        f"on the same problems, population {POPULATION}, intervals ({sizes}), {seeds_label(list(seeds))} and first "
        f"hyperparameters; Ray in two configurations, “{RAY_TUNED}” and “{RAY_DEFAULT}”{at_defaults}. Score: the best "
        f"final member's {metrics}{test}. All tools in one run, "
        f"interleaved; load average at start {load[0]}, at end {load[1]} ({os.cpu_count()} cores).\n"
    )
    targets = verdicts(cells, problems, methods)
    return "\n".join(
        [
            common.heading("Side by side with Ray Tune: PBT and PB2"),
            intro,
            table(headers, rows_of(cells, problems, methods, seeds)),
            "",
            *(
                [
                    "Targets (popbt ≥ Ray on quality; ≥ 50× faster wall time on the toy), medians over the seeds "
                    "where both tools finished:",
                    "",
                    *targets,
                    "",
                ]
                if targets
                else []
            ),
            *notes(cells, about, mismatches, seeds, defaults),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 5, --quick 2)")
    p.add_argument("--problems", default=",".join(PROBLEMS), help="comma-separated: toy,digits")
    p.add_argument("--methods", default="pbt,pb2", help="comma-separated: pbt,pb2")
    p.add_argument(
        "--default-seeds",
        type=int,
        help=f"run '{RAY_DEFAULT}' on seeds 0..K-1 only, K <= --seeds (default 1; 0: not at all)",
    )
    p.add_argument(
        "--default-problems",
        default="toy",
        help=f"comma-separated problems (of --problems) for '{RAY_DEFAULT}': toy[,digits] (default toy)",
    )
    p.add_argument(
        "--working-tree", action="store_true", help="measure the checkout as it is, not a snapshot of HEAD's src/"
    )
    args = p.parse_args(argv)
    problems = [PROBLEMS[name] for name in args.problems.split(",")]
    methods = [m for m in args.methods.split(",") if m in EXPLORE]
    seeds = range(args.seeds or (2 if args.quick else 5))
    k = 1 if args.default_seeds is None else args.default_seeds
    if not 0 <= k <= len(seeds):
        p.error(f"--default-seeds must be between 0 and the number of seeds, {len(seeds)}")
    default_seeds = list(range(k))
    default_problems = [name for name in args.default_problems.split(",") if name in args.problems.split(",")]
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
                    at_defaults = seed in default_seeds and prob.name in default_problems
                    tools = TOOLS if at_defaults else (POPBT, RAY_TUNED)
                    run_seed(prob, method, seed, intervals, tools, cells, mismatches)
    end_load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        report(
            args,
            cells,
            problems,
            methods,
            seeds,
            about,
            mismatches,
            (start_load, end_load),
            source,
            (default_seeds, default_problems),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
