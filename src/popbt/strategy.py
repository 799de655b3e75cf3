"""The rules of exploit and explore, as pure functions of scores and a seeded RNG.

Nothing here does I/O and nothing here knows about ages or cohorts: ``popbt.plan`` decides
*when* a member may be compared (at matched age) and calls these rules to decide *what*
happens. That keeps every rule reproducible from the history and testable on hand-made
populations.

Exploit rules (who copies whom): ``truncation`` (the bottom group copies the top group),
``tournament`` (copy one random other member if it scores better) and ``ttest`` (copy one
random other member if its recent scores are significantly better, Welch's t-test). A
``ready`` rule spaces decisions out. Explore (how the copy's hyperparameters change):
``explore`` perturbs, ``explore_with`` runs a user hook; PB2 lives in ``popbt.pb2``.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import StrategyError
from .space import Change, Domain, SpaceError, sample_space, validate_hparams

T = TypeVar("T")

EXPLOITS = ("truncation", "tournament", "ttest")
EXPLORES = ("perturb", "pb2")
NONFINITE = ("worst", "fail")  # a NaN/inf score: the worst score (exploit at once), or a failure


class ExploreError(ValueError):
    """A user explore hook raised or returned hyperparameters outside the space; ``detail``:
    the traceback of what it raised, kept with the failure."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


@dataclass(frozen=True)
class Standing:
    """One member's result at the age being compared: what exploit ranks.

    ``score`` is None when evaluate() returned NaN or an infinity: the worst of all scores.
    ``tiebreak`` orders equal scores; it is drawn per (seed, interval, member), so the order of
    two members never depends on who else has reported yet.
    """

    member: int
    score: float | None
    tiebreak: float = 0.0

    def key(self, mode: str) -> tuple[float, float]:
        """Larger is better, whatever the mode; non-finite scores below every number."""
        if self.score is None:
            return (-math.inf, self.tiebreak)
        return (self.score if mode == "max" else -self.score, self.tiebreak)


@dataclass(frozen=True)
class Explored:
    """New hyperparameters and, per name, the rule that produced each value."""

    hparams: dict[str, Any]
    changes: dict[str, Change]


@dataclass(frozen=True)
class Trained:
    """One completed interval, with the checkpoints it started from and wrote: enough to
    follow a model's lineage back through exploits (t-test histories, PB2's improvements).
    ``score`` is None for a non-finite score."""

    member: int
    interval: int
    score: float | None
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

    ``top`` (a count) wins over ``quantile`` (a fraction), which is rounded *up* as Ray Tune
    does: quantile 0.2 of 8 is 2, not 1. At least one, so a population of two still exploits
    (the paper's toy); never more than half, so the groups cannot overlap even when members
    dropped out of a run configured for more. ``docs/strategies.md`` has the table.
    """
    if n < 2:
        raise StrategyError(f"exploit needs a population of at least 2, got {n}")
    check_quantile(quantile)
    size = top if top is not None else math.ceil(round(n * quantile, 9))  # 10 * 0.3 is 3.0000000000000004
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


def tiebreak(seed: int, interval: int, member: int) -> float:
    """A fixed random rank for ties between members' results of one interval."""
    digest = hashlib.blake2b(f"popbt:{seed}:tie:{interval}:{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def rank(standings: Iterable[Standing], mode: str) -> list[Standing]:
    """Best first; equal scores in their ``tiebreak`` order, never in member order."""
    return sorted(standings, key=lambda s: s.key(mode), reverse=True)


def surely_kept(key: tuple[float, float], cohort_keys: Sequence[tuple[float, float]], cut: int) -> bool:
    """Truncation with part of the cohort still unknown: a member cannot end up in the bottom
    ``cut`` once ``cut`` known members rank below it, whatever the others score.
    ``cohort_keys``: the known members' ``Standing.key``, sorted (its own included)."""
    return bisect.bisect_left(cohort_keys, key) >= cut


def truncation(ranked: Sequence[T], cut: int) -> tuple[list[T], list[T]]:
    """The top and the bottom group of a complete, ranked cohort (best first)."""
    return list(ranked[:cut]), list(ranked[len(ranked) - cut :])


def opponent(candidates: Iterable[int], member: int, rng: random.Random) -> int | None:
    """Tournament and t-test: one other member drawn uniformly, in member order; None if alone."""
    others = sorted(m for m in candidates if m != member)
    return rng.choice(others) if others else None


def significantly_better(theirs: Sequence[float], mine: Sequence[float], mode: str, window: int, alpha: float) -> bool:
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
        while row is not None and len(scores) < length and row.score is not None:
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
        trace = "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip()
        raise ExploreError(f"explore(hparams, rng) raised {type(e).__name__}: {text}", trace) from None
    if not isinstance(proposed, Mapping):
        raise ExploreError(f"explore(hparams, rng) returned {type(proposed).__name__}, not a dict")
    try:
        checked = validate_hparams(space, proposed)
    except SpaceError as e:
        raise ExploreError(f"explore(hparams, rng) returned invalid hyperparameters: {e}") from None
    changes = {
        name: Change("hook" if checked[name] != hparams[name] else "keep", hparams[name], checked[name])
        for name in space
    }
    return Explored(checked, changes)


def initial_population(space: Mapping[str, Domain], population: int, seed: int) -> list[dict]:
    """Each member's first hyperparameters, drawn from one RNG seeded by the experiment seed."""
    rng = random.Random(f"popbt:init:{seed}")
    return [sample_space(space, rng) for _ in range(population)]


def decision_rng(seed: int, *parts: Any) -> random.Random:
    """A RNG for one decision, so a decision never depends on which worker made it."""
    return random.Random(":".join(["popbt", str(seed), *map(str, parts)]))
