"""``popbt plot``: the figures that show what PBT did, drawn with matplotlib (Agg).

Only this module imports matplotlib, and nothing in the core imports this module, so
popbt runs on machines without it. The data each figure shows comes from ``plotdata``;
the functions here only draw. Figures are built on ``matplotlib.figure.Figure`` directly
(no pyplot), so plotting never touches a user's global backend or open windows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .errors import ConfigError
from .history import read, read_many, run_dir
from .plotdata import (
    CompareData,
    HparamsData,
    LineageData,
    ScheduleData,
    ScoresData,
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
    ax.set_xlabel("interval")
    ax.set_ylabel(data.metric)
    ax.set_title(f"{data.metric} of every member ({'higher' if data.mode == 'max' else 'lower'} is better)")
    ax.grid(alpha=0.25)
    ax.legend(loc="lower right" if data.mode == "max" else "upper right", fontsize=8)
    return _save(fig, path)


def draw_hparams(data: HparamsData, path: Path) -> Path:
    """One dot per member and interval (larger = later); the winner's final choice as a star."""
    fig = _figure(7.5, 6)
    ax = fig.add_subplot()
    members = sorted({p.member for p in data.points})
    cmap = _member_colours(len(members))
    for i, m in enumerate(members):
        pts = [p for p in data.points if p.member == m]
        colour = cmap(i)
        ax.plot([p.x for p in pts], [p.y for p in pts], color=colour, lw=0.6, alpha=0.3)
        ax.scatter(
            [p.x for p in pts],
            [p.y for p in pts],
            s=[_dot(p.interval, data.intervals) for p in pts],
            color=colour,
            alpha=0.65,
            edgecolor="white",
            lw=0.4,
        )
    if data.best_path:
        ax.plot(
            [p.x for p in data.best_path],
            [p.y for p in data.best_path],
            color=PURPLE,
            lw=1.2,
            ls="--",
            alpha=0.9,
            label="best model's schedule",
        )
    if data.best is not None:
        ax.scatter(
            [data.best.x],
            [data.best.y],
            s=420,
            marker="*",
            color=PURPLE,
            edgecolor="black",
            lw=0.8,
            zorder=5,
            label=f"best model's final configuration (member {data.best.member})",
        )
    ax.set_xscale("log" if data.x_log else "linear")
    ax.set_yscale("log" if data.y_log else "linear")
    ax.set_xlabel(data.x_name + (" (log scale)" if data.x_log else ""))
    ax.set_ylabel(data.y_name + (" (log scale)" if data.y_log else ""))
    ax.set_title("hyperparameters tried: a dot per member and interval, larger = later; colour = member")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.25, which="both" if data.x_log or data.y_log else "major")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, markerscale=0.5, frameon=False)
    return _save(fig, path)


def draw_schedule(data: ScheduleData | None, path: Path) -> Path:
    """A step plot per hyperparameter; dotted lines where the model was copied and explored."""
    names = data.names if data else ["(no results)"]
    fig = _figure(8, 1.3 + 1.9 * len(names))
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    if data is None:
        return _save(fig, path)
    for ax, name in zip(axes, names):
        for run in _consecutive(data.steps):
            xs = [s.interval for s in run] + [run[-1].interval + 1]
            ys = [s.hparams[name] for s in run]
            ax.step(xs, ys + ys[-1:], where="post", color=PURPLE, lw=2)
        ax.set_yscale("log" if data.log[name] else "linear")
        ax.set_ylabel(name + ("\n(log scale)" if data.log[name] else ""))
        ax.grid(alpha=0.25, which="both" if data.log[name] else "major")
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
    axes[-1].set_xlabel("interval")
    fig.suptitle(
        f"hyperparameter schedule of the best model (member {data.member}, {data.metric} "
        f"{data.score:.4g})\nit began as member {data.steps[0].member}; orange dotted line: "
        "another member copied it and explored (labelled with the new member)",
        fontsize=9.5,
    )
    return _save(fig, path)


def _consecutive(steps: Sequence) -> list[list]:
    """Split a schedule where it is not interval after interval (an asynchronous copy of an
    older or younger checkpoint), so the step plot never draws a line back in time."""
    runs: list[list] = []
    for step in steps:
        if runs and step.interval == runs[-1][-1].interval + 1:
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
    ax.set_xlim(-0.5, data.intervals - 0.5)
    ax.set_xlabel("interval")
    ax.set_ylabel("member")
    ax.set_title("lineage: who trained on from whose checkpoint (dot colour = score)")
    handles = [
        Line2D([], [], color=GREY, lw=1.4, label="trains on from its own checkpoint"),
        Line2D([], [], color=EXPLOIT, lw=1.1, marker=">", label="exploit: copies the donor's checkpoint"),
        Line2D([], [], color=PURPLE, lw=3, label="the best model's ancestry"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False)
    return _save(fig, path)


def draw_compare(data: CompareData, path: Path) -> Path:
    """Best score so far against compute spent, one line per experiment."""
    fig = _figure(8, 4.8)
    ax = fig.add_subplot()
    for curve in data.curves:
        ax.step(curve.spent, curve.best, where="post", lw=2, label=curve.name)
    ax.set_xlabel("intervals trained, summed over the population")
    ax.set_ylabel(f"best {data.metric} so far")
    ax.set_title(f"best {data.metric} against training spent")
    ax.grid(alpha=0.25)
    ax.legend(loc="lower right" if data.mode == "max" else "upper right")
    return _save(fig, path)


def _dot(interval: int, intervals: int) -> float:
    return 12 + 110 * (interval + 1) / max(intervals, 1)


def _member_colours(n: int):
    from matplotlib import colormaps

    return colormaps["tab10" if n <= 10 else "tab20"]
