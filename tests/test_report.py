"""What ``list``, ``status`` and ``best`` say: one meaning of "best" (the best final model;
the best score ever seen labelled as such), each member's latest score while a run goes on,
JSON for scripts, weights written wherever checkpoints live, and output that a pipe or a
log file gets whole (never wrapped or cut at 80 columns)."""

from __future__ import annotations

import hashlib
import json

from conftest import QUAD, run_popbt
from popbt.store import Result, open_store


def partly_trained(tmp_path, *extra: str) -> str:
    """quad created, then two members trained one interval by hand: a run going on."""
    out = run_popbt("run", QUAD, "--workers", "0", "--seed", "1", *extra, "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    url = f"sqlite:///{tmp_path / 'popbt.db'}"
    store = open_store(url)
    try:
        exp = store.experiment("quad")
        for score in (0.25, 0.75):
            task = store.claim(exp.id, "w", "cpu")
            store.report(task, Result(score, {}, f"/nowhere/{task.member}", "0" * 64, 1))
    finally:
        store.close()
    return url


def test_status_shows_each_members_latest_score_while_the_run_goes_on(tmp_path):
    partly_trained(tmp_path)
    data = json.loads(run_popbt("status", "--json", "--dir", str(tmp_path)).stdout)
    assert data["experiment"] == "quad" and data["status"] == "running"
    assert data["progress"] == {"done": 2, "total": 24, "running": 0, "given_up": 0}
    latest = {m["member"]: (m["age"], m["score"]) for m in data["population"]}
    assert latest == {0: (0, 0.25), 1: (0, 0.75), 2: (-1, None), 3: (-1, None)}
    assert data["best"] == {"member": 1, "score": 0.75}
    table = run_popbt("status", "--dir", str(tmp_path)).stdout
    assert "latest Q" in table and "0.75" in table and "0.25" in table


def test_best_means_the_best_final_model_and_the_best_score_seen_is_labelled(tmp_path):
    out = run_popbt("run", QUAD, "--workers", "1", "--seed", "2", "--keep-best", "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    final = json.loads(run_popbt("best", "--json", "--dir", str(tmp_path)).stdout)
    seen = json.loads(run_popbt("best", "--json", "--seen", "--dir", str(tmp_path)).stdout)
    assert final["kind"] == "best final model" and final["interval"] == 5
    assert seen["kind"] == "best score seen" and seen["score"] >= final["score"]
    assert seen["weights"]  # kept, as --keep-best asked
    listing = run_popbt("list", "--dir", str(tmp_path)).stdout
    assert "best model" in listing and "best score seen" in listing
    assert f"Q {final['score']:.4g} (member {final['member']})" in listing


def test_save_weights_writes_the_checkpoint_wherever_checkpoints_live(tmp_path, pg_url):
    out = run_popbt("run", QUAD, "--workers", "1", "--checkpoints", "db", "--storage", pg_url, "--dir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    target = tmp_path / "best.ckpt"
    saved = run_popbt("best", "--save-weights", str(target), "--storage", pg_url)
    assert saved.returncode == 0, saved.stderr
    assert f"saved to {target}" in saved.stdout
    store = open_store(pg_url)
    try:
        exp = store.experiment("quad")
        best = json.loads(run_popbt("best", "--json", "--storage", pg_url).stdout)
        [ckpt] = [c for c in store.live_checkpoints(exp.id) if c.path == best["weights"]]
        assert best["weights"].startswith("db:")
        assert hashlib.sha256(target.read_bytes()).hexdigest() == ckpt.sha256
    finally:
        store.close()


def test_output_to_a_pipe_is_never_wrapped_or_cut(tmp_path):
    deep = tmp_path / ("a-rather-long-directory-name-" * 4) / "runs"
    out = run_popbt("run", QUAD, "--workers", "1", "--seed", "3", "--dir", str(deep))
    assert out.returncode == 0, out.stderr
    weights = [line for line in out.stdout.splitlines() if line.startswith("weights: ")]
    assert len(weights) == 1 and weights[0].endswith(".ckpt") and str(deep) in weights[0]
    status = run_popbt("status", "--dir", str(deep), env={"COLUMNS": "80"}).stdout
    assert "…" not in status and str(deep) not in status  # no cell cut short (the dir is not in the table)
    events = run_popbt("status", "--errors", "--dir", str(deep), env={"COLUMNS": "80"})
    assert events.returncode == 0 and "…" not in events.stdout
