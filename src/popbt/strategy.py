"""Exploit and explore as pure functions of a population snapshot and a seeded RNG.

Nothing here does I/O: the store takes a snapshot inside its transaction, calls these
functions, and writes what they decide. That keeps every decision reproducible from the
history and testable on hand-made populations.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .space import Change, Domain, sample_space


class StrategyError(ValueError):
    """A strategy setting that cannot work (quantile out of range, population too small)."""


@dataclass(frozen=True)
class Standing:
    """One member's latest result: what exploit compares."""

    member: int
    interval: int
    score: float


@dataclass(frozen=True)
class Explored:
    """New hyperparameters and, per name, the rule that produced each value."""

    hparams: dict[str, Any]
    changes: dict[str, Change]


def check_quantile(quantile: float) -> float:
    if not isinstance(quantile, (int, float)) or not 0 < quantile <= 0.5:
        raise StrategyError(f"quantile must be in (0, 0.5], got {quantile!r}")
    return float(quantile)


def cut_size(n: int, quantile: float) -> int:
    """How many members form the top (and the bottom) group of a population of ``n``.

    At least one, so a population of two still exploits (the paper's toy); never more
    than half, so the groups cannot overlap.
    """
    if n < 2:
        raise StrategyError(f"exploit needs a population of at least 2, got {n}")
    check_quantile(quantile)
    return min(max(1, math.floor(n * quantile)), n // 2)


def rank(standings: Sequence[Standing], mode: str, rng: random.Random) -> list[Standing]:
    """Best first. Ties are broken by a seeded shuffle, never by insertion order."""
    shuffled = sorted(standings, key=lambda s: s.member)
    rng.shuffle(shuffled)
    sign = -1.0 if mode == "max" else 1.0
    return sorted(shuffled, key=lambda s: sign * s.score)


def truncation(
    standings: Sequence[Standing],
    mode: str,
    quantile: float,
    rng: random.Random,
) -> dict[int, Standing]:
    """Who copies whom: each member of the bottom group mapped to its donor.

    Truncation selection: rank the population's latest scores; every member in the bottom
    ``quantile`` copies one drawn uniformly from the top ``quantile``. Members not in the
    map keep training their own weights.
    """
    ranked = rank(standings, mode, rng)
    k = cut_size(len(ranked), quantile)
    top = ranked[:k]
    bottom = sorted(ranked[-k:], key=lambda s: s.member)
    return {s.member: rng.choice(top) for s in bottom}


def explore(
    hparams: Mapping[str, Any],
    space: Mapping[str, Domain],
    rng: random.Random,
    factors: Sequence[float] = (0.8, 1.2),
    resample_probability: float = 0.25,
) -> Explored:
    """Perturb every hyperparameter: resample it with ``resample_probability``, else let its
    domain perturb it (multiply by a factor and clip; Choice moves to a neighbour)."""
    out: dict[str, Any] = {}
    changes: dict[str, Change] = {}
    for name, domain in space.items():
        value = hparams[name]
        if rng.random() < resample_probability:
            change = Change("resample", value, domain.sample(rng))
        else:
            change = domain.perturb(value, rng, factors)
        out[name] = change.after
        changes[name] = change
    return Explored(out, changes)


def initial_population(space: Mapping[str, Domain], population: int, seed: int) -> list[dict]:
    """Each member's first hyperparameters, drawn from one RNG seeded by the experiment seed."""
    rng = random.Random(f"popbt:init:{seed}")
    return [sample_space(space, rng) for _ in range(population)]


def decision_rng(seed: int, *parts: Any) -> random.Random:
    """A RNG for one decision, so a decision never depends on which worker made it."""
    return random.Random(":".join(["popbt", str(seed), *map(str, parts)]))
