"""A worker, or ``popbt run --name``, with other code than the experiment's is refused: its
scores would otherwise join a history they do not belong to. The experiment records the
spec it was created from and a digest of its source; ``--allow-spec-change`` accepts an
edited spec on purpose (and records it)."""

from __future__ import annotations

from pathlib import Path

from conftest import QUAD, run_popbt
from test_run import results


def other_spec(tmp_path: Path, name: str = "quad.py") -> Path:
    """The same search space, other code (e.g. a colleague's spec, or an edited copy)."""
    path = tmp_path / "elsewhere" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(Path(QUAD).read_text().replace("theta -= 0.1 * h * theta", "theta -= 0.05 * h * theta"))
    return path


def test_a_worker_with_another_spec_is_refused_in_one_line(tmp_path):
    runs = tmp_path / "runs"
    assert run_popbt("run", QUAD, "--workers", "0", "--dir", str(runs)).returncode == 0
    out = run_popbt("worker", str(other_spec(tmp_path)), "--dir", str(runs))
    assert out.returncode == 2, out.stderr
    [line] = out.stderr.strip().splitlines()
    assert "is not the code experiment 'quad' was created with" in line and "--allow-spec-change" in line
    _, rows, events = results(f"sqlite:///{runs / 'popbt.db'}", "quad")
    assert all(r.state == "pending" and r.worker is None for r in rows) and not events


def test_the_same_spec_from_another_path_is_accepted(tmp_path):
    """Workers on other machines see the spec at other paths: the digest is of the source."""
    runs = tmp_path / "runs"
    assert run_popbt("run", QUAD, "--workers", "0", "--intervals", "2", "--dir", str(runs)).returncode == 0
    copy = tmp_path / "checkout" / "quad.py"
    copy.parent.mkdir()
    copy.write_text(Path(QUAD).read_text())
    out = run_popbt("worker", str(copy), "--dir", str(runs))
    assert out.returncode == 0, out.stderr


def test_resuming_with_another_spec_is_refused_unless_allowed_and_the_change_is_recorded(tmp_path):
    runs = tmp_path / "runs"
    assert run_popbt("run", QUAD, "--workers", "0", "--name", "exp", "--dir", str(runs)).returncode == 0
    edited = other_spec(tmp_path)
    refused = run_popbt("run", str(edited), "--name", "exp", "--workers", "1", "--dir", str(runs))
    assert refused.returncode == 2 and "is not the code experiment 'exp' was created with" in refused.stderr
    allowed = run_popbt(
        "run",
        str(edited),
        "--name",
        "exp",
        "--workers",
        "1",
        "--intervals",
        "6",
        "--allow-spec-change",
        "--dir",
        str(runs),
    )
    assert allowed.returncode == 0, allowed.stderr
    exp, rows, events = results(f"sqlite:///{runs / 'popbt.db'}", "exp")
    assert exp.status == "finished" and exp.config.spec == str(edited.resolve())
    [changed] = [e for e in events if e.kind == "spec_changed"]
    assert str(edited.resolve()) in changed.message
    # from now on the edited spec is the experiment's: the original is the other code
    again = run_popbt("worker", QUAD, "--experiment", "exp", "--dir", str(runs))
    assert again.returncode == 2 and "is not the code" in again.stderr
