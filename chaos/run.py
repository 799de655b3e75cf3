"""Carry out one planned run: start popbt, inject its faults, and collect a plain record of
what happened (rows, events, logs, checkpoint hashes, file listings, exit statuses) for
chaos/verdict.py. Nothing here judges; what the driver itself saw go wrong goes in the
record's ``driver`` lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pgcluster
import probe
from plan import DISK, IN_SPEC, NETNS, Fault, RunPlan

from popbt import checkpoints
from popbt.store import open_store

HERE = Path(__file__).resolve().parent
SPEC = str(HERE / "spec.py")
PY = sys.executable
WORKERS = 2
MAX_REPLACEMENTS = 40
FAKE_UID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # another experiment's, for a foreign file's name
FILLER = "chaos-filler"

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


def sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


class Link:
    """A network namespace joined to this one by a veth pair: a worker in it reaches the
    throwaway PostgreSQL cluster only through the link, which its spec can cut from inside."""

    NS, ROOT_DEV, HOST_DEV = "popbt-chaos", "pbchaos-root", "pbchaos-host"
    ROOT_IP, HOST_IP = "10.232.7.1", "10.232.7.2"

    @staticmethod
    def why_not() -> str | None:
        if os.geteuid() != 0:
            return "network namespaces need root"
        if not shutil.which("ip"):
            return "network namespaces need iproute2's ip command, which is not installed"
        return None

    def create(self) -> Link:
        self.remove()
        steps = [
            ("ip", "netns", "add", self.NS),
            ("ip", "link", "add", self.ROOT_DEV, "type", "veth", "peer", "name", self.HOST_DEV),
            ("ip", "link", "set", self.HOST_DEV, "netns", self.NS),
            ("ip", "addr", "add", f"{self.ROOT_IP}/24", "dev", self.ROOT_DEV),
            ("ip", "link", "set", self.ROOT_DEV, "up"),
            ("ip", "netns", "exec", self.NS, "ip", "addr", "add", f"{self.HOST_IP}/24", "dev", self.HOST_DEV),
            ("ip", "netns", "exec", self.NS, "ip", "link", "set", self.HOST_DEV, "up"),
            ("ip", "netns", "exec", self.NS, "ip", "link", "set", "lo", "up"),
        ]
        for step in steps:
            done = sh(*step)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(step)}: {done.stderr.strip()}")
        return self

    def restore(self) -> None:
        sh("ip", "netns", "exec", self.NS, "ip", "link", "set", self.HOST_DEV, "up")

    def remove(self) -> None:
        sh("ip", "link", "del", self.ROOT_DEV)
        sh("ip", "netns", "del", self.NS)

    def command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.NS, *args]


def sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class Run:
    def __init__(self, plan: RunPlan, root: Path, cluster: pgcluster.Cluster | None, link: Link | None) -> None:
        self.plan = plan
        self.root = root
        self.dir = root / f"run{plan.index:02d}-{plan.backend}"
        self.dir.mkdir(parents=True)
        self.ctl_dir = self.dir / "control"
        self.ctl_dir.mkdir()
        self.control = self.dir / "control.json"
        self.name = f"chaos{plan.index:02d}"
        self.cluster, self.link = cluster, link
        if plan.backend == "sqlite":
            self.db_path = self.dir / "popbt.db"
            self.url = f"sqlite:///{self.db_path}"
        else:
            self.db_path = None
            self.url = cluster.create_database(self.name)
        self.ckdir = self.dir / "checkpoints" / self.name
        self.logs = self.dir / "logs" / self.name
        self.env = {
            **os.environ,
            "CHAOS_CONTROL": str(self.control),
            "CHAOS_LEASE": str(plan.lease),
            "PYTHONUNBUFFERED": "1",
        }
        self.launchers: list[subprocess.Popen] = []
        self.killed_launchers: set[int] = set()
        self.extras: list[dict] = []  # {proc, log, role, fault}
        self.special: set[int] = set()  # pids of workers started for a fault: never replaced or picked
        self.lockers: list[tuple[Fault, subprocess.Popen]] = []
        self.seen: dict[int, probe.Proc] = {}
        self.frozen: dict[int, tuple[Fault, float | None]] = {}  # pid -> (fault, when to SIGCONT)
        self.handled: set[str] = set()
        self.netns: Fault | None = None
        self.disk: tuple[Fault, float] | None = None  # the broken disk, and when to mend it
        self.twin: subprocess.Popen | None = None
        self.owed = 0  # workers that died while nobody could work: replaced once somebody can
        self.replacements = 0
        self.launches = 0
        self.deleted = False
        self.seen_done: list = []
        self.driver: list[str] = []
        self.spawned = 0.0  # when the latest popbt process was started
        self.compensated: set[int] = set()  # workers killed with their launcher: it is run again
        self.db = probe.DB(self.url)
        self.budget = 150 + 40 * sum(f.kind == "sqlite_lock_long" for f in plan.faults)
        self.hung = False
        self.began = 0.0
        self.elapsed = 0.0

    # -- processes

    def launcher_cmd(self) -> list[str]:
        p = self.plan
        cmd = [PY, "-m", "popbt", "run", SPEC, "--name", self.name, "--population", str(p.population)]
        cmd += ["--intervals", str(p.intervals), "--seed", str(p.seed), "--workers", str(WORKERS)]
        cmd += ["--storage", self.url, "--dir", str(self.dir)]
        if p.sync:
            cmd.append("--sync")
        if p.ckpt_db:
            cmd += ["--checkpoints", "db"]
        return cmd

    def launch(self) -> None:
        self.spawned = time.monotonic()
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

    def add_worker(self, *extra: str, role: str = "", fault: str = "", env: dict | None = None, storage=None) -> int:
        """A `popbt worker` of this run (``extra``: its options; ``role``: CHAOS_ROLE)."""
        self.spawned = time.monotonic()
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"extra-{len(self.extras)}{'-' + fault if fault else ''}.log"
        cmd = [PY, "-m", "popbt", "worker", SPEC, "--experiment", self.name, "--storage", storage or self.url]
        cmd += ["--dir", str(self.dir), *extra]
        if role.startswith("netns:"):
            cmd = self.link.command(*cmd)
        proc = subprocess.Popen(
            cmd,
            env={**self.env, "CHAOS_ROLE": role, **(env or {})},
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.extras.append({"proc": proc, "log": log, "role": role, "fault": fault})
        if role:
            self.special.add(proc.pid)
        return proc.pid

    def reap(self) -> None:
        for p in self.launchers + [x["proc"] for x in self.extras]:
            p.poll()
        for f, lp in self.lockers:
            if lp.poll() is not None and len(f.window) == 1:
                f.window.append(time.time())
        if self.twin is not None:
            self.twin.poll()

    def workers(self) -> list[probe.Proc]:
        return [p for p in probe.processes(self.dir) if p.role == "worker"]

    def write_control(self) -> None:
        faults = [f.control() for f in self.plan.faults if f.kind in IN_SPEC or f.kind in NETNS]
        for entry in faults:
            entry["dev"] = Link.HOST_DEV
        data = {
            "dir": str(self.ctl_dir),
            "step_seconds": 0.04,
            "faults": faults,
            "explore_hook": self.plan.explore_hook,
            "foreign": [f.name.format(uid=FAKE_UID) for f in self.plan.faults if f.kind == "foreign_file"],
        }
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.control)

    def fired(self, fault: Fault) -> list[tuple[int, int, int]]:
        """(pid, member, interval) of each firing of a fault fired in the spec."""
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

    def holding(self) -> bool:
        """Nobody can work now (a disk broken, the database locked past the patience): a
        worker that dies now is replaced when this is over."""
        long_lock = any(f.kind == "sqlite_lock_long" and lp.poll() is None for f, lp in self.lockers)
        return long_lock or self.disk is not None

    # -- the loop

    def execute(self) -> dict:
        """Run it; the record of what happened."""
        self.began = time.time()
        started = time.monotonic()
        self.prepare()
        self.write_control()
        self.launch()
        external = sorted((f for f in self.plan.faults if f.kind not in IN_SPEC and f.at > 0), key=lambda f: f.at)
        due: list[tuple[float, Fault]] = []
        total = self.plan.population * self.plan.intervals
        self.exp_id = None
        try:
            self.loop(started, external, due, total)
        except Exception as e:  # the campaign's own reads failed: say so, and still clean up
            self.driver.append(f"the campaign could not go on with this run: {type(e).__name__}: {e}"[:400])
        self.elapsed = time.monotonic() - started
        self.wind_down()
        try:
            return self.collect(self.exp_id)
        finally:
            self.db.close()
            if self.plan.tmpfs:
                sh("umount", "-l", str(self.ckdir))

    def loop(self, started: float, external: list[Fault], due: list, total: int) -> int | None:
        """Watch and inject until the experiment is over (or the database was deleted)."""
        exp_id = None
        while not self.deleted:
            if time.monotonic() - started > self.budget:
                self.hung = True
                break
            self.reap()
            exp = self.db.experiment(self.name)
            if exp is None:
                if not any(p.poll() is None for p in self.launchers):
                    self.driver.append("popbt run exited before creating the experiment")
                    self.launch()
                time.sleep(0.05)
                continue
            exp_id = self.exp_id = exp.id
            if exp.status in ("finished", "failed"):
                break
            done = self.db.done(exp_id)
            self.watch_workers()
            self.watch_in_spec(exp_id)
            self.watch_frozen(exp_id)
            self.watch_netns()
            self.watch_disk(exp_id)
            while external and done >= external[0].at * total:
                f = external.pop(0)
                due.append((time.monotonic() + f.delay, f))
            for item in [d for d in due if d[0] <= time.monotonic()]:
                due.remove(item)
                if self.inject(item[1], exp_id):
                    item[1].facts.setdefault("t", time.time())
                else:
                    due.append((time.monotonic() + 0.2, item[1]))  # no candidate yet: try again
                if self.deleted:
                    break
            if not self.deleted:
                self.ensure_someone()
            time.sleep(0.05)
        return exp_id

    def prepare(self) -> None:
        """Before the first launch: the tmpfs the disk faults break, the foreign files of time 0."""
        self.ckdir.mkdir(parents=True, exist_ok=True)
        if self.plan.tmpfs:
            mounted = sh("mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(self.ckdir))
            if mounted.returncode != 0:
                self.driver.append(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
        for f in self.plan.faults:
            if f.kind == "foreign_file" and f.at == 0:
                self.put_foreign(f)

    def watch_workers(self) -> None:
        """A worker that died while work remains is replaced, as a scheduler would requeue it."""
        now = {p.pid: p for p in self.workers()}
        for pid in list(self.seen):
            if pid not in now:
                del self.seen[pid]
                if pid not in self.compensated and pid not in self.special:
                    self.owed += 1
        while self.owed and not self.holding() and self.replacements < MAX_REPLACEMENTS:
            self.owed -= 1
            self.replacements += 1
            self.add_worker()
        self.seen.update(now)

    def ensure_someone(self) -> None:
        """Nothing of this run alive while work remains (e.g. every worker died during a long
        lock): run the same command again, as a user would."""
        if self.holding() or any(p.poll() is None for p in self.launchers):
            return
        if any(x["proc"].poll() is None and not x["role"] for x in self.extras):
            return
        if any(p.pid not in self.special for p in self.workers()):
            return
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
                probe.signal_all([pid], signal.SIGSTOP)
                # bounded: a worker frozen inside a transaction (its heartbeat's) holds locks that
                # keep anyone from taking its task over until it thaws
                self.frozen[pid] = (f, time.monotonic() + 8 * self.plan.lease + 10)
                f.window = [time.time()]
                f.pids, f.injected, f.detail = [pid], True, f"member {m} interval {k}"
                self.add_worker()  # someone must be there to take the lease over
                self.handled.add(f.id)
            elif f.kind == "sigterm_preempt":
                signalled = f.facts.setdefault("sigterm", [])
                for pid, _, _ in firings:
                    if pid not in signalled:
                        probe.signal_all([pid], signal.SIGTERM)
                        signalled.append(pid)
                f.injected, f.detail = True, f"member {f.member} interval {f.interval}, {len(signalled)}x"
                if len(signalled) >= f.times:
                    self.handled.add(f.id)

    def watch_frozen(self, exp_id: int) -> None:
        for pid, (f, until) in list(self.frozen.items()):
            if f.kind == "stop_past_lease":
                _, m, k = self.fired(f)[0]
                name = f"{probe.HOST}:{pid}"
                taken = any(
                    e.kind == "lease_expired" and (e.member, e.interval) == (m, k) and name in e.message
                    for e in self.db.events(exp_id)
                )
                if taken or time.monotonic() >= until:
                    self.thaw(pid, f)
                    (self.ctl_dir / f"release-{f.id}").touch()
            elif until is not None and time.monotonic() >= until:
                self.thaw(pid, f)

    def thaw(self, pid: int, f: Fault) -> None:
        probe.signal_all([pid], signal.SIGCONT)
        del self.frozen[pid]
        if len(f.window) == 1:
            f.window.append(time.time())

    def watch_netns(self) -> None:
        """The netns worker's link: cut by its spec inside a report; then restored, left cut
        until it stops by itself, or left cut and the worker killed."""
        f = self.netns
        if f is None:
            return
        proc = next(x["proc"] for x in self.extras if x["fault"] == f.id)
        now = time.monotonic()
        if not f.facts.get("cut"):
            if (self.ctl_dir / f"cut-{f.id}").exists():
                f.facts["cut"], f.facts["cut_at"] = True, now
                f.window = [time.time()]
            elif proc.poll() is not None:
                self.netns = None  # it ended before its first save (the run was over)
            return
        since = now - f.facts["cut_at"]
        if f.kind == "netns_blip" and since >= f.duration:
            self.link.restore()
        elif f.kind == "netns_cut_kill" and since >= 0.5 * self.plan.lease and proc.poll() is None:
            probe.kill(proc.pid)
            f.pids = [proc.pid]
            return
        elif proc.poll() is None:
            if since < 2 * self.plan.lease + 30:
                return
            self.driver.append(f"{f.id}: the cut-off worker did not stop within {since:.0f} s; killed")
            probe.kill(proc.pid)
            proc.wait()
        self.link.restore()
        f.window.append(time.time())
        self.netns = None

    def watch_disk(self, exp_id: int | None = None) -> None:
        """Mend the disk once its time is up and a worker met it (or after 2 leases)."""
        if self.disk is None or time.monotonic() < self.disk[1]:
            return
        f = self.disk[0]
        met = exp_id is None or any(e.kind == "worker_fault" for e in self.db.events(exp_id)[f.facts["faults"] :])
        if not met and time.monotonic() < self.disk[1] - f.duration + 2 * self.plan.lease:
            return
        if f.kind == "disk_full":
            (self.ckdir / FILLER).unlink(missing_ok=True)
        else:
            mended = sh("mount", "-o", "remount,rw", str(self.ckdir))
            if mended.returncode != 0:
                self.driver.append(f"{f.id}: cannot remount rw: {mended.stderr.strip()}")
        f.window.append(time.time())
        self.disk = None

    # -- external faults

    def inject(self, f: Fault, exp_id: int) -> bool:
        """Inject one external fault; False when it has no target yet (try again shortly)."""
        kind = f.kind
        if (kind in NETNS or kind in ("sick_worker", "shared_dir")) and self.holding():
            return False  # a worker started now would stop at once: it is meant to work first
        workers = [
            p for p in self.workers() if p.pid not in self.frozen and p.state != "T" and p.pid not in self.special
        ]
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
            probe.signal_all([victim.pid], signal.SIGSTOP)
            self.frozen[victim.pid] = (f, time.monotonic() + f.duration)
            f.window = [time.time()]
            f.pids, f.injected, f.detail = [victim.pid], True, f"for {f.duration:.1f} s"
        elif kind in ("kill_run", "kill_run_and_workers"):
            return self.kill_run(f, exp_id)
        elif kind.startswith("ckpt_"):
            if self.disk is not None:
                return False  # the directory is broken just now: later
            return self.damage(f, exp_id)
        elif kind in ("sqlite_lock", "sqlite_lock_long"):
            return self.lock(f)
        elif kind == "pg_restart":
            f.window = [time.time()]
            took = self.cluster.restart()
            f.window.append(time.time())
            f.injected, f.detail = True, f"down and up in {took:.2f} s"
        elif kind in NETNS:
            if self.netns is not None:
                return False  # one link: one cut at a time
            url = self.url.replace("127.0.0.1", Link.ROOT_IP)
            self.add_worker(role=f.role, fault=f.id, storage=url)
            self.netns, f.injected, f.detail = f, True, "its first save"
        elif kind in DISK:
            return self.break_disk(f, exp_id)
        elif kind == "bad_device":
            device = f"cuda:{_cuda_devices()}"
            self.add_worker("--device", device, role="bad_device", fault=f.id)
            f.injected, f.detail = True, f"--device {device}"
        elif kind == "sick_worker":
            self.add_worker(role="sick", fault=f.id, env={"CHAOS_SICK": "1"})
            f.injected, f.detail = True, "every train raises a CUDA error"
        elif kind == "shared_dir":
            self.start_twin(f)
        elif kind == "foreign_file":
            if self.disk is not None:
                return False  # the directory is broken just now: later
            self.put_foreign(f)
        elif kind == "sqlite_deleted":
            return self.delete_db(f, exp_id)
        return True

    def kill_run(self, f: Fault, exp_id: int) -> bool:
        live = [p for p in self.launchers if p.poll() is None]
        if not live:
            return False
        target = live[-1]
        if f.kind == "kill_run_and_workers" and any(_pgid(pid) == target.pid for pid in self.frozen):
            return False  # not while one of its workers is frozen for another fault: later
        if f.kind == "kill_run":
            target.kill()
            f.pids = [target.pid]
        else:
            group = [p for p in probe.processes(self.dir) if _pgid(p.pid) == target.pid]
            _killpg(target.pid)
            f.pids = [p.pid for p in group]
            for p in group:
                if p.role == "worker":
                    f.expect_takeovers += self.running_of(exp_id, p.name)
        target.wait()
        self.killed_launchers.add(target.pid)
        self.compensated.update(f.pids)
        f.injected, f.detail = True, f"{len(f.pids)} processes"
        self.launch()  # the same command again
        return True

    def lock(self, f: Fault) -> bool:
        if self.frozen:
            return False  # a frozen worker may hold the write lock: the locker would wait on it
        locker = subprocess.Popen(
            [PY, "-c", LOCKER, str(self.db_path), str(f.duration)], stdout=subprocess.PIPE, text=True
        )
        line = locker.stdout.readline()  # waits until the lock is held
        if line.strip() != "locked":
            self.driver.append(f"{f.id}: the locker did not get the lock")
            return True
        f.window = [time.time()]
        self.lockers.append((f, locker))
        f.injected, f.detail = True, f"for {f.duration:.1f} s"
        return True

    def break_disk(self, f: Fault, exp_id: int) -> bool:
        working = [p for p in self.workers() if p.pid not in self.frozen and p.pid not in self.special]
        if self.disk is not None or not working:
            return False  # a worker must be there to meet it
        f.facts["workers"] = len([p for p in self.workers() if p.pid not in self.frozen])
        f.facts["faults"] = len(self.db.events(exp_id))  # a worker_fault after these: a worker met it
        f.window = [time.time()]
        if f.kind == "disk_full":
            fd = os.open(self.ckdir / FILLER, os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"\0" * 65536):
                    pass
            except OSError:
                pass  # full
            finally:
                os.close(fd)
        else:
            broke = sh("mount", "-o", "remount,ro", str(self.ckdir))
            if broke.returncode != 0:
                self.driver.append(f"{f.id}: cannot remount ro: {broke.stderr.strip()}")
        self.disk = (f, time.monotonic() + f.duration)
        f.injected, f.detail = True, f"for {f.duration:.1f} s"
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

    def put_foreign(self, f: Fault) -> None:
        """A file of somebody else's where this experiment's checkpoints go, old enough for
        any sweep."""
        path = self.ckdir / f.name.format(uid=FAKE_UID)
        path.write_bytes(random.Random(f.id).randbytes(300))
        os.utime(path, (1_000_000_000, 1_000_000_000))
        f.facts["path"], f.facts["sha256"] = str(path), sha256(path)
        f.injected, f.detail = True, path.name

    def start_twin(self, f: Fault) -> None:
        """Another database's experiment of the same name whose checkpoints go to the same
        directory (--checkpoints), trained meanwhile by its own `popbt run`."""
        twin = self.root / f"run{self.plan.index:02d}-twin"
        (twin / "control").mkdir(parents=True)
        (twin / "control.json").write_text(json.dumps({"dir": str(twin / "control"), "faults": []}))
        cmd = [PY, "-m", "popbt", "run", SPEC, "--name", self.name, "--population", "3", "--intervals", "3"]
        cmd += ["--workers", "1", "--storage", f"sqlite:///{twin / 'popbt.db'}", "--dir", str(twin)]
        cmd += ["--checkpoints", str(self.dir / "checkpoints")]
        self.twin = subprocess.Popen(
            cmd,
            env={**self.env, "CHAOS_CONTROL": str(twin / "control.json")},
            stdout=subprocess.DEVNULL,
            stderr=open(twin / "launcher.err", "w"),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        f.facts["dir"] = str(twin)
        f.injected, f.detail = True, "3x3 in its own sqlite database"

    def all_opened(self) -> bool:
        """Every live popbt process of this run has said its first line (it opened the database)."""
        for n, p in enumerate(self.launchers, 1):
            if p.poll() is None and not (self.dir / f"launcher-{n}.out").stat().st_size:
                return False
        return all(x["proc"].poll() is not None or x["log"].stat().st_size for x in self.extras)

    def delete_db(self, f: Fault, exp_id: int) -> bool:
        if self.frozen or any(lp.poll() is None for _, lp in self.lockers) or self.disk or self.netns:
            return False
        if not self.all_opened():
            return False  # one just started may not have opened the file yet: it would make a new one
        self.seen_done = [[r.member, r.interval] for r in self.db.tasks(exp_id) if r.state == "done"]
        self.db.close()
        self.db_path.unlink()
        self.deleted, f.injected = True, True
        f.window, f.detail = [time.time()], f"after {len(self.seen_done)} results"
        return True

    # -- the end

    def wind_down(self) -> None:
        for pid, (f, _) in list(self.frozen.items()):
            self.thaw(pid, f)
        for f in self.plan.faults:
            (self.ctl_dir / f"release-{f.id}").touch()
        if self.disk is not None:
            self.disk = (self.disk[0], 0.0)
            self.watch_disk()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            self.reap()
            self.watch_netns()
            alive = probe.processes(self.dir) or any(lp.poll() is None for _, lp in self.lockers)
            if not alive and (self.twin is None or self.twin.poll() is not None):
                break
            time.sleep(0.1)
        else:
            left = probe.processes(self.dir)
            self.driver.append(
                f"{len(left)} popbt processes still running 90 s after the end: "
                f"{[(p.pid, p.role, p.state) for p in left]}"
            )
            for p in left:
                probe.kill(p.pid)
            if self.twin is not None and self.twin.poll() is None:
                self.driver.append("the twin's popbt run still running 90 s after the end")
                _killpg(self.twin.pid)
        if self.link is not None:
            self.link.restore()
        for _, lp in self.lockers:
            lp.kill()
            lp.wait()
        for p in self.launchers + [x["proc"] for x in self.extras] + ([self.twin] if self.twin else []):
            p.wait()
        self.reap()

    def collect(self, exp_id: int | None) -> dict:
        """The plain record chaos/verdict.py judges."""
        for f in self.plan.faults:
            if f.kind in IN_SPEC or f.kind in NETNS:
                f.firings = self.fired(f)
                f.facts["fired_at"] = [p.stat().st_mtime for p in self.ctl_dir.glob(f"fired-{f.id}-*")]
                if f.kind in IN_SPEC and f.firings and not f.injected:
                    pid, m, k = f.firings[0]
                    f.injected, f.detail = True, f"member {m} interval {k}, fired {len(f.firings)}x"
                    f.pids = sorted({x[0] for x in f.firings})
                if f.kind in NETNS and not f.firings:
                    f.injected = False  # its worker never saved (the run ended first)
        record = dict(
            run=self.plan.as_dict(),
            host=probe.HOST,
            began=self.began,
            elapsed=self.elapsed,
            budget=self.budget,
            hung=self.hung,
            deleted=self.deleted,
            launchers=[
                {
                    "rc": p.returncode,
                    "err": _tail(self.dir / f"launcher-{n}.err"),
                    "killed": p.pid in self.killed_launchers,
                }
                for n, p in enumerate(self.launchers, 1)
            ],
            workers=[
                {
                    "pid": x["proc"].pid,
                    "name": f"{probe.HOST}:{x['proc'].pid}",
                    "role": x["role"],
                    "fault": x["fault"],
                    "rc": x["proc"].returncode,
                    "out": _tail(x["log"]),
                }
                for x in self.extras
            ],
            replacements=self.replacements,
            launches=self.launches,
            driver=self.driver,
        )
        record.update(self.history())
        logs = {x: x.read_text(errors="replace") for x in self.logs.glob("*.log")} if self.logs.is_dir() else {}
        record["logs"] = "\n".join(logs.values())
        record["log_successes"] = [
            [int(a), int(b)]
            for text in logs.values()
            for line in text.splitlines()
            if (s := SUCCESS.search(line))
            for a, b in [s.groups()]
        ]
        record["foreign"] = [
            {
                "fault": f.id,
                "name": f.detail,
                "sha256": f.facts["sha256"],
                "now": sha256(Path(f.facts["path"])),
                "loaded": (self.ctl_dir / f"loaded-foreign-{f.detail}").exists(),
            }
            for f in self.plan.faults
            if f.kind == "foreign_file" and f.injected
        ]
        record["twin"] = self.twin_record()
        if self.deleted:
            record["deletion"] = self.deletion_record(record)
        elif exp_id is not None:
            status = subprocess.run(
                [PY, "-m", "popbt", "status", "--experiment", self.name, "--storage", self.url],
                capture_output=True,
                text=True,
                env=self.env,
                timeout=120,
            )
            record["status_out"], record["status_rc"] = status.stdout + status.stderr, status.returncode
        accounted = set(record["live"]) | {f.facts.get("path") for f in self.plan.faults} | {str(self.ckdir / FILLER)}
        listed = self.ckdir.iterdir() if self.ckdir.is_dir() else ()
        record["orphans"] = len([x for x in listed if str(x) not in accounted])
        record["faults"] = [asdict(f) for f in self.plan.faults]
        (self.dir / "record.json").write_text(json.dumps(record, indent=1, default=str))
        return record

    def history(self) -> dict:
        """Rows, events, checkpoints and their hashes: from the database, or from the history
        salvaged when its file was deleted."""
        url = self.url
        if self.deleted:
            salvaged = self.dir / "popbt.db.salvaged"
            if not salvaged.exists():
                return dict(rows=[], events=[], live={}, checkpoint_keys=[], status=None)
            copy = self.dir / "salvaged-copy.db"
            shutil.copy(salvaged, copy)
            url = f"sqlite:///{copy}"
        store = open_store(url)
        try:
            exp = store.experiment(self.name)
            if exp is None:
                return dict(rows=[], events=[], live={}, checkpoint_keys=[], status=None)
            rows = [
                {k: getattr(r, k) for k in ("member", "interval", "state", "worker", "checkpoint", "attempts")}
                | {"finished_at": r.finished_at}
                for r in store.history(exp.id)
            ]
            events = [
                {k: getattr(e, k, None) for k in ("kind", "member", "interval", "message", "worker")}
                | {"at": e.created_at}
                for e in store.events(exp.id, limit=10**6)
            ]
            live = {c.path: _intact(store, exp, c) for c in store.live_checkpoints(exp.id)}
            probe_db = probe.DB(url)
            try:
                keys = [[c.member, c.interval] for c in probe_db.checkpoints(exp.id)]
            finally:
                probe_db.close()
            return dict(rows=rows, events=events, live=live, checkpoint_keys=keys, status=exp.status)
        finally:
            store.close()

    def twin_record(self) -> dict | None:
        if self.twin is None:
            return None
        twin = Path(next(f.facts["dir"] for f in self.plan.faults if f.kind == "shared_dir" and f.injected))
        out = {
            "rc": self.twin.returncode,
            "err": _tail(twin / "launcher.err"),
            "status": None,
            "missing": [],
            "live": {},
        }
        store = open_store(f"sqlite:///{twin / 'popbt.db'}")
        try:
            exp = store.experiment(self.name)
            if exp is not None:
                done = {(r.member, r.interval) for r in store.history(exp.id) if r.state == "done"}
                out["status"] = exp.status
                out["missing"] = [[m, k] for m in range(3) for k in range(3) if (m, k) not in done]
                out["live"] = {c.path: _intact(store, exp, c) for c in store.live_checkpoints(exp.id)}
        finally:
            store.close()
        return out

    def deletion_record(self, record: dict) -> dict:
        texts = [launcher["err"] for launcher in record["launchers"]] + [record["logs"]]
        said = [line for text in texts for line in text.splitlines() if "was deleted while in use" in line]
        committed = {tuple(x) for x in self.seen_done} | {tuple(x) for x in record["log_successes"]}
        return {
            "db_exists_after": self.db_path.exists(),
            "salvaged": (self.dir / "popbt.db.salvaged").exists(),
            "committed": sorted(committed),
            "said": said,
        }


def _intact(store, exp, c) -> bool:
    try:
        if exp.checkpoints_in_db:
            return hashlib.sha256(store.checkpoint_data(c)).hexdigest() == c.sha256
        checkpoints.verify(c.path, c.sha256)
        return True
    except Exception:
        return False


def _cuda_devices() -> int:
    """A CUDA device index this machine lacks."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _pgid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return None


def _tail(path: Path, chars: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
