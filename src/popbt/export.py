"""``popbt export``: an experiment's history as CSV or JSON, for pandas, R or a spreadsheet.

One record per (member, interval): the score, every metric and every hyperparameter in a
column of its own, so ``pandas.read_csv(path)`` gives a table ready to group and plot.

Columns, in order: member, interval, state, score, the metrics (sorted by name), the
hyperparameters (in the space's order), parent, parent_interval, worker, device, attempts,
started_at, finished_at, error. Metrics and hyperparameters keep their own names; a name
that would clash with another column gets a prefix: ``metric_`` for a metric named like a
fixed column, ``hp_`` for a hyperparameter named like a fixed column or a metric. Times are
seconds since the epoch, by the database's clock; an empty cell (JSON null) means "not
recorded", e.g. the score of an interval not trained yet.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .history import History, read
from .store import Exploit, Row

FORMATS = ("csv", "json")
LEADING = ("member", "interval", "state", "score")
TRAILING = ("parent", "parent_interval", "worker", "device", "attempts", "started_at", "finished_at", "error")


def export(
    experiment: str = "latest",
    format: str = "csv",
    out: str | os.PathLike | None = None,
    storage: str | None = None,
    dir: str | os.PathLike | None = None,
) -> str:
    """The experiment's history as CSV or JSON text; also written to ``out`` when given."""
    if format not in FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(FORMATS)}, got {format!r}")
    history = read(experiment, storage, dir)
    text = to_csv(history) if format == "csv" else to_json(history)
    if out is not None:
        write_atomically(Path(out), text)
    return text


def column_names(history: History) -> tuple[dict[str, str], dict[str, str]]:
    """Column name of each metric and of each hyperparameter, prefixed only on a clash."""
    taken = set(LEADING) | set(TRAILING)
    metric_names = sorted({k for r in history.rows for k in r.metrics})
    hparam_names = list(history.config.space)
    metrics = {m: _unique(m, "metric_", taken) for m in metric_names}
    taken |= set(metrics.values())
    hparams = {h: _unique(h, "hp_", taken) for h in hparam_names}
    return metrics, hparams


def _unique(name: str, prefix: str, taken: set[str]) -> str:
    while name in taken:
        name = prefix + name
    return name


def records(history: History) -> tuple[list[str], list[dict[str, Any]]]:
    """The header and one flat record per row of the history."""
    metrics, hparams = column_names(history)
    header = [*LEADING, *metrics.values(), *hparams.values(), *TRAILING]
    return header, [_record(r, metrics, hparams) for r in history.rows]


def _record(r: Row, metrics: dict[str, str], hparams: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"member": r.member, "interval": r.interval, "state": r.state, "score": r.score}
    out.update({col: r.metrics.get(name) for name, col in metrics.items()})
    out.update({col: r.hparams.get(name) for name, col in hparams.items()})
    out.update(
        parent=r.parent,
        parent_interval=r.parent_interval,
        worker=r.worker,
        device=r.device,
        attempts=r.attempts,
        started_at=r.started_at,
        finished_at=r.finished_at,
        error=r.error,
    )
    return out


def to_csv(history: History) -> str:
    header, rows = records(history)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_json(history: History) -> str:
    """``{"experiment", "status", "config", "results", "exploits"}``; results are the CSV's
    records, so ``pandas.DataFrame(data["results"])`` is the same table."""
    _, rows = records(history)
    data = {
        "experiment": history.experiment.name,
        "status": history.experiment.status,
        "config": history.config.to_json(),
        "results": rows,
        "exploits": [exploit_record(x) for x in history.exploits],
    }
    return json.dumps(_finite(data), indent=1) + "\n"


def exploit_record(x: Exploit) -> dict[str, Any]:
    """One exploit as JSON: every field of ``popbt.store.Exploit``, under its own name."""
    return asdict(x)


def _finite(value: Any) -> Any:
    """NaN and infinity are not JSON: a metric that was NaN becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_atomically(path: Path, text: str) -> None:
    """Write under a temporary name, then rename: an interrupted export leaves no half file."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
