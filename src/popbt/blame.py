"""Whose fault is a failure: the member's, or the worker's? A pure rule over a worker's streak.

A host with a broken device fails every member it trains, the same way each time; a member
with a bug, or a fault of its own, fails on every worker that trains it. So a worker blames
itself only for a streak of failures in a row (no success between them), of two or more
members, with one kind of error that no other worker has met in this experiment. Retries go
to other workers first (the store's claim), so a member that fails everywhere is soon met
elsewhere, and a one-off fault of a member rarely repeats the kind of the one before it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

# Failures in a row of one kind, of at least two members: then the worker is to blame. (The
# worker leaves out of its streak a corrupt checkpoint and an interval whose workers all died.)
STREAK = 3

Failure = tuple[int, int, str]  # member, interval, the error's message (one line)


@dataclass
class Streak:
    """Failures in a row on this worker: per task, (its attempts after the last failure, how
    many failures); and each failure that may be the worker's."""

    charged: dict[int, tuple[int, int]] = field(default_factory=dict)
    failed: list[Failure] = field(default_factory=list)


def error_kind(message: str) -> str:
    """A failure's message without its ``attempt a/b:`` prefix and its numbers: a device fails
    the same way each time, whatever it was asked to allocate or at which address."""
    cause = re.sub(r"^attempt \d+/\d+: ", "", message)
    return re.sub(r"0x[0-9a-fA-F]+|\d+(\.\d+)?", "#", cause)


def convicting(failed: list[Failure], met_elsewhere: set[str]) -> list[Failure]:
    """The failures that make the worker to blame (empty: it is not): STREAK or more of one
    kind of error, of two or more members, a kind no other worker met (``met_elsewhere``:
    the kinds of other workers' failures; a kind met there is the code's or a member's)."""
    by_kind: dict[str, list[Failure]] = defaultdict(list)
    for f in failed:
        by_kind[error_kind(f[2])].append(f)
    for kind, same in by_kind.items():
        if kind not in met_elsewhere and len(same) >= STREAK and len({m for m, _, _ in same}) >= 2:
            return same
    return []


def worker_to_blame(failed: list[Failure], met_elsewhere: set[str]) -> bool:
    """Whether ``failed`` (a worker's streak) is the worker's fault: see ``convicting``."""
    return bool(convicting(failed, met_elsewhere))
