"""Exploit and explore as pure functions of a population snapshot and a seeded RNG.

Nothing here does I/O: the store takes a snapshot inside its transaction, calls these
functions, and writes what they decide. That keeps every decision reproducible from the
history and testable on hand-made populations.

Exploit rules (who copies whom): ``truncation`` (the bottom group copies the top group),
``tournament`` (copy one random other member if it scores better) and ``ttest`` (copy one
random other member if its recent scores are significantly better, Welch's t-test). A
``ready`` rule spaces decisions out. Explore (how the copy's hyperparameters change):
``explore`` perturbs, ``explore_with`` runs a user hook; PB2 lives in ``popbt.pb2``.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from .space import Change, Domain, SpaceError, sample_space, validate_hparams

EXPLOITS = ("truncation", "tournament", "ttest")
EXPLORES = ("perturb", "pb2")


class StrategyError(ValueError):
    """A strategy setting that cannot work (quantile out of range, population too small)."""


class ExploreError(ValueError):
    """A user explore hook raised or returned hyperparameters outside the space."""


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


@dataclass(frozen=True)
class Trained:
    """One completed interval, with the checkpoints it started from and wrote: enough to
    follow a model's lineage back through exploits (t-test histories, PB2's improvements)."""

    member: int
    interval: int
    score: float
    hparams: Mapping[str, Any]
    start: int | None
    result: int | None


# -- settings ---------------------------------------------------------------------------


def check_quantile(quantile: float) -> float:
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0 < quantile <= 0.5:
        raise StrategyError(f"quantile must be in (0, 0.5], got {quantile!r}")
    return float(quantile)


def check_top(top: int | None, population: int) -> int | None:
    """A count for the top (and bottom) group: at most half the population, so the two
    groups never overlap."""
    if top is None:
        return None
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= population // 2:
        raise StrategyError(
            f"top must be an integer from 1 to population // 2 = {population // 2} "
            f"(the top and bottom groups must not overlap), got {top!r}"
        )
    return top


def cut_size(n: int, quantile: float, top: int | None = None) -> int:
    """How many members form the top (and the bottom) group of a population of ``n``.

    ``top`` (a count) wins over ``quantile`` (a fraction). At least one, so a population of
    two still exploits (the paper's toy); never more than half, so the groups cannot
    overlap even when members dropped out of a run configured for more.
    """
    if n < 2:
        raise StrategyError(f"exploit needs a population of at least 2, got {n}")
    check_quantile(quantile)
    size = top if top is not None else math.floor(n * quantile)
    return min(max(1, size), n // 2)


def is_ready(next_interval: int, ready_every: int = 1, burn_in: int = 0) -> bool:
    """May a member exploit before training ``next_interval``? Only from ``burn_in`` on and
    at multiples of ``ready_every``, so a copy has time to show what it is worth (and
    early, noisy scores do not decide)."""
    return next_interval >= burn_in and next_interval % ready_every == 0


# -- exploit ----------------------------------------------------------------------------


def better(a: float, b: float, mode: str) -> bool:
    """Is score ``a`` strictly better than ``b``?"""
    return a > b if mode == "max" else a < b


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
    top: int | None = None,
) -> dict[int, Standing]:
    """Who copies whom: each member of the bottom group mapped to its donor.

    Truncation selection: rank the population's latest scores; every member in the bottom
    ``quantile`` (or bottom ``top`` members) copies one drawn uniformly from the top group.
    Members not in the map keep training their own weights. Tied scores are ranked by the
    seeded shuffle, so a tied member may copy another: the paper's toy (two members whose
    scores stay exactly equal) needs exactly that to make progress.
    """
    ranked = rank(standings, mode, rng)
    k = cut_size(len(ranked), quantile, top)
    best = ranked[:k]
    bottom = sorted(ranked[-k:], key=lambda s: s.member)
    return {s.member: rng.choice(best) for s in bottom}


def _deciders(standings: Sequence[Standing], members: Iterable[int] | None) -> list[Standing]:
    """The members that decide, in member order, so a shared RNG is consumed reproducibly."""
    wanted = None if members is None else set(members)
    return sorted((s for s in standings if wanted is None or s.member in wanted), key=lambda s: s.member)


def opponent(standings: Sequence[Standing], member: int, rng: random.Random) -> Standing | None:
    """One other member drawn uniformly (from the others in member order); None if alone."""
    others = sorted((s for s in standings if s.member != member), key=lambda s: s.member)
    return rng.choice(others) if others else None


def tournament(
    standings: Sequence[Standing],
    mode: str,
    rng: random.Random,
    members: Iterable[int] | None = None,
) -> dict[int, Standing]:
    """Binary tournament: each deciding member meets one random other member and copies it
    if that one scores strictly better (a tie keeps its own weights)."""
    out: dict[int, Standing] = {}
    for me in _deciders(standings, members):
        other = opponent(standings, me.member, rng)
        if other is not None and better(other.score, me.score, mode):
            out[me.member] = other
    return out


def significantly_better(theirs: Sequence[float], mine: Sequence[float], mode: str,
                         window: int, alpha: float) -> bool:
    """Welch's t-test on the last ``window`` scores of each: ``theirs`` has the better mean
    and the difference is significant at ``alpha``. Too short a history never is."""
    if len(theirs) < window or len(mine) < window:
        return False
    a, b = list(theirs)[-window:], list(mine)[-window:]
    if not better(sum(a) / window, sum(b) / window, mode):
        return False
    try:
        from scipy.stats import ttest_ind
    except ImportError:
        raise StrategyError("exploit='ttest' needs scipy (pip install scipy)") from None
    with warnings.catch_warnings():  # identical constant histories give nan: not significant
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return math.isfinite(p) and p < alpha


def ttest(
    standings: Sequence[Standing],
    histories: Mapping[int, Sequence[float]],
    mode: str,
    rng: random.Random,
    window: int = 4,
    alpha: float = 0.05,
    members: Iterable[int] | None = None,
) -> dict[int, Standing]:
    """T-test selection (the PBT paper's): each deciding member meets one random other
    member and copies it if that one's recent scores (``histories``, oldest first) are
    significantly better than its own; a single lucky score is not enough."""
    out: dict[int, Standing] = {}
    for me in _deciders(standings, members):
        other = opponent(standings, me.member, rng)
        if other is not None and significantly_better(
                histories.get(other.member, ()), histories.get(me.member, ()), mode, window, alpha):
            out[me.member] = other
    return out


def histories(trained: Iterable[Trained], heads: Mapping[int, int | None], length: int) -> dict[int, list[float]]:
    """Each member's last ``length`` scores, oldest first, from the checkpoint it wrote last
    (``heads``: member -> checkpoint id).

    Follows each interval back to the one that wrote its start checkpoint, so after an
    exploit a member's history is its donor's: the history of the weights, not of the slot.
    """
    by_result = {t.result: t for t in trained if t.result is not None}
    out: dict[int, list[float]] = {}
    for member, result in heads.items():
        scores: list[float] = []
        row = by_result.get(result) if result is not None else None
        while row is not None and len(scores) < length:
            scores.append(row.score)
            row = by_result.get(row.start) if row.start is not None else None
        out[member] = scores[::-1]
    return out


# -- explore ----------------------------------------------------------------------------


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


def explore_with(
    hook: Callable[[dict, random.Random], Mapping[str, Any]],
    hparams: Mapping[str, Any],
    space: Mapping[str, Domain],
    rng: random.Random,
) -> Explored:
    """Run the spec's ``explore(hparams, rng)`` and check its answer against the space.

    User code can return anything, so whatever it raises or returns out of bounds becomes
    one ExploreError saying what was wrong (the store records it as a failure).
    """
    try:
        proposed = hook(dict(hparams), rng)
    except Exception as e:
        text = (str(e).strip().splitlines() or ["(no message)"])[0]
        raise ExploreError(f"explore(hparams, rng) raised {type(e).__name__}: {text}") from None
    if not isinstance(proposed, Mapping):
        raise ExploreError(f"explore(hparams, rng) returned {type(proposed).__name__}, not a dict")
    try:
        checked = validate_hparams(space, proposed)
    except SpaceError as e:
        raise ExploreError(f"explore(hparams, rng) returned invalid hyperparameters: {e}") from None
    changes = {name: Change("hook" if checked[name] != hparams[name] else "keep", hparams[name], checked[name])
               for name in space}
    return Explored(checked, changes)


def initial_population(space: Mapping[str, Domain], population: int, seed: int) -> list[dict]:
    """Each member's first hyperparameters, drawn from one RNG seeded by the experiment seed."""
    rng = random.Random(f"popbt:init:{seed}")
    return [sample_space(space, rng) for _ in range(population)]


def decision_rng(seed: int, *parts: Any) -> random.Random:
    """A RNG for one decision, so a decision never depends on which worker made it."""
    return random.Random(":".join(["popbt", str(seed), *map(str, parts)]))
