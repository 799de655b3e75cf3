"""Screenshots of ``popbt dashboard`` for docs/dashboard.md, taken from real runs.

Trains the toy quadratic (population 8, 20 intervals) to the end, then starts the digits demo
(``popbt run popbt.examples.digits --seed 1``) and a dashboard on the same run directory, and
photographs, in headless chromium, the list and the digits page once the demo is about half
done, so that the pages show a run in progress. Needs torch, scikit-learn, Playwright
and chromium; takes about a minute on two cores.

    python docs/figures/make_dashboard_screenshots.py [--dir RUN_DIR] [--at 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("POPBT_CHROMIUM", "/usr/lib/chromium/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def popbt(*args: str) -> list[str]:
    return [sys.executable, "-m", "popbt", *args]


def wait(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def start_dashboard(run_dir: Path) -> tuple[subprocess.Popen, str]:
    server = subprocess.Popen(
        popbt("dashboard", "--dir", str(run_dir), "--port", "0"), stdout=subprocess.PIPE, text=True
    )
    line = server.stdout.readline()
    found = re.search(r"http://127\.0\.0\.1:\d+/", line)
    if not found:
        server.kill()
        raise SystemExit(f"the dashboard did not start: {line!r}")
    return server, found.group(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, help="run directory (default: a fresh temporary one)")
    ap.add_argument("--at", type=float, default=0.5, help="fraction of the demo done when photographed")
    args = ap.parse_args()
    run_dir = args.dir or Path(tempfile.mkdtemp(prefix="popbt-dashboard-"))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}

    toy = ["popbt.examples.toy_quadratic", "--name", "toy", "--population", "8", "--intervals", "20", "--seed", "1"]
    subprocess.run(popbt("run", *toy, "--workers", "2", "--dir", str(run_dir)), check=True, **quiet)
    server, url = start_dashboard(run_dir)
    demo = None
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                tempfile.mkdtemp(prefix="chromium-"),
                executable_path=CHROMIUM,
                headless=True,
                args=FLAGS,
                viewport={"width": 1240, "height": 260},
                device_scale_factor=1,
            )
            page = browser.new_page()
            demo = subprocess.Popen(
                popbt("run", "popbt.examples.digits", "--name", "digits", "--seed", "1", "--dir", str(run_dir)), **quiet
            )
            wait(lambda: any(e["name"] == "digits" for e in get(url + "api/experiments")["experiments"]), 120, "digits")
            progress = lambda: get(url + "api/experiments/digits")["progress"]  # noqa: E731
            wait(lambda: progress()["fraction"] >= args.at, 600, f"{args.at:.0%} of the demo")
            page.goto(url)
            page.locator("#experiments a", has_text="digits").wait_for()
            page.screenshot(path=HERE / "dashboard-list.png", full_page=True)
            page.set_viewport_size({"width": 1240, "height": 800})
            page.goto(url + "experiments/digits")
            page.locator("#scatter svg").wait_for()
            page.screenshot(path=HERE / "dashboard-experiment.png", full_page=True)
            browser.close()
        demo.wait(timeout=600)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
        if demo is not None and demo.poll() is None:
            demo.kill()
    print(f"wrote {HERE / 'dashboard-list.png'} and {HERE / 'dashboard-experiment.png'} (run directory {run_dir})")


if __name__ == "__main__":
    main()
