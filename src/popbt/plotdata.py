"""The plain data behind ``popbt plot``'s figures, computed from the history alone.

Each figure has one function here that turns rows, exploits and the config into named
tuples and dataclasses; ``plots.py`` only draws them. So what a figure claims (which chain
is the winner's ancestry, who copied whom) is tested without rendering anything, and the
core never imports matplotlib. The history itself is read by ``popbt.history``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import analysis
from .config import ExperimentConfig
from .errors import ConfigError
from .history import History
from .history import read as read_history  # noqa: F401  (the name this module used to define)
from .space import LogUniform
from .store import DONE, Exploit, NotFound, Row


def done_rows(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.state == DONE and r.score is not None]


def require_results(history: History) -> list[Row]:
    """The finished rows; a figure of an experiment without any is a user error."""
    done = done_rows(history.rows)
    if not done:
        raise NotFound(f"experiment {history.experiment.name!r} has no results yet")
    return done


def is_log(config: ExperimentConfig, name: str) -> bool:
    return isinstance(config.space.get(name), LogUniform)


# -- scores.png ------------------------------------------------------------------------


class Point(NamedTuple):
    """One result: member ``member`` scored ``score`` after training ``interval``."""

    member: int
    interval: int
    score: float


class Jump(NamedTuple):
    """An exploit on the winner's ancestry: ``member`` started ``interval`` from the
    checkpoint ``donor`` had after ``donor_interval``."""

    donor: int
    donor_interval: int
    donor_score: float
    member: int
    interval: int
    score: float


@dataclass(frozen=True)
class ScoresData:
    metric: str
    mode: str
    curves: dict[int, list[Point]]  # each member's results, by interval
    best: list[Point]  # the best model's ancestry, oldest first
    jumps: list[Jump]  # where that ancestry crossed from one member to another


def scores_data(rows: Sequence[Row], config: ExperimentConfig) -> ScoresData:
    """Every member's score curve, and the chain of results that built the best model."""
    curves: dict[int, list[Point]] = {}
    for r in sorted(done_rows(rows), key=lambda r: (r.member, r.interval)):
        curves.setdefault(r.member, []).append(Point(r.member, r.interval, r.score))
    found = analysis.best(rows, config)
    chain = analysis.ancestry(rows, found.member, found.interval) if found else []
    best = [Point(r.member, r.interval, r.score) for r in chain]
    jumps = [
        Jump(a.member, a.interval, a.score, b.member, b.interval, b.score)
        for a, b in zip(best, best[1:])
        if a.member != b.member
    ]
    return ScoresData(config.metric, config.mode, curves, best, jumps)


# -- hyperparameters.png --------------------------------------------------------------


class Config(NamedTuple):
    """Where one result sits in the plotted plane."""

    member: int
    interval: int
    x: Any
    y: Any


@dataclass(frozen=True)
class HparamsData:
    """A plane of two hyperparameters (or one hyperparameter against the score)."""

    x_name: str
    y_name: str
    x_log: bool
    y_log: bool
    intervals: int  # the experiment's length, so dot sizes mean the same in every figure
    points: list[Config]  # every trained (member, interval), with the values it trained with
    best_path: list[Config]  # the best model's schedule in this plane, oldest first
    best: Config | None  # the best model's final configuration


def hparams_data(rows: Sequence[Row], config: ExperimentConfig) -> HparamsData:
    """The first two hyperparameters of the space; with only one, it is plotted against
    the score, so the figure still says which values worked."""
    names = list(config.space)
    x_name = names[0]
    y_name = names[1] if len(names) > 1 else config.metric

    def where(r: Row) -> Config:
        y = r.hparams.get(y_name) if len(names) > 1 else r.score
        return Config(r.member, r.interval, r.hparams.get(x_name), y)

    points = [where(r) for r in sorted(done_rows(rows), key=lambda r: (r.member, r.interval))]
    found = analysis.best(rows, config)
    chain = analysis.ancestry(rows, found.member, found.interval) if found else []
    path = [where(r) for r in chain]
    return HparamsData(
        x_name,
        y_name,
        is_log(config, x_name),
        is_log(config, y_name),
        config.intervals,
        points,
        path,
        path[-1] if path else None,
    )


# -- schedule.png ---------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleData:
    """The hyperparameters the best model trained with, interval by interval."""

    metric: str
    member: int
    interval: int
    score: float
    names: list[str]
    log: dict[str, bool]
    steps: list[analysis.Step]
    copies: list[analysis.Step]  # steps that started from another member's checkpoint


def schedule_data(rows: Sequence[Row], config: ExperimentConfig) -> ScheduleData | None:
    found = analysis.best(rows, config)
    if found is None:
        return None
    steps = found.schedule
    copies = [b for a, b in zip(steps, steps[1:]) if a.member != b.member]
    names = list(config.space)
    return ScheduleData(
        config.metric,
        found.member,
        found.interval,
        found.score,
        names,
        {n: is_log(config, n) for n in names},
        steps,
        copies,
    )


# -- lineage.png ----------------------------------------------------------------------


class Segment(NamedTuple):
    """The model of ``(src_member, src_interval)`` went on training as ``(member, interval)``."""

    src_member: int
    src_interval: int
    member: int
    interval: int


class Edge(NamedTuple):
    """An exploit: ``member`` trained ``interval`` from ``donor``'s checkpoint after
    ``donor_interval`` (reason: exploit, or replace after repeated failures)."""

    donor: int
    donor_interval: int
    member: int
    interval: int
    reason: str


@dataclass(frozen=True)
class LineageData:
    metric: str
    members: list[int]
    intervals: int
    nodes: list[Point]  # every result
    own: list[Segment]  # a member training on from its own previous checkpoint
    exploits: list[Edge]  # every exploit the store decided
    best: list[Segment]  # the best model's ancestry, link by link


def lineage_data(rows: Sequence[Row], exploits: Sequence[Exploit], config: ExperimentConfig) -> LineageData:
    """The family tree: who trained on from whom, exploits included."""
    done = done_rows(rows)
    nodes = [Point(r.member, r.interval, r.score) for r in sorted(done, key=lambda r: (r.member, r.interval))]
    own = [
        Segment(r.parent, r.parent_interval, r.member, r.interval)
        for r in done
        if r.parent == r.member and r.parent_interval is not None
    ]
    edges = [Edge(x.donor, x.donor_interval, x.member, x.interval, x.reason) for x in exploits]
    found = analysis.best(rows, config)
    chain = analysis.ancestry(rows, found.member, found.interval) if found else []
    best = [Segment(a.member, a.interval, b.member, b.interval) for a, b in zip(chain, chain[1:])]
    members = sorted({r.member for r in rows})
    return LineageData(config.metric, members, config.intervals, nodes, sorted(own), edges, best)


# -- compare.png ----------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """Best score so far after each interval trained, counted over the whole population."""

    name: str
    spent: list[int]
    best: list[float]


@dataclass(frozen=True)
class CompareData:
    metric: str
    mode: str
    curves: list[Curve]


def best_so_far(name: str, rows: Sequence[Row], mode: str) -> Curve:
    """Results in the order they finished; the curve never gets worse (``mode`` decides
    which way is better)."""
    ordered = sorted(done_rows(rows), key=lambda r: (r.finished_at or 0.0, r.interval, r.member))
    better = max if mode == "max" else min
    spent, best, top = [], [], None
    for n, r in enumerate(ordered, start=1):
        top = r.score if top is None else better(top, r.score)
        spent.append(n)
        best.append(top)
    return Curve(name, spent, best)


def compare_data(histories: Sequence[History]) -> CompareData:
    """Experiments side by side; they must measure the same metric the same way."""
    if len(histories) < 2:
        raise ConfigError("--compare needs at least two experiments")
    first = histories[0].config
    for h in histories[1:]:
        if (h.config.metric, h.config.mode) != (first.metric, first.mode):
            raise ConfigError(
                f"cannot compare {histories[0].experiment.name!r} ({first.mode} {first.metric}) with "
                f"{h.experiment.name!r} ({h.config.mode} {h.config.metric})"
            )
    return CompareData(
        first.metric, first.mode, [best_so_far(h.experiment.name, h.rows, first.mode) for h in histories]
    )
