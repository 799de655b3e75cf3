"""The chaos campaign's verdict, on hand-built records: a clean run passes, and each way of
losing, duplicating, corrupting, deleting, stalling or keeping quiet fails it."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "chaos"))

import verdict  # noqa: E402

HOST = "box"
T0 = 1000.0


def fault(id_, kind, **kw) -> dict:
    base = dict(
        id=id_,
        kind=kind,
        member=None,
        interval=None,
        injected=True,
        detail="",
        pids=[],
        firings=[],
        expect_takeovers=[],
        expect_corrupt=None,
        window=[],
        facts={},
    )
    return {**base, **kw}


def clean() -> dict:
    """2 members x 3 intervals, lease 2 s, a result every 0.5 s; one worker killed mid-interval
    (taken over), one foreign file left alone, one checkpoint bit-flipped and found."""
    rows = []
    for k in range(3):
        for m in range(2):
            t = T0 + 0.5 * (2 * k + m + 1)
            worker = f"{HOST}:11" if (m, k) != (1, 1) else f"{HOST}:12"
            rows.append(
                dict(member=m, interval=k, state="done", worker=worker, checkpoint=f"/c/m{m}-i{k}.ckpt", attempts=0)
                | {"finished_at": t}
            )
    events = [
        dict(kind="lease_expired", member=1, interval=1, message=f"lease of {HOST}:10 expired; {HOST}:12 takes over")
        | {"worker": f"{HOST}:12", "at": T0 + 1.9},
        dict(kind="corrupt_checkpoint", member=0, interval=2, message="checkpoint /c/m0-i1.ckpt is corrupt")
        | {"worker": f"{HOST}:11", "at": T0 + 2.6},
    ]
    status = "\n".join(f"  {e['kind']}: member {e['member']} interval {e['interval']}: {e['message']}" for e in events)
    return dict(
        run=dict(index=0, backend="sqlite", population=2, intervals=3, sync=False, lease=2.0, ckpt_db=False, label="r"),
        host=HOST,
        began=T0,
        elapsed=4.0,
        hung=False,
        deleted=False,
        status="finished",
        rows=rows,
        events=events,
        live={"/c/m0-i2.ckpt": True, "/c/m1-i2.ckpt": True},
        checkpoint_keys=[[r["member"], r["interval"]] for r in rows],
        logs="",
        log_successes=[[r["member"], r["interval"]] for r in rows if r["worker"] == f"{HOST}:11"],
        status_out=status,
        status_rc=0,
        launchers=[{"rc": 0, "err": "", "killed": False}],
        workers=[],
        foreign=[dict(fault="f2", name="pretrained.ckpt", sha256="ab", now="ab", loaded=False)],
        twin=None,
        orphans=0,
        driver=[],
        faults=[
            fault("f0", "kill_in_train", member=1, interval=1, firings=[[10, 1, 1]]),
            fault("f1", "ckpt_bitflip", expect_corrupt="/c/m0-i1.ckpt"),
            fault("f2", "foreign_file", detail="pretrained.ckpt"),
        ],
    )


def test_a_clean_record_passes():
    v = verdict.judge(clean())
    assert v.problems == []
    assert v.outcomes == {
        "f0": (verdict.REPORTED, "member 1 interval 1"),
        "f1": (verdict.REPORTED, "found corrupt when loaded"),
        "f2": (verdict.NO_HARM, "pretrained.ckpt intact, never loaded"),
    }
    assert v.figures["missing"] == v.figures["duplicated"] == v.figures["corrupt"] == 0


def broken(change) -> list[str]:
    record = copy.deepcopy(clean())
    change(record)
    return verdict.judge(record).problems


def outcome(fault_id: str, change, *args) -> tuple[str, str]:
    """What fault ``fault_id`` came to in the clean record after ``change(record, *args)``."""
    record = copy.deepcopy(clean())
    change(record, *args)
    return verdict.judge(record).outcomes[fault_id]


def test_a_missing_result_fails():
    problems = broken(lambda r: r["rows"].pop(3))
    assert problems == ["result missing: member 1 interval 1"]


def test_a_duplicated_result_fails_whichever_record_shows_it():
    assert broken(lambda r: r["rows"].append(dict(r["rows"][0]))) == ["result duplicated: member 0 interval 0"]
    assert broken(lambda r: r["checkpoint_keys"].append([1, 2])) == ["result duplicated: member 1 interval 2"]
    assert broken(lambda r: r["log_successes"].append([0, 0])) == ["result duplicated: member 0 interval 0"]


def test_a_corrupt_referenced_checkpoint_fails():
    problems = broken(lambda r: r["live"].update({"/c/m1-i2.ckpt": False}))
    assert problems == ["corrupt or missing checkpoint referenced: /c/m1-i2.ckpt"]


def test_a_final_result_without_its_checkpoint_fails():
    problems = broken(lambda r: r["live"].pop("/c/m1-i2.ckpt"))
    assert problems == [
        "corrupt or missing checkpoint referenced: final result of member 1 has no live checkpoint (/c/m1-i2.ckpt)"
    ]


@pytest.mark.parametrize(
    "what, change",
    [("deleted", {"now": None}), ("changed", {"now": "cd"}), ("loaded as a checkpoint", {"loaded": True})],
)
def test_a_deleted_changed_or_loaded_foreign_file_fails(what, change):
    problems = broken(lambda r: r["foreign"][0].update(change))
    assert len(problems) == 1 and f"pretrained.ckpt was {what}" in problems[0]


def delay_the_last_results(record: dict, seconds: float) -> None:
    for r in record["rows"][-2:]:
        r["finished_at"] += seconds


def test_a_stall_past_two_leases_fails():
    problems = broken(lambda r: delay_the_last_results(r, 4.0))  # 4.5 s without a result, lease 2 s
    assert problems == ["no result for 4.5 s (allowed 4.0 s: 2 leases and by-design waits)"]


def test_a_stall_within_a_by_design_wait_passes_and_only_for_its_time():
    """A lock from 2.6 s: the stretch counts from there (5.9 s), 2 leases plus the lock's time."""

    def locked(seconds):
        def change(r):
            delay_the_last_results(r, 6.0)
            r["faults"].append(fault("f3", "sqlite_lock", window=[T0 + 2.6, T0 + 2.6 + seconds]))

        return change

    assert broken(locked(2.0)) == []
    assert broken(locked(1.0)) == ["no result for 5.9 s (allowed 5.0 s: 2 leases and by-design waits)"]


def test_a_healthy_worker_that_blames_itself_fails():
    message = "worker box:11 on cpu stops taking work: it failed 3 intervals of 2 different members in a row"
    message += " while other workers succeeded"
    event = dict(kind="worker_fault", member=-1, interval=-1, message=message, worker="box:11", at=T0 + 3)

    def blamed(r):
        r["events"].append(event)
        r["status_out"] += f"\n  worker_fault: member -1 interval -1: {message}"

    assert broken(blamed) == [f"a healthy worker blamed itself: {message}"]


def test_an_unreported_fault_fails():
    problems = broken(lambda r: r["events"].pop(0))  # the takeover of the killed worker's interval
    assert problems == ["f0 kill_in_train () unreported: member 1 interval 1: no line says so"]
    problems = broken(lambda r: r["events"].pop(1))  # the bit-flip never found, its file still live
    assert problems == []  # m0-i1 is no longer live: never loaded again, no harm
    problems = broken(lambda r: (r["events"].pop(1), r["live"].update({"/c/m0-i1.ckpt": True})))
    assert problems == ["f1 ckpt_bitflip () unreported: still live and never found corrupt"]


def test_a_member_given_up_without_a_reason_fails():
    def give_up(r):
        r["rows"][5].update(state="failed")
        r["events"].append(dict(kind="gave_up", member=1, interval=2, message="member 1 failed", worker=None, at=T0))

    problems = broken(give_up)
    assert any("member 1 given up at interval 2 for no injected reason" in p for p in problems)


def test_a_launcher_that_failed_for_no_injected_reason_fails():
    def failed(r):
        r["launchers"][0].update(rc=1, err="worker 0 cannot work here: disk\nall workers stopped")

    problems = broken(failed)
    assert len(problems) == 1 and problems[0].startswith("popbt run #1 exited 1")
    # the same, after a disk fault was injected: explained
    assert broken(lambda r: (failed(r), r["faults"].append(fault("f4", "disk_full", window=[T0, T0 + 1])))) == []


def test_a_deleted_database_must_be_said_salvaged_and_hold_every_committed_result():
    def deleted(r, **d):
        r.update(deleted=True, status="running")
        r["faults"].append(fault("f5", "sqlite_deleted", window=[T0 + 3.5]))
        r["deletion"] = dict(db_exists_after=False, salvaged=True, committed=[[0, 0], [1, 0]], said=["was deleted"]) | d

    assert broken(deleted) == []
    assert broken(lambda r: deleted(r, committed=[[0, 0], [1, 2], [1, 3]])) == [
        "result lost (committed, not in the salvaged history): member 1 interval 3"
    ]
    assert "something recreated the deleted database file" in broken(lambda r: deleted(r, db_exists_after=True))


def test_a_damaged_checkpoint_nobody_loaded_before_the_database_went_is_not_popbt_s_miss():
    """The run stopped when its sqlite file was deleted: a checkpoint the campaign had damaged
    for a task that never ran again was never loaded, so popbt could not have found it. Any
    other bad checkpoint still fails the verdict."""

    def stopped(r, bad: str):
        r.update(deleted=True, status="running")
        r["faults"] += [
            fault("f5", "sqlite_deleted", window=[T0 + 3.5]),
            fault("f6", "ckpt_truncate", detail="m1-i2.ckpt"),
        ]
        r["deletion"] = dict(db_exists_after=False, salvaged=True, committed=[[0, 0], [1, 0]], said=["was deleted"])
        r["live"][bad] = False

    assert broken(lambda r: stopped(r, "/c/m1-i2.ckpt")) == []
    assert broken(lambda r: stopped(r, "/c/m0-i2.ckpt")) == ["corrupt or missing checkpoint referenced: /c/m0-i2.ckpt"]


def test_a_worker_thawed_past_its_lease_must_not_land_its_late_result():
    """Frozen past its lease and taken over: when it thaws, its late result is refused, or
    another fault stops it first and it hands the interval back; anything else is unreported."""

    def frozen(r, logs: str):
        r["faults"][0] = fault("f0", "stop_past_lease", member=1, interval=1, firings=[[10, 1, 1]])
        r["logs"] = logs

    record = copy.deepcopy(clean())
    frozen(record, f"member 1 interval 1 handed back: worker {HOST}:10 stopped by SIGTERM; not an attempt")
    assert verdict.judge(record).outcomes["f0"][0] == verdict.REPORTED
    refused = "member 1 interval 1: lease was taken over by another worker; result discarded"
    record = copy.deepcopy(clean())
    frozen(record, refused)
    assert verdict.judge(record).outcomes["f0"][0] == verdict.REPORTED
    assert broken(lambda r: frozen(r, "")) == [
        "f0 stop_past_lease () unreported: taken over, but its late result was not refused"
    ]


def test_a_sigtermed_worker_must_hand_back_unless_another_fault_killed_it_first():
    def preempted(r, killed: bool):
        r["faults"].append(fault("f7", "sigterm_preempt", member=1, interval=1, facts={"sigterm": [99]}))
        if killed:
            r["faults"].append(fault("f8", "kill_run_and_workers", pids=[99]))

    assert outcome("f7", preempted, False) == (verdict.UNREPORTED, "no released event for the SIGTERMed worker(s) [99]")
    assert not outcome("f7", preempted, True)[1].startswith("no released event")


def test_a_lock_past_the_busy_timeout_is_said_or_waited_out():
    def locked(r, logs: str, status: str = "finished"):
        r["faults"].append(fault("f9", "sqlite_lock_long", window=[T0, T0 + 0.4]))
        r.update(logs=logs, status=status)

    assert outcome("f9", locked, "")[0] == verdict.NO_HARM  # waited out, nobody stopped
    said = "popbt: error: worker w stops taking work: the database was unreachable for longer than ..."
    assert outcome("f9", locked, said)[0] == verdict.REPORTED
    assert outcome("f9", locked, "worker w stops taking work: something else", "running")[0] == verdict.UNREPORTED


def test_an_explore_hook_failure_must_be_recorded_unless_its_worker_was_killed_or_cut_off():
    def explored(r, by: str | None):
        r["faults"].append(fault("f5", "raise_explore", firings=[[77, -1, -1]]))
        if by == "killed":
            r["faults"].append(fault("f6", "kill_worker_random", pids=[77]))
        if by == "cut off":
            r["faults"].append(fault("f6", "netns_cut", firings=[[77, 1, 2]], facts={"cut": True}))
            r["workers"].append(dict(name=f"{HOST}:77", fault="f6", rc=2, out=""))

    for by, expected in ((None, verdict.UNREPORTED), ("killed", verdict.NO_HARM), ("cut off", verdict.NO_HARM)):
        assert outcome("f5", explored, by)[0] == expected, by
    message = "member 0 cannot copy member 1: explore(hparams, rng) raised RuntimeError: chaos f5: injected"
    said = dict(kind="failure", member=0, interval=2, message=message, worker=None, at=T0 + 3)
    assert outcome("f5", lambda r: (explored(r, None), r["events"].append(said)))[0] == verdict.REPORTED


def test_a_link_cut_that_never_struck_is_no_harm_only_if_its_worker_committed_and_ended_well():
    def netns(r, rc: int, fired: bool, committed: bool):
        firings = [[12, 1, 1]] if fired else []
        r["faults"].append(fault("f5", "netns_cut_kill", firings=firings, facts={}))
        r["workers"].append(dict(name=f"{HOST}:12", fault="f5", rc=rc, out=""))
        if not committed:
            r["rows"][3]["worker"] = f"{HOST}:11"

    for rc, fired, committed, expected in (
        (0, True, True, verdict.NO_HARM),  # its result stands; the run was over before the cut
        (0, False, False, verdict.NO_HARM),  # it never saved: the run ended first
        (0, True, False, verdict.UNREPORTED),  # saved, but somebody else's result stands
        (1, True, True, verdict.UNREPORTED),  # it ended badly
    ):
        assert outcome("f5", netns, rc, fired, committed)[0] == expected, (rc, fired, committed)


def test_a_member_replaced_for_the_sick_worker_fails_unless_it_fails_everywhere_anyway():
    sick, cuda = f"{HOST}:50", "RuntimeError: CUDA error: an illegal memory access (chaos: a sick worker)"

    def replaced_for_the_sick(r, doomed: bool):
        r["faults"].append(fault("f5", "sick_worker"))
        out = f"popbt: error: worker {sick} on cpu stops taking work: it failed 3 intervals of 2 different members"
        r["workers"].append(dict(name=sick, fault="f5", role="sick", rc=3, out=out + " in a row while other workers"))
        r["workers"][-1]["out"] += " succeeded"
        own = "RuntimeError: chaos f6: injected in train"
        for n, (message, who) in enumerate(((cuda, sick), (own, f"{HOST}:11"), (cuda, sick)), start=1):
            r["events"].append(
                dict(kind="failure", member=0, interval=1, message=f"attempt {n}/3: {message}") | {"worker": who}
            )
        r["events"].append(dict(kind="replaced", member=0, interval=1, message="member 0 copies member 1", worker=None))
        r["events"].append(dict(kind="worker_fault", member=-1, interval=-1, message=out, worker=sick))
        if doomed:  # member 0 fails interval 1 on every worker: replaced whoever trains it
            r["faults"].append(fault("f6", "failing_member", member=0, interval=1, firings=[[11, 0, 1]]))

    paid = (verdict.UNREPORTED, "member 0 paid for the sick worker at interval 1")
    assert outcome("f5", replaced_for_the_sick, False) == paid
    assert outcome("f5", replaced_for_the_sick, True) == (verdict.REPORTED, "it blamed itself after 2 failures")


def test_a_sigtermed_worker_that_another_fault_killed_need_not_exit_143():
    def preempted(r, killed: bool):
        r["faults"].append(fault("f7", "sigterm_preempt", member=1, interval=1, facts={"sigterm": [12]}))
        r["workers"].append(dict(name=f"{HOST}:12", pid=12, rc=-9 if killed else 1, out=""))
        r["events"].append(
            dict(kind="released", member=1, interval=1, message="worker stopped by SIGTERM; not an attempt")
            | {"worker": f"{HOST}:12", "at": T0 + 1.0}
        )
        if killed:
            r["faults"].append(fault("f8", "kill_worker_random", pids=[12]))

    assert outcome("f7", preempted, False) == (verdict.UNREPORTED, "a preempted worker exited [1], not 143")
    assert outcome("f7", preempted, True)[0] == verdict.REPORTED


@pytest.mark.parametrize(
    "kind, why",
    [
        ("kill_ckpt_written", "worker box:13 stops taking work: checkpoint directory /c is unusable; handed back"),
        ("score_string", "worker box:13 stopped by SIGTERM; not an attempt"),  # its launcher was killed
    ],
)
def test_a_fault_in_user_code_that_another_fault_forestalled_is_no_harm(kind, why):
    def forestalled(r, handed_back: bool):
        r["faults"].append(fault("f5", kind, member=0, interval=1, firings=[[13, 0, 1]]))
        if handed_back:  # the save met the full disk before the kill point; SIGTERM came first
            r["events"].append(dict(kind="released", member=0, interval=1, message=why, worker=f"{HOST}:13"))

    assert outcome("f5", forestalled, False)[0] == verdict.UNREPORTED  # no line, nothing handed back
    assert outcome("f5", forestalled, True)[0] == verdict.NO_HARM


def test_special_workers_killed_by_a_member_that_kills_everyone_are_no_harm():
    def poisoned(r, kind: str, killed: bool):
        role = "sick" if kind == "sick_worker" else "netns:f5"
        r["faults"].append(fault("f5", kind, facts={}))
        r["workers"].append(dict(name=f"{HOST}:14", pid=14, role=role, fault="f5", rc=-9, out=""))
        if killed:
            r["faults"].append(fault("f6", "poison_task", member=0, interval=2, firings=[[14, 0, 2]], pids=[14]))

    for kind in ("sick_worker", "netns_cut"):
        assert outcome("f5", poisoned, kind, False)[0] == verdict.UNREPORTED, kind
        assert outcome("f5", poisoned, kind, True)[0] == verdict.NO_HARM, kind


def test_special_workers_stopped_by_a_broken_disk_are_no_harm_only_if_a_disk_was_broken():
    def stopped(r, kind: str, disk: bool):
        role = "sick" if kind == "sick_worker" else "netns:f5"
        out = "popbt: error: checkpoint directory /c is unusable: No space left on device"
        r["faults"].append(fault("f5", kind, facts={}))
        r["workers"].append(dict(name=f"{HOST}:15", pid=15, role=role, fault="f5", rc=3, out=out))
        if disk:
            r["faults"].append(fault("f6", "disk_full", window=[T0, T0 + 1]))

    for kind in ("sick_worker", "netns_cut"):
        assert outcome("f5", stopped, kind, False)[0] == verdict.UNREPORTED, kind
        assert outcome("f5", stopped, kind, True)[0] == verdict.NO_HARM, kind
