"""``popbt replay``: train one fresh model from scratch on a member's hyperparameter schedule.

PBT's result is a model *and* the schedule that made it. Replay checks the schedule on its
own: one model, built once, trained interval after interval with the hyperparameters its
ancestry used, no weights copied from anyone. Each interval is seeded as the worker seeded
it, so a deterministic spec reproduces the original scores. Replay only reads the store.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import analysis
from .errors import ConfigError
from .history import History, read, run_dir
from .space import space_to_json
from .spec import Spec, load_spec
from .store import NotFound
from .worker import Trial, in_trial, seed_everything, seed_for, split_score, train_seed


@dataclass(frozen=True)
class ReplayStep:
    """One interval of the replay next to the original run's result for it."""

    interval: int
    member: int  # the member that trained this interval in the original run
    hparams: dict[str, Any]
    original: float | None
    replayed: float


@dataclass(frozen=True)
class Replay:
    experiment: str
    member: int
    interval: int
    metric: str
    steps: list[ReplayStep]
    weights: str

    @property
    def score(self) -> float:
        return self.steps[-1].replayed

    @property
    def original(self) -> float | None:
        return self.steps[-1].original


def replay(
    spec: str,
    experiment: str = "latest",
    member: int | None = None,
    device: str = "cpu",
    storage: str | None = None,
    dir: str | os.PathLike | None = None,
    on_step: Callable[[ReplayStep], None] | None = None,
) -> Replay:
    """Replay the best member's schedule (or ``member``'s, up to its last result) and save the
    final weights to DIR/replays/NAME-member-M.ckpt. ``on_step`` sees each step as it ends."""
    loaded = load_spec(spec)
    history = read(experiment, storage, dir)
    check_space(loaded, history)
    target, interval = choose(history, member)
    steps = analysis.schedule(history.rows, target, interval)
    state, done = train_schedule(loaded, steps, history, device, on_step)
    name = history.experiment.name
    path = run_dir(storage, dir) / "replays" / f"{name}-member-{target}.ckpt"
    save_atomically(loaded, state, path)
    return Replay(name, target, interval, history.config.metric, done, str(path))


def check_space(spec: Spec, history: History) -> None:
    if space_to_json(spec.space) != space_to_json(history.config.space):
        raise ConfigError(
            f"spec {spec.ref!r} declares another search space than experiment "
            f"{history.experiment.name!r} was created with"
        )


def choose(history: History, member: int | None) -> tuple[int, int]:
    """(member, interval) to replay: the best result, or the given member's latest one."""
    name = history.experiment.name
    if member is None:
        found = analysis.best(history.rows, history.config)
        if found is None:
            raise NotFound(f"experiment {name!r} has no results yet")
        return found.member, found.interval
    latest = analysis.last_done(history.rows).get(member)
    if latest is None:
        raise NotFound(f"experiment {name!r} has no result for member {member}")
    return member, latest.interval


def train_schedule(
    spec: Spec,
    steps: list[analysis.Step],
    history: History,
    device: str,
    on_step: Callable[[ReplayStep], None] | None = None,
) -> tuple[Any, list[ReplayStep]]:
    """Build once, then per step: seed, apply the step's hyperparameters, train, evaluate."""
    cfg = history.config
    state: Any = None
    done: list[ReplayStep] = []
    for step in steps:
        hparams = dict(step.hparams)
        trial_seed = seed_for(cfg.seed, step.member, step.interval, step.attempts, step.replacements)
        trial = Trial(history.experiment.name, step.member, step.interval, device, trial_seed, cfg.intervals)
        with in_trial(trial):
            seed_everything(trial_seed)  # as the worker does, so popbt.current() and the random streams match
            fresh = spec.build(hparams, device)
            if state is None:
                state = fresh
            else:
                # The worker built a fresh state before loading the checkpoint into it; building
                # one (and dropping it) keeps the random stream train() sees the same.
                del fresh
                if spec.apply is not None:
                    spec.apply(state, hparams)
            seed_everything(train_seed(trial_seed))
            spec.train(state, hparams, step.interval, device)
            score, _ = split_score(spec.evaluate(state, device), cfg.metric)
        done.append(ReplayStep(step.interval, step.member, hparams, step.score, score))
        if on_step is not None:
            on_step(done[-1])
    return state, done


def save_atomically(spec: Spec, state: Any, path: Path) -> None:
    """spec.save to a temporary file, fsync, rename: the weights file is whole or absent."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {path.parent}: {e.strerror}") from None
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        spec.save(state, str(tmp))
        if not tmp.is_file():
            raise RuntimeError(f"save() wrote nothing to the path it was given ({tmp})")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
