"""What the dashboard shows, as JSON-ready dicts computed from an experiment's history.

Every number, label and highlight the page draws is decided here, from ``History`` (and the
store's recent events) alone; the page's JavaScript only lays it out. So what the dashboard
claims (which model is the best *final* one, whose ancestry is highlighted, who copied whom)
is tested without a browser, and these functions are pure: no store, no clock, no web library.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from .. import analysis, plotdata
from ..experiment import ExperimentConfig
from ..history import History
from ..space import Choice, Domain, IntUniform, LogUniform
from ..store import ACTIVE, DONE, FAILED, PENDING, RUNNING, WAITING, Event, ExperimentStatus, Row

RECENT_EVENTS = 20
EVENT_KINDS = {  # the store's event kinds, in words
    "failure": "failure",
    "lease_expired": "expired lease",
    "nonfinite": "non-finite score",
    "corrupt_checkpoint": "corrupt checkpoint",
    "replaced": "replaced",
    "gave_up": "given up",
}


# -- numbers -------------------------------------------------------------------------


def number(value: Any) -> float | None:
    """A float that JSON can carry: NaN and infinities (never stored as scores) become None."""
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def text(value: Any) -> str:
    """A value as the page prints it: floats to 4 significant digits, a Choice by its value."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def score_text(row: Row | None) -> str:
    if row is None:
        return ""
    if row.state == DONE and row.score is None:
        return "non-finite"  # recorded as the worst score
    return text(row.score)


# -- the space -----------------------------------------------------------------------


def scale(domain: Domain) -> str:
    if isinstance(domain, LogUniform):
        return "log"
    if isinstance(domain, IntUniform):
        return "int"
    if isinstance(domain, Choice):
        return "choice"
    return "linear"


def axis(name: str, domain: Domain) -> dict[str, Any]:
    """How the page plots one hyperparameter: its scale, and a Choice's options by name."""
    out: dict[str, Any] = {"name": name, "kind": scale(domain)}
    if isinstance(domain, Choice):
        out["options"] = [text(o) for o in domain.options]
    else:
        out["low"], out["high"] = number(domain.low), number(domain.high)
    return out


def coordinate(domain: Domain | None, value: Any) -> float | None:
    """Where a value sits on its axis: a Choice by the position of its option."""
    if isinstance(domain, Choice):
        return float(domain.options.index(value)) if value in domain.options else None
    return number(value)


def hparam_texts(config: ExperimentConfig, hparams: dict[str, Any]) -> dict[str, str]:
    return {name: text(hparams.get(name)) for name in config.space}


# -- progress and the best model -----------------------------------------------------


def finished(history: History) -> bool:
    return history.experiment.status == ExperimentStatus.FINISHED


def progress(history: History) -> dict[str, Any]:
    """Intervals done out of the total, what is running, retrying or given up, and the latest
    interval any member completed. ``failed`` counts tasks given up, as ``popbt list`` does."""
    rows, cfg = history.rows, history.config
    states = Counter(r.state for r in rows)
    total = cfg.population * cfg.intervals
    done = states[DONE]
    latest = max((r.interval for r in rows if r.state == DONE), default=None)
    return {
        "done": done,
        "total": total,
        "fraction": done / total if total else 0.0,
        "running": states[RUNNING],
        "pending": states[PENDING],
        "waiting": states[WAITING],
        "failed": states[FAILED],
        "retrying": sum(1 for r in rows if r.state in ACTIVE and r.attempts > 0),
        "latest_interval": latest,
        "finished": finished(history),
    }


def best_final(history: History) -> dict[str, Any] | None:
    """The best model as PBT defines the result: the best score at the latest interval any
    member completed (``analysis.best``). Labelled final only once the run is finished."""
    found = analysis.best(history.rows, history.config)
    if found is None:
        return None
    done = finished(history)
    label = "best final model" if done else "best model so far"
    last = found.schedule[-1].hparams if found.schedule else {}
    return {
        "label": label,
        "final": done,
        "member": found.member,
        "interval": found.interval,
        "score": number(found.score),
        "score_text": text(found.score),
        "hparams": hparam_texts(history.config, last),
    }


def best_seen(history: History) -> dict[str, Any] | None:
    """The best score any member reached at any interval: not the result, so labelled apart."""
    scored = plotdata.done_rows(history.rows)
    if not scored:
        return None
    sign = 1 if history.config.mode == "max" else -1
    top = max(scored, key=lambda r: (sign * r.score, -r.interval, -r.member))
    return {
        "label": "best score seen",
        "member": top.member,
        "interval": top.interval,
        "score": number(top.score),
        "score_text": text(top.score),
    }


def summary(history: History) -> dict[str, Any]:
    """One experiment's line in the list."""
    exp, cfg = history.experiment, history.config
    return {
        "name": exp.name,
        "status": exp.status,
        "finished": finished(history),
        "mode": "sync" if cfg.sync else "async",
        "search": cfg.search,
        "metric": cfg.metric,
        "direction": cfg.mode,
        "population": cfg.population,
        "intervals": cfg.intervals,
        "created_at": exp.created_at,
        "progress": progress(history),
        "best": best_final(history),
    }


def experiments(histories: Iterable[History]) -> dict[str, Any]:
    """The list page: every experiment, oldest first (as ``popbt list``)."""
    return {"experiments": [summary(h) for h in histories]}


# -- the population table ------------------------------------------------------------


def state_detail(row: Row) -> str:
    """What a member's current task is doing, in a few words."""
    if row.state == RUNNING:
        where = f" on {row.worker}" if row.worker else ""
        return f"training interval {row.interval}{where}"
    if row.state == WAITING:
        return f"interval {row.interval} waits for its exploit decision"
    if row.state == PENDING:
        retry = f", retry {row.attempts}" if row.attempts else ""
        return f"interval {row.interval} queued{retry}"
    if row.state == FAILED:
        return f"given up at interval {row.interval}" + (f": {row.error}" if row.error else "")
    return ""


def population(history: History) -> list[dict[str, Any]]:
    """One line per member: its age (the latest interval it completed) and score there, the
    hyperparameters and parent of its current task (of its last result while that task waits
    for its decision), and what it is doing now."""
    rows, cfg = history.rows, history.config
    last = analysis.last_done(rows)
    found = analysis.best(rows, cfg)
    out = []
    for current in analysis.population(rows):
        m = current.member
        scored = last.get(m)
        shown = current if current.hparams or scored is None else scored
        copied = shown.parent is not None and shown.parent != m
        out.append(
            {
                "member": m,
                "age": scored.interval if scored else None,
                "score": number(scored.score) if scored else None,
                "score_text": score_text(scored),
                "hparams": hparam_texts(cfg, shown.hparams),
                "state": current.state,
                "detail": state_detail(current),
                "parent": f"{shown.parent}@{shown.parent_interval}" if copied else "",
                "best": found is not None and found.member == m,
            }
        )
    return out


# -- figures -------------------------------------------------------------------------


def curves(history: History) -> dict[str, Any]:
    """Each member's score curve, and the chain of results that built the best model."""
    data = plotdata.scores_data(history.rows, history.config)
    return {
        "metric": data.metric,
        "direction": data.mode,
        "intervals": history.config.intervals,
        "members": [{"member": m, "points": [[p.interval, p.score] for p in pts]} for m, pts in data.curves.items()],
        "best": [[p.member, p.interval, p.score] for p in data.best],
        "jumps": [
            {"donor": j.donor, "donor_interval": j.donor_interval, "member": j.member, "interval": j.interval}
            for j in data.jumps
        ],
    }


def scatter(history: History) -> dict[str, Any]:
    """Every trained (member, interval) placed by its hyperparameters, coloured by its score.
    The page picks two axes (the first two hyperparameters by default; with one, the score)."""
    cfg = history.config
    space = cfg.space
    found = analysis.best(history.rows, cfg)
    chain = analysis.ancestry(history.rows, found.member, found.interval) if found else []
    points = [
        {
            "member": r.member,
            "interval": r.interval,
            "score": r.score,
            "values": [coordinate(space[n], r.hparams.get(n)) for n in space],
        }
        for r in sorted(plotdata.done_rows(history.rows), key=lambda r: (r.member, r.interval))
    ]
    return {
        "metric": cfg.metric,
        "direction": cfg.mode,
        "axes": [axis(n, d) for n, d in space.items()],
        "points": points,
        "best": [[r.member, r.interval] for r in chain],
    }


def change_texts(config: ExperimentConfig, before: dict, after: dict, rules: dict[str, str]) -> list[dict[str, str]]:
    return [
        {"name": n, "rule": rules.get(n, ""), "before": text(before.get(n)), "after": text(after.get(n))}
        for n in config.space
        if n in rules or before.get(n) != after.get(n)
    ]


def lineage(history: History) -> dict[str, Any]:
    """The family tree (results, a member training on, exploits, the best model's ancestry)
    and every copy in words: who copied whom, at which interval, and what explore changed."""
    cfg = history.config
    data = plotdata.lineage_data(history.rows, history.exploits, cfg)
    on_best = {(s.src_member, s.src_interval, s.member, s.interval) for s in data.best}
    return {
        "members": data.members,
        "intervals": cfg.intervals,
        "nodes": [[p.member, p.interval, p.score] for p in data.nodes],
        "own": [list(s) for s in data.own],
        "best": [list(s) for s in data.best],
        "copies": [
            {
                "member": x.member,
                "interval": x.interval,
                "donor": x.donor,
                "donor_interval": x.donor_interval,
                "reason": x.reason,
                "score_text": text(x.score),
                "donor_score_text": text(x.donor_score),
                "changes": change_texts(cfg, x.hparams_before, x.hparams_after, x.changes),
                "at": x.created_at,
                "on_best": (x.donor, x.donor_interval, x.member, x.interval) in on_best,
            }
            for x in history.exploits
        ],
    }


def recent_events(events: Sequence[Event], limit: int = RECENT_EVENTS) -> list[dict[str, Any]]:
    """The store's latest events (failures, expired leases, non-finite scores, corrupt
    checkpoints, replacements, members given up), newest first, each kind in words."""
    return [
        {
            "at": e.created_at,
            "member": e.member,
            "interval": e.interval,
            "kind": e.kind,
            "label": EVENT_KINDS.get(e.kind, e.kind.replace("_", " ")),
            "message": e.message,
        }
        for e in list(events)[::-1][:limit]
    ]


def experiment(history: History, events: Sequence[Event] = ()) -> dict[str, Any]:
    """Everything the experiment page shows, in one document the page polls."""
    cfg = history.config
    return {
        **summary(history),
        "best_seen": best_seen(history),
        "hparams": [axis(n, d) for n, d in cfg.space.items()],
        "population_table": population(history),
        "curves": curves(history),
        "scatter": scatter(history),
        "lineage": lineage(history),
        "events": recent_events(events),
    }
