"""``popbt plot``: the figures that show what PBT did, drawn with matplotlib (Agg).

Only this module imports matplotlib, and nothing in the core imports this module, so
popbt runs on machines without it. The data each figure shows comes from ``plotdata``
(positions, category ticks, integer ticks, styles); the functions here only draw. Figures
are built on ``matplotlib.figure.Figure`` directly (no pyplot), so plotting never touches
a user's global backend or open windows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .errors import ConfigError
from .history import read, read_many, run_dir
from .plotdata import (
    Axis,
    CompareData,
    HparamsData,
    LineageData,
    ScheduleData,
    ScoresData,
    better_word,
    compare_data,
    hparams_data,
    lineage_data,
    require_results,
    schedule_data,
    scores_data,
)

PURPLE = "#7b2cbf"
GREY = "0.62"
EXPLOIT = "#f4a259"  # the orange of exploit arrows
DPI = 110
FIGURES = ("scores.png", "hyperparameters.png", "schedule.png", "lineage.png")
JITTER = 0.18  # how far dots on a category axis spread around their option, so they do not stack


def plot(
    experiment: str = "latest",
    out: str | os.PathLike | None = None,
    storage: str | None = None,
    dir: str | os.PathLike | None = None,
    compare: Sequence[str] | None = None,
) -> list[Path]:
    """Write the four figures of one experiment into ``out`` (default DIR/plots/NAME), or,
    given ``compare`` (two or more experiment names), only ``compare.png``. Returns the paths."""
    root = run_dir(storage, dir)
    if compare:
        data = compare_data(read_many(compare, storage, dir))
        target = _target(out, root / "plots" / _compare_folder(compare))
        return [draw_compare(data, target / "compare.png")]
    history = read(experiment, storage, dir)
    require_results(history)
    target = _target(out, root / "plots" / history.experiment.name)
    rows, config = history.rows, history.config
    return [
        draw_scores(scores_data(rows, config), target / "scores.png"),
        draw_hparams(hparams_data(rows, config), target / "hyperparameters.png"),
        draw_schedule(schedule_data(rows, config), target / "schedule.png"),
        draw_lineage(lineage_data(rows, history.exploits, config), target / "lineage.png"),
    ]


def _compare_folder(names: Sequence[str]) -> str:
    folder = "compare-" + "-vs-".join(names)
    return folder if len(folder) <= 200 else "compare"


def _target(out: str | os.PathLike | None, default: Path) -> Path:
    target = Path(out) if out else default
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create plot directory {target}: {e.strerror}") from None
    return target


def _save(fig: Figure, path: Path) -> Path:
    """Write the PNG under a temporary name and rename it, so a reader never sees half a file."""
    tmp = path.with_name(f".tmp-{path.stem}-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=DPI, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _axis(ax, axis: Axis, which: str, label: bool = True) -> None:
    """Put ``axis`` (scale, category or integer ticks, label) on the x or y axis of ``ax``."""
    target = ax.xaxis if which == "x" else ax.yaxis
    if axis.scale == "log":
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    if axis.ticks is not None:
        target.set_ticks(list(axis.ticks), labels=list(axis.labels) if axis.labels else None)
    if axis.scale == "category":
        (ax.set_xlim if which == "x" else ax.set_ylim)(-0.5, len(axis.ticks) - 0.5)
    if label:
        target.set_label_text(axis.label)


def _spread(values: Sequence[float], axis: Axis) -> list[float]:
    """Dots on a category axis spread evenly (and reproducibly) around their option."""
    if axis.scale != "category":
        return list(values)
    return [v + JITTER * (2 * ((i * 0.618034) % 1.0) - 1) for i, v in enumerate(values)]


# -- the figures ----------------------------------------------------------------------


def draw_scores(data: ScoresData, path: Path) -> Path:
    """Grey: every member's own curve. Purple: the results that built the best model."""
    fig = _figure(8, 4.8)
    ax = fig.add_subplot()
    for i, points in enumerate(data.curves.values()):
        ax.plot(
            [p.interval for p in points],
            [p.score for p in points],
            color=GREY,
            lw=0.9,
            alpha=0.8,
            label="a member's results" if i == 0 else None,
        )
    if data.best:
        last = data.best[-1]
        ax.plot(
            [p.interval for p in data.best],
            [p.score for p in data.best],
            color=PURPLE,
            lw=2.4,
            marker="o",
            ms=3.5,
            zorder=3,
            label=f"best model's ancestry (member {last.member} at the end)",
        )
        ax.annotate(
            f"m{data.best[0].member}",
            (data.best[0].interval, data.best[0].score),
            textcoords="offset points",
            xytext=(-4, 6),
            ha="right",
            color=PURPLE,
            fontsize=8,
        )
    if data.jumps:
        ax.scatter(
            [j.interval for j in data.jumps],
            [j.score for j in data.jumps],
            s=70,
            marker="D",
            facecolor="white",
            edgecolor=PURPLE,
            lw=1.6,
            zorder=4,
            label="exploit: copied another member's weights",
        )
        for j in data.jumps:
            ax.annotate(
                f"m{j.donor}\u2192m{j.member}",
                (j.interval, j.score),
                textcoords="offset points",
                xytext=(0, 9),
                ha="center",
                color=PURPLE,
                fontsize=8,
            )
    ax.margins(y=0.08)  # room for the exploit labels
    ax.set_xticks(data.xticks)
    ax.set_xlabel("interval")
    ax.set_ylabel(data.metric)
    ax.set_title(f"{data.experiment}: {data.metric} of every member ({better_word(data.mode)} is better)")
    ax.grid(alpha=0.25)
    ax.legend(loc="lower right" if data.mode == "max" else "upper right", fontsize=8)
    return _save(fig, path)


def draw_hparams(data: HparamsData, path: Path) -> Path:
    """A scatter matrix: every pair of hyperparameters, the score against each on the
    diagonal, dots coloured by score; the best model's schedule dashed, its end a star."""
    n = len(data.names)
    side = 5.2 if n == 1 else max(2.3, min(3.2, 9.5 / n))
    fig = _figure(side * n + 1.4, side * n + 1.1)
    grid = fig.subplots(n, n, squeeze=False)
    cmap = colormaps["viridis" if data.mode == "max" else "viridis_r"]
    norm = Normalize(min(data.colours, default=0.0), max(data.colours, default=1.0))
    for panel in data.panels:
        ax = grid[panel.row][panel.col]
        ax.scatter(
            _spread(panel.xs, panel.x),
            _spread(panel.ys, panel.y),
            c=data.colours,
            cmap=cmap,
            norm=norm,
            s=22 if n > 1 else 40,
            alpha=0.85,
            edgecolor="white",
            lw=0.3,
        )
        if panel.path:
            ax.plot(*zip(*panel.path), color=PURPLE, lw=1.1, ls="--", alpha=0.9, zorder=3)
            ax.scatter(
                *panel.path[-1], s=200 if n > 1 else 360, marker="*", color=PURPLE, edgecolor="black", lw=0.7, zorder=5
            )
        first_in_row = panel.col == (1 if panel.row == 0 else 0)
        diagonal = panel.row == panel.col
        _axis(ax, panel.x, "x", label=panel.row == n - 1)
        _axis(ax, panel.y, "y", label=diagonal or first_in_row)
        if panel.row != n - 1:
            ax.tick_params(axis="x", labelbottom=False)
        if not (diagonal or first_in_row):
            ax.tick_params(axis="y", labelleft=False)
        if diagonal and n > 1:
            ax.set_facecolor("#f6f2fb")
        ax.grid(alpha=0.25, which="both" if "log" in (panel.x.scale, panel.y.scale) else "major")
    _share_rows(grid, data)
    fig.colorbar(ScalarMappable(norm, cmap), ax=grid, label=f"{data.metric} ({better_word(data.mode)} is better)")
    handles = [
        Line2D([], [], color=PURPLE, lw=1.1, ls="--", label="best model's schedule"),
        Line2D([], [], color=PURPLE, marker="*", ms=12, mec="black", ls="", label="its final configuration"),
    ]
    if data.best is not None:
        handles[1].set_label(f"its final configuration (member {data.best.member})")
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    what = "every pair" if n > 1 else data.names[0]
    diagonal = f"; shaded diagonal: {data.metric} against each" if n > 1 else f" against {data.metric}"
    fig.suptitle(
        f"{data.experiment}: hyperparameters tried, {what}{diagonal}\na dot per member and interval, coloured by "
        f"{data.metric}",
        fontsize=10,
    )
    return _save(fig, path)


def _share_rows(grid, data: HparamsData) -> None:
    """Off-diagonal panels of a row show the same hyperparameter on y: give them one range;
    each column already shows one on x."""
    n = len(data.names)
    for j in range(n):
        column = [grid[i][j] for i in range(n)]
        for ax in column[1:]:
            ax.sharex(column[0])
    for i in range(n):
        row = [grid[i][j] for j in range(n) if j != i]
        for ax in row[1:]:
            ax.sharey(row[0])


def draw_schedule(data: ScheduleData | None, path: Path) -> Path:
    """A step plot per hyperparameter; dotted lines where the model was copied and explored."""
    names = data.names if data else ["(no results)"]
    fig = _figure(8, 1.3 + 1.9 * len(names))
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    if data is None:
        return _save(fig, path)
    for ax, name in zip(axes, names):
        for run in _consecutive(list(zip(data.steps, data.values[name]))):
            xs = [s.interval for s, _ in run] + [run[-1][0].interval + 1]
            ys = [v for _, v in run]
            ax.step(xs, ys + ys[-1:], where="post", color=PURPLE, lw=2)
        axis = data.axes[name]
        _axis(ax, axis, "y")
        ax.yaxis.set_label_text(axis.name + ("\n(log scale)" if axis.scale == "log" else ""))
        ax.grid(alpha=0.25, which="both" if axis.scale == "log" else "major")
        for c in data.copies:
            ax.axvline(c.interval, color=EXPLOIT, ls=":", lw=1.4)
    for c in data.copies:
        axes[0].annotate(
            f"m{c.member}",
            (c.interval, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            color="0.3",
            fontsize=8,
        )
    axes[-1].set_xticks(data.xticks)
    axes[-1].set_xlabel("interval")
    fig.suptitle(
        f"{data.experiment}: schedule of the best model (member {data.member}, {data.metric} {data.score:.4g}), "
        f"which began as member {data.steps[0].member}\norange dotted line: another member copied it and "
        "explored (labelled with the new member)",
        fontsize=9.5,
    )
    return _save(fig, path)


def _consecutive(steps: Sequence) -> list[list]:
    """Split (step, value) pairs where the schedule is not interval after interval, so the
    step plot never draws a line back in time."""
    runs: list[list] = []
    for step in steps:
        if runs and step[0].interval == runs[-1][-1][0].interval + 1:
            runs[-1].append(step)
        else:
            runs.append([step])
    return runs


def draw_lineage(data: LineageData, path: Path) -> Path:
    """x = interval, y = member: grey lines train on, orange arrows copy, purple built the best."""
    fig = _figure(9, max(3.2, 1.6 + 0.38 * len(data.members)))
    ax = fig.add_subplot()
    ax.add_collection(
        LineCollection(
            [[(s.src_interval, s.src_member), (s.interval, s.member)] for s in data.own], colors=GREY, lw=1.4, zorder=1
        )
    )
    for e in data.exploits:
        ax.annotate(
            "",
            xy=(e.interval, e.member),
            xytext=(e.donor_interval, e.donor),
            zorder=2,
            arrowprops=dict(arrowstyle="-|>", color=EXPLOIT, lw=1.1, shrinkA=3, shrinkB=4, mutation_scale=9),
        )
    ax.add_collection(
        LineCollection(
            [[(s.src_interval, s.src_member), (s.interval, s.member)] for s in data.best],
            colors=PURPLE,
            lw=3,
            zorder=1.5,
        )
    )
    dots = ax.scatter(
        [p.interval for p in data.nodes],
        [p.member for p in data.nodes],
        c=[p.score for p in data.nodes],
        cmap="viridis",
        s=28,
        zorder=4,
        edgecolor="white",
        lw=0.4,
    )
    fig.colorbar(dots, ax=ax, label=data.metric, pad=0.01)
    ax.set_yticks(data.members)
    ax.set_ylim(max(data.members, default=0) + 0.6, min(data.members, default=0) - 0.6)
    ax.set_xticks(data.xticks)
    ax.set_xlim(-0.5, data.intervals - 0.5)
    ax.set_xlabel("interval")
    ax.set_ylabel("member")
    ax.set_title(f"{data.experiment}: lineage, who trained on from whose checkpoint (dot colour = {data.metric})")
    handles = [
        Line2D([], [], color=GREY, lw=1.4, label="trains on from its own checkpoint"),
        Line2D([], [], color=EXPLOIT, lw=1.1, marker=">", label="exploit: copies the donor's checkpoint"),
        Line2D([], [], color=PURPLE, lw=3, label="the best model's ancestry"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False)
    return _save(fig, path)


def draw_compare(data: CompareData, path: Path) -> Path:
    """The best score at each interval, one line per experiment, each in its own style."""
    fig = _figure(8, 4.8)
    ax = fig.add_subplot()
    for z, curve in enumerate(data.curves):
        s = curve.style
        label = f"{curve.name} (population {curve.population})"
        if curve.same_as:
            label += f": identical to {', '.join(curve.same_as)}"
        ax.plot(
            curve.intervals,
            curve.best,
            ls=s.linestyle,
            marker=s.marker,
            markevery=(s.offset % s.stride, s.stride),
            ms=7,
            mfc="white",
            mew=1.6,
            lw=s.width,
            zorder=2 + z,
            label=label,
        )
    ax.set_xticks(data.xticks)
    ax.set_xlabel("interval (every experiment's models compared at the same age)")
    ax.set_ylabel(f"best {data.metric} at each interval")
    ax.set_title(
        f"{' vs '.join(data.experiments)}: best {data.metric} at each interval ({better_word(data.mode)} is better)"
    )
    ax.grid(alpha=0.25)
    ax.legend(
        loc="lower right" if data.mode == "max" else "upper right",
        title="last point: what popbt best reports",
        title_fontsize=8,
        fontsize=9,
    )
    return _save(fig, path)
