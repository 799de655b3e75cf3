"""The plain data behind ``popbt plot``'s figures, computed from the history alone.

Each figure has one function here that turns rows, exploits and the config into named
tuples and dataclasses; ``plots.py`` only draws them. So what a figure claims (which chain
is the winner's ancestry, who copied whom, where a category sits on an axis) is tested
without rendering anything, and the core never imports matplotlib. The history itself is
read by ``popbt.history``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import analysis
from .config import ExperimentConfig
from .errors import ConfigError
from .history import History
from .history import read as read_history  # noqa: F401  (the name this module used to define)
from .space import Choice, IntUniform, LogUniform
from .store import DONE, Exploit, NotFound, Row


def done_rows(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.state == DONE and r.score is not None]


def require_results(history: History) -> list[Row]:
    """The finished rows; a figure of an experiment without any is a user error."""
    done = done_rows(history.rows)
    if not done:
        raise NotFound(f"experiment {history.experiment.name!r} has no results yet")
    return done


def best_chain(rows: Sequence[Row], config: ExperimentConfig) -> list[Row]:
    """The rows that built the model ``popbt best`` reports, oldest first."""
    found = analysis.best(rows, config)
    return analysis.ancestry(rows, found.member, found.interval) if found else []


# -- axes: one encoding of every hyperparameter, shared by all figures ------------------


def integer_ticks(low: int, high: int, most: int = 11) -> list[int]:
    """Whole-number ticks over [low, high], at most ``most`` of them, on a 1-2-5 step, so an
    axis of intervals (or of an integer hyperparameter) never shows 2.5."""
    if high < low:
        low, high = high, low
    step = 1
    while (high - low) // step + 1 > most:
        step = next(s for s in _steps(step) if s > step)
    first = -(-low // step) * step  # the first multiple of step at or above low
    return list(range(first, high + 1, step))


def _steps(after: int):
    scale = 1
    while True:
        for s in (1, 2, 5):
            if s * scale > after:
                yield s * scale
        scale *= 10


class Axis(NamedTuple):
    """How one quantity is put on an axis. ``scale`` is linear, log or category; a category
    axis has a tick at each position 0, 1, ... labelled with the option it stands for."""

    name: str
    scale: str
    ticks: tuple[float, ...] | None = None
    labels: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        return self.name + (" (log scale)" if self.scale == "log" else "")


def hparam_axis(config: ExperimentConfig, name: str) -> Axis:
    """The axis of hyperparameter ``name``: a Choice's options in the order it declares them,
    LogUniform on a log scale, IntUniform with whole-number ticks."""
    domain = config.space.get(name)
    if isinstance(domain, Choice):
        return Axis(name, "category", tuple(range(len(domain.options))), tuple(map(option_label, domain.options)))
    if isinstance(domain, LogUniform):
        return Axis(name, "log")
    if isinstance(domain, IntUniform):
        return Axis(name, "linear", tuple(integer_ticks(domain.low, domain.high)))
    return Axis(name, "linear")


def option_label(option: Any) -> str:
    return f"{option:g}" if isinstance(option, float) else str(option)


def encode(config: ExperimentConfig, name: str, value: Any) -> float:
    """A hyperparameter's value as a number to plot: a Choice's value is its position among the
    Choice's declared options (NaN if it is not one of them), any other value itself."""
    domain = config.space.get(name)
    if isinstance(domain, Choice):
        for i, option in enumerate(domain.options):
            if value == option or repr(value) == repr(option):
                return float(i)
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def encode_all(config: ExperimentConfig, hparams: dict[str, Any]) -> dict[str, float]:
    return {name: encode(config, name, hparams.get(name)) for name in config.space}


def score_axis(config: ExperimentConfig) -> Axis:
    return Axis(config.metric, "linear")


def interval_ticks(config: ExperimentConfig, rows: Sequence[Row] = ()) -> list[int]:
    last = max([config.intervals - 1, *(r.interval for r in rows)])
    return integer_ticks(0, max(last, 0))


def better_word(mode: str) -> str:
    return "higher" if mode == "max" else "lower"


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
    experiment: str
    metric: str
    mode: str
    curves: dict[int, list[Point]]  # each member's results, by interval
    best: list[Point]  # the best model's ancestry, oldest first
    jumps: list[Jump]  # where that ancestry crossed from one member to another
    xticks: list[int]


def scores_data(rows: Sequence[Row], config: ExperimentConfig) -> ScoresData:
    """Every member's score curve, and the chain of results that built the best model."""
    curves: dict[int, list[Point]] = {}
    for r in sorted(done_rows(rows), key=lambda r: (r.member, r.interval)):
        curves.setdefault(r.member, []).append(Point(r.member, r.interval, r.score))
    best = [Point(r.member, r.interval, r.score) for r in best_chain(rows, config)]
    jumps = [
        Jump(a.member, a.interval, a.score, b.member, b.interval, b.score)
        for a, b in zip(best, best[1:])
        if a.member != b.member
    ]
    return ScoresData(config.name, config.metric, config.mode, curves, best, jumps, interval_ticks(config, rows))


# -- hyperparameters.png --------------------------------------------------------------


class Dot(NamedTuple):
    """One trained (member, interval): the encoded values it trained with and its score."""

    member: int
    interval: int
    values: dict[str, float]
    score: float


class Panel(NamedTuple):
    """One cell of the scatter matrix: ``y`` against ``x``. On the diagonal (row == col) the
    y axis is the score, so a single hyperparameter still says which values worked."""

    row: int
    col: int
    x: Axis
    y: Axis
    xs: list[float]  # one per ``HparamsData.dots``, in that order
    ys: list[float]
    path: list[tuple[float, float]]  # the best model's schedule in this plane, oldest first


@dataclass(frozen=True)
class HparamsData:
    experiment: str
    metric: str
    mode: str
    names: list[str]
    dots: list[Dot]  # worst score first, so the best are drawn on top
    colours: list[float]  # the colour value of each dot: its score
    panels: list[Panel]  # every (row, col) of the len(names) x len(names) matrix
    best: Dot | None  # the best model's final configuration

    def panel(self, row: int, col: int) -> Panel:
        return next(p for p in self.panels if (p.row, p.col) == (row, col))


def hparams_data(rows: Sequence[Row], config: ExperimentConfig) -> HparamsData:
    """A scatter matrix of every pair of hyperparameters, each dot a trained interval coloured
    by its score, and each hyperparameter against the score on the diagonal."""
    names = list(config.space)
    sign = 1 if config.mode == "max" else -1
    done = sorted(done_rows(rows), key=lambda r: (sign * r.score, r.member, r.interval))
    dots = [Dot(r.member, r.interval, encode_all(config, r.hparams), r.score) for r in done]
    chain = [Dot(r.member, r.interval, encode_all(config, r.hparams), r.score) for r in best_chain(rows, config)]
    axes = {n: hparam_axis(config, n) for n in names}
    panels = []
    for i, y_name in enumerate(names):
        for j, x_name in enumerate(names):
            if i == j:
                panels.append(
                    Panel(
                        i,
                        j,
                        axes[x_name],
                        score_axis(config),
                        [d.values[x_name] for d in dots],
                        [d.score for d in dots],
                        [(d.values[x_name], d.score) for d in chain],
                    )
                )
            else:
                panels.append(
                    Panel(
                        i,
                        j,
                        axes[x_name],
                        axes[y_name],
                        [d.values[x_name] for d in dots],
                        [d.values[y_name] for d in dots],
                        [(d.values[x_name], d.values[y_name]) for d in chain],
                    )
                )
    return HparamsData(
        config.name,
        config.metric,
        config.mode,
        names,
        dots,
        [d.score for d in dots],
        panels,
        chain[-1] if chain else None,
    )


# -- schedule.png ---------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleData:
    """The hyperparameters the best model trained with, interval by interval."""

    experiment: str
    metric: str
    member: int
    interval: int
    score: float
    names: list[str]
    axes: dict[str, Axis]
    steps: list[analysis.Step]
    values: dict[str, list[float]]  # each hyperparameter's encoded value at each step
    copies: list[analysis.Step]  # steps that started from another member's checkpoint
    xticks: list[int]


def schedule_data(rows: Sequence[Row], config: ExperimentConfig) -> ScheduleData | None:
    found = analysis.best(rows, config)
    if found is None:
        return None
    steps = found.schedule
    copies = [b for a, b in zip(steps, steps[1:]) if a.member != b.member]
    names = list(config.space)
    return ScheduleData(
        config.name,
        config.metric,
        found.member,
        found.interval,
        found.score,
        names,
        {n: hparam_axis(config, n) for n in names},
        steps,
        {n: [encode(config, n, s.hparams.get(n)) for s in steps] for n in names},
        copies,
        integer_ticks(0, max(config.intervals, found.interval + 1)),
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
    experiment: str
    metric: str
    members: list[int]
    intervals: int
    nodes: list[Point]  # every result
    own: list[Segment]  # a member training on from its own previous checkpoint
    exploits: list[Edge]  # every exploit the store decided
    best: list[Segment]  # the best model's ancestry, link by link
    xticks: list[int]


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
    chain = best_chain(rows, config)
    best = [Segment(a.member, a.interval, b.member, b.interval) for a, b in zip(chain, chain[1:])]
    members = sorted({r.member for r in rows})
    return LineageData(
        config.name,
        config.metric,
        members,
        config.intervals,
        nodes,
        sorted(own),
        edges,
        best,
        interval_ticks(config, rows),
    )


# -- compare.png ----------------------------------------------------------------------

LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P")


class Style(NamedTuple):
    """How one curve is drawn: no two curves of a figure share (linestyle, marker), each is
    thinner than the one before (so a later curve drawn over an identical earlier one leaves
    it showing at the edges), and markers sit on every ``stride``-th point from ``offset``,
    so identical curves put their markers on different intervals."""

    linestyle: str
    marker: str
    width: float
    offset: int
    stride: int


@dataclass(frozen=True)
class Curve:
    """The best score among the results of each interval: the best model of that age. Its
    last point is the score ``popbt best`` reports."""

    name: str
    population: int
    intervals: list[int]
    best: list[float]
    members: list[int]  # who scored it, at each interval
    style: Style
    same_as: list[str]  # earlier curves of the figure with exactly these points


@dataclass(frozen=True)
class CompareData:
    experiments: list[str]
    metric: str
    mode: str
    curves: list[Curve]
    xticks: list[int]


def best_at_each_interval(rows: Sequence[Row], mode: str) -> list[tuple[int, float, int]]:
    """(interval, best score, its member) for every interval with a result: the models are
    compared at the same age, as PBT compares them and as ``popbt best`` picks the winner
    (ties go to the lowest member, as there)."""
    sign = 1 if mode == "max" else -1
    top: dict[int, Row] = {}
    for r in done_rows(rows):
        held = top.get(r.interval)
        if held is None or (sign * r.score, -r.member) > (sign * held.score, -held.member):
            top[r.interval] = r
    return [(k, top[k].score, top[k].member) for k in sorted(top)]


def style_for(i: int, count: int) -> Style:
    return Style(LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)], max(3.4 - 0.7 * i, 1.0), i, max(count, 1))


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
    curves: list[Curve] = []
    for i, h in enumerate(histories):
        points = best_at_each_interval(h.rows, first.mode)
        xs, ys, who = [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]
        same = [c.name for c in curves if (c.intervals, c.best) == (xs, ys)]
        curves.append(Curve(h.experiment.name, h.config.population, xs, ys, who, style_for(i, len(histories)), same))
    last = max([h.config.intervals - 1 for h in histories] + [x for c in curves for x in c.intervals])
    return CompareData(
        [h.experiment.name for h in histories], first.metric, first.mode, curves, integer_ticks(0, max(last, 0))
    )
