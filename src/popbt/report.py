"""Reading an experiment back: the Python API behind ``popbt list``, ``status`` and ``best``,
and the tables that show them."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import analysis
from .errors import ConfigError, CorruptCheckpoint, NotFound
from .history import open_experiment, open_reader
from .store import DONE, Event, Experiment, ExperimentStatus, Head, Progress, Row


@dataclass(frozen=True)
class Status:
    experiment: Experiment
    progress: Progress
    population: list[Row]  # each member's current row (what it trains next, or its last)
    events: list[Event]
    heads: list[Head] = field(default_factory=list)  # each member's latest result

    def to_json(self) -> dict[str, Any]:
        """``popbt status --json``: the experiment, its progress and its population."""
        cfg, p = self.experiment.config, self.progress
        heads = {h.member: h for h in self.heads}
        members = []
        for r in self.population:
            h = heads.get(r.member)
            members.append(
                {
                    "member": r.member,
                    "age": h.age if h else None,  # the latest interval it has a result for
                    "score": h.score if h else None,  # that result's score
                    "best_seen": h.best_seen if h else None,
                    "interval": r.interval,
                    "state": r.state,
                    "hparams": r.hparams,
                    "parent": None if r.parent is None else {"member": r.parent, "interval": r.parent_interval},
                    "worker": r.worker,
                    "device": r.device,
                    "error": r.error,
                }
            )
        return {
            "experiment": self.experiment.name,
            "status": self.experiment.status,
            "metric": cfg.metric,
            "mode": cfg.mode,
            "progress": {"done": p.done, "total": p.total, "running": p.running, "given_up": p.failed},
            "best": None if p.best_member is None else {"member": p.best_member, "score": p.best_score},
            "best_score_seen": p.best_seen,
            "population": members,
            "events": [
                {"kind": e.kind, "member": e.member, "interval": e.interval, "message": e.message} for e in self.events
            ],
        }


def experiments(storage: str | None = None, dir: str | os.PathLike | None = None) -> list[tuple[Experiment, Progress]]:
    with open_reader(storage, dir) as store:
        return [(e, store.progress(e.id)) for e in store.experiments()]


def status(experiment: str = "latest", storage: str | None = None, dir: str | os.PathLike | None = None) -> Status:
    with open_experiment(experiment, storage, dir) as (store, exp):
        return Status(
            exp,
            store.progress(exp.id),
            analysis.population(store.history(exp.id)),
            store.events(exp.id, limit=10),
            store.heads(exp.id),
        )


def best(
    experiment: str = "latest",
    storage: str | None = None,
    dir: str | os.PathLike | None = None,
    seen: bool = False,
) -> dict[str, Any] | None:
    """The best model as JSON-ready data (experiment, member, score, weights, schedule): the
    best final model (the best so far while the run goes on), or with ``seen`` the best score
    ever reported, whose weights exist only if the experiment kept them (``--keep-best``)."""
    with open_experiment(experiment, storage, dir) as (store, exp):
        rows = store.history(exp.id)
        found = (analysis.best_seen if seen else analysis.best)(rows, exp.config)
        live = {c.path for c in store.live_checkpoints(exp.id)}
    if found is None:
        return None
    data = found.to_json(exp.name, exp.config.metric)
    data["finished"] = exp.status == ExperimentStatus.FINISHED
    data["kind"] = "best score seen" if seen else "best final model" if data["finished"] else "best model so far"
    if data["weights"] not in live:
        data["weights"] = None  # deleted: only final models (and the best seen, with --keep-best) are kept
    return data


def save_weights(
    target: str | os.PathLike,
    experiment: str = "latest",
    storage: str | None = None,
    dir: str | os.PathLike | None = None,
    seen: bool = False,
) -> Path:
    """Write the best model's checkpoint to ``target`` (atomically, checksum verified),
    wherever checkpoints live: a shared directory or the database (``--checkpoints db``)."""
    data = best(experiment, storage, dir, seen=seen)
    if data is None:
        raise NotFound(f"experiment {experiment!r} has no results yet")
    if data["weights"] is None:
        why = "" if not seen else "; run with --keep-best to keep the best score's checkpoint"
        raise NotFound(f"the checkpoint of {data['kind']} (member {data['member']}) was not kept{why}")
    with open_experiment(experiment, storage, dir) as (store, exp):
        [ckpt] = [c for c in store.live_checkpoints(exp.id) if c.path == data["weights"]]
        blob = store.checkpoint_data(ckpt) if exp.checkpoints_in_db else Path(ckpt.path).read_bytes()
    if hashlib.sha256(blob).hexdigest() != ckpt.sha256:
        raise CorruptCheckpoint(f"checkpoint {ckpt.path} is corrupt: its sha256 does not match")
    path = Path(target).absolute()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def errors(experiment: str = "latest", storage: str | None = None, dir: str | os.PathLike | None = None) -> list[Event]:
    """Every failure of user code in the experiment, oldest first, with its traceback; and the
    events that say a worker stopped or the run failed."""
    with open_experiment(experiment, storage, dir) as (store, exp):
        return store.events(exp.id, limit=10**6, kinds=("failure", "worker_fault", "run_failed"))


def print_errors(console: Console, events: list[Event]) -> None:
    """Each failure once per distinct traceback: the first occurrence in full, then where
    else the same one happened."""
    if not events:
        console.print("no failures", highlight=False)
        return
    shown: dict[str, list[Event]] = {}
    for ev in events:
        shown.setdefault(ev.detail or f"{ev.kind}: {ev.message}", []).append(ev)
    for group in shown.values():
        first = group[0]
        where = "the experiment" if first.member < 0 else f"member {first.member} interval {first.interval}"
        console.print(f"\n{first.kind} at {where}: {first.message}", highlight=False, markup=False, soft_wrap=True)
        if first.detail:
            console.print(first.detail, highlight=False, markup=False, soft_wrap=True)
        if len(group) > 1:
            others = ", ".join(f"member {e.member} interval {e.interval}" for e in group[1:])
            console.print(f"the same at {others}", highlight=False, markup=False, soft_wrap=True)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def experiments_table(items: list[tuple[Experiment, Progress]]) -> Table:
    """One row per experiment: its best model (final once finished, so far before) and,
    labelled as such, the best score ever seen."""
    table = Table(title="experiments")
    for col in ("name", "status", "mode", "population", "intervals done", "best model", "best score seen"):
        table.add_column(col)
    for exp, p in items:
        cfg = exp.config
        best = ""
        if p.best_score is not None:
            best = f"{cfg.metric} {fmt(p.best_score)} (member {p.best_member}{'' if p.finished else ', so far'})"
        mode = "sync" if cfg.sync else "async"
        table.add_row(exp.name, exp.status, mode, str(cfg.population), f"{p.done}/{p.total}", best, fmt(p.best_seen))
    return table


def status_table(st: Status) -> Table:
    """The population now: each member's latest result (its age and score) next to what it
    trains next (interval, hyperparameters, state, the checkpoint it starts from)."""
    cfg = st.experiment.config
    p = st.progress
    table = Table(title=f"{st.experiment.name}: {st.experiment.status}, {p.done}/{p.total} intervals")
    names = list(cfg.space)
    heads = {h.member: h for h in st.heads}
    for col in ("member", "age", f"latest {cfg.metric}", "interval", *names, "state", "parent", "device"):
        table.add_column(col, justify="right" if col not in ("state", "device") else "left")
    for r in st.population:
        h = heads.get(r.member)
        parent = f"{r.parent}@{r.parent_interval}" if r.parent is not None and r.parent != r.member else ""
        state = r.state if not r.error or r.state == DONE else f"{r.state} ({r.error})"
        table.add_row(
            str(r.member),
            "" if h is None or h.age < 0 else str(h.age),
            "" if h is None else fmt(h.score),
            str(r.interval),
            *(fmt(r.hparams.get(n)) for n in names),
            state,
            parent,
            r.device or "",
        )
    return table


def print_best(console: Console, data: dict[str, Any], hint: bool = False) -> None:
    verdict = {"best final model": "best", "best model so far": "best so far"}.get(data["kind"], data["kind"])
    console.print(
        f"{verdict}: member {data['member']} of {data['experiment']}, "
        f"{data['metric']} {data['score']:.6g} at interval {data['interval']}",
        highlight=False,
    )
    schedule = data["schedule"]
    names = list(schedule[0]["hparams"]) if schedule else []
    table = Table(title="its hyperparameter schedule (following its ancestry through exploits)")
    for col in ("interval", "trained as member", *names, data["metric"]):
        table.add_column(col, justify="right")
    for step in schedule:
        table.add_row(
            str(step["interval"]), str(step["member"]), *(fmt(step["hparams"][n]) for n in names), fmt(step["score"])
        )
    console.print(table)
    weights = data["weights"] or "not kept (only final models are, and with --keep-best the best score seen)"
    console.print(f"weights: {weights}", highlight=False, soft_wrap=True)
    if hint and data["weights"]:
        console.print(
            "load them with: popbt.torch.load_weights(model, path), or torch.load(path, weights_only=True)['model']",
            highlight=False,
        )
