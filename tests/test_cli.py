"""Bad input: one clear line on stderr, exit status 2, nothing written."""

from __future__ import annotations

import pytest

from conftest import QUAD, run_popbt

BAD_SPEC = """
from popbt import Uniform
space = {"x": Uniform(1.0, 0.0)}
"""

INCOMPLETE_SPEC = """
from popbt import Uniform
space = {"x": Uniform(0.0, 1.0)}
def build(hparams, device): return 0
"""

BROKEN_SPEC = "import not_a_module_anywhere\n"


@pytest.fixture
def specs(tmp_path):
    for name, text in (("bad_domain.py", BAD_SPEC), ("incomplete.py", INCOMPLETE_SPEC), ("broken.py", BROKEN_SPEC)):
        (tmp_path / name).write_text(text)
    return tmp_path


CASES = {
    "missing spec file": (["run", "no/such/spec.py"], "does not exist"),
    "unknown module": (["run", "no_such_module_xyz"], "neither a .py file nor an importable module"),
    "invalid domain bounds": (["run", "{dir}/bad_domain.py"], "low must be below high"),
    "spec lacking functions": (["run", "{dir}/incomplete.py"], "lacks train, evaluate, save, load"),
    "spec that does not import": (["run", "{dir}/broken.py"], "failed to import"),
    "population below 2": (["run", QUAD, "--population", "1"], "population must be"),
    "quantile out of range": (["run", QUAD, "--quantile", "0.7"], "quantile must be in (0, 0.5]"),
    "malformed storage URL": (["list", "--storage", "not a url"], "malformed"),
    "unsupported backend": (["list", "--storage", "mysql://x@localhost/db"], "only sqlite and postgresql"),
    "unknown experiment": (["status", "--experiment", "nope"], "no experiment named 'nope'"),
    "unknown experiment for best": (["best", "--experiment", "nope"], "no experiment named 'nope'"),
    "unsafe experiment name": (["run", QUAD, "--name", "../../etc"], "is invalid"),
    "unreachable server, password masked": (
        ["list", "--storage", "postgresql+psycopg://user:hunter2@127.0.0.1:9/db"],
        "user:***@",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_status_2(case, specs, tmp_path):
    args, expected = CASES[case]
    run_dir = tmp_path / "runs"
    args = [a.format(dir=specs) for a in args]
    if args[0] in ("run", "status", "best") and "--storage" not in args:
        args += ["--dir", str(run_dir)]
    out = run_popbt(*args, env={"PGCONNECT_TIMEOUT": "2"})
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("popbt: error: "), out.stderr
    assert expected in lines[0]
    assert "Traceback" not in out.stderr and "hunter2" not in out.stderr + out.stdout
    # nothing was written: no experiment, no checkpoint
    assert not (run_dir / "checkpoints").exists()


def test_resuming_with_a_conflicting_option_is_refused(tmp_path):
    first = run_popbt("run", QUAD, "--workers", "0", "--dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    out = run_popbt("run", QUAD, "--sync", "--dir", str(tmp_path))
    assert out.returncode == 2
    assert "cannot resume it with sync=True" in out.stderr


def test_debug_shows_the_traceback(tmp_path):
    out = run_popbt("--debug", "status", "--experiment", "nope", "--dir", str(tmp_path))
    assert out.returncode != 0 and "Traceback" in out.stderr
