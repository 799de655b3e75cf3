"""Live progress of a running experiment, read from the store (never from the workers).

A rich progress bar on a terminal; plain lines when stdout is a file or a CI log, so that
``nohup popbt run ... > log`` stays readable.
"""

from __future__ import annotations

import time
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .store import Experiment, Store
from .store import Progress as Counts


def describe(counts: Counts, metric: str) -> str:
    if counts.best_score is None:
        return "waiting for the first result"
    return f"best {metric} {counts.best_score:.4g} (member {counts.best_member})"


def plain_line(exp: Experiment, counts: Counts) -> str:
    text = f"[{exp.name}] {counts.done}/{counts.total} intervals, {counts.running} running"
    if counts.failed:
        text += f", {counts.failed} failed"
    return f"{text}; {describe(counts, exp.config.metric)}"


def watch(store: Store, exp: Experiment, keep_going: Callable[[], bool], console: Console | None = None,
          period: float = 0.5, plain_every: float = 5.0) -> Counts:
    """Show progress until the experiment finishes or ``keep_going()`` turns false."""
    console = console or Console()
    counts = store.progress(exp.id)
    if not console.is_terminal:
        last_line, last_time = "", 0.0
        while not counts.finished and keep_going():
            line = plain_line(exp, counts)
            if line != last_line and time.monotonic() - last_time >= plain_every:
                console.print(line, highlight=False)
                last_line, last_time = line, time.monotonic()
            time.sleep(period)
            counts = store.progress(exp.id)
        console.print(plain_line(exp, counts), highlight=False)
        return counts
    columns = (TextColumn("{task.fields[name]}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("intervals"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
               TextColumn("{task.description}"))
    with Progress(*columns, console=console, transient=False) as bar:
        job = bar.add_task(describe(counts, exp.config.metric), total=counts.total,
                           completed=counts.done, name=exp.name)
        while not counts.finished and keep_going():
            time.sleep(period)
            counts = store.progress(exp.id)
            bar.update(job, completed=counts.done, description=describe(counts, exp.config.metric))
    return counts
