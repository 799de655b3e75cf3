"""What each injected fault came to: reported (the line popbt should write is there), no harm
(nothing needed reporting), or unreported (a problem). One pure function per kind of fault,
over the run's ``Facts``; ``JUDGES`` maps each kind to its judge.
"""

from __future__ import annotations

import re

from facts import (  # chaos/ is on sys.path (campaign.py, the tests)
    BROKEN_DISK,
    MAX_ATTEMPTS,
    NO_HARM,
    REPORTED,
    UNREACHABLE,
    UNREPORTED,
    Facts,
    doomed,
    killed_pids,
    pid_of,
)
from plan import DISK, IN_SPEC, NETNS


def no_harm(f: dict, facts: Facts) -> tuple[str, str]:
    """The judge of faults that need no line: they happened, and nothing needed reporting."""
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
    if pid_of(w.get("name")) in killed_pids(facts.record, but=f["id"]):
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
        if (charged and len(others) < MAX_ATTEMPTS - 1 or given_up) and not corrupt and not doomed(facts, m, k):
            return UNREPORTED, f"member {m} paid for the sick worker at interval {k}"
    if w.get("rc") == 3 and "in a row while other workers succeeded" in w.get("out", ""):
        if facts.event("worker_fault", worker=name):
            return REPORTED, f"it blamed itself after {len(mine)} failures"
        return UNREPORTED, "exit 3 but no worker_fault event"
    if w.get("rc") == 0 and len(mine) < MAX_ATTEMPTS:
        return NO_HARM, f"the run ended after {len(mine)} of its failures"
    if pid_of(name) in facts.killed:  # a member that kills whoever trains it (poison_task)
        return NO_HARM, f"another fault killed it after {len(mine)} of its failures"
    if _stopped_by_disk(w, facts):
        return NO_HARM, f"a broken disk stopped it (exit 3) after {len(mine)} of its failures"
    return UNREPORTED, f"exit {w.get('rc')} after {len(mine)} failures"


def _stopped_by_disk(w: dict, facts: Facts) -> bool:
    """A special worker (sick, cut off) that met a disk the campaign broke first: it stopped
    with exit 3 and one line saying so, as any worker must."""
    return bool(facts.injected & BROKEN_DISK) and w.get("rc") == 3 and "is unusable" in w.get("out", "")


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
