"""What the figures of ``popbt plot`` show, checked on a history whose exploits are known,
then the figures themselves drawn from a real run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import QUAD, run_popbt
from pbt_history import BEST_ANCESTRY, EXPLOITS, SCORES, hand_built, toy_run
from popbt import plotdata
from popbt.experiment import ConfigError, ExperimentConfig
from popbt.space import Uniform
from popbt.store import Result, open_store

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def history(sqlite_url):
    hand_built(sqlite_url)
    return plotdata.read_history("hand", storage=sqlite_url)


def test_scores_purple_line_is_the_best_models_ancestry(history):
    data = plotdata.scores_data(history.rows, history.config)
    assert [(p.member, p.interval) for p in data.best] == BEST_ANCESTRY
    assert [p.score for p in data.best] == [SCORES[m][k] for m, k in BEST_ANCESTRY]
    assert [(j.donor, j.donor_interval, j.member, j.interval) for j in data.jumps] == EXPLOITS
    assert sorted(data.curves) == [0, 1, 2, 3]
    assert [p.score for p in data.curves[2]] == list(SCORES[2])


def test_schedule_steps_follow_the_ancestry_and_mark_the_copies(history):
    data = plotdata.schedule_data(history.rows, history.config)
    assert (data.member, data.interval, data.score) == (1, 2, 0.95)
    assert [(s.member, s.interval) for s in data.steps] == BEST_ANCESTRY
    after = [x.hparams_after for x in history.exploits]
    initial = next(r.hparams for r in history.rows if (r.member, r.interval) == (3, 0))
    assert [s.hparams for s in data.steps] == [initial, *after]
    assert [(c.member, c.interval) for c in data.copies] == [(0, 1), (1, 2)]
    assert data.log == {"lr": True, "momentum": False}


def test_lineage_edges_are_the_exploits_and_own_lines_the_rest(history):
    data = plotdata.lineage_data(history.rows, history.exploits, history.config)
    assert [(e.donor, e.donor_interval, e.member, e.interval) for e in data.exploits] == EXPLOITS
    assert all(e.reason == "exploit" for e in data.exploits)
    copied = {(m, k) for _, _, m, k in EXPLOITS}
    expected_own = [(m, k - 1, m, k) for m in range(4) for k in (1, 2) if (m, k) not in copied]
    assert sorted(data.own) == sorted(expected_own)
    assert [tuple(s) for s in data.best] == [(3, 0, 0, 1), (0, 1, 1, 2)]
    assert data.members == [0, 1, 2, 3] and len(data.nodes) == 12


def test_hyperparameter_plane_uses_the_space_and_stars_the_best_final_configuration(history):
    data = plotdata.hparams_data(history.rows, history.config)
    assert (data.x_name, data.y_name, data.x_log, data.y_log) == ("lr", "momentum", True, False)
    assert len(data.points) == 12
    final = history.exploits[-1].hparams_after
    assert (data.best.member, data.best.interval) == (1, 2)
    assert (data.best.x, data.best.y) == (final["lr"], final["momentum"])
    assert [(c.member, c.interval) for c in data.best_path] == BEST_ANCESTRY


def test_one_hyperparameter_is_plotted_against_the_score(sqlite_url):
    store = open_store(sqlite_url)
    exp = store.create_experiment(
        ExperimentConfig("one", "x", {"h": Uniform(0.0, 1.0)}, population=2, intervals=1, metric="acc"), "/tmp"
    )
    while (t := store.claim(exp.id, "w", "cpu")) is not None:
        store.report(t, Result(0.5 + t.member, {}, "/nonexistent", "0" * 64, 1))
    store.close()
    h = plotdata.read_history("one", storage=sqlite_url)
    data = plotdata.hparams_data(h.rows, h.config)
    assert data.y_name == "acc" and sorted(p.y for p in data.points) == [0.5, 1.5]


def test_compare_curve_is_the_best_so_far_in_finishing_order(sqlite_url):
    hand_built(sqlite_url, "a")
    hand_built(sqlite_url, "b", search="random")
    data = plotdata.compare_data([plotdata.read_history(n, storage=sqlite_url) for n in ("a", "b")])
    assert [c.name for c in data.curves] == ["a", "b"]
    for curve in data.curves:
        assert curve.spent == list(range(1, 13))
        assert all(x <= y for x, y in zip(curve.best, curve.best[1:]))
        assert curve.best[0] == 0.1  # member 0, interval 0 reports first
    assert data.curves[0].best[-1] == 0.95
    low = plotdata.best_so_far("min", plotdata.read_history("a", storage=sqlite_url).rows, "min")
    assert all(x >= y for x, y in zip(low.best, low.best[1:])) and low.best[-1] == 0.1


def test_compare_refuses_one_experiment_or_different_metrics(sqlite_url):
    hand_built(sqlite_url, "a")
    hand_built(sqlite_url, "b", metric="loss", mode="min")
    a, b = (plotdata.read_history(n, storage=sqlite_url) for n in ("a", "b"))
    with pytest.raises(ConfigError, match="at least two"):
        plotdata.compare_data([a])
    with pytest.raises(ConfigError, match="cannot compare"):
        plotdata.compare_data([a, b])


def test_popbt_plot_writes_the_four_figures_and_compare(tmp_path):
    run_dir = tmp_path / "runs"
    toy_run(run_dir, QUAD, "pbt", seed=3)
    toy_run(run_dir, QUAD, "rand", seed=3, search="random")
    out = run_popbt("plot", "--experiment", "pbt", "--dir", str(run_dir))
    assert out.returncode == 0, out.stderr
    for name in ("scores.png", "hyperparameters.png", "schedule.png", "lineage.png"):
        path = run_dir / "plots" / "pbt" / name
        assert path.read_bytes()[:8] == PNG and str(path) in out.stdout
    out = run_popbt("plot", "--compare", "pbt", "rand", "--out", str(tmp_path / "cmp"), "--dir", str(run_dir))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:8] == PNG
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == ["compare.png"]  # no temporary left


def test_plotting_an_experiment_without_results_is_one_line_and_exit_2(tmp_path, sqlite_url):
    store = open_store(sqlite_url)
    store.create_experiment(ExperimentConfig("empty", "x", {"h": Uniform(0.0, 1.0)}), "/tmp")
    store.close()
    out = run_popbt("plot", "--storage", sqlite_url, "--dir", str(tmp_path))
    assert out.returncode == 2 and out.stderr.strip() == "popbt: error: experiment 'empty' has no results yet"


def test_the_core_and_the_cli_import_without_matplotlib():
    code = "import sys, popbt, popbt.cli; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
