"""Two worker hosts on their own network, one PostgreSQL server: cut one host's link mid-run.

Each host is a network namespace joined to the root namespace by a veth pair; a throwaway
PostgreSQL cluster listens on the root side's veth addresses. Needs root (CI runs as root),
iproute2 and PostgreSQL's server binaries; skipped with the reason otherwise.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import QUAD, popbt_cmd, run_popbt, unavailable
from popbt.store import open_store

PORT = 54329
HOSTS = {"a": ("popbt-host-a", "10.231.1.1", "10.231.1.2"), "b": ("popbt-host-b", "10.231.2.1", "10.231.2.2")}


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if not shutil.which("ip"):
        return "needs iproute2's ip command"
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        return "needs PostgreSQL's server binaries (initdb, pg_ctl)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "needs the postgres system user to run a throwaway cluster"
    return None


@pytest.fixture(autouse=True)
def _hosts_possible():
    if _why_not() is not None:
        unavailable(_why_not())


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def hosts():
    """Two namespaces, each with a veth link to the root namespace."""
    for ns, root_ip, host_ip in HOSTS.values():
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", f"{ns[-1]}-root", "type", "veth", "peer", "name", f"{ns[-1]}-host")
        sh("ip", "link", "set", f"{ns[-1]}-host", "netns", ns)
        sh("ip", "addr", "add", f"{root_ip}/24", "dev", f"{ns[-1]}-root")
        sh("ip", "link", "set", f"{ns[-1]}-root", "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{host_ip}/24", "dev", f"{ns[-1]}-host")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", f"{ns[-1]}-host", "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
    yield HOSTS
    for ns, _, _ in HOSTS.values():
        subprocess.run(["ip", "link", "del", f"{ns[-1]}-root"], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def server(hosts):
    """A throwaway PostgreSQL cluster listening on the root side of both links."""
    bin_dir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
    data = Path(tempfile.mkdtemp(prefix="popbt-pg-"))
    shutil.chown(data, "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    sh(*as_pg, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    with open(data / "pg_hba.conf", "a") as f:
        f.write("host all all 10.231.0.0/16 trust\n")
    listen = ",".join(root_ip for _, root_ip, _ in hosts.values())
    sh(
        *as_pg,
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data),
        "-w",
        "-l",
        str(data / "log"),
        "-o",
        f"-c listen_addresses={listen} -p {PORT} -k {data}",
        "start",
    )
    sh(*as_pg, str(bin_dir / "createdb"), "-h", str(data), "-p", str(PORT), "popbt")
    yield {name: f"postgresql+psycopg://postgres@{root_ip}:{PORT}/popbt" for name, (_, root_ip, _) in hosts.items()}
    subprocess.run([*as_pg, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(data, ignore_errors=True)


def on_host(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


def test_cutting_a_hosts_link_mid_run_hands_its_work_to_the_other_host(server, tmp_path):
    env = {**os.environ, "POPBT_TEST_LEASE": "3", "POPBT_TEST_STEP_SECONDS": "0.05"}
    created = run_popbt(
        "run",
        QUAD,
        "--workers",
        "0",
        "--population",
        "6",
        "--intervals",
        "8",
        "--checkpoints",
        "db",
        "--storage",
        server["a"],
        "--dir",
        str(tmp_path),
        env=env,
    )
    assert created.returncode == 0, created.stderr
    ns_a, ns_b = HOSTS["a"][0], HOSTS["b"][0]
    marker = tmp_path / "markers"
    marker.mkdir()
    # host a trains alone until member 2's interval 2, where it stays for 12 s
    env_a = {**env, "POPBT_TEST_HANG": f"2:2:{marker}", "POPBT_TEST_HANG_SECONDS": "12"}
    host_a = subprocess.Popen(
        on_host(ns_a, *popbt_cmd("worker", QUAD, "--storage", server["a"])),
        env=env_a,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(marker.iterdir()):
        assert time.monotonic() < deadline and host_a.poll() is None, "host a never reached member 2 interval 2"
        time.sleep(0.05)
    host_b = subprocess.Popen(
        on_host(ns_b, *popbt_cmd("worker", QUAD, "--storage", server["b"])),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sh("ip", "link", "set", f"{ns_a[-1]}-root", "down")  # host a drops off the network mid-interval
    b_out, _ = host_b.communicate(timeout=180)
    assert host_b.returncode == 0, b_out
    a_out, _ = host_a.communicate(timeout=120)
    assert host_a.returncode == 2, a_out
    assert "stops taking work" in a_out and "unreachable" in a_out  # said clearly, in one line

    store = open_store(server["b"])
    exp = store.experiment("quad")
    rows = store.history(exp.id)
    keys = sorted((r.member, r.interval) for r in rows if r.state == "done")
    assert keys == [(m, k) for m in range(6) for k in range(8)]  # every result, exactly once
    assert exp.status == "finished"
    taken_over = [(e.member, e.interval) for e in store.events(exp.id, limit=1000) if e.kind == "lease_expired"]
    assert taken_over == [(2, 2)]
    assert len({r.worker for r in rows}) == 2  # both hosts trained
    live = store.live_checkpoints(exp.id)
    assert len(live) == 6 and all(len(store.checkpoint_data(c)) == c.size for c in live)
    store.close()


# Host a's side of a report: take the experiment's row lock the way a report does, say so, and
# hang there as a host that drops off the network mid-transaction would.
HOLD_LOCK = r"""
import sys, time
from popbt.store import open_store
from popbt.store import population as pop
store = open_store(sys.argv[1])
store.patience = float(sys.argv[3])  # a worker's patience is its lease
def hold(conn):
    pop.bump(conn, int(sys.argv[2]))
    print("locked", flush=True)
    time.sleep(3600)
store._run(hold)
"""


def test_a_host_lost_inside_a_report_holds_the_experiment_for_seconds_not_hours(server, tmp_path):
    lease = "6"
    env = {**os.environ, "POPBT_TEST_LEASE": lease}
    args = ("--population", "4", "--intervals", "3", "--checkpoints", "db", "--storage", server["a"])
    created = run_popbt("run", QUAD, "--workers", "0", *args, "--dir", str(tmp_path), env=env)
    assert created.returncode == 0, created.stderr
    store = open_store(server["b"])
    exp = store.experiment("quad")
    ns_a, ns_b = HOSTS["a"][0], HOSTS["b"][0]
    holder = subprocess.Popen(
        on_host(ns_a, sys.executable, "-c", HOLD_LOCK, server["a"], str(exp.id), lease),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stdout.read()
        sh("ip", "link", "set", f"{ns_a[-1]}-root", "down")  # host a is gone, its transaction still open
        host_b = subprocess.Popen(
            on_host(ns_b, *popbt_cmd("worker", QUAD, "--storage", server["b"])),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Without bounds on a silent transaction, every report of host b waits on host a's lock
        # until the server's TCP keepalive gives up on it: about two hours.
        out, _ = host_b.communicate(timeout=150)
        assert host_b.returncode == 0, out
    finally:
        holder.kill()
        holder.wait()
    exp = store.experiment("quad")
    assert exp.status == "finished"
    done = sorted((r.member, r.interval) for r in store.history(exp.id) if r.state == "done")
    assert done == [(m, k) for m in range(4) for k in range(3)]
    store.close()
