"""Questions answered from the history alone: who is best, and what schedule made it.

These functions take plain rows (``store.Row``) and return plain data, so they are tested
on hand-built histories and reused by the CLI, the plots and the export.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .config import ExperimentConfig
from .store import DONE, Row


@dataclass(frozen=True)
class Step:
    """One interval of a schedule: who trained it and with which hyperparameters (and which
    attempt succeeded: a retry trains with another seed, which a replay must reuse)."""

    interval: int
    member: int
    hparams: dict[str, Any]
    score: float | None
    attempts: int = 0
    replacements: int = 0


@dataclass(frozen=True)
class Best:
    member: int
    interval: int
    score: float
    weights: str | None
    schedule: list[Step]

    def to_json(self, experiment: str, metric: str) -> dict[str, Any]:
        return {
            "experiment": experiment,
            "member": self.member,
            "interval": self.interval,
            "metric": metric,
            "score": self.score,
            "weights": self.weights,
            "schedule": [
                {"interval": s.interval, "member": s.member, "hparams": s.hparams, "score": s.score}
                for s in self.schedule
            ],
        }


def index(rows: Iterable[Row]) -> dict[tuple[int, int], Row]:
    return {(r.member, r.interval): r for r in rows}


def ancestry(rows: Sequence[Row], member: int, interval: int) -> list[Row]:
    """The rows that built ``member``'s model at ``interval``, oldest first.

    Each row names the checkpoint it started from (its own previous interval, or a donor's
    after an exploit), so following those links walks back through every copy.
    """
    by_key = index(rows)
    chain: list[Row] = []
    key: tuple[int, int] | None = (member, interval)
    while key is not None and key in by_key:
        row = by_key[key]
        chain.append(row)
        key = (row.parent, row.parent_interval) if row.parent is not None else None
    return chain[::-1]


def schedule(rows: Sequence[Row], member: int, interval: int) -> list[Step]:
    """The hyperparameters the model trained with, interval by interval."""
    return [
        Step(r.interval, r.member, r.hparams, r.score, r.attempts, r.replacements)
        for r in ancestry(rows, member, interval)
    ]


def best(rows: Sequence[Row], config: ExperimentConfig) -> Best | None:
    """The member with the best score at the latest interval any member completed.

    When the run is finished that is the final interval, as PBT defines the result.
    """
    done = [r for r in rows if r.state == DONE and r.score is not None]
    if not done:
        return None
    last = max(r.interval for r in done)
    finalists = [r for r in done if r.interval == last]
    sign = 1 if config.mode == "max" else -1
    top = max(finalists, key=lambda r: (sign * r.score, -r.member))
    return Best(top.member, top.interval, top.score, top.checkpoint, schedule(rows, top.member, top.interval))


def best_seen(rows: Sequence[Row], config: ExperimentConfig) -> Best | None:
    """The best score ever reported, at any interval: not the final model unless it is the
    same one; its checkpoint is gone unless the experiment keeps it (``--keep-best``)."""
    done = [r for r in rows if r.state == DONE and r.score is not None]
    if not done:
        return None
    sign = 1 if config.mode == "max" else -1
    top = max(done, key=lambda r: (sign * r.score, -r.interval, -r.member))
    return Best(top.member, top.interval, top.score, top.checkpoint, schedule(rows, top.member, top.interval))


def population(rows: Sequence[Row]) -> list[Row]:
    """Each member's most recent row (done, running, pending, waiting or failed): the population now."""
    latest: dict[int, Row] = {}
    for row in rows:
        if row.member not in latest or row.interval >= latest[row.member].interval:
            latest[row.member] = row
    return [latest[m] for m in sorted(latest)]


def last_done(rows: Sequence[Row]) -> dict[int, Row]:
    """Each member's latest completed row."""
    out: dict[int, Row] = {}
    for row in rows:
        if row.state == DONE and (row.member not in out or row.interval > out[row.member].interval):
            out[row.member] = row
    return out
