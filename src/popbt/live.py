"""Live progress of a running experiment, read from the store (never from the workers).

On a terminal: a rich live view with the progress bar (ETA, best score so far), what each
worker is training now and the latest exploits. When stdout is a file or a CI log, plain
lines instead, so that ``nohup popbt run ... > log`` stays readable. ``popbt run`` shows it
while its workers train; ``popbt status --watch`` shows it for any experiment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .store import Experiment, Exploit, Store
from .store import Progress as Counts

RECENT_EXPLOITS = 5
DETAIL_EVERY = 2.0  # seconds between reads of the history and exploits (the bar updates faster)


@dataclass(frozen=True)
class Busy:
    """A worker and the interval it is training now."""

    worker: str
    device: str
    member: int
    interval: int
    started_at: float | None


@dataclass(frozen=True)
class Snapshot:
    """What the live view shows beyond the counts: who trains what, and recent exploits."""

    running: list[Busy]
    exploits: list[Exploit]  # the latest few, oldest first


def snapshot(store: Store, exp: Experiment, recent: int = RECENT_EXPLOITS) -> Snapshot:
    """Who trains what now, and the latest exploits: read by index, never the whole history,
    so watching a long run costs the same at its end as at its start."""
    busy = [Busy(r.worker or "?", r.device or "?", r.member, r.interval, r.started_at) for r in store.running(exp.id)]
    busy.sort(key=lambda b: (b.worker, b.member))
    return Snapshot(busy, recent_exploits(store, exp, recent))


def recent_exploits(store: Store, exp: Experiment, recent: int = RECENT_EXPLOITS) -> list[Exploit]:
    """The last ``recent`` exploits."""
    return store.exploits(exp.id, latest=recent) if recent > 0 else []


def describe(counts: Counts, metric: str) -> str:
    """The best model so far (the best final model once finished): the best score at the
    latest interval any member completed, not the best score ever seen."""
    if counts.best_score is None:
        return "waiting for the first result"
    label = "best" if counts.finished else "best so far"
    return f"{label} {metric} {counts.best_score:.4g} (member {counts.best_member})"


def exploit_text(x: Exploit) -> str:
    """One exploit in words, e.g. 'member 3 copied member 6 (interval 5) at interval 6'."""
    verb = "copied" if x.reason == "exploit" else "was replaced by"
    return f"member {x.member} {verb} member {x.donor} (interval {x.donor_interval}) at interval {x.interval}"


def plain_line(exp: Experiment, counts: Counts, last_exploit: Exploit | None = None) -> str:
    text = f"[{exp.name}] {counts.done}/{counts.total} intervals, {counts.running} running"
    if counts.failed:
        text += f", {counts.failed} failed"
    text = f"{text}; {describe(counts, exp.config.metric)}"
    if last_exploit is not None:
        text += f"; last exploit: {exploit_text(last_exploit)}"
    return text


def workers_table(snap: Snapshot, now: float) -> Table:
    table = Table(title=f"training now ({len({b.worker for b in snap.running})} workers)", title_justify="left")
    for col in ("worker", "device", "member", "interval", "for"):
        table.add_column(col, justify="right" if col in ("member", "interval", "for") else "left")
    for b in snap.running:
        since = _duration(now - b.started_at) if b.started_at is not None else ""
        table.add_row(b.worker, b.device, str(b.member), str(b.interval), since)
    if not snap.running:
        table.caption = "no interval is training right now"
    return table


def exploits_table(snap: Snapshot, metric: str) -> Table:
    table = Table(title="latest exploits", title_justify="left")
    for col in ("interval", "member", "copied", f"its {metric}", f"donor's {metric}", "explore"):
        table.add_column(col, justify="left" if col == "explore" else "right")
    for x in snap.exploits:
        changes = ", ".join(f"{k} {rule}" for k, rule in x.changes.items())
        table.add_row(
            str(x.interval), str(x.member), f"{x.donor}@{x.donor_interval}", _fmt(x.score), _fmt(x.donor_score), changes
        )
    if not snap.exploits:
        table.caption = "no exploit yet"
    return table


def dashboard(
    exp: Experiment, snap: Snapshot, bar: Progress, finished: bool = False, now: float | None = None
) -> Group:
    """The whole live view: the bar, then who trains what (until the end), then the latest exploits."""
    now = time.time() if now is None else now
    parts: list[Any] = [bar] if finished else [bar, workers_table(snap, now)]
    if exp.config.exploits:
        parts.append(exploits_table(snap, exp.config.metric))
    return Group(*parts)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))  # the start time is the database's clock, which may differ a little
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))


def progress_bar(console: Console) -> Progress:
    columns = (
        TextColumn("{task.fields[name]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("intervals"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
    )
    return Progress(*columns, console=console)


def watch(
    store: Store,
    exp: Experiment,
    keep_going: Callable[[], bool],
    console: Console | None = None,
    period: float = 0.5,
    plain_every: float = 5.0,
    on_tick: Callable[[Store], None] | None = None,
) -> Counts:
    """Show progress until the experiment is over (finished or failed) or ``keep_going()``
    turns false. ``on_tick(store)`` runs every few seconds (the loggers' follower)."""
    console = console or Console()
    ticker = _Ticker(on_tick)
    if not console.is_terminal:
        return _watch_plain(store, exp, keep_going, console, period, plain_every, ticker)
    counts = store.progress(exp.id)
    bar = progress_bar(console)
    job = bar.add_task(describe(counts, exp.config.metric), total=counts.total, completed=counts.done, name=exp.name)
    snap, read_at = snapshot(store, exp), time.monotonic()
    with Live(dashboard(exp, snap, bar, counts.over), console=console, refresh_per_second=4) as view:
        while not counts.over and keep_going():
            time.sleep(period)
            counts = store.progress(exp.id)
            if counts.over or time.monotonic() - read_at >= DETAIL_EVERY:
                snap, read_at = snapshot(store, exp), time.monotonic()
                ticker(store)
            bar.update(job, completed=counts.done, description=describe(counts, exp.config.metric))
            view.update(dashboard(exp, snap, bar, counts.over))
    return counts


class _Ticker:
    """Calls ``fn(store)`` at most every DETAIL_EVERY seconds."""

    def __init__(self, fn: Callable[[Store], None] | None) -> None:
        self.fn, self.last = fn, 0.0

    def __call__(self, store: Store) -> None:
        if self.fn is not None and time.monotonic() - self.last >= DETAIL_EVERY:
            self.last = time.monotonic()
            self.fn(store)


def _watch_plain(
    store: Store,
    exp: Experiment,
    keep_going: Callable[[], bool],
    console: Console,
    period: float,
    plain_every: float,
    ticker: _Ticker,
) -> Counts:
    """A line every ``plain_every`` seconds when something changed, and one at the end."""

    def say(counts: Counts) -> None:
        line = plain_line(exp, counts, _last(recent_exploits(store, exp, 1)))
        console.print(line, highlight=False, markup=False, soft_wrap=True)  # "[name]" is no markup; one line

    counts = store.progress(exp.id)
    last_counts, last_time = None, 0.0
    while not counts.over and keep_going():
        if counts != last_counts and time.monotonic() - last_time >= plain_every:
            say(counts)
            last_counts, last_time = counts, time.monotonic()
        time.sleep(period)
        counts = store.progress(exp.id)
        ticker(store)
    say(counts)
    return counts


def _last(items: list[Exploit]) -> Exploit | None:
    return items[-1] if items else None
