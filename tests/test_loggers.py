"""``popbt.loggers``: what a run writes to TensorBoard and MLflow, read back with their own
readers, from a real run followed while it trains and restarted halfway, as a resume does."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import pytest
from rich.console import Console

import popbt
from conftest import QUAD, require, run_popbt
from pbt_history import SCORES, hand_built, toy_run
from popbt import analysis, loggers
from popbt.experiment import ConfigError, load_spec
from popbt.history import History, history_of, read
from popbt.store import open_store
from popbt.worker import Worker


def test_records_are_one_per_member_and_interval_with_metrics_and_hyperparameters(sqlite_url):
    hand_built(sqlite_url)
    h = read("hand", storage=sqlite_url)
    records = loggers.member_records(h)
    assert sorted((r.run, r.step) for r in records) == [(f"member-0{m}", k) for m in range(4) for k in range(3)]
    rows = {(r.member, r.interval): r for r in h.rows}
    for record in records:
        row = rows[record.member, record.step]
        assert record.scalars["acc"] == SCORES[record.member][record.step]
        assert record.scalars["loss"] == pytest.approx(1 - record.scalars["acc"])
        assert record.scalars["hparams/lr"] == row.hparams["lr"] and record.hparams == row.hparams
        assert record.wall_time == row.finished_at


def test_final_records_follow_the_ancestry_across_exploits(sqlite_url):
    hand_built(sqlite_url)
    h = read("hand", storage=sqlite_url)
    finals = loggers.final_records(h)
    assert sorted({r.run for r in finals}) == [f"final/member-0{m}" for m in range(4)]
    best = [r for r in finals if r.run == "final/member-01"]  # the winner: built by 3, then 0, then 1
    assert [r.step for r in best] == [0, 1, 2]
    assert [r.scalars["lineage/member"] for r in best] == [3.0, 0.0, 1.0]
    assert [r.scalars["acc"] for r in best] == [SCORES[3][0], SCORES[0][1], SCORES[1][2]]
    assert [r.scalars["acc"] for r in best] != list(SCORES[1])  # not member 1's slot history


def follow_a_real_run(tmp_path, kinds) -> tuple[History, list[int]]:
    """Train the quad spec one task at a time, feeding the follower every third result and
    restarting it halfway (a resume); return the final history and how many records each
    update wrote (None marks the restart)."""
    run_dir = tmp_path / "runs"
    popbt.run(QUAD, name="quad", workers=0, dir=run_dir, seed=3, console=Console(file=io.StringIO()))
    store = open_store(f"sqlite:///{run_dir / 'popbt.db'}")
    exp = store.experiment("quad")
    worker = Worker(store, exp, load_spec(QUAD))
    follower = loggers.open_follower(kinds, exp, run_dir)
    wrote, done = [], 0
    try:
        while (task := store.claim(exp.id, "w", "cpu")) is not None:
            worker.train_one(task)
            done += 1
            if done % 3 == 0:
                wrote.append(follower.update(history_of(store, exp)))
            if done == 12:
                follower.close(history_of(store, exp))  # not finished: no lineage curves yet
                follower = loggers.open_follower(kinds, exp, run_dir)
                wrote += [None, follower.update(history_of(store, exp))]  # everything is there already
        history = history_of(store, store.experiment("quad"))
        assert history.experiment.status == "finished"
        wrote.append(follower.update(history))
        follower.close(history)
        loggers.open_follower(kinds, exp, run_dir).close(history)  # a second close writes nothing
    finally:
        worker.heartbeat.close()
        store.close()
    return history, wrote


def crossing_final(history: History) -> tuple[int, list]:
    """A final model whose ancestry crosses an exploit (quad with seed 3 has some)."""
    for row in loggers.finalists(history.rows):
        chain = analysis.ancestry(history.rows, row.member, row.interval)
        if {r.member for r in chain} != {row.member}:
            return row.member, chain
    raise AssertionError("no final model copied another member")


def test_tensorboard_holds_each_interval_once_and_the_lineage_curves(tmp_path):
    require("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    history, wrote = follow_a_real_run(tmp_path, ["tensorboard"])
    restart = wrote.index(None)
    assert wrote[restart + 1] == 0 and wrote[-1] == 0  # after the restart, and after the last: nothing twice
    assert sum(wrote[:restart] + wrote[restart + 1 :]) == 4 * 6  # every (member, interval) once
    root = tmp_path / "runs" / "logs" / "quad" / "tensorboard"

    def scalars(run: str) -> EventAccumulator:
        acc = EventAccumulator(str(root / run), size_guidance={"scalars": 0})
        acc.Reload()
        return acc

    rows = {(r.member, r.interval): r for r in history.rows}
    for member in range(4):
        acc = scalars(f"member-0{member}")
        assert len(list((root / f"member-0{member}").glob("events.out.tfevents.*"))) == 2  # before and after
        for tag in ("Q", "norm", "hparams/h0", "hparams/h1"):
            assert [e.step for e in acc.Scalars(tag)] == list(range(6))  # each interval exactly once
        assert [e.value for e in acc.Scalars("Q")] == pytest.approx([rows[member, k].score for k in range(6)])
        assert [e.value for e in acc.Scalars("hparams/h0")] == pytest.approx(
            [rows[member, k].hparams["h0"] for k in range(6)]
        )
        assert [e.value for e in acc.Scalars("norm")] == pytest.approx(
            [rows[member, k].metrics["norm"] for k in range(6)]
        )
    member, chain = crossing_final(history)
    acc = scalars(f"final/member-0{member}")
    assert [e.step for e in acc.Scalars("Q")] == [r.interval for r in chain] == list(range(6))
    assert [e.value for e in acc.Scalars("Q")] == pytest.approx([r.score for r in chain])
    assert [e.value for e in acc.Scalars("lineage/member")] == [r.member for r in chain]
    assert [e.value for e in acc.Scalars("hparams/h1")] == pytest.approx([r.hparams["h1"] for r in chain])
    session = metadata.parse_session_start_info_plugin_data(
        acc.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG]
    )
    assert {k: v.number_value for k, v in session.hparams.items()} == pytest.approx(chain[-1].hparams)


def test_mlflow_file_store_holds_each_interval_once_and_the_lineage_curves(tmp_path):
    require("mlflow")
    history, wrote = follow_a_real_run(tmp_path, ["mlflow", "tensorboard"])
    restart = wrote.index(None)
    assert wrote[restart + 1] == 0 and sum(wrote[:restart] + wrote[restart + 1 :]) == 4 * 6
    from mlflow.tracking import MlflowClient

    client = MlflowClient(loggers.mlflow_uri(tmp_path / "runs"))
    exp = client.get_experiment_by_name("quad")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == [f"final/member-0{m}" for m in range(4)] + [f"member-0{m}" for m in range(4)]
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    rows = {(r.member, r.interval): r for r in history.rows}
    for member in range(4):
        run_id = runs[f"member-0{member}"].info.run_id
        for key in ("Q", "norm", "hparams/h0"):
            assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(6))
        q = sorted(client.get_metric_history(run_id, "Q"), key=lambda m: m.step)
        assert [m.value for m in q] == [rows[member, k].score for k in range(6)]
        assert runs[f"member-0{member}"].data.tags["hparam.h0"] == str(rows[member, 5].hparams["h0"])
    member, chain = crossing_final(history)
    final = runs[f"final/member-0{member}"]
    curve = sorted(client.get_metric_history(final.info.run_id, "Q"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in curve] == [(r.interval, r.score) for r in chain]
    lineage = sorted(client.get_metric_history(final.info.run_id, "lineage/member"), key=lambda m: m.step)
    assert [m.value for m in lineage] == [r.member for r in chain]
    assert final.data.params == {k: str(v) for k, v in chain[-1].hparams.items()}


def test_check_refuses_unknown_names_and_missing_packages():
    loggers.check(list(loggers.SINKS))
    with pytest.raises(ConfigError, match=r"^unknown logger 'wandb': choose from tensorboard, mlflow$"):
        loggers.check(["tensorboard", "wandb"])
    code = (
        "import sys; sys.modules['mlflow'] = None\n"  # what an import of a package that is not there does
        "from popbt import loggers, ConfigError\n"
        "try:\n    loggers.check(['mlflow'])\nexcept ConfigError as e:\n    print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "--log mlflow needs the mlflow package: pip install 'popbt[mlflow]'"


def test_logs_of_another_experiment_of_the_same_name_are_not_mixed_in(tmp_path):
    require("tensorboard")
    run_dir = tmp_path / "runs"
    for db in ("one.db", "two.db"):  # a database deleted and the same experiment run again
        hand_built(f"sqlite:///{tmp_path / db}")
    first, second = (read("hand", storage=f"sqlite:///{tmp_path / db}") for db in ("one.db", "two.db"))
    follower = loggers.open_follower(["tensorboard"], first.experiment, run_dir)
    follower.close(first)
    with pytest.raises(ConfigError, match="holds the logs of another experiment named 'hand'"):
        loggers.open_follower(["tensorboard"], second.experiment, run_dir)


def test_a_nonfinite_score_is_written_as_nan(tmp_path, monkeypatch):
    monkeypatch.setenv("POPBT_TEST_NAN", "1:2")  # member 1's interval 2 evaluates to NaN
    toy_run(tmp_path, QUAD, "nan", seed=3)
    h = read("nan", dir=tmp_path)
    records = [r for r in loggers.member_records(h) if r.run == "member-01"]
    assert [r.step for r in records] == list(range(6))
    assert math.isnan(records[2].scalars["Q"]) and not math.isnan(records[3].scalars["Q"])


def test_importing_loggers_imports_neither_tensorboard_nor_mlflow():
    code = "import sys, popbt.loggers; print(sorted(m for m in ('tensorboard', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_popbt_run_with_log_writes_both_loggers_while_it_runs(tmp_path, monkeypatch):
    """The command line: --log tensorboard,mlflow fills both from the store, every interval once."""
    require("tensorboard")
    require("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = tmp_path / "runs"
    out = run_popbt("run", QUAD, "--workers", "2", "--seed", "4", "--log", "tensorboard,mlflow", "--dir", str(runs))
    assert out.returncode == 0, out.stderr
    root = runs / "logs" / "quad" / "tensorboard"
    for member in range(4):
        acc = EventAccumulator(str(root / f"member-0{member}"), size_guidance={"scalars": 0})
        acc.Reload()
        assert [e.step for e in acc.Scalars("Q")] == list(range(6))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what popbt's sink sets in its own process
    client = MlflowClient(loggers.mlflow_uri(runs))
    exp = client.get_experiment_by_name("quad")
    names = sorted(r.info.run_name for r in client.search_runs([exp.experiment_id]))
    assert names == [f"final/member-0{m}" for m in range(4)] + [f"member-0{m}" for m in range(4)]
