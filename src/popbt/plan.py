"""What each waiting task trains: a pure function of a snapshot of the population.

A task waits until its start is decided: after member m reports interval i, its next task
(m, i + 1) waits for the exploit decision; a task that failed ``max_attempts`` times waits for
its replacement. The store reads a ``Snapshot`` (under its lock), ``plan`` decides (ranking,
explore, the spec's hook, PB2's fit all run here): outside any lock when a hook or PB2 is
involved, and the store applies the ``Plan`` only if the population's version has not moved
meanwhile (else it plans again); with the built-in rules alone, in the report's transaction.

Members are compared at **matched age**: the decision before interval i + 1 ranks results of
interval i only, never an older or newer one. In asynchronous mode a decision is taken as soon
as it is determined: with truncation, a member is kept once enough members of its age scored
below it; a copy waits until the whole cohort of its age has reported (only then is the top
group known). So async and sync make the same decisions; async only stops nobody from training
meanwhile. Members that fail are missing from a cohort until they report; given-up members
leave it; neither is ever ranked or copied.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import pb2, strategy
from .config import ExperimentConfig
from .space import sample_space
from .strategy import Explored, ExploreError, Standing, Trained

Hook = Callable[[dict, random.Random], Any]  # a spec's explore(hparams, rng)


# -- the snapshot ------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """A member's result at one interval, as decisions see it."""

    member: int
    interval: int
    score: float | None  # None: evaluate() returned NaN or an infinity (the worst score)
    hparams: Mapping[str, Any]
    checkpoint: int  # the checkpoint it wrote: what a copy starts from
    usable: bool = True  # False once that checkpoint was found corrupt: never a donor


@dataclass(frozen=True)
class Waiting:
    """A task whose start is not decided yet. ``hparams``/``start`` are what it trains if the
    member keeps its own weights. A task waits for a *replacement* once it failed (a next task
    created by a report has no attempts yet)."""

    task: int
    member: int
    interval: int
    hparams: Mapping[str, Any]
    start: int | None
    attempts: int = 0
    replacements: int = 0

    @property
    def replacing(self) -> bool:
        return self.attempts > 0


@dataclass(frozen=True)
class Snapshot:
    """Everything a plan may read, taken at one ``version`` of the population."""

    version: int
    config: ExperimentConfig
    waiting: Sequence[Waiting]
    results: Mapping[tuple[int, int], Result]  # (member, interval): every interval a waiting task compares
    given_up: Mapping[int, int] = field(default_factory=dict)  # member -> the interval it stopped at
    trained: Sequence[Trained] = ()  # recent completed intervals with lineage (t-test, PB2)
    busy: Sequence[pb2.Busy] = ()  # configurations being trained now (PB2 spreads away from them)


# -- the plan ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Copy:
    """An exploit to record: the member starts from ``donor``'s checkpoint of ``donor_interval``."""

    donor: int
    donor_interval: int
    score: float | None
    donor_score: float | None
    hparams_before: Mapping[str, Any]
    hparams_after: Mapping[str, Any]
    changes: Mapping[str, str]
    reason: str  # exploit | replace


@dataclass(frozen=True)
class Decision:
    """What one waiting task becomes: claimable with ``hparams`` from ``start``, or given up."""

    task: int
    member: int
    interval: int
    hparams: Mapping[str, Any]
    start: int | None
    replacements: int
    copy: Copy | None = None
    give_up: bool = False


@dataclass(frozen=True)
class Note:
    """An event to record with the plan (``failure``, ``replaced``, ``gave_up``)."""

    member: int
    interval: int
    kind: str
    message: str
    detail: str | None = None  # a traceback, when user code failed


@dataclass(frozen=True)
class Plan:
    version: int
    decisions: tuple[Decision, ...] = ()
    notes: tuple[Note, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.decisions or self.notes)


def needs_decision(config: ExperimentConfig, next_interval: int, finite: bool) -> bool:
    """Whether the task a report creates must wait for a decision, or may be claimed at once
    (asynchronous mode, and no exploit is possible before ``next_interval``)."""
    if config.sync:
        return True
    if not config.exploits:
        return False
    return not finite or strategy.is_ready(next_interval, config.ready_every, config.burn_in)


Explorations = dict  # (task, donor checkpoint, reason, with hook) -> Explored or ExploreError


def plan(snapshot: Snapshot, hook: Hook | None = None, explored: Explorations | None = None) -> Plan:
    """Decide every waiting task that can be decided now; the others keep waiting.

    Replacements go first: a member given up leaves the cohorts, which may complete them.
    ``explored`` carries explorations over from an earlier plan of the same decisions that
    could not be applied (the population moved meanwhile), so planning again does not refit
    PB2 or call the spec's hook twice: only who copies whom is decided anew.
    """
    planner = _Planner(snapshot, hook, {} if explored is None else explored)
    order = sorted(snapshot.waiting, key=lambda w: (w.interval, w.member))
    for waiting in order:
        if waiting.replacing:
            planner.replace(waiting)
    for waiting in order:
        if not waiting.replacing:
            planner.next(waiting)
    return Plan(snapshot.version, tuple(planner.decisions), tuple(planner.notes))


class _Cohort:
    """One interval's results, ranked once per planning pass."""

    def __init__(self, cfg: ExperimentConfig, interval: int, expected: list[int], known: dict[int, Result]) -> None:
        self.expected, self.known, self.mode = expected, known, cfg.mode
        self.complete = len(known) == len(expected)
        self.standings = {m: Standing(m, r.score, strategy.tiebreak(cfg.seed, interval, m)) for m, r in known.items()}
        ranked = strategy.rank(self.standings.values(), cfg.mode)
        self.ranked = [known[s.member] for s in ranked]  # best first
        self.keys = [s.key(cfg.mode) for s in reversed(ranked)]  # worst first, for bisection
        n = len(expected)
        self.cut = strategy.cut_size(n, cfg.quantile, cfg.top) if n >= 2 else 0

    def key(self, member: int) -> tuple[float, float]:
        return self.standings[member].key(self.mode)


class _Planner:
    """The state of one planning pass: cohorts as the decisions so far leave them."""

    def __init__(self, snapshot: Snapshot, hook: Hook | None, explored: Explorations) -> None:
        self.snap, self.cfg, self.hook, self.explored = snapshot, snapshot.config, hook, explored
        self.given_up = dict(snapshot.given_up)
        self.busy = list(snapshot.busy)
        self.decisions: list[Decision] = []
        self.notes: list[Note] = []
        self._points: list[pb2.Point] | None = None
        self._cohorts: dict[int, _Cohort] = {}

    # -- cohorts --------------------------------------------------------------------------

    def cohort(self, interval: int) -> _Cohort:
        """The results of ``interval`` among the members still in the run then (cached for the
        pass; a give-up clears the cache)."""
        if interval not in self._cohorts:
            expected = [m for m in range(self.cfg.population) if self.given_up.get(m, self.cfg.intervals) > interval]
            results = self.snap.results
            known = {m: results[(m, interval)] for m in expected if (m, interval) in results}
            self._cohorts[interval] = _Cohort(self.cfg, interval, expected, known)
        return self._cohorts[interval]

    @staticmethod
    def donors(results: Iterable[Result], member: int) -> list[Result]:
        """Who may be copied: another member, with a finite score and a sound checkpoint."""
        return [r for r in results if r.member != member and r.score is not None and r.usable]

    # -- decisions --------------------------------------------------------------------------

    def next(self, w: Waiting) -> None:
        """The exploit decision before ``w.interval``, from the cohort of the interval before."""
        cfg, age = self.cfg, w.interval - 1
        own = self.snap.results.get((w.member, age))
        if own is None:  # its result is not in the snapshot: nothing to compare yet
            return
        if cfg.sync and not self.cohort(age).complete:
            return
        if not cfg.exploits or (
            own.score is not None and not strategy.is_ready(w.interval, cfg.ready_every, cfg.burn_in)
        ):
            self.keep(w)
            return
        if own.score is None:  # the worst score: copy a top member, whatever the rule and the ready rule
            self.copy_top(w, own)
        elif cfg.exploit == "truncation":
            self.truncation(w, own)
        else:
            self.duel(w, own)

    def truncation(self, w: Waiting, own: Result) -> None:
        cohort = self.cohort(w.interval - 1)
        if cohort.cut == 0 or strategy.surely_kept(cohort.key(own.member), cohort.keys, cohort.cut):
            self.keep(w)
            return
        if not cohort.complete:
            return
        top, bottom = strategy.truncation(cohort.ranked, cohort.cut)
        if own.member not in {r.member for r in bottom}:
            self.keep(w)
            return
        self.copy_from(w, own, self.donors(top, own.member))

    def copy_top(self, w: Waiting, own: Result) -> None:
        """A non-finite score: copy a member of the top group once the cohort is complete."""
        cohort = self.cohort(w.interval - 1)
        if not cohort.complete:
            return
        self.copy_from(w, own, self.donors(cohort.ranked[: max(1, cohort.cut)], own.member))

    def duel(self, w: Waiting, own: Result) -> None:
        """Tournament and t-test: meet one other member of the same age, copy it if better."""
        age = w.interval - 1
        rng = strategy.decision_rng(self.cfg.seed, "exploit", w.member, age)
        cohort = self.cohort(age)
        other = strategy.opponent(cohort.expected, w.member, rng)
        if other is None:
            self.keep(w)
            return
        theirs = cohort.known.get(other)
        if theirs is None:  # still training (or retrying) that interval: wait for it
            return
        if self.wins(theirs, own) and self.donors([theirs], own.member):
            self.copy(w, own, theirs, "exploit")
        else:
            self.keep(w)

    def wins(self, theirs: Result, own: Result) -> bool:
        if theirs.score is None or own.score is None:
            return theirs.score is not None
        if self.cfg.exploit == "tournament":
            return strategy.better(theirs.score, own.score, self.cfg.mode)
        recent = strategy.histories(self.snap.trained, {0: theirs.checkpoint, 1: own.checkpoint}, self.cfg.ttest_window)
        return strategy.significantly_better(
            recent[0], recent[1], self.cfg.mode, self.cfg.ttest_window, self.cfg.ttest_alpha
        )

    def copy_from(self, w: Waiting, own: Result, donors: Sequence[Result]) -> None:
        if not donors:
            self.keep(w)
            return
        rng = strategy.decision_rng(self.cfg.seed, "exploit", w.member, w.interval - 1)
        self.copy(w, own, rng.choice(list(donors)), "exploit")

    def copy(self, w: Waiting, own: Result, donor: Result, reason: str) -> None:
        try:
            explored = self.explore(w, donor, reason, self.hook)
        except ExploreError as e:
            self.note(w, "failure", f"member {w.member} cannot copy member {donor.member}: {e}", e.detail)
            self.keep(w)
            return
        self.decide(
            w,
            explored.hparams,
            donor.checkpoint,
            w.replacements,
            self.record(own.score, own.hparams, donor, explored, reason),
        )

    def keep(self, w: Waiting) -> None:
        self.decide(w, dict(w.hparams), w.start, w.replacements)

    def replace(self, w: Waiting) -> None:
        """``w`` failed ``max_attempts`` times in a row: restart it from a top member of the
        interval before (a model of the right age), or give it up after ``max_attempts``
        replacements."""
        cfg = self.cfg
        if w.replacements >= cfg.max_attempts:
            self.give_up(w, f"failed {w.replacements + 1} times over")
            return
        rng = strategy.decision_rng(cfg.seed, "fresh", w.member, w.interval, w.replacements)
        if w.interval == 0:
            self.decide(w, sample_space(cfg.space, rng), None, w.replacements + 1)
            self.note(w, "replaced", f"member {w.member} restarts with fresh hyperparameters")
            return
        age = w.interval - 1
        cohort = self.cohort(age)
        if not cohort.complete:
            return
        ranked = cohort.ranked
        donors = self.donors(ranked[: max(1, cohort.cut)], w.member) or self.donors(ranked, w.member)[:1]
        if not donors:
            self.restart_own(w, rng)
            return
        donor = strategy.decision_rng(cfg.seed, "replace", w.member, w.interval, w.replacements).choice(donors)
        try:
            explored = self.explore(w, donor, "replace", self.hook)
        except ExploreError as e:  # the hook failed: PBT's own explore still gives a valid copy
            self.note(w, "failure", f"member {w.member} cannot copy member {donor.member}: {e}", e.detail)
            explored = self.explore(w, donor, "replace", None)
        own = self.snap.results.get((w.member, age))
        self.decide(
            w,
            explored.hparams,
            donor.checkpoint,
            w.replacements + 1,
            self.record(own.score if own else None, w.hparams, donor, explored, "replace"),
        )
        self.note(w, "replaced", f"member {w.member} copies member {donor.member} after repeated failures")

    def restart_own(self, w: Waiting, rng: random.Random) -> None:
        """Nobody else can be copied: retry from its own checkpoint with fresh hyperparameters."""
        own = self.snap.results.get((w.member, w.interval - 1))
        if own is None or not own.usable:
            self.give_up(w, "cannot be replaced: no sound checkpoint of its age is left")
            return
        self.decide(w, sample_space(self.cfg.space, rng), own.checkpoint, w.replacements + 1)
        self.note(w, "replaced", f"member {w.member} restarts from its own weights with fresh hyperparameters")

    def give_up(self, w: Waiting, why: str) -> None:
        self.given_up[w.member] = w.interval
        self._cohorts.clear()
        self.decisions.append(
            Decision(w.task, w.member, w.interval, dict(w.hparams), w.start, w.replacements, give_up=True)
        )
        self.note(w, "gave_up", f"member {w.member} {why}; it stops here")

    # -- explore ------------------------------------------------------------------------------

    def explore(self, w: Waiting, donor: Result, reason: str, hook: Hook | None) -> Explored:
        """The copy's hyperparameters, from the donor's (remembered across plans)."""
        key = (w.task, donor.checkpoint, reason, hook is not None)
        if key not in self.explored:
            try:
                self.explored[key] = self.draw(w, donor, reason, hook)
            except ExploreError as e:
                self.explored[key] = e
        found = self.explored[key]
        if isinstance(found, ExploreError):
            raise found
        return found

    def draw(self, w: Waiting, donor: Result, reason: str, hook: Hook | None) -> Explored:
        """PB2, else the spec's hook, else PBT's perturbation."""
        cfg = self.cfg
        rng = strategy.decision_rng(cfg.seed, "explore", w.member, w.interval, reason)
        if cfg.explore == "pb2":
            return pb2.explore(
                donor.hparams,
                cfg.space,
                self.points(),
                w.interval,
                self.signed(donor.score),
                rng,
                cfg.factors,
                cfg.resample_probability,
                pending=self.busy,
            )
        if hook is not None:
            return strategy.explore_with(hook, dict(donor.hparams), cfg.space, rng)
        return strategy.explore(donor.hparams, cfg.space, rng, cfg.factors, cfg.resample_probability)

    def points(self) -> list[pb2.Point]:
        if self._points is None:
            self._points = pb2.points(self.snap.trained, self.cfg.mode)
        return self._points

    def signed(self, score: float | None) -> float | None:
        """A score with larger meaning better, as PB2 models it."""
        return None if score is None else (score if self.cfg.mode == "max" else -score)

    # -- output ---------------------------------------------------------------------------------

    def record(
        self, score: float | None, before: Mapping[str, Any], donor: Result, explored: Explored, reason: str
    ) -> Copy:
        return Copy(
            donor.member,
            donor.interval,
            score,
            donor.score,
            dict(before),
            explored.hparams,
            {k: c.rule for k, c in explored.changes.items()},
            reason,
        )

    def decide(
        self, w: Waiting, hparams: Mapping[str, Any], start: int | None, replacements: int, copy: Copy | None = None
    ) -> None:
        self.decisions.append(Decision(w.task, w.member, w.interval, dict(hparams), start, replacements, copy))
        self.busy.append(pb2.Busy(dict(hparams), self.signed(copy.donor_score) if copy else None))

    def note(self, w: Waiting, kind: str, message: str, detail: str | None = None) -> None:
        self.notes.append(Note(w.member, w.interval, kind, message, detail))
