"""The campaign's plan: which faults, of which kinds, where and when, reproducible from a seed.

A plan is a list of small runs of chaos/spec.py, each with its faults. Nothing here touches a
process or a file; chaos/run.py carries a plan out, chaos/verdict.py judges what happened.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

# kind: (spec function, action, what it stands for); fired from inside user code (chaos/spec.py)
IN_SPEC = {
    "raise_build": ("build", "raise", "user code raises in build"),
    "raise_train": ("train", "raise", "user code raises in train"),
    "raise_evaluate": ("evaluate", "raise", "user code raises in evaluate"),
    "raise_save": ("save", "raise", "user code raises in save"),
    "raise_load": ("load", "raise", "user code raises in load"),
    "raise_apply": ("apply", "raise", "user code raises in apply"),
    "raise_explore": ("explore", "raise", "the spec's explore hook raises"),
    "exit_train": ("train", "exit", "user code calls sys.exit in train"),
    "score_nan": ("evaluate", "nan", "evaluate returns NaN"),
    "score_inf": ("evaluate", "inf", "evaluate returns -inf"),
    "score_string": ("evaluate", "string", "evaluate returns 'high'"),
    "score_numeric_string": ("evaluate", "numeric_string", "evaluate returns '0.5' (a str)"),
    "score_none": ("evaluate", "none", "evaluate returns None"),
    "score_nometric": ("evaluate", "nometric", "evaluate's dict lacks the metric"),
    "metric_nan": ("evaluate", "nan_metric", "a NaN extra metric beside a good score"),
    "save_half_oserror": ("save", "oserror_half", "save writes half a file, then OSError"),
    "kill_after_claim": ("build", "kill", "SIGKILL right after a claim (in build)"),
    "kill_in_train": ("train", "kill", "SIGKILL mid-interval (in train)"),
    "kill_ckpt_written": ("save", "kill", "SIGKILL between checkpoint write and commit"),
    "kill_in_report": ("save", "kill_after_rename", "SIGKILL after the rename, while the report/exploit commits"),
    "hang_then_kill": ("train", "hang", "worker hangs; SIGKILLed"),
    "stop_past_lease": ("train", "hang", "SIGSTOP past the lease, SIGCONT after the takeover"),
    "failing_member": ("train", "raise", "a member that keeps failing (every attempt)"),
    "poison_task": ("train", "kill", "an interval that SIGKILLs every worker that trains it"),
    "sigterm_preempt": ("train", "hang", "SIGTERM mid-interval, 3 times (preemption): handed back uncounted"),
}
# A worker of its own, in a network namespace, whose first save cuts its link from inside the
# report (chaos/spec.py's cut_after_rename), then: left cut / left cut and SIGKILLed / restored.
NETNS = {
    "netns_cut": "a worker's link cut inside its PostgreSQL report, left cut",
    "netns_cut_kill": "a worker's link cut inside its report, left cut, the worker SIGKILLed",
    "netns_blip": "a worker's link cut inside its report, restored after 0.3-0.8 leases",
}
DISK = {
    "disk_full": "the checkpoint tmpfs full (ENOSPC) for 0.3-0.8 leases",
    "disk_readonly": "the checkpoint tmpfs remounted read-only for 0.3-0.8 leases",
}
EXTERNAL = {
    "kill_worker_random": "SIGKILL a random worker at a random time",
    "stop_worker_random": "SIGSTOP a random worker for 1.2-2.5 leases, then SIGCONT",
    "kill_run": "SIGKILL `popbt run` (its workers go on), run it again",
    "kill_run_and_workers": "SIGKILL `popbt run` and its workers, run it again",
    "ckpt_truncate": "a live checkpoint truncated between intervals",
    "ckpt_bitflip": "a live checkpoint bit-flipped between intervals",
    "ckpt_delete": "a live checkpoint deleted between intervals",
    "sqlite_lock": "another process holds BEGIN EXCLUSIVE (0.5 s to 2.5 leases)",
    "sqlite_lock_long": "another process holds BEGIN EXCLUSIVE past the 30 s busy timeout",
    "sqlite_deleted": "the sqlite file deleted mid-run: the run stops, its history salvaged",
    "pg_restart": "the PostgreSQL server restarted (pg_ctl restart -m fast)",
    "bad_device": "a worker started with --device cuda:N, a device this machine lacks",
    "sick_worker": "a worker on which every train raises (a broken GPU)",
    "shared_dir": "another database's experiment shares the checkpoint directory",
    "foreign_file": "a file popbt did not write for this experiment in its checkpoint directory",
    **NETNS,
    **DISK,
}
# faults of a member rather than of a worker: they fire whichever worker trains it
EVERYWHERE = {"failing_member", "poison_task"}
DESCRIPTION = {**{k: v[2] for k, v in IN_SPEC.items()}, **EXTERNAL}

# Faults whose by-design effect is that nobody can make progress while they last (see
# docs/reliability.md, "The campaign"): a run may go without a result for 2 leases plus their
# time; chaos/verdict.py adds each failed attempt's retry backoff.
WAITS_BY_DESIGN = {
    "sqlite_lock": "every writer waits for the lock (the busy timeout)",
    "sqlite_lock_long": "every writer waits, then stops past its patience; the run is started again",
    "stop_worker_random": "a worker frozen inside a transaction blocks the writers it locked out",
    "stop_past_lease": "a worker frozen inside a transaction blocks the writers it locked out",
    "pg_restart": "the server is down",
    "disk_full": "no worker can save a checkpoint until the disk is mended",
    "disk_readonly": "no worker can save a checkpoint until the disk is mended",
    "failing_member": "its retries back off (retry_delay), and members that may copy from it wait",
    "poison_task": "each crash waits for its lease, its retry for the backoff; copiers wait for it",
}

WEIGHTS = {
    "kill_worker_random": 6,
    "stop_worker_random": 3,
    "kill_run": 1.5,
    "kill_run_and_workers": 1.5,
    "ckpt_truncate": 2,
    "ckpt_bitflip": 2,
    "ckpt_delete": 2,
    "sqlite_lock": 3,
    "pg_restart": 3,
    "kill_after_claim": 2,
    "kill_in_train": 2,
    "kill_ckpt_written": 3,
    "kill_in_report": 3,
    "hang_then_kill": 1.5,
    "stop_past_lease": 1.5,
    "save_half_oserror": 3,
    "exit_train": 0.5,
    "score_nan": 1,
    "score_inf": 1,
    "score_string": 1,
    "score_numeric_string": 0.3,
    "score_none": 1,
    "score_nometric": 1,
    "metric_nan": 0.5,
    "raise_build": 1,
    "raise_train": 1.5,
    "raise_evaluate": 1,
    "raise_save": 1,
    "raise_load": 1.5,
    "raise_apply": 1,
    "raise_explore": 1,
    "sigterm_preempt": 1.5,
    "netns_cut": 1,
    "netns_cut_kill": 1,
    "netns_blip": 1,
    "disk_full": 1.2,
    "disk_readonly": 1.2,
    "bad_device": 0.8,
    "sick_worker": 1,
    "shared_dir": 0.8,
    "foreign_file": 1.5,
}
ONCE_PER_RUN = {
    "failing_member",
    "poison_task",
    "sqlite_lock_long",
    "kill_run",
    "kill_run_and_workers",
    "sigterm_preempt",
    "sick_worker",
    "shared_dir",
    "sqlite_deleted",
    "bad_device",
}
CAMPAIGN_CAP = {
    "poison_task": 2,
    "sqlite_lock_long": 2,
    "exit_train": 3,
    "metric_nan": 3,
    "score_numeric_string": 2,
    "sqlite_deleted": 2,
}
FOREIGN_NAMES = ("pretrained.ckpt", "m0000-i00001-foreign.ckpt", "notes.txt", "m0001-i00000-{uid}-0123abcd.ckpt")


@dataclass
class Fault:
    id: str
    kind: str
    member: int | None = None
    interval: int | None = None
    at: float = 0.0  # external: fraction of the run's intervals done before it fires
    delay: float = 0.0
    duration: float = 0.0
    times: int = 1
    name: str = ""  # foreign_file: the file's name
    # what happened (filled in by chaos/run.py)
    injected: bool = False
    tries: int = 0
    detail: str = ""
    pids: list = field(default_factory=list)
    firings: list = field(default_factory=list)  # (pid, member, interval) of each in-spec firing
    expect_takeovers: list = field(default_factory=list)  # (member, interval, worker name)
    expect_corrupt: str | None = None
    window: list = field(default_factory=list)  # [start, end] wall-clock seconds while it lasted
    facts: dict = field(default_factory=dict)  # what the driver saw, for the verdict

    @property
    def role(self) -> str:
        """Only a worker started with this CHAOS_ROLE fires the fault (the netns worker's); a
        member that fails or kills everywhere does so in every worker, special ones too ("*")."""
        if self.kind in NETNS:
            return f"netns:{self.id}"
        return "*" if self.kind in EVERYWHERE else ""

    def control(self) -> dict:
        if self.kind in NETNS:
            at, do = "save", "cut_after_rename"
        else:
            at, do, _ = IN_SPEC[self.kind]
        entry = {"id": self.id, "at": at, "do": do, "member": self.member, "interval": self.interval}
        entry.update(times=self.times, role=self.role)
        if self.delay:
            entry["delay"] = self.delay
        return entry


@dataclass
class RunPlan:
    index: int
    backend: str
    population: int
    intervals: int
    sync: bool
    lease: float
    seed: int
    explore_hook: bool
    ckpt_db: bool
    faults: list[Fault]

    @property
    def label(self) -> str:
        mode = "sync" if self.sync else "async"
        extra = ", checkpoints in db" if self.ckpt_db else ""
        return (
            f"run {self.index:02d} [{self.backend}, {self.population}x{self.intervals}, {mode}, "
            f"lease {self.lease:g}s{extra}]"
        )

    @property
    def tmpfs(self) -> bool:
        """Its checkpoint directory is a tmpfs of its own (the disk faults break it)."""
        return any(f.kind in DISK for f in self.faults)

    def as_dict(self) -> dict:
        keys = ("index", "backend", "population", "intervals", "sync", "lease", "seed", "ckpt_db")
        return {**{k: getattr(self, k) for k in keys}, "label": self.label}


def applicable(kind: str, backend: str, ckpt_db: bool, kinds: list[str] = ()) -> bool:
    """Can ``kind`` be injected into a run of this backend, beside ``kinds``?"""
    if kind.startswith("sqlite_"):
        return backend == "sqlite"
    if kind in NETNS:  # one netns worker per run: the driver watches a single link
        return backend == "postgresql" and not any(k in NETNS for k in kinds)
    if kind == "pg_restart":
        return backend == "postgresql"
    if kind.startswith("ckpt_") or kind in ("foreign_file", "shared_dir") or kind in DISK:
        if ckpt_db:
            return False
    # the twin's workers would stop on the broken disk too: not in one run
    if kind in DISK:  # one broken disk per run: its workers restart when it is mended
        return "shared_dir" not in kinds and not any(k in DISK for k in kinds)
    if kind == "shared_dir":
        return not any(k in DISK for k in kinds)
    return True


def make_plan(seed: int, faults: int, backends: list[str], without: frozenset[str] = frozenset()) -> list[RunPlan]:
    """Runs with at least ``faults`` faults (a margin more: some miss their target), none of
    the kinds ``without`` (what this machine cannot do)."""
    rng = random.Random(seed)
    everything = sorted((set(IN_SPEC) | set(EXTERNAL)) - without)
    must = {b: [k for k in everything if applicable(k, b, False)] for b in backends}
    for b in backends:
        rng.shuffle(must[b])
    used: Counter = Counter()
    runs: list[RunPlan] = []
    planned = 0
    cover = faults >= 150  # a full campaign injects every kind of fault on every backend
    while planned < faults * 1.15 or cover and any(must[b] for b in backends):
        index = len(runs)
        backend = backends[index % len(backends)]
        population, intervals = rng.randint(4, 6), rng.randint(4, 6)
        sync = rng.random() < 0.3
        ckpt_db = backend == "postgresql" and rng.random() < 0.25
        lease = rng.choice((2.0, 2.5, 3.0))
        kinds = _kinds(rng, rng.randint(9, 13), backend, ckpt_db, must[backend], used, without)
        if sync and "failing_member" not in kinds and rng.random() < 0.6:
            kinds.append("failing_member")
        used.update(kinds)
        run_faults = _place(rng, kinds, index, population, intervals, lease)
        explore_hook = "raise_explore" in kinds or rng.random() < 0.3
        runs.append(
            RunPlan(
                index,
                backend,
                population,
                intervals,
                sync,
                lease,
                rng.randrange(10**6),
                explore_hook,
                ckpt_db,
                run_faults,
            )
        )
        planned += len(run_faults)
    return runs


def _kinds(rng, count, backend, ckpt_db, must, used, without) -> list[str]:
    """``count`` kinds for one run: half from those not yet covered, the rest by weight."""
    kinds: list[str] = []
    while must and len(kinds) < count // 2:
        kind = must.pop()
        if applicable(kind, backend, ckpt_db, kinds) and not (kind in ONCE_PER_RUN and kind in kinds):
            kinds.append(kind)
        else:
            must.insert(0, kind)
            break
    pool = [k for k in WEIGHTS if k not in without and applicable(k, backend, ckpt_db)]
    while len(kinds) < count:
        kind = rng.choices(pool, [WEIGHTS[k] for k in pool])[0]
        if kind in ONCE_PER_RUN and kind in kinds or not applicable(kind, backend, ckpt_db, kinds):
            continue
        if used[kind] + kinds.count(kind) >= CAMPAIGN_CAP.get(kind, 10**6):
            continue
        kinds.append(kind)
    return kinds


def _place(rng, kinds, index, population, intervals, lease) -> list[Fault]:
    """Where and when each fault fires. A preempted member is nobody else's target, so that
    whatever is charged to it is the preemptions' doing."""
    reserved = rng.randrange(population) if "sigterm_preempt" in kinds else None
    others = [m for m in range(population) if m != reserved]
    out, foreign = [], 0
    for j, kind in enumerate(kinds):
        f = Fault(id=f"r{index:02d}f{j:02d}", kind=kind)
        if kind in IN_SPEC:
            _place_in_spec(rng, f, others, intervals)
            if kind == "sigterm_preempt":
                f.member, f.interval, f.times = reserved, rng.randint(0, intervals - 2), 3
        else:
            _place_external(rng, f, lease)
        if kind == "foreign_file":
            name = FOREIGN_NAMES[foreign % len(FOREIGN_NAMES)]
            f.name = name if foreign < len(FOREIGN_NAMES) else f"x{foreign}-{name}"
            foreign += 1
        out.append(f)
    return out


def _place_in_spec(rng, f: Fault, members: list[int], intervals: int) -> None:
    at = IN_SPEC[f.kind][0]
    f.member = rng.choice(members)
    f.interval = rng.randint(1 if at in ("load", "apply") else 0, intervals - 1)
    if at == "explore":
        f.member = f.interval = None  # whichever report first decides an exploit
    if f.kind in ("failing_member", "poison_task"):
        f.times = 0
        f.interval = rng.randint(0, intervals - 2)
    elif f.kind.startswith(("raise_", "score_")) and rng.random() < 0.3:
        f.times = 2
    if f.kind == "kill_in_report":
        f.delay = rng.choice((0.0, 0.002, 0.005, 0.01, 0.02))


def _place_external(rng, f: Fault, lease: float) -> None:
    f.at = rng.uniform(0.05, 0.85)
    f.delay = rng.uniform(0.0, 1.0)
    kind = f.kind
    if kind == "stop_worker_random":
        f.duration = lease * rng.uniform(1.2, 2.5)
    elif kind == "sqlite_lock":
        f.duration = rng.uniform(0.5, 2.5 * lease)
    elif kind == "sqlite_lock_long":
        f.duration = 32.0
        f.at = rng.uniform(0.2, 0.6)
    elif kind == "sqlite_deleted":
        f.at, f.delay = rng.uniform(0.6, 0.8), 0.0  # it ends the run: after most other faults
    elif kind in NETNS:
        f.at = rng.uniform(0.05, 0.6)
        f.delay = rng.choice((0.0, 0.001, 0.003, 0.01))  # after the rename, before the cut
        f.duration = lease * rng.uniform(0.3, 0.8)
    elif kind in DISK:
        f.duration = lease * rng.uniform(0.3, 0.8)
    elif kind in ("sick_worker", "bad_device", "shared_dir"):
        f.at = rng.uniform(0.02, 0.4)
    elif kind == "foreign_file":
        f.at = 0.0 if rng.random() < 0.5 else rng.uniform(0.05, 0.7)  # before the run, or during
