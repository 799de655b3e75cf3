"""What the campaign's verdict reads: one run's record, indexed, and the words it judges with.

chaos/verdict.py judges a run as a whole, chaos/judges.py each fault; both read a ``Facts``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from plan import DISK  # chaos/ is on sys.path (campaign.py, the tests)

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
BROKEN_DISK = set(DISK) | {"save_half_oserror"}  # ENOSPC from a save: the disk's fault
# why a launcher's worker stopped (popbt run's last lines) -> the faults that explain it
STOPPED = {
    "killed by SIGKILL": KILLS,
    "cannot work here": BROKEN_DISK,
    "stopped by SIGTERM": {"sigterm_preempt"},
    "exit status 2": {"sqlite_lock_long", "sqlite_deleted"},
}
STOP_LINE = r"^worker \d+ (killed by SIGKILL|cannot work here|stopped by SIGTERM|exit status \d+)"


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


def facts_of(record: dict) -> Facts:
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
        killed=killed_pids(record),
        cut_off={pid_of(w["name"]) for w in record.get("workers", []) if w.get("fault") in cut},
        injected={f["kind"] for f in record["faults"] if f["injected"]},
    )


def killed_pids(record: dict, but: str | None = None) -> set:
    """The pids the campaign SIGKILLed (``but``: leaving out what that fault killed)."""
    killed = set()
    for f in record["faults"]:
        if f["kind"] in KILLS and f["injected"] and f["id"] != but:
            killed |= set(f["pids"]) | {p for p, _, _ in f.get("firings", [])}
    return killed


def pid_of(name: str | None) -> int | None:
    """The pid in a worker's name (host:pid)."""
    tail = str(name).rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


def doomed(facts: Facts, m: int, k: int) -> bool:
    """The campaign makes (m, k) fail on every worker that trains it (a member that keeps
    failing, a poison interval): it is replaced and given up whoever trains it, so a sick
    worker's share of its attempts changes nothing of its fate."""
    return any(
        f["kind"] in ("failing_member", "poison_task") and f["injected"] and (f["member"], f["interval"]) == (m, k)
        for f in facts.record["faults"]
    )
