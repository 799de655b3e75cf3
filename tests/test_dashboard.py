"""``popbt dashboard``: what its pages claim (pure data from real histories), its JSON
endpoints and command line, and a real run followed live in headless chromium."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import QUAD, popbt_cmd, require, run_popbt, unavailable
from pbt_history import BEST_ANCESTRY, EXPLOITS, SCORES, config, hand_built
from popbt import history
from popbt.dashboard import data
from popbt.experiment import ExperimentConfig
from popbt.space import Choice, IntUniform, LogUniform
from popbt.store import Result, open_store

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def drive(url: str, cfg: ExperimentConfig, score, fails=lambda task: False, stop_after: int | None = None) -> None:
    """Train ``cfg`` through a real store as workers would, scoring (member, interval) with
    ``score``; a task for which ``fails(task)`` fails. ``stop_after``: leave the run after
    that many results, with the next task claimed and running."""
    store = open_store(url)
    try:
        exp = store.create_experiment(cfg, "/nonexistent/checkpoints")
        reported = 0
        while (task := store.claim(exp.id, "worker-0", "cpu")) is not None:
            if stop_after is not None and reported == stop_after:
                return
            if fails(task):
                store.fail(task, "injected failure")
                continue
            value = score(task.member, task.interval)
            store.report(task, Result(value, {}, f"/nonexistent/{task.member}-{task.interval}", "0" * 64, 1))
            reported += 1
    finally:
        store.close()


def view(url: str, name: str) -> dict:
    with history.open_experiment(name, url) as (store, exp):
        return data.experiment(history.history_of(store, exp), store.events(exp.id, limit=data.RECENT_EVENTS))


@pytest.fixture
def hand(sqlite_url):
    hand_built(sqlite_url)
    return view(sqlite_url, "hand")


# -- what the pages claim --------------------------------------------------------------


def test_best_is_the_final_models_and_the_best_score_seen_is_labelled_apart(sqlite_url):
    late = {0: (0.1, 0.9, 0.91), 1: (0.2, 0.2, 0.95), 2: (0.3, 0.3, 0.35), 3: (0.4, 0.99, 0.55)}
    drive(sqlite_url, config("peak"), lambda m, k: late[m][k])
    d = view(sqlite_url, "peak")
    assert d["finished"] and d["progress"]["done"] == d["progress"]["total"] == 12
    assert d["best"]["label"] == "best final model" and d["best"]["final"]
    assert (d["best"]["member"], d["best"]["interval"], d["best"]["score_text"]) == (1, 2, "0.95")
    seen = d["best_seen"]
    assert (seen["label"], seen["member"], seen["interval"], seen["score_text"]) == ("best score seen", 3, 1, "0.99")
    assert [r["best"] for r in d["population_table"]] == [False, True, False, False]
    listed = data.experiments([history.read("peak", sqlite_url)])["experiments"]
    assert [(e["name"], e["best"]["member"], e["best"]["score"]) for e in listed] == [("peak", 1, 0.95)]


def test_while_it_runs_progress_counts_the_states_and_the_best_is_only_so_far(sqlite_url):
    drive(sqlite_url, config("partial"), lambda m, k: SCORES[m][k], stop_after=3)
    d = view(sqlite_url, "partial")
    p = d["progress"]
    assert (p["done"], p["total"], p["running"], p["waiting"], p["failed"]) == (3, 12, 1, 3, 0)
    assert not p["finished"] and p["latest_interval"] == 0
    assert not d["best"]["final"] and d["best"]["label"] == "best model so far" and d["best"]["interval"] == 0
    table = {r["member"]: r for r in d["population_table"]}
    assert table[3]["state"] == "running" and table[3]["age"] is None and table[3]["score_text"] == ""
    assert table[3]["detail"] == "training interval 0 on worker-0"
    assert [table[m]["age"] for m in (0, 1, 2)] == [0, 0, 0]
    assert [table[m]["state"] for m in (0, 1, 2)] == ["waiting"] * 3
    assert table[0]["hparams"] != {"lr": "", "momentum": ""}  # a waiting task shows its last result's values


def test_population_table_ages_scores_parents_and_four_digit_numbers(hand, sqlite_url):
    rows = hand["population_table"]
    assert [(r["member"], r["age"], r["score_text"]) for r in rows] == [(m, 2, f"{SCORES[m][2]:.4g}") for m in range(4)]
    assert [r["parent"] for r in rows] == ["", "0@1", "", ""]  # member 1 copied member 0 at interval 2
    last = {r.member: r for r in history.read("hand", sqlite_url).rows if r.interval == 2}
    for r in rows:
        assert r["hparams"] == {n: f"{last[r['member']].hparams[n]:.4g}" for n in ("lr", "momentum")}
    assert [a["kind"] for a in hand["hparams"]] == ["log", "linear"]


def test_curves_highlight_the_best_models_ancestry_and_its_copies(hand):
    c = hand["curves"]
    assert [(m, k) for m, k, _ in c["best"]] == BEST_ANCESTRY
    assert [v for _, _, v in c["best"]] == [SCORES[m][k] for m, k in BEST_ANCESTRY]
    assert [(j["donor"], j["donor_interval"], j["member"], j["interval"]) for j in c["jumps"]] == EXPLOITS
    assert {m["member"]: [p[1] for p in m["points"]] for m in c["members"]} == {m: list(SCORES[m]) for m in SCORES}
    assert c["intervals"] == 3


def test_lineage_lists_every_copy_with_what_explore_changed(hand):
    lin = hand["lineage"]
    copies = lin["copies"]
    assert [(x["donor"], x["donor_interval"], x["member"], x["interval"]) for x in copies] == EXPLOITS
    assert all(x["on_best"] and x["reason"] == "exploit" for x in copies)
    assert copies[0]["score_text"] == "0.1" and copies[0]["donor_score_text"] == "0.4"
    for x in copies:
        assert {c["name"] for c in x["changes"]} == {"lr", "momentum"}
        assert all(c["rule"] and c["before"] != c["after"] for c in x["changes"])
    assert lin["best"] == [[3, 0, 0, 1], [0, 1, 1, 2]] and len(lin["nodes"]) == 12


def test_choice_values_are_shown_by_name_and_placed_by_option(sqlite_url):
    space = {"opt": Choice(["sgd", "adam", "rmsprop"]), "batch": IntUniform(16, 128), "lr": LogUniform(1e-4, 1e-1)}
    cfg = ExperimentConfig(name="choices", spec="recorder", space=space, population=4, intervals=2, seed=3, sync=True)
    drive(sqlite_url, cfg, lambda m, k: 0.1 * m + k)
    d = view(sqlite_url, "choices")
    sc = d["scatter"]
    assert [(a["name"], a["kind"]) for a in sc["axes"]] == [("opt", "choice"), ("batch", "int"), ("lr", "log")]
    assert sc["axes"][0]["options"] == ["sgd", "adam", "rmsprop"] and sc["axes"][1]["low"] == 16
    rows = {(r.member, r.interval): r for r in history.read("choices", sqlite_url).rows}
    for p in sc["points"]:
        r = rows[p["member"], p["interval"]]
        assert p["values"] == [float(space["opt"].options.index(r.hparams["opt"])), r.hparams["batch"], r.hparams["lr"]]
    for r in d["population_table"]:
        assert r["hparams"]["opt"] in ("sgd", "adam", "rmsprop")
        assert re.fullmatch(r"\d+", r["hparams"]["batch"])
    assert sc["best"][-1] == [d["best"]["member"], d["best"]["interval"]]


def test_events_show_failures_and_the_replacement_newest_first(sqlite_url):
    once = lambda t: (t.member, t.interval) == (2, 1) and t.replacements == 0  # noqa: E731
    drive(sqlite_url, config("faulty", max_attempts=2), lambda m, k: SCORES[m][k], fails=once)
    d = view(sqlite_url, "faulty")
    kinds = [(e["kind"], e["member"], e["interval"]) for e in d["events"]]
    assert kinds == [("replaced", 2, 1), ("failure", 2, 1), ("failure", 2, 1)]
    assert d["events"][0]["label"] == "replaced" and "copies member 3" in d["events"][0]["message"]
    assert d["events"][1]["message"] == "attempt 2/2: injected failure"
    assert [x["reason"] for x in d["lineage"]["copies"] if x["member"] == 2 and x["interval"] == 1] == ["replace"]
    assert d["finished"] and d["progress"]["failed"] == 0


def test_a_member_that_keeps_failing_is_shown_given_up(sqlite_url):
    always = lambda t: (t.member, t.interval) == (2, 1)  # noqa: E731
    drive(sqlite_url, config("doomed", max_attempts=1), lambda m, k: SCORES[m][k], fails=always)
    d = view(sqlite_url, "doomed")
    assert d["finished"] and d["progress"]["failed"] == 1 and d["progress"]["done"] == 10
    member = d["population_table"][2]
    assert (member["state"], member["age"]) == ("failed", 0)
    assert member["detail"] == "given up at interval 1: injected failure"
    assert d["events"][0]["kind"] == "gave_up" and d["events"][0]["label"] == "given up"


def test_a_non_finite_score_is_shown_as_such_and_the_document_stays_strict_json(sqlite_url):
    drive(sqlite_url, config("nan"), lambda m, k: math.nan if (m, k) == (2, 2) else SCORES[m][k])
    d = view(sqlite_url, "nan")
    assert d["population_table"][2]["score_text"] == "non-finite" and d["population_table"][2]["score"] is None
    json.dumps(d, allow_nan=False)  # raises on a NaN anywhere


# -- the server ------------------------------------------------------------------------


@contextmanager
def dashboard_client(url: str):
    """Starlette's TestClient on the dashboard of the store at ``url`` (opened as the server does)."""
    require("httpx")
    testclient = require("starlette.testclient")
    from popbt.dashboard.app import create_app

    with history.open_reader(url) as store:
        yield testclient.TestClient(create_app(store, ["testserver"]))


@pytest.fixture
def client(sqlite_url):
    hand_built(sqlite_url)
    with dashboard_client(sqlite_url) as c:
        yield c


def test_the_endpoints_serve_the_data_functions_answer_and_pages_name_the_experiment(client, sqlite_url):
    listed = client.get("/api/experiments")
    assert listed.status_code == 200 and listed.headers["cache-control"] == "no-store"
    assert [e["name"] for e in listed.json()["experiments"]] == ["hand"]
    one = client.get("/api/experiments/hand")
    assert one.json() == json.loads(json.dumps(view(sqlite_url, "hand")))
    page = client.get("/experiments/hand")
    assert page.status_code == 200 and "<title>hand · popbt dashboard</title>" in page.text
    assert 'data-experiment="hand"' in page.text and "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/").status_code == 200
    for asset in ("common.js", "experiment.js", "list.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200


def test_an_unknown_experiment_is_a_404_saying_so_and_a_foreign_host_is_refused(client):
    missing = client.get("/api/experiments/nope")
    assert missing.status_code == 404 and missing.json() == {"error": "no experiment named 'nope'"}
    page = client.get("/experiments/nope")
    assert page.status_code == 404 and "no experiment named &#x27;nope&#x27;" in page.text
    assert client.get("/api/experiments", headers={"host": "rebound.example"}).status_code == 400


def test_serving_never_writes_to_the_database(client, sqlite_url, tmp_path):
    db = tmp_path / "popbt.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    for path in ("/api/experiments", "/api/experiments/hand", "/experiments/hand", "/api/experiments/latest"):
        assert client.get(path).status_code == 200
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_the_endpoints_read_a_postgresql_store(pg_url):
    hand_built(pg_url)
    with dashboard_client(pg_url) as c:
        d = c.get("/api/experiments/hand").json()
    assert d["finished"] and (d["best"]["member"], d["best"]["score"]) == (1, 0.95)
    assert [(m, k) for m, k, _ in d["curves"]["best"]] == BEST_ANCESTRY


# -- the command line --------------------------------------------------------------------


def test_a_missing_database_is_one_line_and_nothing_is_created(tmp_path):
    typo = tmp_path / "typo"
    out = run_popbt("dashboard", "--dir", str(typo), "--port", "0", timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"popbt: error: no popbt database at {typo / 'popbt.db'} (directory {typo} does not exist)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_without_the_web_packages_it_says_how_to_install_them(sqlite_url):
    hand_built(sqlite_url)
    code = (
        "import sys; sys.modules['uvicorn'] = None; from popbt.cli import main; "
        f"sys.exit(main(['dashboard', '--storage', {sqlite_url!r}]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "popbt: error: popbt dashboard needs uvicorn, which is not installed: pip install 'popbt[dashboard]'"
    ]


def test_a_port_in_use_is_one_line(sqlite_url):
    hand_built(sqlite_url)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = run_popbt("dashboard", "--storage", sqlite_url, "--port", str(port), timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert re.fullmatch(rf"popbt: error: cannot listen on 127\.0\.0\.1:{port}: .+", out.stderr.strip())


def test_popbt_imports_no_web_library():
    code = (
        "import sys, popbt, popbt.cli, popbt.dashboard, popbt.dashboard.data; "
        "print(sorted(m for m in ('starlette', 'uvicorn', 'anyio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# -- end to end: a real run, the real server, a real browser ---------------------------


def chromium() -> str:
    """The chromium binary (``/usr/bin/chromium`` is a wrapper script Playwright cannot drive)."""
    for path in (
        os.environ.get("POPBT_TEST_CHROMIUM"),
        "/usr/lib/chromium/chromium",
        "/usr/lib/chromium-browser/chrome",
    ):
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return path
    unavailable("chromium is not installed (looked in /usr/lib/chromium; set POPBT_TEST_CHROMIUM)")


def address_of(server: subprocess.Popen, deadline: float) -> str:
    """The URL the dashboard prints once it listens."""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([server.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = server.stdout.readline()
        if not line:
            break
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        if found:
            return found.group(0)
    server.kill()
    pytest.fail("the dashboard did not say where it listens")


def wait_until(condition, deadline: float, what: str):
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_the_page_follows_a_real_run_live_until_it_finishes(tmp_path):
    sync_api = require("playwright.sync_api")
    httpx = require("httpx")
    binary = chromium()
    env = {**os.environ, "POPBT_TEST_STEP_SECONDS": "0.4"}
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=binary, headless=True, args=CHROMIUM_FLAGS
        )
        run = subprocess.Popen(
            popbt_cmd("run", QUAD, "--dir", str(tmp_path), "--name", "live", "--workers", "2", "--seed", "5"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "run.err").open("w"),
        )
        server = None
        try:
            deadline = time.monotonic() + 60
            wait_until(lambda: (tmp_path / "popbt.db").exists(), deadline, "the run's database")
            server = subprocess.Popen(
                popbt_cmd("dashboard", "--dir", str(tmp_path), "--port", "0"),
                stdout=subprocess.PIPE,
                stderr=(tmp_path / "dashboard.err").open("w"),
                text=True,
            )
            url = address_of(server, deadline)
            names = lambda: [e["name"] for e in httpx.get(url + "api/experiments").json()["experiments"]]  # noqa: E731
            wait_until(lambda: "live" in names(), deadline, "the experiment to appear")

            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(url)
            link = page.locator("#experiments a", has_text="live")
            link.wait_for(timeout=20_000)
            link.click()
            page.wait_for_url(url + "experiments/live")
            assert "live" in page.title()
            page.wait_for_function("() => document.getElementById('done').textContent !== '–'", timeout=20_000)
            first = int(page.inner_text("#done"))
            assert page.inner_text("#total") == "24" and first < 24, "the run ended before the page could follow it"
            page.wait_for_function(
                "n => Number(document.getElementById('done').textContent) > n", arg=first, timeout=30_000
            )
            page.wait_for_function("() => document.getElementById('status').textContent === 'finished'", timeout=60_000)

            assert page.inner_text("#done") == "24"
            assert page.text_content("#best-label") == "best final model"
            rows = page.locator("#population tbody tr")
            assert rows.count() == 4
            for i in range(4):
                cells = [c.strip() for c in rows.nth(i).locator("td").all_inner_texts()]
                assert cells[1] == "5" and re.fullmatch(r"-?\d+(\.\d+)?", cells[2]), cells  # age 5, a score
                assert cells[-2].startswith("done")
            assert page.locator("#curves svg .ancestry").count() == 1
            assert page.locator("#scatter svg circle.hp-dot").count() == 24
            assert errors == []
            assert run.wait(timeout=60) == 0, (tmp_path / "run.err").read_text()
        finally:
            if run.poll() is None:
                run.kill()
            browser.close()
            if server is not None and server.poll() is None:
                server.send_signal(signal.SIGINT)
    assert server.wait(timeout=20) in (0, 130)
    assert "Traceback" not in (tmp_path / "dashboard.err").read_text()
