"""Ray Tune's side of bench/peers.py: one PBT or PB2 run of a popbt example, as Ray Tune runs it.

Runs in .venv-peers (ray[tune] + popbt + torch). The trainables do exactly what a popbt
worker does for one interval (seed, build, load the last checkpoint, apply the
hyperparameters, train, evaluate, save), with the example modules' own functions, so the
two tools differ only in how they schedule, rank, exploit and explore.
Prints one JSON line: the best final trial's score (and test accuracy for digits), the
wall time of ray.init and of tuner.fit, how many intervals Ray trained, and the
`reuse_actors` it ran with.

`--reuse-actors true` sets `TuneConfig(reuse_actors=True)`, which Ray advises for PBT (a
paused trial's next interval runs in an existing actor process); `--reuse-actors default`
leaves TuneConfig at Ray's default (False in Ray 2.x: Ray stops a paused trial's actor and
starts a new one when the trial resumes, which with PBT is after every interval).

    .venv-peers/bin/python bench/peers/ray_side.py --problem toy --method pbt --seed 3 \\
        --population 8 --intervals 50 --initial '[{"h0": 0.5, "h1": 0.2}, ...]' [--reuse-actors default]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import tune
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.schedulers.pb2 import PB2
from ray.tune.search.basic_variant import BasicVariantGenerator

from popbt import LogUniform, Uniform

EXAMPLES = {"toy": "popbt.examples.toy_quadratic", "digits": "popbt.examples.digits"}
STATE_FILE = "state"
LOG_PREFIX = "log_"  # PB2 searches a LogUniform hyperparameter as its logarithm (see pb2_bounds)
QUIET_OFFLINE = {
    "RAY_USAGE_STATS_ENABLED": "0",  # offline: never phone home
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no CSV/JSON/TensorBoard files per trial
    "RAY_AIR_NEW_OUTPUT": "0",
}


# -- the search space, in Ray's terms ---------------------------------------------------------


def mutations(space: Mapping[str, Any]) -> dict[str, Any]:
    """popbt's domains as Ray's: Uniform -> tune.uniform, LogUniform -> tune.loguniform."""
    out = {}
    for name, domain in space.items():
        if isinstance(domain, LogUniform):
            out[name] = tune.loguniform(domain.low, domain.high)
        elif isinstance(domain, Uniform):
            out[name] = tune.uniform(domain.low, domain.high)
        else:
            raise TypeError(f"{name}: {type(domain).__name__} has no Ray counterpart here")
    return out


def pb2_bounds(space: Mapping[str, Any]) -> dict[str, list[float]]:
    """Ray's PB2 takes linear [low, high] bounds; a LogUniform becomes its log in log bounds,
    so Ray's PB2 searches the same space as popbt's (which works in log scale for LogUniform)."""
    out = {}
    for name, domain in space.items():
        if isinstance(domain, LogUniform):
            out[LOG_PREFIX + name] = [math.log(domain.low), math.log(domain.high)]
        else:
            out[name] = [float(domain.low), float(domain.high)]
    return out


def encode(hparams: Mapping[str, float], space: Mapping[str, Any], log_scale: bool) -> dict[str, float]:
    """A popbt hyperparameter dict as a Ray config (log-encoded for PB2)."""
    if not log_scale:
        return dict(hparams)
    logs = {k for k, d in space.items() if isinstance(d, LogUniform)}
    return {(LOG_PREFIX + k if k in logs else k): (math.log(v) if k in logs else v) for k, v in hparams.items()}


def decode(config: Mapping[str, float]) -> dict[str, float]:
    """A Ray config back as the hyperparameters the example's functions read."""
    return {k.removeprefix(LOG_PREFIX): (math.exp(v) if k.startswith(LOG_PREFIX) else v) for k, v in config.items()}


def clipper(space: Mapping[str, Any]) -> Callable[[dict], dict]:
    """Ray's PBT multiplies by 0.8/1.2 without clipping; popbt clips into the bounds. Clip, so
    both search the same box (e.g. momentum stays <= 0.99, h in [0, 1])."""

    def clip(config: dict) -> dict:
        return {k: (space[k].clip(v) if k in space else v) for k, v in config.items()}

    return clip


# -- the trainable ------------------------------------------------------------------------------


def interval_seed(seed: int, member: int, interval: int) -> int:
    """One seed per (member, interval), derived as popbt's workers derive theirs."""
    digest = hashlib.sha256(f"popbt:{seed}:{member}:{interval}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def member_index() -> int:
    """The trial's position in the population (Ray names trials ..._00003); an exploit keeps it."""
    return int(tune.get_context().get_trial_name().rsplit("_", 1)[1])


def make_trainable(problem: str, seed: int, scratch: str) -> Callable[[dict], None]:
    """A function trainable that trains one interval per report and checkpoints every time.
    Its checkpoint directories go under ``scratch``, removed with the run's storage."""

    def trainable(config: dict) -> None:
        example = importlib.import_module(EXAMPLES[problem])
        expected = os.environ.get("POPBT_PEERS_SRC")
        if expected and not example.__file__.startswith(expected):
            raise RuntimeError(f"{example.__name__} imported from {example.__file__}, not from {expected}")
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)  # 1 CPU per trial, as each popbt worker has
        hparams = decode(config)
        member = member_index()
        start = tune.get_checkpoint()
        previous, interval = None, 0
        if start is not None:
            previous = start.to_directory(tempfile.mkdtemp(prefix="ray-peers-", dir=scratch))
            interval = json.loads((Path(previous) / "meta.json").read_text())["interval"] + 1
        while True:
            seed_everything(interval_seed(seed, member, interval))
            state = example.build(hparams, "cpu")
            if previous is not None:
                loaded = example.load(state, str(Path(previous) / STATE_FILE))
                state = state if loaded is None else loaded
                if getattr(example, "apply", None) is not None:
                    example.apply(state, hparams)
            example.train(state, hparams, interval, "cpu")
            score = example.evaluate(state, "cpu")
            previous = tempfile.mkdtemp(prefix="ray-peers-", dir=scratch)
            example.save(state, str(Path(previous) / STATE_FILE))
            (Path(previous) / "meta.json").write_text(json.dumps({"interval": interval}))
            tune.report({"score": score, "interval": interval}, checkpoint=tune.Checkpoint.from_directory(previous))
            interval += 1

    return trainable


class Ledger(tune.Callback):
    """What Ray did: each trial's first hyperparameters, and how many intervals it trained
    (an exploit from a donor of another age makes a trial retrain or skip some)."""

    def __init__(self) -> None:
        self.results = 0
        self.initial: dict[int, dict] = {}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        index = int(str(trial).rsplit("_", 1)[1])
        self.initial.setdefault(index, decode(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.results += 1


# -- one run ------------------------------------------------------------------------------------


def scheduler(method: str, space: Mapping[str, Any], args: argparse.Namespace):
    common = {
        "time_attr": "training_iteration",
        "metric": "score",
        "mode": "max",
        "perturbation_interval": 1,
        "quantile_fraction": args.quantile,
    }
    if method == "pbt":
        return PopulationBasedTraining(
            hyperparam_mutations=mutations(space),
            resample_probability=args.resample,
            perturbation_factors=tuple(args.factors),
            custom_explore_fn=clipper(space),
            **common,
        )
    return PB2(hyperparam_bounds=pb2_bounds(space), **common)


class Stopwatch:
    """Times a scheduler's choice of new hyperparameters (PB2 fits a Gaussian process there)."""

    def __init__(self, sched) -> None:
        self.seconds = 0.0
        self._inner = sched._get_new_config
        sched._get_new_config = self

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self._inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def score_checkpoint(problem: str, checkpoint: tune.Checkpoint) -> dict[str, float]:
    """The final model's test accuracy (digits), by the example's own function."""
    if problem != "digits":
        return {}
    example = importlib.import_module(EXAMPLES[problem])
    with checkpoint.as_directory() as d:
        state = example.load(
            example.build({k: dom.low for k, dom in example.space.items()}, "cpu"), str(Path(d) / STATE_FILE)
        )
    return {"test_accuracy": example.test_accuracy(state)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    example = importlib.import_module(EXAMPLES[args.problem])
    space = example.space
    log_scale = args.method == "pb2"
    initial = [encode(h, space, log_scale) for h in json.loads(args.initial)]
    random.seed(args.seed)  # Ray's PBT and PB2 draw from these global RNGs in the driver
    np.random.seed(args.seed)
    param_space = pb2_bounds(space) if log_scale else mutations(space)
    param_space = {k: (tune.uniform(*v) if isinstance(v, list) else v) for k, v in param_space.items()}
    ledger = Ledger()
    with tempfile.TemporaryDirectory(prefix="popbt-peers-ray-") as storage:
        scratch = os.path.join(storage, "scratch")
        os.mkdir(scratch)
        start = time.perf_counter()
        ray.init(
            num_cpus=args.cpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
            configure_logging=True,
        )
        init_s = time.perf_counter() - start
        sched = scheduler(args.method, space, args)
        stopwatch = Stopwatch(sched)
        tune_config = tune.TuneConfig(
            scheduler=sched,
            num_samples=args.population,
            search_alg=BasicVariantGenerator(points_to_evaluate=initial),
            **({"reuse_actors": True} if args.reuse_actors == "true" else {}),  # "default": Ray's own
        )
        tuner = tune.Tuner(
            tune.with_resources(make_trainable(args.problem, args.seed, scratch), {"cpu": 1}),
            param_space=param_space,
            tune_config=tune_config,
            run_config=tune.RunConfig(
                storage_path=storage,
                name="peers",
                verbose=0,
                stop={"training_iteration": args.intervals},
                callbacks=[ledger],
            ),
        )
        start = time.perf_counter()
        results = tuner.fit()
        fit_s = time.perf_counter() - start
        best = results.get_best_result(metric="score", mode="max", scope="last")
        finals = [r.metrics.get("training_iteration") for r in results]
        out = {
            "score": best.metrics["score"],
            "init_s": init_s,
            "fit_s": fit_s,
            "wall_s": init_s + fit_s,
            "explore_s": stopwatch.seconds,
            "intervals_trained": ledger.results,
            "exploits": sched._num_perturbations,
            "final_iterations": finals,
            "errors": sum(r.error is not None for r in results),
            "reuse_actors": tune_config.reuse_actors,
            "initial": [ledger.initial.get(i) for i in range(args.population)],
            "ray": ray.__version__,
            **score_checkpoint(args.problem, best.checkpoint),
        }
        ray.shutdown()
    return out


def about() -> dict[str, Any]:
    """Versions, and whether Ray's PB2 loads (and whether it pulls in GPy, as older Rays did)."""
    import platform

    out: dict[str, Any] = {"ray": ray.__version__, "python": platform.python_version()}
    out["pb2_gp"] = "scikit-learn" if "sklearn.gaussian_process" in sys.modules else "other"
    out["gpy_imported"] = "GPy" in sys.modules
    try:
        import GPy  # noqa: F401

        out["gpy_installed"] = True
    except ImportError:
        out["gpy_installed"] = False
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--about", action="store_true", help="print versions and what PB2 needs, then exit")
    p.add_argument("--problem", choices=sorted(EXAMPLES))
    p.add_argument("--method", choices=("pbt", "pb2"))
    p.add_argument("--seed", type=int)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--intervals", type=int)
    p.add_argument("--initial", help="JSON list of each member's first hyperparameters")
    p.add_argument("--quantile", type=float, default=0.25)
    p.add_argument("--resample", type=float, default=0.25)
    p.add_argument("--factors", type=float, nargs=2, default=(0.8, 1.2))
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument(
        "--reuse-actors",
        choices=("true", "default"),
        default="true",
        help="true: TuneConfig(reuse_actors=True); default: TuneConfig's own default (False)",
    )
    args = p.parse_args(argv)
    for name, value in QUIET_OFFLINE.items():  # read by ray.init and tuner.fit, so set before either
        os.environ.setdefault(name, value)
    if args.about:
        print(json.dumps(about()), flush=True)
        return 0
    missing = [f"--{k}" for k in ("problem", "method", "seed", "intervals", "initial") if getattr(args, k) is None]
    if missing:
        p.error(f"missing {', '.join(missing)}")
    print(json.dumps(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
