"""The campaign's verdict: a pure function of what one run left behind.

``judge(record)`` takes the plain record chaos/run.py collects (rows, events, logs, checkpoint
hashes, file listings, exit statuses, the faults and what the driver saw of them) and returns
each fault's outcome and the list of problems. Nothing is excused: any problem fails
the campaign. tests/test_chaos_verdict.py judges hand-built records.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from plan import DISK, IN_SPEC, NETNS, WAITS_BY_DESIGN  # chaos/ is on sys.path (campaign.py, the tests)

REPORTED, NO_HARM, UNREPORTED = "reported", "no harm", "unreported"
STALL_LEASES = 2  # the longest a run may go without a result, in leases (beyond by-design waits)
MAX_ATTEMPTS = 3  # popbt's default max_attempts, which the campaign's runs use
RETRY_DELAY = 1.0  # and its default retry_delay
KILLS = {
    "kill_after_claim",
    "kill_in_train",
    "kill_ckpt_written",
    "kill_in_report",
    "hang_then_kill",
    "poison_task",
    "kill_worker_random",
    "kill_run_and_workers",
    "netns_cut_kill",
}
UNREACHABLE = "stops taking work: the database was unreachable"
DELETED = "was deleted while in use"
# why a launcher's worker stopped (popbt run's last lines) -> the faults that explain it
STOPPED = {
    "killed by SIGKILL": KILLS,
    "cannot work here": set(DISK) | {"save_half_oserror"},  # ENOSPC from a save: the disk's fault
    "stopped by SIGTERM": {"sigterm_preempt"},
    "exit status 2": {"sqlite_lock_long", "sqlite_deleted"},
}


STOP_LINE = r"^worker \d+ (killed by SIGKILL|cannot work here|stopped by SIGTERM|exit status \d+)"


@dataclass
class Verdict:
    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)  # fault id -> (outcome, note)
    problems: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)


@dataclass
class Facts:
    """The record, indexed for the checks."""

    record: dict
    host: str
    lease: float
    events: list[dict]
    rows: dict  # (member, interval) -> [row]
    live: dict  # path -> sha256 matches
    logs: str
    killed: set  # pids the campaign SIGKILLed
    cut_off: set  # pids of workers whose link the campaign cut and left cut
    injected: set  # kinds injected in this run

    def event(self, kind: str, m=None, k=None, text=None, worker=None) -> bool:
        return any(
            e["kind"] == kind
            and (m is None or e["member"] == m)
            and (k is None or e["interval"] == k)
            and (text is None or text in e["message"])
            and (worker is None or e.get("worker") == worker)
            for e in self.events
        )

    def taken_over(self, expect) -> bool:
        return all(self.event("lease_expired", m, k, f"lease of {name} expired") for m, k, name in expect)

    def done_row(self, m: int, k: int) -> dict | None:
        return next((r for r in self.rows.get((m, k), []) if r["state"] == "done"), None)

    def worker(self, fault_id: str) -> dict | None:
        return next((w for w in self.record.get("workers", []) if w.get("fault") == fault_id), None)


def judge(record: dict) -> Verdict:
    """Every problem of one run, and what each fault came to."""
    v = Verdict()
    facts = _facts(record)
    run = record["run"]
    if record.get("hung"):
        v.problems.append(f"did not finish within {record.get('budget', '?')} s (a hang)")
    elif not record.get("deleted") and record.get("status") != "finished":
        v.problems.append(f"the experiment ended {record.get('status')!r}, not finished")
    missing, failed, gave_up, dup = _results(facts, run)
    corrupt = _corrupt(facts, run)
    v.problems += [f"result missing: member {m} interval {k}" for m, k in missing]
    v.problems += [f"result duplicated: member {m} interval {k}" for m, k in dup]
    v.problems += [f"corrupt or missing checkpoint referenced: {c}" for c in corrupt]
    v.problems += _gave_up_explained(facts, gave_up)
    v.problems += _one_line_events(facts, record)
    longest, stalls = _stalls(facts, record)
    v.problems += stalls
    v.problems += _launchers(facts, record)
    foreign_deleted, foreign_loaded, problems = _foreign(record)
    v.problems += problems
    v.problems += _twin(record)
    v.problems += _deletion(facts, record)
    v.problems += [f"the driver saw: {line}" for line in record.get("driver", [])]
    v.problems += _blamed_wrongly(facts)
    for f in record["faults"]:
        if not f["injected"]:
            continue
        outcome, note = JUDGES.get(f["kind"], _no_harm)(f, facts)
        if outcome == UNREPORTED and _cut_short(f, facts):
            outcome, note = NO_HARM, f"the database was deleted before a lease could run out ({note})"
        v.outcomes[f["id"]] = (outcome, note)
        if outcome == UNREPORTED:
            v.problems.append(f"{f['id']} {f['kind']} ({f['detail']}) unreported: {note}")
    v.figures = dict(
        checked=run["population"] * run["intervals"],
        missing=len(missing),
        duplicated=len(dup),
        corrupt=len(corrupt),
        failed=len(failed),
        gave_up=len(gave_up),
        foreign=len(record.get("foreign", [])),
        foreign_deleted=foreign_deleted,
        foreign_loaded=foreign_loaded,
        longest_stall=longest,
        longest_stall_leases=longest / facts.lease,
        stalled=bool(stalls),
        orphans=record.get("orphans", 0),
    )
    return v


def _facts(record: dict) -> Facts:
    rows = defaultdict(list)
    for r in record.get("rows", []):
        rows[(r["member"], r["interval"])].append(r)
    cut = {f["id"] for f in record["faults"] if f["kind"] in ("netns_cut", "netns_cut_kill") and f["facts"].get("cut")}
    return Facts(
        record=record,
        host=record.get("host", ""),
        lease=record["run"]["lease"],
        events=record.get("events", []),
        rows=rows,
        live=record.get("live", {}),
        logs=record.get("logs", ""),
        killed=_killed(record),
        cut_off={_pid(w["name"]) for w in record.get("workers", []) if w.get("fault") in cut},
        injected={f["kind"] for f in record["faults"] if f["injected"]},
    )


def _killed(record: dict, but: str | None = None) -> set:
    """The pids the campaign SIGKILLed (``but``: leaving out what that fault killed)."""
    killed = set()
    for f in record["faults"]:
        if f["kind"] in KILLS and f["injected"] and f["id"] != but:
            killed |= set(f["pids"]) | {p for p, _, _ in f.get("firings", [])}
    return killed


def _pid(name: str | None) -> int | None:
    """The pid in a worker's name (host:pid)."""
    tail = str(name).rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


def _cut_short(f: dict, facts: Facts) -> bool:
    """A fault within a lease of the database's deletion: the takeover that would report it
    cannot happen any more."""
    deleted = [g["window"][0] for g in facts.record["faults"] if g["kind"] == "sqlite_deleted" and g["window"]]
    when = f["facts"].get("fired_at", []) + ([f["facts"]["t"]] if "t" in f["facts"] else [])
    return bool(deleted and when) and max(when) > deleted[0] - facts.lease - 1.0


# -- results and checkpoints -------------------------------------------------------------------


def _results(facts: Facts, run: dict):
    """(missing, failed, given-up members, duplicated) (member, interval) keys. A member the
    store gave up on has failed intervals from there on, not missing ones. A run stopped by its
    database's deletion is judged on what it committed (see _deletion), not on completeness."""
    missing, failed, gave_up = [], [], []
    for m in range(run["population"]):
        stops = [k for (mm, k), rs in facts.rows.items() if mm == m and any(r["state"] == "failed" for r in rs)]
        stop = min(stops, default=None)
        if stop is not None:
            gave_up.append((m, stop))
        for k in range(run["intervals"]):
            if stop is not None and k >= stop:
                failed.append((m, k))
            elif facts.done_row(m, k) is None and not facts.record.get("deleted"):
                missing.append((m, k))
    dup = {key for key, rs in facts.rows.items() if sum(r["state"] == "done" for r in rs) > 1}
    dup |= {tuple(key) for key, n in Counter(map(tuple, facts.record.get("checkpoint_keys", []))).items() if n > 1}
    dup |= {tuple(key) for key, n in Counter(map(tuple, facts.record.get("log_successes", []))).items() if n > 1}
    return missing, failed, gave_up, sorted(dup)


DAMAGE = ("ckpt_truncate", "ckpt_bitflip", "ckpt_delete")


def _corrupt(facts: Facts, run: dict) -> list[str]:
    bad = sorted(path for path, ok in facts.live.items() if not ok)
    if facts.record.get("deleted"):
        # the run stopped when its database went: a checkpoint the campaign damaged for a task
        # that never started again was never loaded, so popbt had no chance to find it bad
        damaged = {f["detail"] for f in facts.record["faults"] if f["kind"] in DAMAGE and f["injected"]}
        return [path for path in bad if Path(path).name not in damaged]
    for (m, k), rs in sorted(facts.rows.items()):
        for r in rs:
            if k == run["intervals"] - 1 and r["state"] == "done" and r["checkpoint"] not in facts.live:
                bad.append(f"final result of member {m} has no live checkpoint ({r['checkpoint']})")
    return bad


def _gave_up_explained(facts: Facts, gave_up) -> list[str]:
    """A member given up must say so (a gave_up event) and be a fault's target on purpose."""
    out = []
    for m, k in gave_up:
        if not facts.event("gave_up", m):
            out.append(f"member {m} given up at interval {k} without a gave_up event")
        if not _doomed(facts, m, k):
            fails = [e["message"] for e in facts.events if e["kind"] == "failure" and e["member"] == m]
            out.append(f"member {m} given up at interval {k} for no injected reason: {fails[-1] if fails else '-'}")
    return out


def _blamed_wrongly(facts: Facts) -> list[str]:
    """Only the sick worker may blame itself for its failures: a healthy worker that does
    stops for nothing and takes back charges its members earned."""
    sick = {w["name"] for w in facts.record.get("workers", []) if w.get("role") == "sick"}
    return [
        f"a healthy worker blamed itself: {e['message'][:200]}"
        for e in facts.events
        if e["kind"] == "worker_fault"
        and "in a row while other workers succeeded" in e["message"]
        and e.get("worker") not in sick
    ]


def _one_line_events(facts: Facts, record: dict) -> list[str]:
    out = []
    if any("\n" in e["message"] for e in facts.events):
        out.append("an event spans several lines")
    if record.get("deleted"):
        return out  # no database left for popbt status to read
    if record.get("status_rc", 0) != 0:
        out.append(f"popbt status exited {record['status_rc']}")
    shown = record.get("status_out", "").splitlines()
    for e in facts.events[-10:]:
        line = f"{e['kind']}: member {e['member']} interval {e['interval']}: {e['message']}"
        if not any(line in s for s in shown):
            out.append(f"popbt status does not show the event {e['kind']!r} in one line")
            break
    return out


# -- stalls ------------------------------------------------------------------------------------


def stretches(times: list[float]) -> list[tuple[float, float]]:
    """Consecutive (from, to) between results, first to last."""
    times = sorted(times)
    return list(zip(times, times[1:]))


def _overlap(a: float, b: float, windows: list[tuple[float, float]]) -> float:
    """Seconds of (a, b) covered by the union of ``windows``."""
    covered, end = 0.0, a
    for s, e in sorted(windows):
        s, e = max(s, end), min(e, b)
        if e > s:
            covered += e - s
            end = e
    return covered


def _retry_windows(facts: Facts, record: dict) -> list[tuple[float, float]]:
    """A member failing on purpose, from its first failure at the target interval until it is
    given up (or its last failure): its retries wait out their backoff, and members that may
    copy from that interval wait for it."""
    out = []
    for f in record["faults"]:
        if not f["injected"] or f["kind"] not in ("failing_member", "poison_task"):
            continue
        m, k = f["member"], f["interval"]
        times = [
            e["at"]
            for e in facts.events
            if e["member"] == m
            and e["interval"] >= k
            and e["kind"] in ("failure", "lease_expired", "replaced", "gave_up")
            and e.get("at") is not None
        ]
        if times:
            out.append((min(times) - facts.lease, max(times)))  # its first attempt began up to a lease before
    return out


def _backoffs(facts: Facts) -> list[tuple[float, float]]:
    """After attempt n failed, its retry waits retry_delay * 2**(n-1) by design."""
    out = []
    for e in facts.events:
        found = re.match(r"attempt (\d+)/", e["message"]) if e["kind"] == "failure" else None
        if found and e.get("at") is not None:
            out.append((e["at"], e["at"] + min(60.0, RETRY_DELAY * 2 ** (int(found.group(1)) - 1))))
    return out


def _strikes(record: dict) -> list[float]:
    """When each fault struck: its firings in user code, or its injection from outside."""
    out = []
    for f in record["faults"]:
        if f["injected"]:
            out += f["facts"].get("fired_at", []) + ([f["facts"]["t"]] if "t" in f["facts"] else [])
            out += f["window"][:1]
    return out


def _stalls(facts: Facts, record: dict) -> tuple[float, list[str]]:
    """The longest stretch without a result, and a problem for each stretch longer than 2
    leases plus the time faults that wait by design lasted within it."""
    times = [r["finished_at"] for rs in facts.rows.values() for r in rs if r["state"] == "done" and r["finished_at"]]
    waits = [
        (f["window"][0], f["window"][1])
        for f in record["faults"]
        if f["injected"] and f["kind"] in WAITS_BY_DESIGN and len(f.get("window", [])) == 2
    ]
    waits += _retry_windows(facts, record) + _backoffs(facts)
    struck = sorted(_strikes(record))
    longest, out = 0.0, []
    for a, b in stretches(times):
        longest = max(longest, b - a)
        a = max([a, *(t for t in struck if a < t < b)])  # counted from the last fault that struck in it
        allowed = STALL_LEASES * facts.lease + _overlap(a, b, waits)
        if b - a > allowed:
            out.append(f"no result for {b - a:.1f} s (allowed {allowed:.1f} s: 2 leases and by-design waits)")
    return longest, out


# -- processes ---------------------------------------------------------------------------------


def _launchers(facts: Facts, record: dict) -> list[str]:
    """Each `popbt run` that exited on its own ended well, or says why each of its workers
    stopped, and an injected fault explains each."""
    out = []
    for n, launcher in enumerate(record.get("launchers", []), 1):
        rc, err = launcher["rc"], launcher.get("err", "")
        if rc == 0 or launcher.get("killed"):
            continue
        if record.get("deleted") and rc == 2 and DELETED in err:
            continue
        reasons = re.findall(STOP_LINE, err, re.M)
        unexplained = [why for why in reasons if not STOPPED.get(why, set()) & facts.injected]
        if rc != 1 or not reasons or unexplained:
            last = err.strip().splitlines()[-1] if err.strip() else ""
            out.append(f"popbt run #{n} exited {rc}: {last} {unexplained or ''}".rstrip())
    return out


def _foreign(record: dict) -> tuple[int, int, list[str]]:
    deleted = [f for f in record.get("foreign", []) if f["now"] is None]
    changed = [f for f in record.get("foreign", []) if f["now"] is not None and f["now"] != f["sha256"]]
    loaded = [f for f in record.get("foreign", []) if f["loaded"]]
    return len(deleted) + len(changed), len(loaded), []


def _twin(record: dict) -> list[str]:
    """The experiment of another database sharing the checkpoint directory is whole."""
    twin = record.get("twin")
    if not twin:
        return []
    out = []
    if twin["rc"] != 0 or twin["status"] != "finished":
        out.append(f"the twin experiment ended {twin['status']!r}, exit {twin['rc']}: {twin.get('err', '')[-200:]}")
    out += [f"the twin's result missing: member {m} interval {k}" for m, k in twin.get("missing", [])]
    out += [f"the twin's checkpoint deleted or damaged: {p}" for p, ok in twin.get("live", {}).items() if not ok]
    return out


def _deletion(facts: Facts, record: dict) -> list[str]:
    """The sqlite file deleted: the run stopped loudly, nothing recreated it, and the salvaged
    history holds every result a worker committed."""
    d = record.get("deletion")
    if not d:
        return []
    out = []
    if not d["said"]:
        out.append("nobody said the database file was deleted")
    if d["db_exists_after"]:
        out.append("something recreated the deleted database file")
    if not d["salvaged"]:
        out.append("no salvaged history (popbt.db.salvaged)")
    saved = {(m, k) for (m, k), rs in facts.rows.items() if any(r["state"] == "done" for r in rs)}
    lost = sorted({tuple(x) for x in d["committed"]} - saved)
    out += [f"result lost (committed, not in the salvaged history): member {m} interval {k}" for m, k in lost]
    return out


# -- each fault --------------------------------------------------------------------------------


def _no_harm(f: dict, facts: Facts) -> tuple[str, str]:
    return NO_HARM, ""


def _first(f: dict, facts: Facts) -> tuple[int, int, int, str]:
    pid, m, k = f["firings"][0]
    return pid, m, k, f"{facts.host}:{pid}"


def _in_spec(f: dict, facts: Facts) -> tuple[str, str]:
    """Faults that fire in user code: each says so where popbt records it."""
    if not f["firings"]:
        return UNREPORTED, "injected but no firing recorded"
    pid, m, k, name = _first(f, facts)
    kind = f["kind"]
    if kind.startswith("raise_") and kind != "raise_explore":
        ok = facts.event("failure", m, k, f"chaos {f['id']}")
    elif kind == "save_half_oserror":  # ENOSPC: the disk's fault, or the save's when the disk works
        handed_back = facts.event("released", m, k, f"chaos {f['id']}", worker=name)
        ok = (
            facts.event("failure", m, k, f"chaos {f['id']}")
            or handed_back
            and facts.event("worker_fault", text=f"chaos {f['id']}")
        )
    elif kind == "raise_explore":  # fired while planning, outside any trial: no member of its own
        ok = facts.event("failure", text=f"raised RuntimeError: chaos {f['id']}")
        if not ok and all(p in facts.killed or p in facts.cut_off for p, _, _ in f["firings"]):
            return NO_HARM, "its worker was killed or cut off before anything could be written"
    elif kind in ("score_nan", "score_inf"):  # the worst score, not a failure
        ok = facts.event("nonfinite", m, k, "evaluate() returned")
    elif kind in ("score_string", "score_none", "score_nometric", "score_numeric_string"):
        ok = facts.event("failure", m, k, "evaluate() returned")
    elif kind == "exit_train":
        ok = facts.event("failure", m, k, "SystemExit")
    elif kind == "failing_member":
        charged = facts.event("replaced", m) or facts.event("gave_up", m)
        ok = facts.event("failure", m, None, f"chaos {f['id']}") and charged
    elif kind in ("kill_after_claim", "kill_in_train", "kill_ckpt_written"):
        ok = facts.taken_over([(m, k, name)])
    elif kind == "metric_nan":
        if facts.event("lease_expired", m, k, f"lease of {name} expired") and pid not in facts.killed:
            return UNREPORTED, "its worker died of it"
        return NO_HARM, "stored as null"
    else:
        return UNREPORTED, f"no rule for {kind}"
    if ok:
        return REPORTED, f"member {m} interval {k}"
    firings = f["firings"]
    if all(p in facts.killed and facts.taken_over([(mm, kk, f"{facts.host}:{p}")]) for p, mm, kk in firings):
        return REPORTED, "its worker was SIGKILLed by another fault first: the takeover says so"
    if facts.event("released", m, k, worker=name):  # SIGTERM, or a broken disk met first
        return NO_HARM, "its worker was stopped by another fault first and handed the interval back"
    return UNREPORTED, f"member {m} interval {k}: no line says so"


def _kill_in_report(f: dict, facts: Facts) -> tuple[str, str]:
    pid, m, k, name = _first(f, facts)
    row = facts.done_row(m, k)
    if row is not None and row["worker"] == name:
        if row["checkpoint"] in facts.live or k < facts.record["run"]["intervals"] - 1:
            return NO_HARM, "killed after the commit: its result stands"
        return UNREPORTED, "killed after the commit, its final checkpoint gone"
    if facts.taken_over([(m, k, name)]):
        return REPORTED, "killed before the commit: taken over"
    return UNREPORTED, "killed before the commit, never taken over"


def _taken_over(f: dict, facts: Facts) -> tuple[str, str]:
    if not f["expect_takeovers"]:
        return NO_HARM, "it held no interval"
    if facts.taken_over(f["expect_takeovers"]):
        return REPORTED, f"taken over: {[(m, k) for m, k, _ in f['expect_takeovers']]}"
    return UNREPORTED, f"not taken over: {f['expect_takeovers']}"


def _stop_past_lease(f: dict, facts: Facts) -> tuple[str, str]:
    pid, m, k, name = _first(f, facts)
    if not facts.taken_over([(m, k, name)]):
        return UNREPORTED, "frozen past its lease, never taken over"
    refused = f"member {m} interval {k}: lease was taken over by another worker; result discarded" in facts.logs
    if refused or pid in facts.killed:
        return REPORTED, "taken over; the late result refused" if refused else "taken over; killed by a later fault"
    # thawed into another fault (a full disk, its launcher's SIGTERM): it handed the interval
    # back instead of reporting, so no late result could land
    if f"member {m} interval {k} handed back: worker {name} " in facts.logs:
        return REPORTED, "taken over; the thawed worker handed it back (another fault stopped it)"
    return UNREPORTED, "taken over, but its late result was not refused"


def _poison(f: dict, facts: Facts) -> tuple[str, str]:
    """Each crash is an attempt: the member is replaced, then given up, each said in one line."""
    _, m, k, _ = _first(f, facts)
    counted = facts.event("failure", m, k, "lease")
    if counted and (facts.event("replaced", m) or facts.event("gave_up", m)):
        return REPORTED, f"{len(f['firings'])} workers killed; the crashes counted as attempts"
    return UNREPORTED, f"{len(f['firings'])} workers killed; no failure counted for them"


def _sigterm(f: dict, facts: Facts) -> tuple[str, str]:
    """Each preemption hands the interval back (a released event) and costs nothing."""
    m, k = f["member"], f["interval"]
    host = facts.host
    signalled = f["facts"].get("sigterm", [])
    if not signalled:
        return UNREPORTED, "no worker was SIGTERMed"
    # a worker another fault SIGKILLed before it could hand back is that fault's (its lease
    # expires, an attempt counted as for any crash)
    bad = [
        p
        for p in signalled
        if not facts.event("released", m, k, "SIGTERM", worker=f"{host}:{p}") and p not in facts.killed
    ]
    if bad:
        return UNREPORTED, f"no released event for the SIGTERMed worker(s) {bad}"
    here = [e for e in facts.events if (e["member"], e["interval"]) == (m, k)]
    preempted = {f"{host}:{p}" for p in signalled}
    charged = [e["message"] for e in here if e["kind"] == "failure" and e.get("worker") in preempted and _interrupt(e)]
    others = [e for e in here if e["kind"] == "lease_expired" or e["kind"] == "failure" and e not in charged]
    corrupt = any("CorruptCheckpoint" in e["message"] for e in here if e["kind"] == "failure")
    if charged:
        return UNREPORTED, f"member {m} was charged for its preemptions: {charged[:2]}"
    replaced = facts.event("replaced", m, k) or facts.event("gave_up", m, k)
    if replaced and len(others) < MAX_ATTEMPTS and not corrupt:
        return UNREPORTED, f"member {m} was replaced at interval {k} with {len(others)} other failures"
    row = facts.done_row(m, k)
    if row is None or row["attempts"] > len(others):
        return UNREPORTED, f"attempts {row and row['attempts']} after {len(signalled)} preemptions"
    rcs = [
        w["rc"]
        for w in facts.record.get("workers", [])
        if w["pid"] in signalled and w["rc"] is not None and w["pid"] not in facts.killed
    ]
    if any(rc != 143 for rc in rcs):
        return UNREPORTED, f"a preempted worker exited {rcs}, not 143"
    return REPORTED, f"{len(signalled)} preemptions, each handed back; attempts {row['attempts']}"


def _interrupt(e: dict) -> bool:
    """A failure that is the signal itself (not user code failing before it came)."""
    return any(word in e["message"] for word in ("SIGTERM", "Interrupted", "KeyboardInterrupt"))


def _ckpt(f: dict, facts: Facts) -> tuple[str, str]:
    if facts.event("corrupt_checkpoint", text=f["expect_corrupt"]):
        return REPORTED, "found corrupt when loaded"
    if f["expect_corrupt"] not in facts.live:
        return NO_HARM, "never loaded again (its task was replaced first)"
    return UNREPORTED, "still live and never found corrupt"


def _lock_long(f: dict, facts: Facts) -> tuple[str, str]:
    if UNREACHABLE in facts.logs:
        return REPORTED, "the workers said the database was unreachable"
    if re.search(r"^popbt: error: storage .*: database is locked$", facts.logs, re.M):
        return REPORTED, "the workers starting meanwhile said the database was locked"
    # a worker past its patience still tries a few times: the try after the 30 s busy timeout
    # can find the lock gone, and the run goes on with nobody stopped
    if facts.record.get("status") == "finished" and "stops taking work" not in facts.logs:
        return NO_HARM, "the workers waited the lock out and went on"
    return UNREPORTED, "no worker said the database was unreachable"


def _netns(f: dict, facts: Facts) -> tuple[str, str]:
    """A worker cut off inside its report: its interval is taken over (or its commit stands);
    left cut, it stops by itself in one line (exit 2)."""
    if not f["facts"].get("cut"):
        return _never_cut(f, facts)
    pid, m, k, name = _first(f, facts)
    row = facts.done_row(m, k)
    committed = row is not None and row["worker"] == name
    where = "after its commit" if committed else "before its commit"
    if not committed and not facts.taken_over([(m, k, name)]):
        return UNREPORTED, f"cut {where}: member {m} interval {k} never taken over"
    if f["kind"] == "netns_cut":
        w = facts.worker(f["id"]) or {}
        said = [line for line in w.get("out", "").splitlines() if UNREACHABLE in line]
        if w.get("rc") != 2 or len(said) != 1:
            return UNREPORTED, f"cut {where}: the worker exited {w.get('rc')}, saying {said}"
        return REPORTED, f"cut {where}: it stopped by itself (exit 2)"
    return (NO_HARM if committed else REPORTED), f"cut {where}"


def _never_cut(f: dict, facts: Facts) -> tuple[str, str]:
    """The link goes down just after the worker's first save; a worker whose first save was
    the run's last may end first, its result committed: the cut never struck."""
    w = facts.worker(f["id"]) or {}
    if _pid(w.get("name")) in _killed(facts.record, but=f["id"]):
        return NO_HARM, "another fault killed it before its first save cut the link"
    if _stopped_by_disk(w, facts):
        return NO_HARM, "a broken disk stopped it (exit 3) before its first save could cut the link"
    if w.get("rc") != 0 or facts.record.get("status") != "finished":
        return UNREPORTED, f"the worker's first save never cut the link, and it exited {w.get('rc')}"
    if not f["firings"]:
        return NO_HARM, "the run was over before the worker's first save"
    pid, m, k, name = _first(f, facts)
    row = facts.done_row(m, k)
    if row is not None and row["worker"] == name:
        return NO_HARM, f"its result for member {m} interval {k} committed and it ended before the link went down"
    return UNREPORTED, f"the worker's first save (member {m} interval {k}) never cut the link"


def _disk(f: dict, facts: Facts) -> tuple[str, str]:
    """The worker that met the broken disk stopped (worker_fault), charging nobody."""
    what = "No space left on device" if f["kind"] == "disk_full" else "Read-only file system"
    charged = [
        e["message"]
        for e in facts.events
        if e["kind"] == "failure" and what in e["message"] and "(injected)" not in e["message"]
    ]
    if charged:
        return UNREPORTED, f"a member was charged for the disk: {charged[0]}"
    said = [
        e
        for e in facts.events
        if e["kind"] == "worker_fault" and what in e["message"] and "(injected)" not in e["message"]
    ]
    if said:
        return REPORTED, f"{len(said)} workers stopped (worker_fault), their intervals handed back"
    return NO_HARM, "no worker saved a checkpoint while it lasted"


def _bad_device(f: dict, facts: Facts) -> tuple[str, str]:
    w = facts.worker(f["id"]) or {}
    errors = [line for line in w.get("out", "").splitlines() if line.startswith("popbt: error:")]
    if w.get("rc") != 3 or len(errors) != 1 or "is unusable" not in errors[0]:
        return UNREPORTED, f"exit {w.get('rc')}, errors {errors}"
    name = w.get("name")
    if any(e.get("worker") == name for e in facts.events) or any(
        r["worker"] == name for rs in facts.rows.values() for r in rs
    ):
        return UNREPORTED, "it claimed work before refusing its device"
    return REPORTED, errors[0][len("popbt: error: ") :]


SICK = "(chaos: a sick worker)"  # chaos/spec.py's CUDA error on the sick worker


def _sick(f: dict, facts: Facts) -> tuple[str, str]:
    """It blames itself (exit 3, worker_fault) and no member pays for it: a member replaced or
    given up where it failed had enough other failures (or a corrupt checkpoint) to be."""
    w = facts.worker(f["id"]) or {}
    name = w.get("name")
    mine = [e for e in facts.events if e["kind"] == "failure" and e.get("worker") == name and SICK in e["message"]]
    for e in mine:
        m, k = e["member"], e["interval"]
        here = [x for x in facts.events if (x["member"], x["interval"]) == (m, k)]
        others = [
            x for x in here if x["kind"] == "lease_expired" or x["kind"] == "failure" and SICK not in x["message"]
        ]
        corrupt = any("CorruptCheckpoint" in x["message"] for x in here if x["kind"] == "failure")
        charged = facts.event("replaced", m, k) or facts.event("gave_up", m, k)
        # its first charge stands where a retry was claimed before it could know it was sick
        # (absolve takes back only what still stands): a replacement, never a give-up
        given_up = facts.event("gave_up", m, k) and len(others) < MAX_ATTEMPTS * (MAX_ATTEMPTS + 1)
        if (charged and len(others) < MAX_ATTEMPTS - 1 or given_up) and not corrupt and not _doomed(facts, m, k):
            return UNREPORTED, f"member {m} paid for the sick worker at interval {k}"
    if w.get("rc") == 3 and "in a row while other workers succeeded" in w.get("out", ""):
        if facts.event("worker_fault", worker=name):
            return REPORTED, f"it blamed itself after {len(mine)} failures"
        return UNREPORTED, "exit 3 but no worker_fault event"
    if w.get("rc") == 0 and len(mine) < MAX_ATTEMPTS:
        return NO_HARM, f"the run ended after {len(mine)} of its failures"
    if _pid(name) in facts.killed:  # a member that kills whoever trains it (poison_task)
        return NO_HARM, f"another fault killed it after {len(mine)} of its failures"
    if _stopped_by_disk(w, facts):
        return NO_HARM, f"a broken disk stopped it (exit 3) after {len(mine)} of its failures"
    return UNREPORTED, f"exit {w.get('rc')} after {len(mine)} failures"


def _stopped_by_disk(w: dict, facts: Facts) -> bool:
    """A special worker (sick, cut off) that met a disk the campaign broke first: it stopped
    with exit 3 and one line saying so, as any worker must."""
    broken = facts.injected & (set(DISK) | {"save_half_oserror"})
    return bool(broken) and w.get("rc") == 3 and "is unusable" in w.get("out", "")


def _doomed(facts: Facts, m: int, k: int) -> bool:
    """The campaign makes (m, k) fail on every worker that trains it (a member that keeps
    failing, a poison interval): it is replaced and given up whoever trains it, so a sick
    worker's share of its attempts changes nothing of its fate."""
    return any(
        f["kind"] in ("failing_member", "poison_task") and f["injected"] and (f["member"], f["interval"]) == (m, k)
        for f in facts.record["faults"]
    )


def _foreign_file(f: dict, facts: Facts) -> tuple[str, str]:
    """Never deleted, never changed, never loaded."""
    mine = [x for x in facts.record.get("foreign", []) if x.get("fault") == f["id"]]
    if not mine:
        return UNREPORTED, "the driver recorded no file"
    x = mine[0]
    if x["now"] is None:
        return UNREPORTED, f"{x['name']} was deleted"
    if x["now"] != x["sha256"]:
        return UNREPORTED, f"{x['name']} was changed"
    if x["loaded"]:
        return UNREPORTED, f"{x['name']} was loaded as a checkpoint"
    return NO_HARM, f"{x['name']} intact, never loaded"


def _sqlite_deleted(f: dict, facts: Facts) -> tuple[str, str]:
    d = facts.record.get("deletion") or {}
    if d.get("said") and d.get("salvaged"):
        return REPORTED, d["said"][0][:120]
    return UNREPORTED, "the run did not say so, or saved nothing"


JUDGES = {
    **{k: _in_spec for k in IN_SPEC},
    "kill_in_report": _kill_in_report,
    "hang_then_kill": _taken_over,
    "stop_past_lease": _stop_past_lease,
    "poison_task": _poison,
    "sigterm_preempt": _sigterm,
    "kill_worker_random": _taken_over,
    "kill_run_and_workers": _taken_over,
    "ckpt_truncate": _ckpt,
    "ckpt_bitflip": _ckpt,
    "ckpt_delete": _ckpt,
    "sqlite_lock_long": _lock_long,
    "sqlite_deleted": _sqlite_deleted,
    "bad_device": _bad_device,
    "foreign_file": _foreign_file,
    "sick_worker": _sick,
    **{k: _netns for k in NETNS},
    **{k: _disk for k in DISK},
}
