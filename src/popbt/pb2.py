"""PB2 explore: Population Based Bandits (Parker-Holder et al. 2020) with PB2-Mix's bandit
for categorical values (Parker-Holder et al. 2021).

PBT's explore is a random walk; PB2 learns from the whole population's history which
hyperparameters made models improve. Every trained interval is a point: inputs its
hyperparameters, the time t (interval index) and the score it started from (R_before), output
its improvement. A time-varying Gaussian process (TV-GP-UCB, Bogunovic et al. 2016) fits the
most recent points, and the copy's numeric values maximise its upper confidence bound at the
current time and score. Choice values are picked first, each by a time-varying EXP3 bandit
over its options fed by the same improvements; the GP then models only the points that used
the chosen options. Members training right now enter the GP as hallucinated observations
(GP-BUCB), so members choosing at once spread out. docs/pb2.md has the formulas.

Pure functions of the points and a seeded ``random.Random`` (every numpy draw is derived from
it), like the rest of the strategy: the store gathers the points in its transaction. numpy and
scipy are imported only inside the functions that fit (``pip install 'popbt[pb2]'``).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .space import Change, Choice, Domain, IntUniform, LogUniform, Uniform
from .strategy import Explored, Trained
from .strategy import explore as perturb

MIN_POINTS = 3  # fewer usable points than this: nothing to fit, explore perturbs instead
WINDOW = 200  # the most recent points fitted (Ray keeps at least 200); bounds a fit's cost
CLIP = 2.0  # standardised improvements are clipped to [-CLIP, CLIP], as the reference code does
BETA_C1, BETA_C2 = 0.2, 0.4  # beta_t = c1 + max(0, log(c2 * n)), the reference code's schedule
EPSILON_MAX = 0.5  # the time kernel's forgetting rate is fitted in [0, EPSILON_MAX]
LENGTH_SCALE = (0.1, 1.0)  # in the unit box: no wiggle finer than a tenth of a range; the cap keeps it from going flat
SIGNAL = (0.05, 20.0)  # signal variance bounds (targets are standardised)
NOISE = (1e-4, 2.0)  # noise variance bounds
FIT_RESTARTS = 2  # random starts of the likelihood fit besides the default start
ACQ_RESTARTS = 10  # random starts of L-BFGS-B on the acquisition, as the reference code
GAMMA = 0.2  # EXP3's uniform exploration: every option keeps probability >= GAMMA / K


@dataclass(frozen=True)
class Point:
    """One trained interval: with ``hparams`` at time ``t`` (the interval index), a model whose
    score was ``before`` (the score of the checkpoint it started from) reached ``after``.
    Scores are sign-adjusted: larger is better whatever the experiment's mode."""

    hparams: Mapping[str, Any]
    t: float
    before: float
    after: float


@dataclass(frozen=True)
class Busy:
    """A configuration some member is training right now, with the (sign-adjusted) score of
    the checkpoint it started from, if known."""

    hparams: Mapping[str, Any]
    before: float | None


# -- the space as a unit box --------------------------------------------------------------


def numeric(space: Mapping[str, Domain]) -> list[str]:
    """The names the GP chooses, in declaration order (LogUniform is a Uniform)."""
    return [n for n, d in space.items() if isinstance(d, (Uniform, IntUniform))]


def categorical(space: Mapping[str, Domain]) -> list[str]:
    """The names a bandit chooses, in declaration order."""
    return [n for n, d in space.items() if isinstance(d, Choice)]


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


# -- the data -----------------------------------------------------------------------------


def points(trained: Iterable[Trained], mode: str) -> list[Point]:
    """Every interval whose start checkpoint another recorded interval wrote, with the score
    of that checkpoint as ``before`` (after an exploit, the donor's), so a point measures what
    these hyperparameters did to these weights. Rows whose score or whose parent's score is
    missing (non-finite scores are recorded as None) are skipped."""
    rows = list(trained)
    by_result = {r.result: r for r in rows if r.result is not None}
    sign = 1.0 if mode == "max" else -1.0
    out = []
    for r in rows:
        parent = by_result.get(r.start) if r.start is not None else None
        if parent is not None and _finite(r.score) and _finite(parent.score):
            out.append(Point(dict(r.hparams), float(r.interval), sign * parent.score, sign * r.score))
    return out


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _usable(history: Sequence[Point], space: Mapping[str, Domain]) -> list[Point]:
    """Points that fit this space: finite scores, every name present, in-range options."""
    numbers, choices = numeric(space), categorical(space)

    def fits(p: Point) -> bool:
        return (
            _finite(p.t)
            and _finite(p.before)
            and _finite(p.after)
            and all(n in p.hparams for n in space)
            and all(_finite(p.hparams[n]) for n in numbers)
            and all(p.hparams[n] in space[n].options for n in choices)
        )

    return [p for p in history if fits(p)]


def _standardise(values: Sequence[float]) -> Any:
    """The reference code's target: (y - mean) / (std + 1e-8), clipped to [-CLIP, CLIP], so
    one huge jump (the first intervals of training) cannot dominate the fit."""
    import numpy as np

    y = np.asarray(values, dtype=float)
    return np.clip((y - y.mean()) / (y.std() + 1e-8), -CLIP, CLIP)


# -- the choice ---------------------------------------------------------------------------


def suggest(
    history: Sequence[Point],
    space: Mapping[str, Domain],
    t_now: float,
    before_now: float | None,
    rng: random.Random,
    *,
    pending: Sequence[Busy] = (),
) -> dict[str, Any]:
    """New values for the names PB2 chooses: each Choice by its bandit, then the numeric ones
    by the GP given those options. {} when fewer than MIN_POINTS usable points exist (the RNG
    is then untouched). Numeric names are left out when fewer than MIN_POINTS points used the
    chosen options.

    ``t_now`` is the interval the copy trains next, ``before_now`` the sign-adjusted score of
    the checkpoint it starts from (larger is better; None leaves the score out of the model),
    ``pending`` what other members are training now.
    """
    usable = _usable(history, space)
    if len(usable) < MIN_POINTS:
        return {}
    import numpy as np

    gen = np.random.default_rng(rng.getrandbits(64))
    with _one_blas_thread():
        return _choose(sorted(usable, key=lambda p: p.t)[-WINDOW:], space, t_now, before_now, pending, gen)


def _one_blas_thread() -> Any:
    """The fit's matrices are small: one BLAS thread is fastest, and threads fighting over busy
    cores made a fit 60 times slower on a loaded 2-core machine. threadpoolctl comes with
    scikit-learn; without it the fit runs as the process is configured."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _choose(
    window: Sequence[Point],
    space: Mapping[str, Domain],
    t_now: float,
    before_now: float | None,
    pending: Sequence[Busy],
    gen: Any,
) -> dict[str, Any]:
    """Bandits for the Choice names, then the GP for the numeric ones given those options."""
    reward = (_standardise([p.after - p.before for p in window]) + CLIP) / (2 * CLIP)  # in [0, 1]
    chosen: dict[str, Any] = {}
    for name in categorical(space):
        chosen[name] = _bandit_choice(space[name].options, window, name, reward, gen)
    names = numeric(space)
    same = [p for p in window if all(p.hparams[c] == v for c, v in chosen.items())]
    if names and len(same) >= MIN_POINTS:
        busy = [
            b
            for b in pending
            if all(n in b.hparams and _finite(b.hparams[n]) for n in names)
            and all(b.hparams.get(c) == v for c, v in chosen.items())
        ]
        unit = _gp_choice(same, busy, {n: space[n] for n in names}, t_now, before_now, gen)
        chosen.update({n: from_unit(space[n], float(u)) for n, u in zip(names, unit, strict=True)})
    return chosen


def explore(
    hparams: Mapping[str, Any],
    space: Mapping[str, Domain],
    history: Sequence[Point],
    t_now: float,
    before_now: float | None,
    rng: random.Random,
    factors: Sequence[float] = (0.8, 1.2),
    resample_probability: float = 0.25,
    pending: Sequence[Busy] = (),
) -> Explored:
    """PB2's choice (rule ``pb2``) for every name it chose; PBT's perturbation of the donor's
    ``hparams`` for the rest, and for everything while the history is short. ``before_now``
    is sign-adjusted, as in ``suggest``."""
    chosen = suggest(history, space, t_now, before_now, rng, pending=pending)
    rest = {n: d for n, d in space.items() if n not in chosen}
    perturbed = perturb(hparams, rest, rng, factors, resample_probability)
    changes = {n: Change("pb2", hparams[n], chosen[n]) if n in chosen else perturbed.changes[n] for n in space}
    return Explored({n: c.after for n, c in changes.items()}, changes)


# -- categorical values: a time-varying EXP3 bandit ---------------------------------------


def bandit_probabilities(options: Sequence[Any], plays: Sequence[tuple[float, Any, float]]) -> Any:
    """EXP3.S (Auer et al. 2002), PB2-Mix's time-varying bandit, over ``options`` after
    replaying ``plays`` (time, option, reward in [0, 1]) one round (time) at a time.

    Each round an option's log-weight grows by GAMMA * B * (its mean reward that round) / K,
    B the round's plays: EXP3.M's batch update with importance weights from each option's
    share of the round's plays (popbt's data are not drawn from the bandit, so its own
    probabilities would over-credit options the population happened to use more). Then a
    fixed share e * alpha / K of the total weight flows to every option (alpha = 1 / (10
    rounds)), so an option that became good again is found again. The result mixes in GAMMA / K
    of uniform: every option keeps a nonzero probability.
    """
    import numpy as np

    k = len(options)
    rounds = sorted({t for t, _, _ in plays})
    share = math.e / (10 * max(len(rounds), 1)) / k
    log_w = np.zeros(k)
    by_round: dict[float, list[tuple[int, float]]] = {t: [] for t in rounds}
    for t, option, r in plays:
        by_round[t].append((list(options).index(option), r))
    for t in rounds:
        arms = np.array([a for a, _ in by_round[t]])
        rewards = np.array([r for _, r in by_round[t]])
        count = np.bincount(arms, minlength=k)
        mean = np.divide(np.bincount(arms, rewards, minlength=k), count, out=np.zeros(k), where=count > 0)
        w = np.exp(log_w - log_w.max())
        w = w * np.exp(GAMMA * len(arms) * mean / k) + share * w.sum()
        log_w = np.log(w / w.sum())
    w = np.exp(log_w - log_w.max())
    return (1 - GAMMA) * w / w.sum() + GAMMA / k


def _bandit_choice(options: Sequence[Any], window: Sequence[Point], name: str, reward: Any, gen: Any) -> Any:
    plays = [(p.t, p.hparams[name], float(r)) for p, r in zip(window, reward, strict=True)]
    return options[int(gen.choice(len(options), p=bandit_probabilities(options, plays)))]


# -- numeric values: TV-GP-UCB ------------------------------------------------------------
#
# An input row is [t, u_1 .. u_d, (r)]: raw interval index, the hyperparameters in the unit
# box, and R_before scaled to [0, 1] over the values in the model. The kernel is
#   k(z, z') = s2 * exp(-sum_j (z_j - z'_j)^2 / (2 l_j^2)) * (1 - eps)^(|t - t'| / 2)
# over columns 1.. (squared exponential, one length scale each) times the time kernel.


@dataclass(frozen=True)
class _Hyper:
    signal: float
    lengths: Any  # one per column after time
    epsilon: float
    noise: float


def _gp_choice(
    data: Sequence[Point],
    busy: Sequence[Busy],
    domains: Mapping[str, Domain],
    t_now: float,
    before_now: float | None,
    gen: Any,
) -> Any:
    """The numeric values (unit box) maximising UCB at (t_now, before_now)."""
    import numpy as np

    names = list(domains)
    context = before_now is not None
    befores = [p.before for p in data] + ([before_now] if context else [])
    befores += [b.before for b in busy if context and b.before is not None]
    low, high = min(befores), max(befores)

    def row(hparams: Mapping[str, Any], t: float, before: float | None) -> list[float]:
        r = [] if not context else [0.5 if high - low < 1e-12 else (before - low) / (high - low)]
        return [float(t)] + [to_unit(domains[n], hparams[n]) for n in names] + r

    z = np.array([row(p.hparams, p.t, p.before) for p in data])
    y = _standardise([p.after - p.before for p in data])
    hyper = _fit(z, y, gen)
    fixed = row({n: domains[n].low for n in names}, t_now, before_now)  # the free part is overwritten
    # GP-BUCB: the running configurations are observed at their predicted mean. That leaves the
    # mean unchanged and shrinks the variance around them; the mean model stays the plain one.
    hallucinated = np.array([row(b.hparams, t_now, before_now if b.before is None else b.before) for b in busy])
    mean_model = _Posterior.of(hyper, z, y)
    var_model = (
        mean_model
        if not busy
        else _Posterior.of(hyper, np.vstack([z, hallucinated]), np.concatenate([y, mean_model.mean(hallucinated)]))
    )
    kappa = math.sqrt(BETA_C1 + max(0.0, math.log(BETA_C2 * len(data))))
    return _maximise_ucb(mean_model, var_model, np.array(fixed), len(names), kappa, gen)


def _kernel(hyper: _Hyper, a: Any, b: Any) -> Any:
    """k(a_i, b_j) without noise."""
    import numpy as np

    sq = (((a[:, None, 1:] - b[None, :, 1:]) / hyper.lengths) ** 2).sum(-1)
    return hyper.signal * np.exp(-0.5 * sq) * (1.0 - hyper.epsilon) ** (0.5 * np.abs(a[:, None, 0] - b[None, :, 0]))


def _fit(z: Any, y: Any, gen: Any) -> _Hyper:
    """Kernel hyperparameters by maximum marginal likelihood (L-BFGS-B, analytic gradient),
    from the default start and FIT_RESTARTS random ones; the best wins."""
    import numpy as np
    from scipy.optimize import minimize

    dims = z.shape[1] - 1
    diff2 = np.ascontiguousarray(((z[:, None, 1:] - z[None, :, 1:]) ** 2).transpose(2, 0, 1))  # (dims, n, n)
    half_dt = 0.5 * np.abs(z[:, None, 0] - z[None, :, 0])
    bounds = (
        [tuple(np.log(SIGNAL))] + [tuple(np.log(LENGTH_SCALE))] * dims + [(0.0, EPSILON_MAX)] + [tuple(np.log(NOISE))]
    )
    starts = [np.array([0.0] + [math.log(0.5)] * dims + [0.1, math.log(0.1)])]
    starts += [np.array([gen.uniform(lo, hi) for lo, hi in bounds]) for _ in range(FIT_RESTARTS)]
    best = min(
        (
            minimize(
                _neg_log_likelihood,
                s,
                args=(diff2, half_dt, y),
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"maxiter": 100},
            )
            for s in starts
        ),
        key=lambda res: res.fun,
    )
    return _unpack(best.x)


def _unpack(theta: Any) -> _Hyper:
    import numpy as np

    return _Hyper(float(np.exp(theta[0])), np.exp(theta[1:-2]), float(theta[-2]), float(np.exp(theta[-1])))


def _neg_log_likelihood(theta: Any, diff2: Any, half_dt: Any, y: Any) -> tuple[float, Any]:
    """-log p(y | theta) and its gradient in theta = (log s2, log l_j, eps, log noise);
    ``diff2`` holds the squared differences per column, shape (dims, n, n)."""
    import numpy as np
    from scipy.linalg import LinAlgError, cho_factor, cho_solve
    from scipy.linalg.lapack import dpotri

    h = _unpack(theta)
    n = len(y)
    kf = h.signal * np.exp(-0.5 * np.tensordot(h.lengths**-2, diff2, axes=1)) * (1.0 - h.epsilon) ** half_dt
    try:
        factor = cho_factor(kf + (h.noise + 1e-8) * np.eye(n), lower=True)
    except LinAlgError:
        return 1e10, np.zeros_like(theta)
    alpha = cho_solve(factor, y)
    nll = 0.5 * y @ alpha + np.log(np.diag(factor[0])).sum() + 0.5 * n * math.log(2 * math.pi)
    k_inv = np.tril(dpotri(factor[0], lower=1)[0])
    k_inv += np.tril(k_inv, -1).T
    w = np.outer(alpha, alpha) - k_inv  # dNLL/dtheta = -tr(w dK/dtheta) / 2
    wk = w * kf
    grad = np.concatenate(
        [
            [wk.sum()],
            diff2.reshape(len(diff2), -1) @ wk.ravel() / h.lengths**2,
            [-(wk * half_dt).sum() / (1.0 - h.epsilon)],
            [h.noise * np.trace(w)],
        ]
    )
    return float(nll), -0.5 * grad


@dataclass(frozen=True)
class _Posterior:
    """The GP conditioned on rows ``z`` with targets ``y`` at fixed hyperparameters."""

    hyper: _Hyper
    z: Any
    alpha: Any  # K^-1 y
    k_inv: Any

    @classmethod
    def of(cls, hyper: _Hyper, z: Any, y: Any) -> _Posterior:
        import numpy as np
        from scipy.linalg import cho_factor, cho_solve

        factor = cho_factor(_kernel(hyper, z, z) + (hyper.noise + 1e-8) * np.eye(len(z)), lower=True)
        return cls(hyper, z, cho_solve(factor, y), cho_solve(factor, np.eye(len(z))))

    def mean(self, q: Any) -> Any:
        return _kernel(self.hyper, q, self.z) @ self.alpha

    def at(self, q: Any, free: slice) -> tuple[float, Any, float, Any]:
        """Mean, its gradient, latent variance, its gradient at one row ``q``, the gradients
        with respect to the columns ``free``."""
        k = _kernel(self.hyper, q[None, :], self.z)[0]
        dk = k[:, None] * -(q[free] - self.z[:, free]) / self.hyper.lengths[free.start - 1 : free.stop - 1] ** 2
        a = self.k_inv @ k
        return float(k @ self.alpha), self.alpha @ dk, float(self.hyper.signal - k @ a), -2.0 * a @ dk


def _maximise_ucb(mean_model: _Posterior, var_model: _Posterior, fixed: Any, dims: int, kappa: float, gen: Any) -> Any:
    """argmax over u in [0, 1]^dims of mean(u) + kappa * std(u), time and score held at
    ``fixed``: L-BFGS-B from ACQ_RESTARTS random starts."""
    import numpy as np
    from scipy.optimize import minimize

    free = slice(1, 1 + dims)

    def negative_ucb(u: Any) -> tuple[float, Any]:
        q = fixed.copy()
        q[free] = u
        mu, dmu, _, _ = mean_model.at(q, free)
        _, _, var, dvar = var_model.at(q, free)
        std = math.sqrt(max(var, 1e-12))
        return -(mu + kappa * std), -(dmu + kappa * dvar / (2 * std))

    runs = [
        minimize(
            negative_ucb,
            gen.random(dims),
            jac=True,
            method="L-BFGS-B",
            bounds=[(0.0, 1.0)] * dims,
            options={"maxiter": 200},
        )
        for _ in range(ACQ_RESTARTS)
    ]
    return np.clip(min(runs, key=lambda res: res.fun).x, 0.0, 1.0)
