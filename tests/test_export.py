"""``popbt export``: one record per (member, interval), every metric and hyperparameter a column."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace

import pytest

import popbt
from conftest import QUAD, run_popbt
from pbt_history import EXPLOITS, SPACE, hand_built, toy_run
from popbt.experiment import ConfigError
from popbt.export import LEADING, TRAILING, column_names
from popbt.history import read


def read_csv(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    return reader.fieldnames, rows


def test_csv_has_a_row_per_member_and_interval_and_a_column_per_metric_and_hyperparameter(sqlite_url):
    hand_built(sqlite_url)
    header, rows = read_csv(popbt.export("hand", "csv", storage=sqlite_url))
    assert header == [*LEADING, "loss", *SPACE, *TRAILING]
    assert len(rows) == 4 * 3
    assert sorted((int(r["member"]), int(r["interval"])) for r in rows) == [(m, k) for m in range(4) for k in range(3)]
    copied = next(r for r in rows if (r["member"], r["interval"]) == ("1", "2"))
    assert (copied["parent"], copied["parent_interval"], copied["state"]) == ("0", "1", "done")
    assert float(copied["score"]) == 0.95 and float(copied["loss"]) == pytest.approx(0.05)
    first = next(r for r in rows if (r["member"], r["interval"]) == ("0", "0"))
    assert first["parent"] == "" and first["error"] == ""  # not recorded -> empty cell
    assert 1e-3 <= float(first["lr"]) <= 1.0 and first["worker"] in ("worker-0", "worker-1")


def test_json_holds_the_config_the_results_and_the_exploits(sqlite_url, tmp_path):
    hand_built(sqlite_url)
    out = tmp_path / "hand.json"
    text = popbt.export("hand", "json", out=out, storage=sqlite_url)
    data = json.loads(out.read_text())
    assert json.loads(text) == data
    assert data["experiment"] == "hand" and data["status"] == "finished"
    assert data["config"]["population"] == 4 and set(data["config"]["space"]) == set(SPACE)
    assert len(data["results"]) == 12 and set(data["results"][0]) >= {"score", "loss", "lr", "momentum"}
    assert [(x["donor"], x["donor_interval"], x["member"], x["interval"]) for x in data["exploits"]] == EXPLOITS
    assert all(x["hparams_after"].keys() == SPACE.keys() and x["changes"] for x in data["exploits"])
    assert list(data["exploits"][0]) == [
        "member",
        "interval",
        "donor",
        "donor_interval",
        "score",
        "donor_score",
        "hparams_before",
        "hparams_after",
        "changes",
        "reason",
        "created_at",
    ]
    assert (data["exploits"][0]["score"], data["exploits"][0]["donor_score"]) == (0.1, 0.4)


def test_a_hyperparameter_named_like_another_column_is_prefixed(sqlite_url):
    hand_built(sqlite_url)
    history = read("hand", storage=sqlite_url)
    clash = replace(history.config, space={"device": SPACE["lr"], "loss": SPACE["lr"]})
    metrics, hparams = column_names(replace(history, experiment=replace(history.experiment, config=clash)))
    assert metrics == {"loss": "loss"}
    assert hparams == {"device": "hp_device", "loss": "hp_loss"}


def test_export_from_the_command_line_to_stdout_and_to_a_file(tmp_path):
    run_dir = tmp_path / "runs"
    toy_run(run_dir, QUAD, "toy", seed=2)
    out = run_popbt("export", "--dir", str(run_dir))
    assert out.returncode == 0, out.stderr
    header, rows = read_csv(out.stdout)
    assert len(rows) == 4 * 6 and {"norm", "h0", "h1", "score"} <= set(header)
    target = tmp_path / "toy.json"
    out = run_popbt("export", "--format", "json", "--out", str(target), "--dir", str(run_dir))
    assert out.returncode == 0 and len(json.loads(target.read_text())["results"]) == 24
    out = run_popbt("export", "--out", str(tmp_path / "no" / "such" / "dir.csv"), "--dir", str(run_dir))
    assert out.returncode == 2 and out.stderr.startswith("popbt: error: cannot write")


def test_an_unknown_format_is_a_config_error(sqlite_url):
    hand_built(sqlite_url)
    with pytest.raises(ConfigError, match="csv, json"):
        popbt.export("hand", "xml", storage=sqlite_url)
