"""PB2 explore (Population Based Bandits, Parker-Holder et al. 2020).

PBT's explore is a random walk; PB2 instead learns from the whole population's history
which hyperparameters made models improve, and picks the copy's new values with a bandit.
A Gaussian process models the score improvement of one interval as a function of
(hyperparameters, time); time is an input because what helps early in training (a large
learning rate) can hurt late. The new values maximise the upper confidence bound
mean + kappa * std at the current time, over random candidates inside the declared bounds.

Numeric domains only (Uniform, LogUniform in log space, IntUniform); a Choice keeps PBT's
perturbation. With too little history (the first exploits) everything is perturbed.

Pure functions of the points and a seeded RNG, like the rest of the strategy: the store
gathers the points in its transaction. numpy and scikit-learn are imported only when PB2
is used (``pip install popbt[pb2]``).
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from .space import Change, Domain, IntUniform, LogUniform, Uniform
from .strategy import Explored, Trained, explore as perturb

KAPPA = 1.0  # weight of the uncertainty in UCB: larger explores more
CANDIDATES = 1000  # random points of the unit box scored by UCB
MIN_POINTS = 3  # fewer improvements than this: not enough to fit, perturb instead
MAX_POINTS = 128  # the most recent improvements kept, so a fit (cubic in them) takes well under a second


@dataclass(frozen=True)
class Point:
    """One observed improvement: training interval ``t`` with ``hparams`` changed the score
    by ``improvement`` (positive is better, whatever the mode)."""

    hparams: Mapping[str, Any]
    t: float
    improvement: float


def numeric(space: Mapping[str, Domain]) -> list[str]:
    """The names PB2 chooses, in declaration order (LogUniform is a Uniform)."""
    return [n for n, d in space.items() if isinstance(d, (Uniform, IntUniform))]


def to_unit(domain: Domain, value: float) -> float:
    """A value's position in its bounds, in [0, 1]; log scale for LogUniform."""
    low, high, v = float(domain.low), float(domain.high), float(value)
    if isinstance(domain, LogUniform):
        low, high, v = math.log(low), math.log(high), math.log(max(v, domain.low))
    return min(max((v - low) / (high - low), 0.0), 1.0)


def from_unit(domain: Domain, u: float) -> Any:
    """The inverse of ``to_unit``, rounded for integers and clipped into the bounds."""
    if isinstance(domain, LogUniform):
        return domain.clip(math.exp(math.log(domain.low) + u * (math.log(domain.high) - math.log(domain.low))))
    return domain.clip(domain.low + u * (domain.high - domain.low))


def points(trained: Iterable[Trained], mode: str) -> list[Point]:
    """Every interval whose start checkpoint another interval wrote, as an improvement:
    its score minus the score of that checkpoint (after an exploit, the donor's), so a
    point measures what these hyperparameters did to these weights."""
    rows = list(trained)
    by_result = {r.result: r for r in rows if r.result is not None}
    sign = 1.0 if mode == "max" else -1.0
    out = []
    for r in rows:
        parent = by_result.get(r.start) if r.start is not None else None
        if parent is not None:
            out.append(Point(dict(r.hparams), float(r.interval), sign * (r.score - parent.score)))
    return out


def suggest(
    history_points: Sequence[Point],
    space: Mapping[str, Domain],
    t_now: float,
    rng: random.Random,
    *,
    pending: Sequence[Mapping[str, Any]] = (),
    kappa: float = KAPPA,
    candidates: int = CANDIDATES,
) -> dict[str, Any]:
    """New values for the numeric hyperparameters, or {} when the history is too short.

    ``pending`` are configurations other members are training now: they enter the fit as
    observations at ``t_now`` with the predicted mean (GP-BUCB's hallucination), which
    shrinks the uncertainty around them, so members exploiting at once spread out instead
    of all picking the same point.
    """
    names = numeric(space)
    usable = [p for p in history_points if all(n in p.hparams for n in names)]
    if not names or len(usable) < MIN_POINTS:
        return {}
    import numpy as np

    usable = sorted(usable, key=lambda p: p.t)[-MAX_POINTS:]
    scale = max(float(t_now), max(p.t for p in usable), 1.0)

    def row(hparams: Mapping[str, Any], t: float) -> list[float]:
        return [to_unit(space[n], hparams[n]) for n in names] + [t / scale]

    x = np.array([row(p.hparams, p.t) for p in usable])
    y = np.array([p.improvement for p in usable])
    seed = rng.randrange(2**32)
    gp = _fit(x, y, seed)
    busy = [h for h in pending if all(n in h for n in names)]
    if busy:
        xp = np.array([row(h, t_now) for h in busy])
        gp = _fit(np.vstack([x, xp]), np.concatenate([y, gp.predict(xp)]), seed, kernel=gp.kernel_)
    unit = np.random.default_rng(seed).random((candidates, len(names)))
    grid = np.hstack([unit, np.full((candidates, 1), t_now / scale)])
    mean, std = gp.predict(grid, return_std=True)
    best = unit[int(np.argmax(mean + kappa * std))]
    return {n: from_unit(space[n], float(u)) for n, u in zip(names, best)}


def _fit(x: Any, y: Any, seed: int, kernel: Any = None) -> Any:
    """A GP on improvement; given ``kernel`` its hyperparameters stay fixed (no refit)."""
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
    except ImportError:
        raise ImportError("explore='pb2' needs scikit-learn: pip install 'popbt[pb2]'") from None
    if kernel is None:
        dims = x.shape[1]
        kernel = (ConstantKernel(1.0, (1e-2, 1e2))
                  * Matern(length_scale=[0.5] * dims, length_scale_bounds=(0.05, 20.0), nu=2.5)
                  + WhiteKernel(0.1, (1e-5, 1.0)))
        gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=seed)
    else:
        gp = GaussianProcessRegressor(kernel, normalize_y=True, optimizer=None)
    with warnings.catch_warnings():  # a flat or tiny history fits at a bound: expected, harmless
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)
        return gp.fit(x, y)


def explore(
    hparams: Mapping[str, Any],
    space: Mapping[str, Domain],
    history_points: Sequence[Point],
    t_now: float,
    rng: random.Random,
    factors: Sequence[float] = (0.8, 1.2),
    resample_probability: float = 0.25,
    pending: Sequence[Mapping[str, Any]] = (),
) -> Explored:
    """PB2's choice for the numeric names (rule ``pb2``), PBT's perturbation for the rest
    (and for everything while the history is too short to fit)."""
    chosen = suggest(history_points, space, t_now, rng, pending=pending)
    rest = {n: d for n, d in space.items() if n not in chosen}
    perturbed = perturb(hparams, rest, rng, factors, resample_probability)
    changes = {n: Change("pb2", hparams[n], chosen[n]) if n in chosen else perturbed.changes[n] for n in space}
    return Explored({n: c.after for n, c in changes.items()}, changes)
