"""Fault-injection campaign for popbt: nothing lost, nothing corrupted.

    .venv/bin/python chaos/campaign.py [--seed S] [--faults N] [--backends sqlite,postgresql]

A seeded plan of small runs of chaos/spec.py (population 4-6, 4-6 intervals, leases of 2-3 s),
each with many faults: SIGKILL of workers at random times and at chosen points (right after a
claim, mid-interval, between the checkpoint write and the result's commit, while the report
and its exploit commit), SIGKILL of ``popbt run`` (alone or with its workers) then the same
command again, SIGSTOP past the lease then SIGCONT, checkpoints truncated / bit-flipped /
deleted between intervals, a save that writes half a file then fails, user code raising in
every spec function, NaN / infinite / non-number scores, a member that keeps failing (also in
synchronous mode), the sqlite database locked by another process, a throwaway PostgreSQL
server restarted mid-run.

After each run: the experiment finished (within a time bound: a hang is a failure); every
(member, interval) result exists exactly once (a member the store gave up on counts as
failed, and is reported); every live checkpoint matches its sha256; every fault was reported
in one line (events table, ``popbt status``, or the worker's log). The plan (which faults,
where, when) is reproducible from the seed; the interleavings are the machine's.

Exit status 1 when a run did not complete, a result is missing or duplicated, a referenced
checkpoint is missing or corrupt, or a fault went unreported (other than a known failure).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pgcluster  # noqa: E402
import probe  # noqa: E402

from popbt import checkpoints  # noqa: E402
from popbt.store import open_store  # noqa: E402

SPEC = str(HERE / "spec.py")
PY = sys.executable
WORKERS = 2

# kind: (spec function, action, what it stands for)
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
    "pg_restart": "the PostgreSQL server restarted (pg_ctl restart -m fast)",
}
DESCRIPTION = {**{k: v[2] for k, v in IN_SPEC.items()}, **EXTERNAL}

# Known failures: popbt bugs outside the files this campaign may fix (see docs/reliability.md).
KNOWN = {
    "KF1": "worker.py Worker.train_one: SystemExit from user code kills the worker; no line says why",
    "KF2": "worker.py _plain/report: a NaN extra metric is invalid JSON for PostgreSQL; the worker dies (DataError)",
    "KF3": "sql.py SQLStore.claim: a lease taken over after a crash is not an attempt, so an interval that kills "
    "its worker is retried forever (never replaced or given up)",
    "KF4": "worker.py split_score: evaluate() returning the str '0.5' is accepted as a score",
    "KF6": "decide.py replace/_select: a checkpoint already marked corrupt is still chosen as the donor, "
    "so members replaced after failing copy it again until they are given up",
    "KF7": "decide.py replace: one exception from the spec's explore hook during a replacement gives "
    "the member up at once (no retry, no fallback to the default explore)",
    "KF5": "cli.py cmd_status: event lines wrap at 80 columns when stdout is not a terminal "
    "(one event, two lines; this campaign reads status with COLUMNS=1000)",
}
OBSERVED: set[str] = set()
KILLS = {
    "kill_after_claim",
    "kill_in_train",
    "kill_ckpt_written",
    "kill_in_report",
    "hang_then_kill",
    "poison_task",
    "kill_worker_random",
    "kill_run_and_workers",
}  # campaign-level known failures seen

LOCKER = r"""
import sqlite3, sys, time
db, seconds = sys.argv[1], float(sys.argv[2])
conn = sqlite3.connect(db, timeout=120, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(seconds)  # the fault itself: hold the lock this long
conn.execute("COMMIT")
"""

SUCCESS = re.compile(r"popbt\.worker member (\d+) interval (\d+): Q=")


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
    # what happened
    injected: bool = False
    tries: int = 0
    detail: str = ""
    pids: list = field(default_factory=list)
    expect_takeovers: list = field(default_factory=list)  # (member, interval, worker name)
    expect_corrupt: str | None = None
    reported: bool | None = None  # None: nothing to report (the fault did no harm)
    known: str | None = None
    note: str = ""

    def control(self) -> dict:
        at, do, _ = IN_SPEC[self.kind]
        entry = {
            "id": self.id,
            "at": at,
            "do": do,
            "member": self.member,
            "interval": self.interval,
            "times": self.times,
        }
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


# -- the plan ---------------------------------------------------------------------------------


def applicable(kind: str, backend: str, ckpt_db: bool) -> bool:
    if kind.startswith("sqlite_lock"):
        return backend == "sqlite"
    if kind == "pg_restart":
        return backend == "postgresql"
    if kind.startswith("ckpt_"):
        return not ckpt_db
    return True


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
}
ONCE_PER_RUN = {"failing_member", "poison_task", "sqlite_lock_long", "kill_run", "kill_run_and_workers"}
CAMPAIGN_CAP = {"poison_task": 2, "sqlite_lock_long": 2, "exit_train": 3, "metric_nan": 3, "score_numeric_string": 2}


def make_plan(seed: int, faults: int, backends: list[str]) -> list[RunPlan]:
    rng = random.Random(seed)
    everything = sorted(set(IN_SPEC) | set(EXTERNAL))
    must = {b: [k for k in everything if applicable(k, b, False)] for b in backends}
    for b in backends:
        rng.shuffle(must[b])
    used: Counter = Counter()
    runs: list[RunPlan] = []
    planned = 0
    # faults that can miss (a target interval that is never trained, a run that ends first) are
    # not counted; plan a margin and add runs later if fewer fired
    cover = faults >= 150  # a full campaign injects every kind of fault on every backend
    while planned < faults * 1.15 or cover and any(must[b] for b in backends):
        index = len(runs)
        backend = backends[index % len(backends)]
        population, intervals = rng.randint(4, 6), rng.randint(4, 6)
        sync = rng.random() < 0.3
        ckpt_db = backend == "postgresql" and rng.random() < 0.25
        lease = rng.choice((2.0, 2.5, 3.0))
        count = rng.randint(9, 13)
        kinds: list[str] = []
        while must[backend] and len(kinds) < count // 2:
            kind = must[backend].pop()
            if applicable(kind, backend, ckpt_db) and not (kind in ONCE_PER_RUN and kind in kinds):
                kinds.append(kind)
            else:
                must[backend].insert(0, kind)
                break
        pool = [k for k in WEIGHTS if applicable(k, backend, ckpt_db)]
        while len(kinds) < count:
            kind = rng.choices(pool, [WEIGHTS[k] for k in pool])[0]
            if kind in ONCE_PER_RUN and kind in kinds:
                continue
            if used[kind] + kinds.count(kind) >= CAMPAIGN_CAP.get(kind, 10**6):
                continue
            kinds.append(kind)
        if sync and "failing_member" not in kinds and rng.random() < 0.6:
            kinds.append("failing_member")
        for kind in kinds:
            used[kind] += 1
        run_faults = []
        for j, kind in enumerate(kinds):
            f = Fault(id=f"r{index:02d}f{j:02d}", kind=kind)
            if kind in IN_SPEC:
                at = IN_SPEC[kind][0]
                f.member = rng.randrange(population)
                low = 1 if at in ("load", "apply") else 0
                f.interval = rng.randint(low, intervals - 1)
                if at == "explore":
                    f.member = f.interval = None  # whichever report first decides an exploit
                if kind in ("failing_member", "poison_task"):
                    f.times = 0
                    f.interval = rng.randint(0, intervals - 2)
                elif kind.startswith(("raise_", "score_")) and rng.random() < 0.3:
                    f.times = 2
                if kind == "kill_in_report":
                    f.delay = rng.choice((0.0, 0.002, 0.005, 0.01, 0.02))
            else:
                f.at = rng.uniform(0.05, 0.85)
                f.delay = rng.uniform(0.0, 1.0)
                if kind == "stop_worker_random":
                    f.duration = lease * rng.uniform(1.2, 2.5)
                elif kind == "sqlite_lock":
                    f.duration = rng.uniform(0.5, 2.5 * lease)
                elif kind == "sqlite_lock_long":
                    f.duration = 32.0
                    f.at = rng.uniform(0.2, 0.6)
            run_faults.append(f)
        runs.append(
            RunPlan(
                index,
                backend,
                population,
                intervals,
                sync,
                lease,
                rng.randrange(10**6),
                "raise_explore" in kinds or rng.random() < 0.3,
                ckpt_db,
                run_faults,
            )
        )
        planned += len(run_faults)
    return runs


# -- one run ----------------------------------------------------------------------------------


class Run:
    def __init__(self, plan: RunPlan, root: Path, cluster: pgcluster.Cluster | None, say) -> None:
        self.plan, self.say = plan, say
        self.dir = root / f"run{plan.index:02d}-{plan.backend}"
        self.dir.mkdir(parents=True)
        self.ctl_dir = self.dir / "control"
        self.ctl_dir.mkdir()
        self.control = self.dir / "control.json"
        self.name = f"chaos{plan.index:02d}"
        self.cluster = cluster
        if plan.backend == "sqlite":
            self.url = f"sqlite:///{self.dir / 'popbt.db'}"
        else:
            self.url = cluster.create_database(self.name)
        self.logs = self.dir / "logs" / self.name
        self.env = {
            **os.environ,
            "CHAOS_CONTROL": str(self.control),
            "CHAOS_LEASE": str(plan.lease),
            "PYTHONUNBUFFERED": "1",
        }
        self.launchers: list[subprocess.Popen] = []
        self.extras: list[subprocess.Popen] = []
        self.lockers: list[tuple[Fault, subprocess.Popen]] = []
        self.seen: dict[int, probe.Proc] = {}
        self.frozen: dict[int, tuple[Fault, float | None]] = {}  # pid -> (fault, when to SIGCONT)
        self.stops: dict[str, tuple[int, int, int]] = {}  # fault id -> (pid, member, interval)
        self.handled: set[str] = set()
        self.lifted: set[str] = set()
        self.replacements = 0
        self.launches = 0
        self.incidents: list[str] = []
        self.compensated: set[int] = set()  # workers killed with their launcher: it is run again
        self.db = probe.DB(self.url)
        self.budget = 150 + 40 * sum(f.kind == "sqlite_lock_long" for f in plan.faults)
        self.hung = False
        self.elapsed = 0.0
        self.results: dict = {}
        self.launcher_note = ""

    # -- processes

    def launcher_cmd(self) -> list[str]:
        p = self.plan
        cmd = [
            PY,
            "-m",
            "popbt",
            "run",
            SPEC,
            "--name",
            self.name,
            "--population",
            str(p.population),
            "--intervals",
            str(p.intervals),
            "--seed",
            str(p.seed),
            "--workers",
            str(WORKERS),
            "--storage",
            self.url,
            "--dir",
            str(self.dir),
        ]
        if p.sync:
            cmd.append("--sync")
        if p.ckpt_db:
            cmd += ["--checkpoints", "db"]
        return cmd

    def launch(self) -> None:
        n = self.launches = self.launches + 1
        out = open(self.dir / f"launcher-{n}.out", "w")
        err = open(self.dir / f"launcher-{n}.err", "w")
        self.launchers.append(
            subprocess.Popen(
                self.launcher_cmd(),
                env=self.env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    def add_worker(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        n = len(self.extras)
        out = open(self.logs / f"extra-{n}.log", "w")
        cmd = [
            PY,
            "-m",
            "popbt",
            "worker",
            SPEC,
            "--experiment",
            self.name,
            "--storage",
            self.url,
            "--dir",
            str(self.dir),
        ]
        self.extras.append(
            subprocess.Popen(
                cmd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    def reap(self) -> None:
        for p in self.launchers + self.extras + [lp for _, lp in self.lockers]:
            p.poll()

    def workers(self) -> list[probe.Proc]:
        return [p for p in probe.processes(self.dir) if p.role == "worker"]

    def write_control(self) -> None:
        faults = [f.control() for f in self.plan.faults if f.kind in IN_SPEC and f.id not in self.lifted]
        data = {
            "dir": str(self.ctl_dir),
            "step_seconds": 0.04,
            "faults": faults,
            "explore_hook": self.plan.explore_hook,
        }
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.control)

    def fired(self, fault: Fault) -> list[tuple[int, int, int]]:
        """(pid, member, interval) of each firing of an in-spec fault."""
        out = []
        for path in sorted(self.ctl_dir.glob(f"fired-{fault.id}-*")):
            try:
                pid, member, interval = map(int, path.read_text().split())
            except ValueError:
                continue  # being written
            out.append((pid, member, interval))
        return out

    def running_of(self, exp_id: int, name: str) -> list[tuple[int, int, str]]:
        return [
            (r.member, r.interval, name) for r in self.db.tasks(exp_id) if r.state == "running" and r.worker == name
        ]

    # -- the loop

    def execute(self) -> None:
        began = time.monotonic()
        self.write_control()
        self.launch()
        external = sorted((f for f in self.plan.faults if f.kind in EXTERNAL), key=lambda f: f.at)
        due: list[tuple[float, Fault]] = []
        total = self.plan.population * self.plan.intervals
        exp_id = None
        while True:
            if time.monotonic() - began > self.budget:
                self.hung = True
                self.incidents.append(f"did not finish within {self.budget} s (a hang)")
                break
            self.reap()
            exp = self.db.experiment(self.name)
            if exp is None:
                if not any(p.poll() is None for p in self.launchers):
                    self.incidents.append("popbt run exited before creating the experiment")
                    self.launch()
                time.sleep(0.05)
                continue
            exp_id = exp.id
            if exp.status == "finished":
                break
            done = self.db.done(exp_id)
            self.watch_workers(exp_id)
            self.watch_in_spec(exp_id)
            self.watch_frozen(exp_id)
            while external and done >= external[0].at * total:
                f = external.pop(0)
                due.append((time.monotonic() + f.delay, f))
            for item in [d for d in due if d[0] <= time.monotonic()]:
                due.remove(item)
                if not self.inject(item[1], exp_id):
                    due.append((time.monotonic() + 0.2, item[1]))  # no candidate yet: try again
            self.ensure_someone(exp_id)
            time.sleep(0.05)
        self.elapsed = time.monotonic() - began
        self.wind_down()
        if exp_id is not None:
            self.check(exp_id)

    def watch_workers(self, exp_id: int) -> None:
        """A worker that died while work remains is replaced, as a scheduler would requeue it."""
        now = {p.pid: p for p in self.workers()}
        long_lock = any(f.kind == "sqlite_lock_long" and lp.poll() is None for f, lp in self.lockers)
        for pid in list(self.seen):
            if pid not in now:
                del self.seen[pid]
                if pid not in self.compensated and not long_lock and self.replacements < 40:
                    self.replacements += 1
                    self.add_worker()
        self.seen.update(now)

    def ensure_someone(self, exp_id: int) -> None:
        """Nothing of this run alive while work remains (e.g. every worker died during a long
        lock): run the same command again, as a user would."""
        if any(p.poll() is None for p in self.launchers + self.extras):
            return
        if self.workers():
            return
        if any(lp.poll() is None for _, lp in self.lockers):
            return  # wait for the lock to go first
        self.launch()

    def watch_in_spec(self, exp_id: int) -> None:
        for f in self.plan.faults:
            if f.kind not in IN_SPEC or f.id in self.handled:
                continue
            firings = self.fired(f)
            if not firings:
                continue
            if f.kind == "hang_then_kill":
                pid, m, k = firings[0]
                f.expect_takeovers = [(m, k, f"{probe.HOST}:{pid}")]
                probe.kill(pid)
                (self.ctl_dir / f"release-{f.id}").touch()
                f.pids, f.injected, f.detail = [pid], True, f"member {m} interval {k}"
                self.handled.add(f.id)
            elif f.kind == "stop_past_lease":
                pid, m, k = firings[0]
                os.kill(pid, signal.SIGSTOP)
                # bounded: a worker frozen inside a transaction (its heartbeat's) holds locks that
                # keep anyone from taking its task over until it thaws
                self.frozen[pid] = (f, time.monotonic() + 8 * self.plan.lease + 10)
                self.stops[f.id] = (pid, m, k)
                f.pids, f.injected, f.detail = [pid], True, f"member {m} interval {k}"
                self.add_worker()  # someone must be there to take the lease over
                self.handled.add(f.id)
            elif f.kind == "poison_task":
                pid, m, k = firings[0]
                f.injected, f.detail = True, f"member {m} interval {k}"
                events = self.db.events(exp_id)
                takeovers = [e for e in events if e.kind == "lease_expired" and (e.member, e.interval) == (m, k)]
                # popbt counting a crash as a failed attempt would say so on (m, k), naming the lease
                bounded = [
                    e
                    for e in events
                    if e.kind in ("failure", "gave_up")
                    and (e.member, e.interval) == (m, k)
                    and ("lease" in e.message or "died" in e.message or "crash" in e.message)
                ]
                if bounded:
                    f.reported, f.note = True, "the crashes counted as attempts"
                    self.handled.add(f.id)
                elif len(takeovers) >= 3:
                    tasks = {(r.member, r.interval): r for r in self.db.tasks(exp_id)}
                    f.known, f.reported = "KF3", False
                    f.note = (
                        f"{len(takeovers)} workers killed, attempts still "
                        f"{tasks[(m, k)].attempts}: lifted so the run can end"
                    )
                    self.lifted.add(f.id)
                    self.write_control()
                    self.handled.add(f.id)

    def watch_frozen(self, exp_id: int) -> None:
        for pid, (f, until) in list(self.frozen.items()):
            if f.kind == "stop_past_lease":
                _, m, k = self.stops[f.id]
                name = f"{probe.HOST}:{pid}"
                taken = any(
                    e.kind == "lease_expired" and (e.member, e.interval) == (m, k) and name in e.message
                    for e in self.db.events(exp_id)
                )
                if taken or time.monotonic() >= until:
                    if not taken:
                        f.note = "nobody took the lease over while it was frozen (it held a database lock?)"
                    probe.signal_all([pid], signal.SIGCONT)
                    (self.ctl_dir / f"release-{f.id}").touch()
                    del self.frozen[pid]
            elif until is not None and time.monotonic() >= until:
                probe.signal_all([pid], signal.SIGCONT)
                del self.frozen[pid]

    # -- external faults

    def inject(self, f: Fault, exp_id: int) -> bool:
        """Inject one external fault; False when it has no target yet (try again shortly)."""
        kind = f.kind
        workers = [p for p in self.workers() if p.pid not in self.frozen and p.state != "T"]
        if kind == "kill_worker_random":
            if not workers:
                return False
            busy = {r.worker for r in self.db.tasks(exp_id) if r.state == "running"}
            holding = [w for w in workers if w.name in busy]
            f.tries += 1
            if not holding and f.tries < 15:
                return False  # rather a worker mid-interval (idle ones are killed too, now and then)
            victim = random.Random(f.id).choice(holding or workers)
            probe.kill(victim.pid)
            f.expect_takeovers = self.running_of(exp_id, victim.name)
            f.pids, f.injected = [victim.pid], True
            f.detail = f"held {[(m, k) for m, k, _ in f.expect_takeovers]}"
        elif kind == "stop_worker_random":
            if not workers:
                return False
            victim = random.Random(f.id).choice(workers)
            os.kill(victim.pid, signal.SIGSTOP)
            self.frozen[victim.pid] = (f, time.monotonic() + f.duration)
            f.pids, f.injected, f.detail = [victim.pid], True, f"for {f.duration:.1f} s"
        elif kind in ("kill_run", "kill_run_and_workers"):
            live = [p for p in self.launchers if p.poll() is None]
            if not live:
                return False
            target = live[-1]
            if kind == "kill_run_and_workers" and any(_pgid(pid) == target.pid for pid in self.frozen):
                return False  # not while one of its workers is frozen for another fault: later
            if kind == "kill_run":
                target.kill()
                f.pids = [target.pid]
            else:
                group = [p for p in probe.processes(self.dir) if _pgid(p.pid) == target.pid]
                os.killpg(target.pid, signal.SIGKILL)
                f.pids = [p.pid for p in group]
                for p in group:
                    if p.role == "worker":
                        f.expect_takeovers += self.running_of(exp_id, p.name)
            target.wait()
            self.compensated.update(f.pids)
            f.injected = True
            f.detail = f"{len(f.pids)} processes"
            self.launch()  # the same command again
        elif kind.startswith("ckpt_"):
            return self.damage(f, exp_id)
        elif kind in ("sqlite_lock", "sqlite_lock_long"):
            if self.frozen:
                return False  # a frozen worker may hold the write lock: the locker would wait on it
            db = self.url[len("sqlite:///") :]
            locker = subprocess.Popen([PY, "-c", LOCKER, db, str(f.duration)], stdout=subprocess.PIPE, text=True)
            line = locker.stdout.readline()  # waits until the lock is held
            if line.strip() != "locked":
                self.incidents.append(f"{f.id}: the locker did not get the lock")
                return True
            self.lockers.append((f, locker))
            f.injected, f.detail = True, f"for {f.duration:.1f} s"
        elif kind == "pg_restart":
            took = self.cluster.restart()
            f.injected, f.detail = True, f"down and up in {took:.2f} s"
        return True

    def damage(self, f: Fault, exp_id: int) -> bool:
        """Freeze the workers, damage the start checkpoint of a pending task, thaw them: the
        damage happens between intervals, and nobody can load the file while it happens."""
        ours = [p.pid for p in self.workers() if p.pid not in self.frozen and p.state != "T"]
        probe.signal_all(ours, signal.SIGSTOP)
        try:
            ckpts = {c.id: c for c in self.db.checkpoints(exp_id)}
            candidates = sorted(
                {
                    ckpts[t.start_checkpoint_id].path
                    for t in self.db.tasks(exp_id)
                    if t.state == "pending"
                    and t.start_checkpoint_id in ckpts
                    and ckpts[t.start_checkpoint_id].state == "live"
                    and os.path.isfile(ckpts[t.start_checkpoint_id].path)
                }
            )
            if not candidates:
                return False
            rng = random.Random(f.id)
            path = rng.choice(candidates)
            size = os.path.getsize(path)
            if f.kind == "ckpt_delete":
                os.unlink(path)
            elif f.kind == "ckpt_truncate":
                os.truncate(path, rng.randrange(size))
            else:
                with open(path, "r+b") as fh:
                    where = rng.randrange(size)
                    fh.seek(where)
                    byte = fh.read(1)[0]
                    fh.seek(where)
                    fh.write(bytes([byte ^ (1 << rng.randrange(8))]))
            f.expect_corrupt, f.injected, f.detail = path, True, os.path.basename(path)
            return True
        finally:
            probe.signal_all(ours, signal.SIGCONT)

    # -- the end

    def wind_down(self) -> None:
        for pid in list(self.frozen):
            probe.signal_all([pid], signal.SIGCONT)
        self.frozen.clear()
        for f in self.plan.faults:
            (self.ctl_dir / f"release-{f.id}").touch()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.reap()
            if not probe.processes(self.dir) and all(lp.poll() is not None for _, lp in self.lockers):
                break
            time.sleep(0.1)
        else:
            left = probe.processes(self.dir)
            self.incidents.append(
                f"{len(left)} popbt processes still running 60 s after the end: "
                f"{[(p.pid, p.role, p.state) for p in left]}"
            )
            for p in left:
                probe.kill(p.pid)
        for _, lp in self.lockers:
            lp.kill()
            lp.wait()
        for p in self.launchers + self.extras:
            p.wait()

    def judge_launcher(self) -> None:
        last = self.launchers[-1]
        if last.returncode != 0 and not self.hung:
            said = _last_line(self.dir / f"launcher-{self.launches}.err")
            codes = re.search(r"all workers exited \(codes \[([^\]]*)\]\)", said)
            # its own workers died of our faults while replacements (started by this campaign,
            # as a scheduler requeues jobs) went on: a kill is -9, sys.exit(3) is KF1, a
            # DataError is KF2 (exit 1), a database locked past the lease is 2
            explained = {-9}
            kinds = {f.kind for f in self.plan.faults if f.injected}
            explained |= {3} if "exit_train" in kinds else set()
            explained |= {1} if any(f.known == "KF2" for f in self.plan.faults) else set()
            explained |= {2} if "sqlite_lock_long" in kinds else set()
            if not codes or not {int(c) for c in codes.group(1).split(",")} <= explained:
                self.incidents.append(f"the last popbt run exited {last.returncode}: {said}")
            else:
                self.launcher_note = said

    def check(self, exp_id: int) -> None:
        p = self.plan
        store = open_store(self.url)
        try:
            exp = store.experiment(self.name)
            rows = store.history(exp.id)
            events = store.events(exp.id, limit=10**6)
            live = store.live_checkpoints(exp.id)
            live_ok = {}
            for c in live:
                try:
                    if exp.checkpoints_in_db:
                        ok = hashlib.sha256(store.checkpoint_data(c)).hexdigest() == c.sha256
                    else:
                        checkpoints.verify(c.path, c.sha256)
                        ok = True
                except Exception:
                    ok = False
                live_ok[c.path] = ok
        finally:
            store.close()
        by_key = defaultdict(list)
        for r in rows:
            by_key[(r.member, r.interval)].append(r)
        missing, failed, gave_up = [], [], []
        for m in range(p.population):
            stop = min(
                (k for (mm, k), rs in by_key.items() if mm == m and any(r.state == "failed" for r in rs)), default=None
            )
            if stop is not None:
                gave_up.append((m, stop))
            for k in range(p.intervals):
                if stop is not None and k >= stop:
                    failed.append((m, k))
                elif not any(r.state == "done" for r in by_key.get((m, k), [])):
                    missing.append((m, k))
        dup = [key for key, rs in by_key.items() if sum(r.state == "done" for r in rs) > 1]
        per_key = Counter((c.member, c.interval) for c in self.db.checkpoints(exp_id))
        dup += [key for key, n in per_key.items() if n > 1 and key not in dup]
        logged = Counter()
        for log in self.logs.glob("*.log"):
            for line in log.read_text(errors="replace").splitlines():
                if m_ := SUCCESS.search(line):
                    logged[(int(m_.group(1)), int(m_.group(2)))] += 1
        dup += [key for key, n in logged.items() if n > 1 and key not in dup]
        corrupt = [path for path, ok in live_ok.items() if not ok]
        finals = [r for r in rows if r.interval == p.intervals - 1 and r.state == "done"]
        corrupt += [
            f"final result of member {r.member} has no live checkpoint ({r.checkpoint})"
            for r in finals
            if r.checkpoint not in live_ok
        ]
        multiline = [e for e in events if "\n" in e.message]
        if multiline:
            self.incidents.append(f"{len(multiline)} events span several lines")
        # COLUMNS: `popbt status` wraps its event lines at 80 columns when not on a terminal (KF5)
        status = subprocess.run(
            [PY, "-m", "popbt", "status", "--experiment", self.name, "--storage", self.url],
            capture_output=True,
            text=True,
            env={**self.env, "COLUMNS": "1000"},
            timeout=120,
        )
        (self.dir / "status.txt").write_text(status.stdout + status.stderr)
        if status.returncode != 0:
            self.incidents.append(f"popbt status exited {status.returncode}: {status.stderr.strip()[:200]}")
        if "KF5" not in OBSERVED and events:
            plain = subprocess.run(
                [PY, "-m", "popbt", "status", "--experiment", self.name, "--storage", self.url],
                capture_output=True,
                text=True,
                env={k: v for k, v in self.env.items() if k != "COLUMNS"},
                timeout=120,
            )
            e = events[-1]
            line = f"{e.kind}: member {e.member} interval {e.interval}: {e.message}"
            if (
                not any(line in shown_line for shown_line in plain.stdout.splitlines())
                and len(f"  {e.kind}: member {e.member} interval {e.interval}: {e.message}") > 80
            ):
                OBSERVED.add("KF5")
        shown = status.stdout.splitlines()
        for e in events[-10:]:
            if not any(f"{e.kind}: member {e.member} interval {e.interval}: {e.message}" in line for line in shown):
                self.incidents.append(f"popbt status does not show the event {e.kind!r} in one line")
                break
        gave_up_reported = all(any(e.kind == "gave_up" and e.member == m for e in events) for m, _ in gave_up)
        if not gave_up_reported:
            self.incidents.append(f"members given up without a gave_up event: {gave_up}")
        collateral = self.explain_gave_up(gave_up, events)
        self.judge(events, rows, live_ok)
        self.judge_launcher()
        (self.dir / "faults.json").write_text(
            json.dumps([{k: v for k, v in vars(f).items()} for f in self.plan.faults], indent=1, default=str)
        )
        orphans = []
        ckdir = self.dir / "checkpoints" / self.name
        if ckdir.is_dir():
            orphans = [x for x in ckdir.iterdir() if str(x) not in live_ok]
        self.results = dict(
            completed=exp.status == "finished" and not self.hung,
            missing=missing,
            failed=failed,
            gave_up=gave_up,
            duplicated=dup,
            corrupt=corrupt,
            orphans=len(orphans),
            events=len(events),
            collateral=collateral,
        )

    def explain_gave_up(self, gave_up, events) -> int:
        """Every member given up must be explained by a fault: one that keeps failing on
        purpose, or (KF6) a damaged checkpoint that replacements keep copying."""
        collateral = 0
        damaged = {f.expect_corrupt: f for f in self.plan.faults if f.kind.startswith("ckpt_") and f.expect_corrupt}
        for m, k in gave_up:
            if any(
                f.kind in ("failing_member", "poison_task") and (f.member, f.interval) == (m, k)
                for f in self.plan.faults
            ):
                continue
            fails = [e.message for e in events if e.kind == "failure" and (e.member, e.interval) == (m, k)]
            culprits = {path for msg in fails for path in damaged if path in msg}
            why = [e.message for e in events if e.kind == "gave_up" and e.member == m]
            hooks = [f for f in self.plan.faults if f.kind == "raise_explore" and self.fired(f)]
            if hooks and any("explore hook failed" in w for w in why):
                for f in hooks:
                    f.known = "KF7"
                    f.note += f"member {m} given up at interval {k} on one explore error; "
            elif culprits:
                collateral += 1
                for path in culprits:
                    f = damaged[path]
                    f.known = "KF6"
                    f.note += f"member {m} given up at interval {k}, copying it again and again; "
            else:
                last = fails[-1] if fails else "no failure recorded"
                self.incidents.append(f"member {m} given up at interval {k} for no injected reason: {last}")
        return collateral

    def judge(self, events, rows, live_ok) -> None:
        """Was each fault reported in one line (events, status, or the worker's log)?"""
        logs = "\n".join(x.read_text(errors="replace") for x in self.logs.glob("*.log")) if self.logs.is_dir() else ""
        done_by = {(r.member, r.interval): r for r in rows}

        def event(kind, m=None, k=None, text=None):
            return any(
                e.kind == kind
                and (m is None or e.member == m)
                and (k is None or e.interval == k)
                and (text is None or text in e.message)
                for e in events
            )

        def taken_over(expect):
            return all(event("lease_expired", m, k, f"lease of {name} expired") for m, k, name in expect)

        killed = {pid for g in self.plan.faults if g.kind in KILLS and g.kind not in IN_SPEC for pid in g.pids}
        killed |= {x[0] for g in self.plan.faults if g.kind in KILLS and g.kind in IN_SPEC for x in self.fired(g)}

        for f in self.plan.faults:
            if f.kind in IN_SPEC and f.kind not in ("hang_then_kill", "stop_past_lease", "poison_task"):
                firings = self.fired(f)
                if not firings:
                    continue
                f.injected = True
                pid, m, k = firings[0]
                f.pids = sorted({x[0] for x in firings})
                f.detail = f"member {m} interval {k}, fired {len(firings)}x"
                name = f"{probe.HOST}:{pid}"
                if f.kind.startswith("raise_") and f.kind != "raise_explore" or f.kind == "save_half_oserror":
                    f.reported = event("failure", m, k, f"chaos {f.id}")
                elif f.kind == "raise_explore":
                    f.reported = event("failure", text=f"raised RuntimeError: chaos {f.id}")
                elif f.kind in ("score_nan", "score_inf"):  # the worst score, not a failure
                    f.reported = event("nonfinite", m, k, "evaluate() returned")
                elif f.kind in ("score_string", "score_none", "score_nometric"):
                    f.reported = event("failure", m, k, "evaluate() returned")
                elif f.kind == "score_numeric_string":
                    f.reported = event("failure", m, k, "evaluate() returned")
                    if not f.reported:
                        f.known = "KF4"
                elif f.kind == "metric_nan":
                    if event("lease_expired", m, k, f"lease of {name} expired") and pid not in killed:
                        # the worker died of it
                        f.reported, f.known = False, "KF2"
                        f.note = "worker died: " + ("DataError, invalid JSON" if "type json" in logs else "?")
                    else:
                        f.reported = None
                elif f.kind == "exit_train":
                    f.reported = event("failure", m, k, "SystemExit")
                    if not f.reported:
                        f.known, f.note = "KF1", "the worker vanished; only the takeover is in the events"
                elif f.kind == "failing_member":
                    f.reported = event("failure", m, None, f"chaos {f.id}") and (
                        event("replaced", m) or event("gave_up", m)
                    )
                elif f.kind in ("kill_after_claim", "kill_in_train", "kill_ckpt_written"):
                    f.expect_takeovers = [(m, k, name)]
                    f.reported = taken_over(f.expect_takeovers)
                elif f.kind == "kill_in_report":
                    row = done_by.get((m, k))
                    if row is not None and row.worker == name and row.state == "done":
                        f.note = "killed after the commit: its result stands"
                        f.reported = (
                            None if row.checkpoint in live_ok or row.interval < self.plan.intervals - 1 else False
                        )
                    else:
                        f.note = "killed before the commit"
                        f.reported = taken_over([(m, k, name)])
                if (
                    f.reported is False
                    and not f.known
                    and all(p in killed and taken_over([(mm, kk, f"{probe.HOST}:{p}")]) for p, mm, kk in firings)
                ):
                    f.reported = None  # not popbt's to report: we killed its worker before it could
                    f.note = "its worker was SIGKILLed by another fault before it could report"
            elif f.kind == "hang_then_kill" and f.injected:
                f.reported = taken_over(f.expect_takeovers)
            elif f.kind == "stop_past_lease" and f.injected:
                pid, m, k = self.stops[f.id]
                name = f"{probe.HOST}:{pid}"
                refused = f"member {m} interval {k}: lease was taken over by another worker; result discarded" in logs
                carried_on = f"worker {name} done:" in logs or (refused and pid in killed)
                f.reported = taken_over([(m, k, name)]) and refused
                f.note = ("late result refused" if refused else "late result NOT refused") + (
                    ", the worker carried on and exited cleanly" if carried_on else ", the worker did not finish"
                )
                if not refused and pid in killed:  # another fault killed it before it could say anything
                    f.reported = taken_over([(m, k, name)])
                    f.note, carried_on = "taken over; SIGKILLed by a later fault soon after SIGCONT", True
                if not carried_on:
                    self.incidents.append(f"{f.id}: the stopped worker {name} did not carry on to a clean exit")
            elif f.kind in ("kill_worker_random", "kill_run_and_workers") and f.injected:
                f.reported = taken_over(f.expect_takeovers) if f.expect_takeovers else None
            elif f.kind == "kill_run" and f.injected:
                f.reported = None
            elif f.kind.startswith("ckpt_") and f.injected:
                f.reported = event("corrupt_checkpoint", text=f.expect_corrupt)
                if not f.reported and f.expect_corrupt not in live_ok:
                    f.reported, f.note = None, "never loaded again (its task was replaced first)"
            elif f.kind == "sqlite_lock_long" and f.injected:
                f.reported = "stops taking work: the database was unreachable" in logs
            elif f.kind in ("sqlite_lock", "stop_worker_random", "pg_restart") and f.injected:
                f.reported = None  # no harm to report; the checks above say whether any was done


def _pgid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return None


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


# -- the campaign -----------------------------------------------------------------------------


def table(headers: list[str], rows: list[list]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def summarize(runs: list[Run], seed: int, minutes: float) -> tuple[str, bool]:
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for run in runs:
        for f in run.plan.faults:
            c = by_kind[f.kind]
            if not f.injected:
                c["missed"] += 1
                continue
            c["injected"] += 1
            c[run.plan.backend] += 1
            if f.known:
                c["known"] += 1
            elif f.reported is True:
                c["reported"] += 1
            elif f.reported is None:
                c["no harm"] += 1
            else:
                c["unreported"] += 1
    rows = []
    for kind in sorted(by_kind, key=lambda k: (k not in IN_SPEC, k)):
        c = by_kind[kind]
        rows.append(
            [
                kind,
                DESCRIPTION[kind],
                c["injected"],
                c["sqlite"],
                c["postgresql"],
                c["reported"],
                c["no harm"],
                c["known"],
                c["unreported"],
            ]
        )
    total = Counter()
    for c in by_kind.values():
        total.update(c)
    rows.append(
        [
            "**total**",
            "",
            total["injected"],
            total["sqlite"],
            total["postgresql"],
            total["reported"],
            total["no harm"],
            total["known"],
            total["unreported"],
        ]
    )
    faults = table(
        ["fault", "what", "injected", "sqlite", "postgresql", "reported", "no harm", "known failure", "unreported"],
        rows,
    )
    completed = sum(r.results.get("completed", False) for r in runs)
    missing = sum(len(r.results.get("missing", [])) for r in runs)
    dup = sum(len(r.results.get("duplicated", [])) for r in runs)
    corrupt = sum(len(r.results.get("corrupt", [])) for r in runs)
    failed = sum(len(r.results.get("failed", [])) for r in runs)
    gave_up = sum(len(r.results.get("gave_up", [])) for r in runs)
    incidents = sum(len(r.incidents) for r in runs)
    intervals = sum(r.plan.population * r.plan.intervals for r in runs)
    totals = table(
        ["check", "value"],
        [
            ["runs completed", f"{completed}/{len(runs)}"],
            ["(member, interval) results checked", intervals],
            ["results missing", missing],
            ["results duplicated", dup],
            ["corrupt or missing checkpoints referenced", corrupt],
            ["intervals failed (member given up, reported)", f"{failed} ({gave_up} members)"],
            [
                "members given up for copying a damaged checkpoint (KF6)",
                sum(r.results.get("collateral", 0) for r in runs),
            ],
            ["faults unreported (not a known failure)", total["unreported"]],
            ["other incidents", incidents],
            ["popbt run relaunched after its kill / by the campaign", sum(r.launches - 1 for r in runs)],
            ["workers replaced after dying", sum(r.replacements for r in runs)],
            ["orphan checkpoint files left (not referenced)", sum(r.results.get("orphans", 0) for r in runs)],
        ],
    )
    ok = (
        completed == len(runs)
        and missing == 0
        and dup == 0
        and corrupt == 0
        and total["unreported"] == 0
        and incidents == 0
    )
    known = sorted({f.known for r in runs for f in r.plan.faults if f.known and f.injected} | OBSERVED)
    text = [
        f"## popbt chaos campaign: seed {seed}, {total['injected']} faults, {len(runs)} runs, {minutes:.1f} min",
        "",
        faults,
        "",
        totals,
    ]
    if known:
        text += ["", "Known failures observed (bugs outside chaos/, launch.py and checkpoints.py):"]
        text += [f"- {k}: {KNOWN[k]}" for k in known]
    text += ["", "verdict: " + ("PASS: nothing lost, nothing corrupted" if ok else "FAIL")]
    return "\n".join(text), ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--faults", type=int, default=200, help="faults to inject, at least (default 200)")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--workdir", help="keep every run's files here (default: a temporary directory, removed)")
    ap.add_argument("--only", type=int, nargs="*", help="run only these runs of the plan (for debugging)")
    ap.add_argument("--port", type=int, default=54331, help="port of the throwaway PostgreSQL cluster")
    args = ap.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ("sqlite", "postgresql"):
            ap.error(f"unknown backend {b!r}")
    cluster = None
    if "postgresql" in backends:
        why = pgcluster.why_not()
        if why:
            print(f"chaos: cannot start a throwaway PostgreSQL cluster ({why}); sqlite only", file=sys.stderr)
            backends = [b for b in backends if b != "postgresql"] or ["sqlite"]
    root = Path(args.workdir or tempfile.mkdtemp(prefix="popbt-chaos-")).absolute()
    root.mkdir(parents=True, exist_ok=True)
    plan = make_plan(args.seed, args.faults, backends)
    if args.only is not None:
        plan = [p for p in plan if p.index in args.only]
    say = lambda text: print(text, flush=True)  # noqa: E731
    say(
        f"chaos: seed {args.seed}, {len(plan)} runs planned with {sum(len(p.faults) for p in plan)} faults, "
        f"backends {','.join(backends)}; files in {root}"
    )
    began = time.monotonic()
    runs: list[Run] = []
    try:
        if "postgresql" in backends:
            cluster = pgcluster.Cluster(args.port).start()
        queue = list(plan)
        extra_index = max((p.index for p in plan), default=-1) + 1
        while queue:
            p = queue.pop(0)
            run = Run(p, root, cluster if p.backend == "postgresql" else None, say)
            runs.append(run)
            try:
                run.execute()
            finally:
                run.db.close()
            fired = sum(f.injected for f in p.faults)
            r = run.results
            say(
                f"{p.label}: {fired}/{len(p.faults)} faults injected, "
                f"{'completed' if r.get('completed') else 'NOT COMPLETED'} in {run.elapsed:.0f} s; "
                f"missing {len(r.get('missing', []))}, duplicated {len(r.get('duplicated', []))}, "
                f"corrupt {len(r.get('corrupt', []))}, failed {len(r.get('failed', []))}"
                + "".join(f"\n    ! {i}" for i in run.incidents)
                + "".join(
                    f"\n    ! {f.id} {f.kind} ({f.detail}) unreported {f.note}"
                    for f in p.faults
                    if f.injected and f.reported is False and not f.known
                )
            )
            if not queue and args.only is None:
                injected = sum(f.injected for r_ in runs for f in r_.plan.faults)
                if injected < args.faults:  # some planned faults missed their target: plan more
                    more = make_plan(args.seed + extra_index, args.faults - injected, backends)
                    for q in more:
                        q.index = extra_index
                        for f in q.faults:
                            f.id = f"r{extra_index:02d}" + f.id[3:]
                        extra_index += 1
                        queue.append(q)
                        break
    finally:
        if cluster is not None:
            cluster.stop()
    text, ok = summarize(runs, args.seed, (time.monotonic() - began) / 60)
    say("")
    say(text)
    if args.workdir is None and ok:
        shutil.rmtree(root, ignore_errors=True)
    elif not ok:
        say(f"\nrun files kept in {root}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
