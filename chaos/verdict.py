"""The campaign's verdict: a pure function of what one run left behind.

``judge(record)`` takes the plain record chaos/run.py collects (rows, events, logs, checkpoint
hashes, file listings, exit statuses, the faults and what the driver saw of them) and returns
each fault's outcome (chaos/judges.py) and the list of problems. Nothing is excused: any
problem fails the campaign. tests/test_chaos_verdict.py judges hand-built records.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from facts import (  # chaos/ is on sys.path (campaign.py, the tests)
    DELETED,
    NO_HARM,
    REPORTED,
    RETRY_DELAY,
    STALL_LEASES,
    STOP_LINE,
    STOPPED,
    UNREPORTED,
    Facts,
    doomed,
    facts_of,
)
from judges import JUDGES, no_harm
from plan import WAITS_BY_DESIGN

__all__ = ["NO_HARM", "REPORTED", "UNREPORTED", "Verdict", "judge"]


@dataclass
class Verdict:
    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)  # fault id -> (outcome, note)
    problems: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)


def judge(record: dict) -> Verdict:
    """Every problem of one run, and what each fault came to."""
    v = Verdict()
    facts = facts_of(record)
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
        outcome, note = JUDGES.get(f["kind"], no_harm)(f, facts)
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
        if not doomed(facts, m, k):
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
