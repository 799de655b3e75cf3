"""Fault-injection campaign for popbt: nothing lost, nothing corrupted, nothing stalled.

    .venv/bin/python chaos/campaign.py [--seed S] [--faults N] [--backends sqlite,postgresql]
        [--workdir DIR] [--only RUN ...] [--kinds KIND,...]

A seeded plan (chaos/plan.py) of small runs of chaos/spec.py, each with many faults, carried
out by chaos/run.py, which records what happened; chaos/verdict.py judges each record. There
is no excuse list: a fault popbt does not handle fails the campaign. Exit status 1 when
any run has a problem (a result missing or duplicated, a corrupt checkpoint referenced, a
foreign file deleted or loaded, a stall past 2 leases beyond by-design waits, an unreported
fault, anything else unexpected), or when this machine cannot inject a kind of fault under
CI=true; 2 for bad options.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pgcluster  # noqa: E402
import verdict  # noqa: E402
from plan import DESCRIPTION, DISK, IN_SPEC, NETNS, WAITS_BY_DESIGN, make_plan  # noqa: E402
from run import Link, Run  # noqa: E402


def unavailable(backends: list[str]) -> dict[str, str]:
    """Kinds of fault (or backends) this machine cannot inject, and why."""
    out = {}
    if "postgresql" in backends:
        why = pgcluster.why_not()
        if why:
            out["postgresql"] = why
        elif Link.why_not():
            out.update({k: Link.why_not() for k in NETNS})
    if os.geteuid() != 0 or not shutil.which("mount"):
        out.update({k: "mounting a tmpfs needs root and mount(8)" for k in DISK})
    return out


def table(headers: list[str], rows: list[list]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def kinds_table(judged: list[tuple[dict, verdict.Verdict]]) -> tuple[str, Counter]:
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for record, v in judged:
        for f in record["faults"]:
            if not f["injected"]:
                continue
            c = by_kind[f["kind"]]
            c["injected"] += 1
            c[record["run"]["backend"]] += 1
            c[v.outcomes[f["id"]][0]] += 1
    rows, total = [], Counter()
    for kind in sorted(by_kind, key=lambda k: (k not in IN_SPEC, k)):
        c = by_kind[kind]
        total.update(c)
        rows.append([kind, DESCRIPTION[kind], *(c[x] for x in COLUMNS)])
    rows.append(["**total**", "", *(total[x] for x in COLUMNS)])
    headers = ["fault", "what", "injected", "sqlite", "postgresql", "reported", "no harm", "unreported"]
    return table(headers, rows), total


COLUMNS = ("injected", "sqlite", "postgresql", verdict.REPORTED, verdict.NO_HARM, verdict.UNREPORTED)


def summarize(judged: list[tuple[dict, verdict.Verdict]], seed: int, minutes: float, skipped: dict) -> tuple[str, bool]:
    faults, total = kinds_table(judged)
    fig = Counter()
    for _, v in judged:
        fig.update({k: v.figures[k] for k in v.figures if k not in ("longest_stall", "longest_stall_leases")})
    worst = max(judged, key=lambda x: x[1].figures["longest_stall_leases"], default=None)
    longest = (
        f"{worst[1].figures['longest_stall']:.1f} s = {worst[1].figures['longest_stall_leases']:.2f} leases "
        f"(run {worst[0]['run']['index']:02d})"
        if worst
        else "-"
    )
    problems = sum(len(v.problems) for _, v in judged)
    finished = sum(r.get("status") == "finished" and not r["hung"] for r, _ in judged)
    stopped = sum(bool(r.get("deleted")) and not r["hung"] for r, _ in judged)
    totals = table(
        ["check", "value"],
        [
            ["runs finished / stopped by their database's deletion", f"{finished} / {stopped} of {len(judged)}"],
            ["(member, interval) results checked", fig["checked"]],
            ["results missing (lost)", fig["missing"]],
            ["results duplicated", fig["duplicated"]],
            ["corrupt or missing checkpoints referenced", fig["corrupt"]],
            [
                "foreign files deleted or changed / loaded",
                f"{fig['foreign_deleted']} / {fig['foreign_loaded']} of {fig['foreign']}",
            ],
            ["longest stretch without a result", longest],
            ["runs stalled past 2 leases (beyond by-design waits)", fig["stalled"]],
            ["intervals failed (member given up, reported)", f"{fig['failed']} ({fig['gave_up']} members)"],
            ["faults unreported", total[verdict.UNREPORTED]],
            ["problems (all kinds)", problems],
            ["popbt run relaunched after its kill / by the campaign", sum(r["launches"] - 1 for r, _ in judged)],
            ["workers replaced after dying", sum(r["replacements"] for r, _ in judged)],
            ["orphan checkpoint files left (not referenced)", fig["orphans"]],
        ],
    )
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    ok = problems == 0 and not (skipped and ci)
    text = [
        f"## popbt chaos campaign: seed {seed}, {total['injected']} faults, {len(judged)} runs, {minutes:.1f} min",
        "",
        faults,
        "",
        totals,
        "",
        "By-design waits (a stretch may last 2 leases plus their time): " + ", ".join(sorted(WAITS_BY_DESIGN)),
    ]
    if skipped:
        text += ["", "Not injected on this machine" + (" (a failure under CI)" if ci else "") + ":"]
        text += [f"- {k}: {why}" for k, why in sorted(skipped.items())]
    text += ["", "verdict: " + ("PASS: nothing lost, nothing corrupted, nothing stalled" if ok else "FAIL")]
    return "\n".join(text), ok


def crashed(p, e: Exception) -> dict:
    """The record of a run the campaign could not carry out or collect."""
    return dict(
        run=p.as_dict(),
        faults=[asdict(f) for f in p.faults],
        driver=[f"the campaign failed on this run: {type(e).__name__}: {e}"[:400]],
        hung=False,
        status=None,
        elapsed=0.0,
        launches=1,
        replacements=0,
    )


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--faults", type=int, default=300, help="faults to inject, at least (default 300)")
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--workdir", help="keep every run's files here (default: a temporary directory, removed)")
    ap.add_argument("--only", type=int, nargs="*", help="run only these runs of the plan (for debugging)")
    ap.add_argument("--kinds", help="run only the planned runs with one of these kinds of fault, e.g. disk_full")
    ap.add_argument("--port", type=int, default=54331, help="port of the throwaway PostgreSQL cluster")
    args = ap.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in args.backends:
        if b not in ("sqlite", "postgresql"):
            ap.error(f"unknown backend {b!r}")
    args.kinds = set(args.kinds.split(",")) if args.kinds else None
    if args.kinds and args.kinds - set(DESCRIPTION):
        ap.error(f"unknown kinds {sorted(args.kinds - set(DESCRIPTION))}")
    if args.faults < 1:
        ap.error("--faults must be at least 1")
    return args


def report_run(record: dict, v: verdict.Verdict, say) -> None:
    fired = sum(f["injected"] for f in record["faults"])
    end = "stopped (database deleted)" if record.get("deleted") else record.get("status") or "?"
    f = v.figures
    say(
        f"{record['run']['label']}: {fired}/{len(record['faults'])} faults, {end} in {record['elapsed']:.0f} s; "
        f"missing {f['missing']}, duplicated {f['duplicated']}, corrupt {f['corrupt']}, failed {f['failed']}, "
        f"longest stall {f['longest_stall']:.1f} s" + "".join(f"\n    ! {p}" for p in v.problems)
    )


def main(argv=None) -> int:
    args = parse(argv)
    say = lambda text: print(text, flush=True)  # noqa: E731
    skipped = unavailable(args.backends)
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    for k, why in sorted(skipped.items()):
        say(f"chaos: cannot inject {k} here: {why}" + ("; under CI that is a failure" if ci else "; left out"))
    if skipped and ci:
        return 1
    backends = [b for b in args.backends if b not in skipped] or ["sqlite"]
    root = Path(args.workdir or tempfile.mkdtemp(prefix="popbt-chaos-")).absolute()
    root.mkdir(parents=True, exist_ok=True)
    without = frozenset(skipped)
    plan = make_plan(args.seed, args.faults, backends, without)
    if args.only is not None:
        plan = [p for p in plan if p.index in args.only]
    if args.kinds:
        plan = [p for p in plan if any(f.kind in args.kinds for f in p.faults)]
    say(
        f"chaos: seed {args.seed}, {len(plan)} runs planned with {sum(len(p.faults) for p in plan)} faults, "
        f"backends {','.join(backends)}; files in {root}"
    )
    began = time.monotonic()
    judged: list[tuple[dict, verdict.Verdict]] = []
    cluster = link = None
    try:
        if "postgresql" in backends:
            if not set(NETNS) & without:
                link = Link().create()
            port = pgcluster.free_port(args.port)
            cluster = pgcluster.Cluster(port, also_listen=link and Link.ROOT_IP).start()
        queue = list(plan)
        extra_index = max((p.index for p in plan), default=-1) + 1
        while queue:
            p = queue.pop(0)
            try:
                record = Run(p, root, cluster if p.backend == "postgresql" else None, link).execute()
            except Exception as e:  # nothing to judge but that: the run fails
                record = crashed(p, e)
            v = verdict.judge(record)
            judged.append((record, v))
            report_run(record, v, say)
            injected = sum(f["injected"] for r, _ in judged for f in r["faults"])
            if not queue and args.only is None and args.kinds is None and injected < args.faults:
                more = make_plan(args.seed + extra_index, args.faults - injected, backends, without)[0]
                more.index = extra_index
                for f in more.faults:
                    f.id = f"r{extra_index:02d}" + f.id[3:]
                extra_index += 1
                queue.append(more)
    finally:
        if cluster is not None:
            cluster.stop()
        if link is not None:
            link.remove()
    text, ok = summarize(judged, args.seed, (time.monotonic() - began) / 60, skipped)
    say("")
    say(text)
    if args.workdir is None and ok:
        shutil.rmtree(root, ignore_errors=True)
    elif not ok:
        say(f"\nrun files kept in {root}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
