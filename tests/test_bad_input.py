"""Bad input beyond tests/test_cli.py: one clear line on stderr, exit status 2, nothing written.
And security: names cannot steer paths, checkpoints load with weights_only, passwords stay out
of output, process lists and the history."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text, update
from sqlalchemy.engine import make_url

import popbt
from conftest import QUAD, SPECS, popbt_cmd, require, run_popbt
from popbt.experiment import ConfigError
from popbt.store import SCHEMA_VERSION, open_store, schema
from popbt.worker import Worker
from test_run import results, wait_for

FAULTY = str(SPECS / "faulty.py")

SPECS_TEXT = {
    "nospace.py": """
def build(hparams, device): return 0
def train(state, hparams, interval, device): pass
def evaluate(state, device): return 0.0
def save(state, path): open(path, "w").write("0")
def load(state, path): return state
""",
    "empty_choice.py": """
from popbt import Choice
space = {"optimizer": Choice([])}
""",
    "log_zero.py": """
from popbt import LogUniform
space = {"lr": LogUniform(0.0, 1.0)}
""",
    "log_negative.py": """
from popbt import LogUniform
space = {"lr": LogUniform(-1e-3, 1.0)}
""",
}


@pytest.fixture
def world(tmp_path):
    """Spec files, a database of another schema version, a regular file; and what exists."""
    specs = tmp_path / "specs"
    specs.mkdir()
    for name, body in SPECS_TEXT.items():
        (specs / name).write_text(body)
    store = open_store(f"sqlite:///{tmp_path / 'v99.db'}")
    with store.engine.begin() as conn:
        conn.execute(update(schema.meta).where(schema.meta.c.key == "schema_version").values(value="99"))
    store.close()
    (tmp_path / "afile").write_text("not a directory\n")
    return tmp_path


def fingerprint(root: Path) -> dict:
    """Every path under ``root`` and the content of every sqlite database there."""
    seen = {}
    for path in sorted(root.rglob("*")):
        if path.name.endswith(("-wal", "-shm", "-journal")):
            continue
        if path.suffix == ".db":
            with sqlite3.connect(path) as conn:
                seen[str(path)] = list(conn.iterdump())
        else:
            seen[str(path)] = path.is_dir()
    return seen


def created(dir):
    out = run_popbt("run", QUAD, "--workers", "0", "--dir", dir)
    assert out.returncode == 0, out.stderr


CASES = {
    "spec without a space": (["run", "{specs}/nospace.py"], "lacks space"),
    "empty Choice declared in a spec": (["run", "{specs}/empty_choice.py"], "Choice needs at least one option"),
    "LogUniform with low 0 declared in a spec": (["run", "{specs}/log_zero.py"], "low must be above 0"),
    "LogUniform with a negative low": (["run", "{specs}/log_negative.py"], "low must be above 0"),
    "sqlite file in a missing directory (run)": (
        ["run", QUAD, "--storage", "sqlite:///{tmp}/no/such/dir/popbt.db"],
        "directory {tmp}/no/such/dir does not exist",
    ),
    "sqlite file in a missing directory (list)": (
        ["list", "--storage", "sqlite:///{tmp}/no/such/dir/popbt.db"],
        "does not exist",
    ),
    "sqlite file in a missing directory (worker)": (
        ["worker", QUAD, "--storage", "sqlite:///{tmp}/no/such/dir/popbt.db"],
        "does not exist",
    ),
    "sqlite file under a regular file": (
        ["status", "--storage", "sqlite:///{tmp}/afile/popbt.db"],
        "{tmp}/afile is not a directory",
    ),
    "sqlite path that is a directory": (["list", "--storage", "sqlite:///{specs}"], "is not a database file"),
    "database of another schema version (list)": (
        ["list", "--storage", "sqlite:///{tmp}/v99.db"],
        f"has popbt schema version 99; this popbt uses version {SCHEMA_VERSION}",
    ),
    "database of another schema version (run)": (
        ["run", QUAD, "--storage", "sqlite:///{tmp}/v99.db"],
        "has popbt schema version 99",
    ),
    "--dir under a regular file (meaningful as root)": (
        ["run", QUAD, "--dir", "{tmp}/afile/runs"],
        "cannot create run directory {tmp}/afile/runs",
    ),
    "--dir that is a regular file": (["run", QUAD, "--dir", "{tmp}/afile"], "cannot create run directory"),
    "--dir under /proc, read-only even for root": (
        ["run", QUAD, "--dir", "/proc/popbt-runs"],
        "cannot create run directory /proc/popbt-runs",
    ),
    "--population conflicting on resume": (
        ["run", QUAD, "--population", "6", "--dir", "{tmp}/resume"],
        "cannot resume it with population=6",
    ),
    "name with a slash": (["run", QUAD, "--name", "a/b"], "experiment name 'a/b' is invalid"),
    "name '..'": (["run", QUAD, "--name", ".."], "experiment name '..' is invalid"),
    "name with a leading dot": (["run", QUAD, "--name", ".hidden"], "is invalid"),
    "absolute path as a name": (["run", QUAD, "--name", "/tmp/x"], "is invalid"),
    "name climbing out through a subdirectory": (["run", QUAD, "--name", "x/../../y"], "is invalid"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_status_2_and_nothing_written(case, world):
    args, expected = CASES[case]
    if "--population" in args:
        created(str(world / "resume"))
    fill = {"tmp": str(world), "specs": str(world / "specs")}
    args = [a.format(**fill) for a in args]
    if args[0] in ("run", "status") and "--dir" not in args:
        args += ["--dir", str(world / "runs")]
    before = fingerprint(world)
    out = run_popbt(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("popbt: error: "), out.stderr
    assert expected.format(**fill) in lines[0]
    assert "Traceback" not in out.stderr
    assert fingerprint(world) == before  # nothing written: no directory, no file, no row
    assert not Path("/proc/popbt-runs").exists()


def test_names_cannot_steer_a_path_outside_the_run_directory(tmp_path):
    for name in ("../evil", "a/b", "..", ".", ".hidden", "/etc", "x\\..\\y", "-rf", "a" * 65):
        with pytest.raises(ConfigError, match="is invalid"):
            popbt.run(QUAD, name=name, workers=0, dir=tmp_path / "runs")
    # a spec's file name becomes a safe experiment name, whatever it is
    sneaky = tmp_path / "..py"
    sneaky.write_text(Path(QUAD).read_text())
    out = run_popbt("run", str(sneaky), "--workers", "0", "--dir", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr
    store = open_store(f"sqlite:///{tmp_path / 'runs' / 'popbt.db'}")
    [exp] = store.experiments()
    store.close()
    runs = (tmp_path / "runs").resolve()
    assert exp.name == "experiment"
    assert Path(exp.checkpoint_dir).resolve().is_relative_to(runs / "checkpoints")


EVIL_SPEC = '''
import os
import torch
from popbt import LogUniform
from popbt.torch import State, model_and_optimizer

MARKER = {marker!r}
space = {{"lr": LogUniform(1e-3, 1e-1)}}
population, intervals = 2, 2
retry_delay = 0.0  # failures are the subject, not their backoff
reuse_state = False  # every interval loads its checkpoint: what this test is about
build, _save, load, apply = model_and_optimizer(
    lambda hp: torch.nn.Linear(2, 1), lambda params, hp: torch.optim.SGD(params, lr=hp["lr"]))


class Payload:
    """Unpickling this runs a command: what a tampered checkpoint would carry."""

    def __reduce__(self):
        return (os.system, (f"touch {{MARKER}}",))


def save(state, path):
    torch.save({{"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
                "payload": Payload()}}, path)


def train(state, hparams, interval, device):
    pass


def evaluate(state, device):
    return 1.0
'''


def test_checkpoints_load_with_weights_only_so_a_pickle_cannot_run_code(tmp_path):
    torch = require("torch")
    marker = tmp_path / "code-ran"
    spec = tmp_path / "evil.py"
    spec.write_text(EVIL_SPEC.format(marker=str(marker)))
    from popbt.experiment import load_spec

    loaded = load_spec(str(spec))
    state = loaded.build({"lr": 0.01}, "cpu")
    path = tmp_path / "evil.ckpt"
    loaded.save(state, str(path))
    with pytest.raises(torch.serialization.pickle.UnpicklingError, match="Weights only load failed"):
        loaded.load(state, str(path))  # popbt.torch's load
    assert not marker.exists()
    # and through a worker: every load is a recorded failure, never the payload's command; with
    # every member given up the run failed, and says so with the first error
    out = run_popbt("run", str(spec), "--workers", "1", "--dir", str(tmp_path / "runs"))
    assert out.returncode == 1, out.stderr
    assert "experiment 'evil' failed: every member was given up" in out.stderr
    assert "UnpicklingError: Weights only load failed" in out.stderr
    assert not marker.exists()
    exp, rows, events = results(f"sqlite:///{tmp_path / 'runs' / 'popbt.db'}", "evil")
    failures = [e for e in events if e.kind == "failure"]
    assert failures and all("UnpicklingError: Weights only load failed" in e.message for e in failures)
    assert exp.status == "failed"
    assert sorted((r.member, r.interval, r.state) for r in rows if r.interval == 1) == [
        (0, 1, "failed"),
        (1, 1, "failed"),
    ]


PASSWORD = "Pa55-" + uuid.uuid4().hex[:10]


@pytest.mark.parametrize("form", ["user:password@", "?password="])
def test_a_database_password_never_appears_in_output_process_lists_or_the_history(tmp_path, pg_url, form):
    if form == "user:password@":
        url = make_url(pg_url).set(password=PASSWORD).render_as_string(hide_password=False)
    else:  # libpq takes it as a parameter too, which a URL renderer does not know is secret
        url = make_url(pg_url).update_query_dict({"password": PASSWORD}).render_as_string(hide_password=False)
    assert PASSWORD in url  # trust auth: the server accepts any password
    markers = tmp_path / "markers"
    markers.mkdir()
    # the URL by environment, as docs/cluster.md advises: then no command line may carry it
    env = {**os.environ, "FAULTY_DIR": str(markers), "FAULTY_HANG": "1:1", "POPBT_STORAGE": url}
    run = subprocess.Popen(
        popbt_cmd("run", FAULTY, "--workers", "2", "--dir", str(tmp_path / "runs")),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: (markers / "hang-1-1").exists(), what="the workers to be training")
    leaks = []  # while `popbt run` and its workers are alive: a command line holding it, as ps shows it
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if PASSWORD.encode() in cmdline.read_bytes():
                leaks.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    (markers / "release-1-1").touch()
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert not leaks
    assert ("postgres:***@" if form == "user:password@" else "password=***") in out
    outputs = [out, err]
    for args in (["list"], ["status"], ["best", "--json"], ["export", "--format", "json"]):
        shown = run_popbt(*args, "--storage", url)
        assert shown.returncode == 0, shown.stderr
        outputs += [shown.stdout, shown.stderr]
    assert not [o for o in outputs if PASSWORD in o]
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert files and not [p for p in files if PASSWORD.encode() in p.read_bytes()]  # logs, checkpoints
    store = open_store(url)
    try:
        with store.engine.connect() as conn:
            for table in schema.metadata.sorted_tables:
                rows = conn.execute(text(f"SELECT t::text FROM {table.name} AS t")).scalars().all()
                assert rows or table.name in ("popbt_exploits", "popbt_events")
                assert not [r for r in rows if PASSWORD in r], table.name
    finally:
        store.close()


# -- every option and spec value checked before anything is written --------------------------

BAD_VALUES = {
    "lease_string.py": ('lease_seconds = "60"', "lease_seconds must be a number"),
    "sync_string.py": ('sync = "yes"', "sync must be True or False"),
    "attempts_zero.py": ("max_attempts = 0", "max_attempts must be an integer of at least 1"),
    "population_float.py": ("population = 2.5", "population must be an integer of at least 2"),
    "workers_negative.py": ("workers = -2", "workers must be an integer of at least 0"),
    "choice_tuples.py": ('space = {"shape": Choice([(1, 2), (3, 4)])}', "Choice options must be strings, numbers"),
    "choice_nan.py": ('space = {"p": Choice([0.1, float("nan")])}', "Choice options must be finite numbers"),
}

OPTION_CASES = {
    "negative --workers": (["--workers", "-1"], "--workers must be an integer of at least 0"),
    "--devices that is no device": (["--devices", "gpu0"], "is not a device"),
    "empty --devices": (["--devices", ","], "--devices is empty"),
    "--devices with a CUDA device on a machine without one": (["--devices", "cuda:0"], "no CUDA device"),
    "--name latest": (["--name", "latest"], "'latest' is reserved"),
    "--lease-seconds 0": (["--lease-seconds", "0"], "lease_seconds must be a number at least 1"),
    "--retry-delay -1": (["--retry-delay", "-1"], "retry_delay must be a number at least 0"),
    "--quantile and --top": (["--quantile", "0.2", "--top", "1"], "give one"),
    "not a number": (["--population", "many"], "argument --population: invalid int value: 'many'"),
    "unknown option": (["--populatoin", "4"], "unrecognized arguments: --populatoin 4"),
    "--checkpoints under a regular file": (["--checkpoints", "{tmp}/afile/ck"], "checkpoint directory"),
    "--log with an unknown logger": (["--log", "wandb"], "unknown logger 'wandb'"),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_every_run_option_is_checked_before_anything_is_written(case, world):
    args, expected = OPTION_CASES[case]
    if "cuda" in " ".join(args) and require("torch").cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    args = [a.format(tmp=world) for a in args]
    before = fingerprint(world)
    out = run_popbt("run", QUAD, *args, "--dir", str(world / "runs"))
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("popbt: error: "), out.stderr
    assert expected in lines[0] and "usage:" not in out.stderr
    assert fingerprint(world) == before


@pytest.mark.parametrize("spec", sorted(BAD_VALUES))
def test_every_spec_value_is_checked_before_anything_is_written(spec, world):
    line, expected = BAD_VALUES[spec]
    body = Path(QUAD).read_text().replace("from popbt import Uniform", "from popbt import Choice, Uniform")
    body += "\n" + line + "\n"  # last: it overrides the spec's own value
    (world / "specs" / spec).write_text(body)
    before = fingerprint(world)
    out = run_popbt("run", str(world / "specs" / spec), "--dir", str(world / "runs"))
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], out.stderr
    assert fingerprint(world) == before


@pytest.mark.parametrize(
    "args, expected",
    [
        (["worker", QUAD, "--device", "cuda:x"], "is not a device"),
        (["worker", QUAD, "--threads", "0"], "--threads must be a positive integer"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["run"], "the following arguments are required: spec"),
    ],
)
def test_other_commands_refuse_bad_options_in_one_line(args, expected, tmp_path):
    created(str(tmp_path))
    out = run_popbt(*args, "--dir", str(tmp_path)) if args[0] != "frobnicate" else run_popbt(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], out.stderr


def test_debug_works_after_the_subcommand_too(tmp_path):
    out = run_popbt("status", "--experiment", "nope", "--dir", str(tmp_path), "--debug")
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_numpy_values_in_a_choice_make_an_experiment_workers_can_join(tmp_path):
    np = require("numpy")
    spec = tmp_path / "np_choice.py"
    body = (
        Path(QUAD)
        .read_text()
        .replace("from popbt import Uniform", "import numpy as np\nfrom popbt import Choice, Uniform")
    )
    body += '\nspace = {**space, "width": Choice(list(np.array([16, 32, 64])))}\n'
    spec.write_text(body)
    assert np  # numpy scalars are what np.array(...) iterates to
    out = run_popbt("run", str(spec), "--workers", "1", "--intervals", "2", "--dir", str(tmp_path / "runs"))
    assert out.returncode == 0, out.stderr
    exp, rows, _ = results(f"sqlite:///{tmp_path / 'runs' / 'popbt.db'}", "np_choice")
    assert exp.status == "finished" and {r.hparams["width"] for r in rows} <= {16, 32, 64}


@pytest.mark.parametrize("odd", ["with?question", "with%25percent", "with#hash"])
def test_a_run_directory_with_url_characters_holds_the_database(tmp_path, odd):
    run_dir = tmp_path / odd
    out = run_popbt("run", QUAD, "--workers", "0", "--dir", str(run_dir))
    assert out.returncode == 0, out.stderr
    assert (run_dir / "popbt.db").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [odd]  # nothing elsewhere
    listed = run_popbt("list", "--dir", str(run_dir))
    assert listed.returncode == 0 and "quad" in listed.stdout, listed.stderr


@pytest.mark.parametrize("command", [["status"], ["list"], ["worker", QUAD]])
def test_a_mistyped_run_directory_is_refused_and_nothing_created(tmp_path, command):
    out = run_popbt(*command, "--dir", str(tmp_path / "typo"))
    assert out.returncode == 2 and "no popbt database" in out.stderr, out.stderr
    assert not (tmp_path / "typo").exists()


def test_two_launchers_creating_one_experiment_at_once_both_join_it(pg_url, tmp_path):
    """Both look the name up before either creates it; the one whose insert loses joins."""
    from popbt.launch import open_experiment
    from popbt.spec import load_spec

    barrier = threading.Barrier(2)

    class Racing(popbt.store.SQLStore):
        def experiment(self, name):
            try:
                return super().experiment(name)
            except popbt.NotFound:
                if not getattr(self, "raced", False):
                    self.raced = True
                    barrier.wait(timeout=30)  # both have looked it up and not found it
                raise

    spec, found, errors = load_spec(QUAD), [], []

    def launch() -> None:
        store = Racing(pg_url)
        try:
            found.append(open_experiment(store, spec, "race", {"seed": 1}, str(tmp_path))[0].id)
        except Exception as e:
            errors.append(e)
        finally:
            store.close()

    threads = [threading.Thread(target=launch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(found) == 2 and found[0] == found[1]


def test_scratch_copies_of_database_checkpoints_go_to_a_fresh_private_directory(tmp_path, monkeypatch):
    """The bytes of a checkpoint kept in the database are written to local scratch, verified,
    then loaded: another local user must not be able to pre-create that directory or swap a
    verified file in. Earlier popbt versions used the predictable $TMPDIR/popbt-<uid>/."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    tempfile.tempdir = None  # re-read TMPDIR
    try:
        trap = tmp_path / f"popbt-{os.getuid()}"
        trap.mkdir(mode=0o777)
        os.chmod(trap, 0o777)  # what an attacker would leave: writable by anyone
        url = f"sqlite:///{tmp_path / 'popbt.db'}"
        popbt.run(QUAD, workers=0, checkpoints="db", storage=url, dir=tmp_path / "runs", intervals=2)
        store = open_store(url)
        try:
            exp = store.experiment("quad")
            worker = Worker(store, exp, popbt.load_spec(QUAD))
            st = worker.scratch.stat()
            assert worker.scratch.parent == tmp_path and worker.scratch != trap
            assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700
            worker.run()
            assert not worker.scratch.exists()  # removed when the worker stops
            assert store.experiment("quad").status == "finished"
        finally:
            store.close()
        assert list(trap.iterdir()) == []  # never used
    finally:
        tempfile.tempdir = None
