"""Reading an experiment back: the Python API behind ``popbt list``, ``status`` and ``best``,
and the tables that show them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from . import analysis
from .history import open_experiment, open_reader
from .store import DONE, Event, Experiment, ExperimentStatus, Progress, Row


@dataclass(frozen=True)
class Status:
    experiment: Experiment
    progress: Progress
    population: list[Row]
    events: list[Event]


def experiments(storage: str | None = None, dir: str | os.PathLike | None = None) -> list[tuple[Experiment, Progress]]:
    with open_reader(storage, dir) as store:
        return [(e, store.progress(e.id)) for e in store.experiments()]


def status(experiment: str = "latest", storage: str | None = None, dir: str | os.PathLike | None = None) -> Status:
    with open_experiment(experiment, storage, dir) as (store, exp):
        return Status(
            exp, store.progress(exp.id), analysis.population(store.history(exp.id)), store.events(exp.id, limit=10)
        )


def best(
    experiment: str = "latest", storage: str | None = None, dir: str | os.PathLike | None = None
) -> dict[str, Any] | None:
    """The best member as JSON-ready data (experiment, member, score, weights, schedule)."""
    with open_experiment(experiment, storage, dir) as (store, exp):
        found = analysis.best(store.history(exp.id), exp.config)
    if found is None:
        return None
    data = found.to_json(exp.name, exp.config.metric)
    data["finished"] = exp.status == ExperimentStatus.FINISHED
    return data


def errors(experiment: str = "latest", storage: str | None = None, dir: str | os.PathLike | None = None) -> list[Event]:
    """Every failure of user code in the experiment, oldest first, with its traceback; and the
    events that say a worker stopped or the run failed."""
    with open_experiment(experiment, storage, dir) as (store, exp):
        return store.events(exp.id, limit=10**6, kinds=("failure", "worker_fault", "run_failed"))


def print_errors(console: Console, events: list[Event]) -> None:
    """Each failure once per distinct traceback: the first occurrence in full, then where
    else the same one happened."""
    if not events:
        console.print("no failures", highlight=False)
        return
    shown: dict[str, list[Event]] = {}
    for ev in events:
        shown.setdefault(ev.detail or f"{ev.kind}: {ev.message}", []).append(ev)
    for group in shown.values():
        first = group[0]
        where = "the experiment" if first.member < 0 else f"member {first.member} interval {first.interval}"
        console.print(f"\n{first.kind} at {where}: {first.message}", highlight=False, markup=False, soft_wrap=True)
        if first.detail:
            console.print(first.detail, highlight=False, markup=False, soft_wrap=True)
        if len(group) > 1:
            others = ", ".join(f"member {e.member} interval {e.interval}" for e in group[1:])
            console.print(f"the same at {others}", highlight=False, markup=False, soft_wrap=True)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def experiments_table(items: list[tuple[Experiment, Progress]]) -> Table:
    table = Table(title="experiments")
    for col in ("name", "status", "mode", "population", "intervals done", "best"):
        table.add_column(col)
    for exp, p in items:
        cfg = exp.config
        best = f"{cfg.metric} {fmt(p.best_score)} (member {p.best_member})" if p.best_score is not None else ""
        table.add_row(
            exp.name, exp.status, "sync" if cfg.sync else "async", str(cfg.population), f"{p.done}/{p.total}", best
        )
    return table


def status_table(st: Status) -> Table:
    cfg = st.experiment.config
    p = st.progress
    table = Table(title=f"{st.experiment.name}: {st.experiment.status}, {p.done}/{p.total} intervals")
    names = list(cfg.space)
    for col in ("member", "interval", cfg.metric, *names, "state", "parent", "device"):
        table.add_column(col, justify="right" if col not in ("state", "device") else "left")
    for r in st.population:
        parent = f"{r.parent}@{r.parent_interval}" if r.parent is not None and r.parent != r.member else ""
        state = r.state if not r.error or r.state == DONE else f"{r.state} ({r.error})"
        table.add_row(
            str(r.member),
            str(r.interval),
            fmt(r.score),
            *(fmt(r.hparams.get(n)) for n in names),
            state,
            parent,
            r.device or "",
        )
    return table


def print_best(console: Console, data: dict[str, Any], hint: bool = False) -> None:
    verdict = "best" if data["finished"] else "best so far"
    console.print(
        f"{verdict}: member {data['member']} of {data['experiment']}, "
        f"{data['metric']} {data['score']:.6g} at interval {data['interval']}",
        highlight=False,
    )
    schedule = data["schedule"]
    names = list(schedule[0]["hparams"]) if schedule else []
    table = Table(title="its hyperparameter schedule (following its ancestry through exploits)")
    for col in ("interval", "trained as member", *names, data["metric"]):
        table.add_column(col, justify="right")
    for step in schedule:
        table.add_row(
            str(step["interval"]), str(step["member"]), *(fmt(step["hparams"][n]) for n in names), fmt(step["score"])
        )
    console.print(table)
    console.print(f"weights: {data['weights']}", highlight=False, soft_wrap=True)
    if hint:
        console.print(
            "load them with: popbt.torch.load_weights(model, path), or torch.load(path, weights_only=True)['model']",
            highlight=False,
        )
