"""Histories whose every exploit is known in advance, for the plot, export, replay and live tests.

``hand_built`` drives a real SQLStore as workers would, reporting chosen scores in
synchronous mode (population 4, quantile 0.2: each generation the one worst member copies
the one best), so who copies whom is fixed:

    generation 0: scores 0.1 0.2 0.3 0.4  -> member 0 copies member 3 for interval 1
    generation 1: scores 0.9 0.2 0.3 0.5  -> member 1 copies member 0 for interval 2
    generation 2: scores 0.91 0.95 0.35 0.55 -> the best is member 1 at interval 2

so the best model's ancestry is (3, 0) -> (0, 1) -> (1, 2), and member 2 never copies.
``toy_run`` trains the test spec for real, in this process.
"""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

import popbt
from popbt.experiment import ExperimentConfig
from popbt.space import LogUniform, Uniform
from popbt.store import Result, open_store

SPACE = {"lr": LogUniform(1e-3, 1.0), "momentum": Uniform(0.0, 1.0)}
SCORES = {  # member -> score at intervals 0, 1, 2
    0: (0.1, 0.9, 0.91),
    1: (0.2, 0.2, 0.95),
    2: (0.3, 0.3, 0.35),
    3: (0.4, 0.5, 0.55),
}
BEST_ANCESTRY = [(3, 0), (0, 1), (1, 2)]
EXPLOITS = [(3, 0, 0, 1), (0, 1, 1, 2)]  # (donor, donor_interval, member, interval)


def config(name: str = "hand", spec: str = "recorder", **kw) -> ExperimentConfig:
    values = dict(population=4, intervals=3, seed=1, sync=True, metric="acc", retry_delay=0.0)
    values.update(kw)
    return ExperimentConfig(name=name, spec=spec, space=SPACE, **values)


def hand_built(url: str, name: str = "hand", spec: str = "recorder", **kw) -> int:
    """Create and run the experiment above to the end; return its id."""
    store = open_store(url)
    try:
        exp = store.create_experiment(config(name, spec, **kw), "/nonexistent/checkpoints")
        n = 0
        while (task := store.claim(exp.id, f"worker-{n % 2}", "cpu")) is not None:
            n += 1
            score = SCORES[task.member][task.interval]
            store.report(
                task,
                Result(
                    score, {"loss": round(1 - score, 6)}, f"/nonexistent/{task.member}-{task.interval}", "0" * 64, 1
                ),
            )
        return exp.id
    finally:
        store.close()


def toy_run(run_dir: Path, spec: str, name: str, **kw) -> str:
    """Train ``spec`` to the end in this process (one worker); return the storage URL."""
    quiet = Console(file=io.StringIO())
    summary = popbt.run(spec, name=name, workers=0, dir=run_dir, console=quiet, **kw)
    popbt.work(spec, experiment=name, dir=run_dir)
    return summary.storage
