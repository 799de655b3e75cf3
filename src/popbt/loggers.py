"""Experiment loggers: ``popbt run --log tensorboard`` / ``--log mlflow``.

Two halves. The pure half turns a ``History`` into ``Record``s, one per (member, interval)
and run: each member's own curve (``member-03``), and once the experiment is finished one
lineage-aware curve per final model (``final/member-03``) that follows the model back
through its exploits, so it shows the intervals that built it rather than the member slot's
mixed history. The other half writes records to a sink. A ``Follower`` is fed successive
snapshots while the run goes on and writes only what its sinks do not hold yet; what they
hold is read back from the sink itself when it opens, so a restarted run (a resume) goes
on where the last one stopped, never writing a (run, interval) twice.

This module imports neither tensorboard nor mlflow until a sink opens, so the CLI can
import it to check ``--log`` before a run starts.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import posixpath
import re
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import analysis
from .config import ExperimentConfig
from .errors import ConfigError
from .history import History
from .plotdata import encode
from .space import Choice, Domain
from .store import DONE, Experiment, ExperimentStatus, Row

SINKS = ("tensorboard", "mlflow")
_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # sink -> the module it needs
HPARAM = "hparams/"  # scalars holding a hyperparameter's value at that interval
LINEAGE_MEMBER = "lineage/member"  # on a final model's curve: the member that trained that interval


def check(kinds: Sequence[str]) -> None:
    """Refuse an unknown logger or one whose package is missing, in one line, before a run starts."""
    for kind in kinds:
        if kind not in SINKS:
            raise ConfigError(f"unknown logger {kind!r}: choose from {', '.join(SINKS)}")
        if not _importable(_PACKAGES[kind]):
            raise ConfigError(f"--log {kind} needs the {_PACKAGES[kind]} package: pip install 'popbt[{kind}]'")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules, i.e. blocked
        return False


# -- the pure half: history -> records ---------------------------------------------------


@dataclass(frozen=True)
class Record:
    """What to write for one interval of one run, at step = interval."""

    run: str  # "member-03", or "final/member-03" for a final model's lineage curve
    step: int
    member: int  # the member that trained this interval
    wall_time: float  # when it finished, by the database's clock
    scalars: dict[str, float]  # the score under the metric's name, the other metrics, hparams/NAME
    hparams: dict[str, Any]  # the values this interval trained with

    @property
    def final(self) -> bool:
        return self.run.startswith("final/")


def member_run(member: int, config: ExperimentConfig) -> str:
    """``member-03``: zero-padded so that runs sort by member in every UI."""
    return f"member-{member:0{max(2, len(str(config.population - 1)))}d}"


def final_run(member: int, config: ExperimentConfig) -> str:
    return "final/" + member_run(member, config)


def scalars(row: Row, config: ExperimentConfig) -> dict[str, float]:
    """The score (NaN where the store recorded a non-finite one), every numeric metric the
    spec returned, and each hyperparameter as ``hparams/NAME`` (a Choice as the position of
    its value among the declared options, as in ``popbt plot``)."""
    out = {name: float(value) for name, value in row.metrics.items() if _is_number(value)}
    out[config.metric] = math.nan if row.score is None else float(row.score)
    for name in config.space:
        out[HPARAM + name] = encode(config, name, row.hparams.get(name))
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _record(run: str, row: Row, config: ExperimentConfig, extra: dict[str, float] | None = None) -> Record:
    values = scalars(row, config) | (extra or {})
    return Record(run, row.interval, row.member, row.finished_at or 0.0, values, dict(row.hparams))


def member_records(history: History) -> list[Record]:
    """One record per finished (member, interval), in each member's run, oldest first."""
    config = history.config
    done = sorted((r for r in history.rows if r.state == DONE), key=lambda r: (r.member, r.interval))
    return [_record(member_run(r.member, config), r, config) for r in done]


def finalists(rows: Sequence[Row]) -> list[Row]:
    """The final models: the results of the last interval any member completed (where
    ``popbt best`` looks), one per member that got there."""
    done = [r for r in rows if r.state == DONE]
    if not done:
        return []
    last = max(r.interval for r in done)
    return sorted((r for r in done if r.interval == last), key=lambda r: r.member)


def final_records(history: History) -> list[Record]:
    """Each final model's lineage curve: the rows of its ancestry, each at its own interval,
    with the member that trained it under ``lineage/member``."""
    config = history.config
    out: list[Record] = []
    for final in finalists(history.rows):
        run = final_run(final.member, config)
        for row in analysis.ancestry(history.rows, final.member, final.interval):
            out.append(_record(run, row, config, {LINEAGE_MEMBER: float(row.member)}))
    return out


# -- sinks --------------------------------------------------------------------------------


class Sink(Protocol):
    def written(self, run: str) -> set[int]:
        """The steps this sink already holds for ``run`` (read back from it on first use)."""

    def write(self, records: Sequence[Record]) -> None:
        """Write ``records`` (none of them held yet) and make them durable."""

    def close(self, finished: bool) -> None:
        """Release the sink; ``finished``: the experiment is over, so its runs are too."""


def identity(experiment: Experiment) -> dict[str, Any]:
    """What tells two experiments of the same name apart (a database deleted and run again)."""
    return {"experiment": experiment.name, "id": experiment.id, "created_at": repr(experiment.created_at)}


class Follower:
    """Writes a running experiment to its sinks: ``update(history)`` as often as you like,
    then ``close(history)`` once; each (run, interval) is written exactly once per sink."""

    def __init__(self, experiment: Experiment, sinks: Sequence[Sink]) -> None:
        self.experiment = experiment
        self.sinks = list(sinks)
        self.closed = False

    def update(self, history: History) -> int:
        """Write the results in ``history`` that no sink holds yet; returns how many records
        were new (to the sink that lacked the most)."""
        if history.experiment.id != self.experiment.id:
            raise ValueError(
                f"this follower writes experiment {self.experiment.name!r}, not {history.experiment.name!r}"
            )
        return self._write(member_records(history))

    def close(self, history: History | None = None) -> None:
        """Write what is left and, if the experiment is finished, the final models' lineage
        curves; then close the sinks. An unfinished experiment gets its lineage curves from
        the run that finishes it (a resume), never from an intermediate state."""
        if self.closed:
            return
        finished = history is not None and history.experiment.status == ExperimentStatus.FINISHED
        try:
            if history is not None:
                self.update(history)
            if finished:
                self._write(final_records(history))
        finally:
            self.closed = True
            for sink in self.sinks:
                sink.close(finished)

    def _write(self, records: Sequence[Record]) -> int:
        most = 0
        for sink in self.sinks:
            new = [r for r in records if r.step not in sink.written(r.run)]
            if new:
                sink.write(new)
            most = max(most, len(new))
        return most


def open_follower(kinds: Sequence[str], experiment: Experiment, run_dir: Path) -> Follower:
    """A follower writing ``experiment`` to each sink named in ``kinds`` under ``run_dir``
    (the run directory: TensorBoard under logs/NAME/tensorboard, MLflow under mlruns)."""
    check(kinds)
    sinks: list[Sink] = []
    try:
        for kind in dict.fromkeys(kinds):
            sinks.append(
                TensorBoardSink(experiment, run_dir) if kind == "tensorboard" else MLflowSink(experiment, run_dir)
            )
    except BaseException:
        for sink in sinks:
            sink.close(False)
        raise
    return Follower(experiment, sinks)


def tensorboard_dir(run_dir: Path, experiment: str) -> Path:
    return Path(run_dir) / "logs" / experiment / "tensorboard"


def mlflow_uri(run_dir: Path) -> str:
    """The tracking URI of the MLflow file store popbt writes (``DIR/mlruns``)."""
    return (Path(run_dir).absolute() / "mlruns").as_uri()


class TensorBoardSink:
    """One TensorBoard run (a directory of event files) per member and per final model.

    Each record is one event holding all its scalars, so a record is on disk entirely or
    not at all (an event file's records are checksummed; a torn last one is skipped by
    every reader). A final model's run also carries an HParams session with its final
    configuration and score; members change configuration at exploits, so theirs are
    per-interval scalars instead."""

    IDENTITY = "popbt-experiment.json"

    def __init__(self, experiment: Experiment, run_dir: Path) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self.experiment = experiment
        self.metric = experiment.config.metric
        self.root = tensorboard_dir(run_dir, experiment.name)
        _claim_dir(self.root, identity(experiment))
        self._writers: dict[str, Any] = {}
        self._steps: dict[str, set[int]] = {}

    def written(self, run: str) -> set[int]:
        if run not in self._steps:
            self._steps[run] = self._read_steps(self.root / run)
        return self._steps[run]

    def _read_steps(self, folder: Path) -> set[int]:
        from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

        steps: set[int] = set()
        for path in sorted(folder.glob("events.out.tfevents.*")):
            for event in LegacyEventFileLoader(str(path)).Load():
                if any(v.tag == self.metric for v in event.summary.value):
                    steps.add(event.step)
        return steps

    def write(self, records: Sequence[Record]) -> None:
        touched = set()
        for record in records:
            writer = self._writer(record.run)
            if record.final and not self.written(record.run):
                self._write_session(writer, record.run, records)
            values = [self._summary.Value(tag=k, simple_value=v) for k, v in record.scalars.items()]
            writer.add_event(
                self._event(wall_time=record.wall_time, step=record.step, summary=self._summary(value=values))
            )
            self.written(record.run).add(record.step)
            touched.add(record.run)
        for run in touched:
            self._writers[run].flush()

    def _write_session(self, writer, run: str, records: Sequence[Record]) -> None:
        """The HParams plugin's view of a final model: the experiment (the space's domains and
        the metrics), then a session with its final configuration."""
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

        last = max((r for r in records if r.run == run), key=lambda r: r.step)
        config = self.experiment.config
        metrics = [k for k in last.scalars if not k.startswith((HPARAM, LINEAGE_MEMBER))]
        experiment = api_pb2.Experiment(
            name=self.experiment.name,
            time_created_secs=self.experiment.created_at,
            hparam_infos=[_hparam_info(api_pb2, name, domain) for name, domain in config.space.items()],
            metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=k)) for k in metrics],
        )
        start = plugin_data_pb2.SessionStartInfo(group_name=run, start_time_secs=last.wall_time)
        for name, value in last.hparams.items():
            kind = _hparam_kind(config.space.get(name))
            if kind == "bool":
                start.hparams[name].bool_value = bool(value)
            elif kind == "number":
                start.hparams[name].number_value = float(value)
            else:
                start.hparams[name].string_value = str(value)
        end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=last.wall_time)
        for tag, data in (
            (metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
            (metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)),
            (metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)),
        ):
            value = self._summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))
            writer.add_event(self._event(wall_time=last.wall_time, step=0, summary=self._summary(value=[value])))

    def _writer(self, run: str) -> EventFile:
        if run not in self._writers:
            self._writers[run] = EventFile(self.root / run, self._event)
        return self._writers[run]

    def close(self, finished: bool) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def _hparam_kind(domain: Domain | None) -> str:
    """How the HParams plugin types a hyperparameter: number, bool, or string (a Choice whose
    options are not all numbers or all booleans)."""
    if not isinstance(domain, Choice):
        return "number"
    if all(isinstance(o, bool) for o in domain.options):
        return "bool"
    return "number" if all(_is_number(o) for o in domain.options) else "string"


def _hparam_info(api_pb2, name: str, domain: Domain):
    kind = _hparam_kind(domain)
    if kind == "bool":
        return api_pb2.HParamInfo(name=name, type=api_pb2.DATA_TYPE_BOOL)
    if isinstance(domain, Choice):
        values = [{"number": float, "string": str}[kind](o) for o in domain.options]
        info = api_pb2.HParamInfo(
            name=name, type=api_pb2.DATA_TYPE_STRING if kind == "string" else api_pb2.DATA_TYPE_FLOAT64
        )
        info.domain_discrete.extend(values)
        return info
    return api_pb2.HParamInfo(
        name=name,
        type=api_pb2.DATA_TYPE_FLOAT64,
        domain_interval=api_pb2.Interval(min_value=float(domain.low), max_value=float(domain.high)),
    )


_FILES = itertools.count()  # tells apart the event files one process opens in the same second


class EventFile:
    """A TensorBoard event file written synchronously: ``flush`` returns once the records
    are on disk (tensorboard's own writer queues them to a thread per file)."""

    def __init__(self, folder: Path, event_class) -> None:
        from tensorboard.summary.writer.record_writer import RecordWriter

        folder.mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}.{next(_FILES)}.popbt"
        self._file = open(folder / name, "ab")
        self._records = RecordWriter(self._file)
        self.add_event(event_class(wall_time=now, file_version="brain.Event:2"))

    def add_event(self, event) -> None:
        self._records.write(event.SerializeToString())

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self.flush()
        self._file.close()


def _claim_dir(root: Path, ident: dict[str, Any]) -> None:
    """Mark ``root`` as this experiment's; refuse one that holds another experiment's logs."""
    root.mkdir(parents=True, exist_ok=True)
    marker = root / TensorBoardSink.IDENTITY
    if marker.exists():
        held = json.loads(marker.read_text())
        if held != ident:
            raise ConfigError(
                f"{root} holds the logs of another experiment named {ident['experiment']!r}; "
                "move it away to log this one"
            )
        return
    tmp = marker.with_name(f".{marker.name}.{os.getpid()}")
    tmp.write_text(json.dumps(ident))
    os.replace(tmp, marker)


class MLflowSink:
    """MLflow's local file store under DIR/mlruns, no server: one MLflow experiment per popbt
    experiment, one run per member (metrics per step, the current configuration as tags) and
    one per final model (its lineage curve; its final configuration as params).

    mlflow-skinny's only local store without extra packages is the file store (its sqlite
    store needs alembic, which mlflow-skinny does not install); MLflow 3 refuses the file
    store unless ``MLFLOW_ALLOW_FILE_STORE=true``, which this sink sets in its process when it
    is not set. It also turns MLflow's telemetry off (``MLFLOW_DISABLE_TELEMETRY``) unless the
    user chose otherwise: a training run should not phone home on popbt's behalf."""

    BATCH = 1000  # MLflow's limit of metrics per log_batch

    def __init__(self, experiment: Experiment, run_dir: Path) -> None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._metric, self._param, self._tag = Metric, Param, RunTag
        self.uri = mlflow_uri(run_dir)
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = self._experiment(experiment)
        except MlflowException as e:
            raise ConfigError(f"MLflow cannot use {self.uri}: {str(e).splitlines()[0]}") from None
        self.score = metric_key(experiment.config.metric)
        self._runs = self._existing_runs()
        self._steps: dict[str, set[int]] = {}

    def _experiment(self, experiment: Experiment) -> str:
        ident = {f"popbt.{k}": str(v) for k, v in identity(experiment).items()}
        found = self.client.get_experiment_by_name(experiment.name)
        if found is None:
            return self.client.create_experiment(experiment.name, tags=ident)
        if {k: found.tags.get(k) for k in ident} != ident:
            raise ConfigError(
                f"{self.uri} holds another MLflow experiment named {experiment.name!r}; move it away to log this one"
            )
        return found.experiment_id

    def _existing_runs(self) -> dict[str, str]:
        runs, token = {}, None
        while True:
            page = self.client.search_runs([self.experiment_id], max_results=1000, page_token=token)
            runs.update({r.data.tags["popbt.run"]: r.info.run_id for r in page if "popbt.run" in r.data.tags})
            token = page.token
            if not token:
                return runs

    def written(self, run: str) -> set[int]:
        if run not in self._steps:
            run_id = self._runs.get(run)
            history = self.client.get_metric_history(run_id, self.score) if run_id else []
            self._steps[run] = {m.step for m in history}
        return self._steps[run]

    def write(self, records: Sequence[Record]) -> None:
        by_run: dict[str, list[Record]] = {}
        for record in records:
            by_run.setdefault(record.run, []).append(record)
        for run, group in by_run.items():
            run_id = self._run(run, group)
            metrics = []
            for record in sorted(group, key=lambda r: r.step):
                ms = int(record.wall_time * 1000)
                values = sorted(record.scalars.items(), key=lambda kv: metric_key(kv[0]) == self.score)
                # the score last: once it is there, so is the rest of its step (it is what written() reads)
                metrics += [self._metric(metric_key(k), v, ms, record.step) for k, v in values]
            for i in range(0, len(metrics), self.BATCH):
                self.client.log_batch(run_id, metrics=metrics[i : i + self.BATCH])
            if not group[0].final:
                latest = max(group, key=lambda r: r.step).hparams
                self.client.log_batch(run_id, tags=[self._tag(f"hparam.{k}", str(v)) for k, v in latest.items()])
            self.written(run).update(r.step for r in group)

    def _run(self, run: str, group: Sequence[Record]) -> str:
        if run in self._runs:
            return self._runs[run]
        first = min(group, key=lambda r: r.step)
        kind = "final" if first.final else "member"
        member = run.rsplit("-", 1)[-1]
        tags = {"popbt.run": run, "popbt.kind": kind, "popbt.member": str(int(member))}
        created = self.client.create_run(
            self.experiment_id, run_name=run, tags=tags, start_time=int(first.wall_time * 1000)
        )
        run_id = created.info.run_id
        if first.final:
            last = max(group, key=lambda r: r.step)
            self.client.log_batch(run_id, params=[self._param(metric_key(k), str(v)) for k, v in last.hparams.items()])
        self._runs[run] = run_id
        return run_id

    def close(self, finished: bool) -> None:
        if finished:
            for run_id in self._runs.values():
                self.client.set_terminated(run_id, "FINISHED")


def metric_key(name: str) -> str:
    """``name`` as MLflow accepts it: letters, digits, ``_ - . /`` and spaces, no ``..`` path."""
    key = re.sub(r"[^/\w.\- ]", "_", name)[:250] or "_"
    return key if posixpath.normpath(key) == key and not key.startswith("/") else key.replace("/", "_")
