"""What the figures of ``popbt plot`` show, checked on a history whose exploits are known,
then the figures themselves drawn from real runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import QUAD, SPECS, run_popbt
from pbt_history import BEST_ANCESTRY, EXPLOITS, SCORES, hand_built, toy_run
from popbt import analysis, plotdata
from popbt.experiment import ConfigError, ExperimentConfig
from popbt.space import Choice, IntUniform, LogUniform, Uniform
from popbt.store import Result, open_store

PNG = b"\x89PNG\r\n\x1a\n"
MIXED = str(SPECS / "mixed.py")


@pytest.fixture
def history(sqlite_url):
    hand_built(sqlite_url)
    return plotdata.read_history("hand", storage=sqlite_url)


def scored(url: str, name: str, space: dict, score=lambda task: 0.1 * task.member + task.interval, **kw):
    """Create an experiment over ``space`` and report ``score(task)`` for every task, as workers would."""
    store = open_store(url)
    exp = store.create_experiment(ExperimentConfig(name, "x", space, metric="acc", seed=4, **kw), "/tmp")
    while (t := store.claim(exp.id, "w", "cpu")) is not None:
        store.report(t, Result(score(t), {}, f"/nonexistent/{t.member}-{t.interval}", "0" * 64, 1))
    store.close()
    return plotdata.read_history(name, storage=url)


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
    assert data.values["lr"] == [s.hparams["lr"] for s in data.steps]
    assert [(c.member, c.interval) for c in data.copies] == [(0, 1), (1, 2)]
    assert {n: a.scale for n, a in data.axes.items()} == {"lr": "log", "momentum": "linear"}


def test_lineage_edges_are_the_exploits_and_own_lines_the_rest(history):
    data = plotdata.lineage_data(history.rows, history.exploits, history.config)
    assert [(e.donor, e.donor_interval, e.member, e.interval) for e in data.exploits] == EXPLOITS
    assert all(e.reason == "exploit" for e in data.exploits)
    copied = {(m, k) for _, _, m, k in EXPLOITS}
    expected_own = [(m, k - 1, m, k) for m in range(4) for k in (1, 2) if (m, k) not in copied]
    assert sorted(data.own) == sorted(expected_own)
    assert [tuple(s) for s in data.best] == [(3, 0, 0, 1), (0, 1, 1, 2)]
    assert data.members == [0, 1, 2, 3] and len(data.nodes) == 12


def test_every_figure_names_its_experiment(history, sqlite_url):
    rows, config = history.rows, history.config
    figures = [
        plotdata.scores_data(rows, config),
        plotdata.hparams_data(rows, config),
        plotdata.schedule_data(rows, config),
        plotdata.lineage_data(rows, history.exploits, config),
    ]
    assert [f.experiment for f in figures] == ["hand"] * 4
    hand_built(sqlite_url, "other")
    both = plotdata.compare_data([history, plotdata.read_history("other", storage=sqlite_url)])
    assert both.experiments == ["hand", "other"]


def test_scatter_matrix_has_every_pair_coloured_by_score(history):
    data = plotdata.hparams_data(history.rows, history.config)
    assert data.names == ["lr", "momentum"]
    assert sorted((p.row, p.col) for p in data.panels) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    done = {(r.member, r.interval): r for r in history.rows}
    assert len(data.dots) == 12 and data.colours == [d.score for d in data.dots]
    assert data.colours == sorted(data.colours)  # the best drawn last, on top
    assert [d.score for d in data.dots] == [done[d.member, d.interval].score for d in data.dots]
    off = data.panel(1, 0)  # momentum (y) against lr (x)
    assert (off.x.name, off.y.name, off.x.scale, off.y.scale) == ("lr", "momentum", "log", "linear")
    assert off.xs == [done[d.member, d.interval].hparams["lr"] for d in data.dots]
    assert off.ys == [done[d.member, d.interval].hparams["momentum"] for d in data.dots]
    assert (data.panel(0, 1).x.name, data.panel(0, 1).y.name) == ("momentum", "lr")
    diagonal = data.panel(1, 1)
    assert (diagonal.x.name, diagonal.y.name) == ("momentum", "acc") and diagonal.ys == data.colours
    final = history.exploits[-1].hparams_after
    assert (data.best.member, data.best.interval) == (1, 2)
    assert data.best.values == final
    assert off.path[-1] == (final["lr"], final["momentum"])
    assert [tuple(xy) for xy in off.path] == [
        (done[k].hparams["lr"], done[k].hparams["momentum"]) for k in BEST_ANCESTRY
    ]


def test_one_hyperparameter_is_plotted_against_the_score(sqlite_url):
    h = scored(sqlite_url, "one", {"h": Uniform(0.0, 1.0)}, lambda t: 0.5 + t.member, population=2, intervals=1)
    data = plotdata.hparams_data(h.rows, h.config)
    assert [(p.row, p.col, p.x.name, p.y.name) for p in data.panels] == [(0, 0, "h", "acc")]
    assert sorted(data.panels[0].ys) == [0.5, 1.5] == sorted(data.colours)


def test_choice_values_have_one_encoding_in_every_figure(sqlite_url):
    options = ["small", "large", "medium"]  # neither alphabetical nor in the order they are drawn
    space = {"size": Choice(options), "width": IntUniform(1, 40), "lr": LogUniform(1e-4, 1.0)}
    h = scored(sqlite_url, "cat", space, population=6, intervals=3)
    expected = {(r.member, r.interval): float(options.index(r.hparams["size"])) for r in h.rows}
    assert len(set(expected.values())) > 1  # the draws used several options
    matrix = plotdata.hparams_data(h.rows, h.config)
    schedule = plotdata.schedule_data(h.rows, h.config)
    assert [d.values["size"] for d in matrix.dots] == [expected[d.member, d.interval] for d in matrix.dots]
    assert schedule.values["size"] == [expected[s.member, s.interval] for s in schedule.steps]
    axes = [p.x for p in matrix.panels if p.x.name == "size"] + [p.y for p in matrix.panels if p.y.name == "size"]
    axes.append(schedule.axes["size"])
    assert len(axes) == 3 + 2 + 1  # the size column, the rest of its row (the diagonal shows acc), the schedule
    for axis in axes:
        assert (axis.scale, axis.ticks, axis.labels) == ("category", (0, 1, 2), tuple(options))
    width = schedule.axes["width"]
    assert width.scale == "linear" and all(isinstance(t, int) for t in width.ticks) and width.ticks[0] >= 1
    assert plotdata.encode(h.config, "size", "huge") != plotdata.encode(h.config, "size", "huge")  # NaN: not drawn


def test_interval_axes_get_whole_number_ticks(history):
    assert plotdata.integer_ticks(0, 9) == list(range(10))
    assert plotdata.integer_ticks(0, 19) == list(range(0, 20, 2))
    assert plotdata.integer_ticks(0, 99) == list(range(0, 100, 10))
    assert plotdata.integer_ticks(3, 3) == [3]
    assert plotdata.integer_ticks(1, 40) == [5, 10, 15, 20, 25, 30, 35, 40]
    rows, config = history.rows, history.config
    for ticks in (
        plotdata.scores_data(rows, config).xticks,
        plotdata.lineage_data(rows, history.exploits, config).xticks,
        plotdata.schedule_data(rows, config).xticks,
    ):
        assert ticks[0] == 0 and all(isinstance(t, int) for t in ticks) and 2 in ticks
        assert 0.5 not in ticks and 1.5 not in ticks


def test_compare_curve_is_the_best_model_at_each_interval_and_ends_at_popbt_best(sqlite_url):
    hand_built(sqlite_url, "a")
    hand_built(sqlite_url, "b", search="random")
    histories = [plotdata.read_history(n, storage=sqlite_url) for n in ("a", "b")]
    data = plotdata.compare_data(histories)
    assert [c.name for c in data.curves] == ["a", "b"] and data.xticks == [0, 1, 2]
    for curve, h in zip(data.curves, histories):
        assert curve.intervals == [0, 1, 2]
        assert curve.best == [max(SCORES[m][k] for m in SCORES) for k in range(3)]
        assert curve.best[-1] == analysis.best(h.rows, h.config).score == 0.95
        assert curve.members[-1] == analysis.best(h.rows, h.config).member
    # lower is better: the best score ever seen (0.1, interval 0) is not the final models' best
    hand_built(sqlite_url, "low", metric="loss", mode="min")
    hand_built(sqlite_url, "low-random", metric="loss", mode="min", search="random")
    low = [plotdata.read_history(n, storage=sqlite_url) for n in ("low", "low-random")]
    curve = plotdata.compare_data(low).curves[0]
    assert curve.best == [0.1, 0.2, 0.35]
    assert curve.best[-1] == analysis.best(low[0].rows, low[0].config).score


def test_identical_experiments_get_distinct_styles_and_say_so(sqlite_url):
    for name in ("a", "b", "c"):
        hand_built(sqlite_url, name)
    data = plotdata.compare_data([plotdata.read_history(n, storage=sqlite_url) for n in ("a", "b", "c")])
    a, b, c = data.curves
    assert (a.intervals, a.best) == (b.intervals, b.best) == (c.intervals, c.best)
    assert len({(s.linestyle, s.marker) for s in (a.style, b.style, c.style)}) == 3
    assert a.style.width > b.style.width > c.style.width  # the earlier line shows around the later
    assert len({s.offset % s.stride for s in (a.style, b.style, c.style)}) == 3  # markers on different intervals
    assert (a.same_as, b.same_as, c.same_as) == ([], ["a"], ["a", "b"])


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


def test_figures_of_a_real_run_over_every_kind_of_domain(tmp_path):
    """Choice, IntUniform, LogUniform and Uniform in one space, trained for real; the compare
    curve ends at the score ``popbt best`` reports."""
    import popbt

    run_dir = tmp_path / "runs"
    toy_run(run_dir, MIXED, "mixed", seed=2)
    toy_run(run_dir, MIXED, "again", seed=2)
    paths = popbt.plot("mixed", dir=run_dir) + popbt.plot(dir=run_dir, compare=["mixed", "again"])
    assert [p.name for p in paths] == [
        "scores.png",
        "hyperparameters.png",
        "schedule.png",
        "lineage.png",
        "compare.png",
    ]
    assert all(p.read_bytes()[:8] == PNG for p in paths)
    histories = [plotdata.read_history(n, dir=run_dir) for n in ("mixed", "again")]
    curves = plotdata.compare_data(histories).curves
    assert curves[0].best[-1] == popbt.best("mixed", dir=run_dir)["score"]
    assert curves[1].same_as == ["mixed"]


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
