"""Run every benchmark and write docs/benchmarks.md (what `make bench` does).

Each benchmark is a separate process printing markdown on stdout, so one that fails or is
skipped leaves the others' results intact. The GPU section of an existing
docs/benchmarks.md is kept: it comes from another machine.
Run: .venv/bin/python bench/run_all.py [--quick] [--only claims,overhead,growth,affinity,lock,scale,toy,quality]
(--only reruns a subset, or another bench/ script that prints markdown, and keeps the other
sections of the existing file; sections of scripts that no longer exist are dropped.)
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import common
from common import BENCH, ROOT, log

DOC = ROOT / "docs" / "benchmarks.md"
BENCHMARKS = ("claims", "overhead", "growth", "affinity", "lock", "scale", "toy", "quality")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_PACKAGE = "dataset-fashion-mnist"
GPU_PLACEHOLDER = (
    "## GPU\n\n*Placeholder: this section is filled from a run on a GPU machine "
    "(the lead runs it); `bench/run_all.py` keeps whatever is written here.*\n"
)


# -- environment ----------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}"


def environment() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    items = [
        ("Date", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("popbt", f"{version('popbt')} (git {git_commit()})"),
        ("CPU", cpu_model()),
        ("Cores", str(os.cpu_count())),
        ("Load average at start (1, 5, 15 min)", load),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("torch", version("torch")),
        ("SQLAlchemy", version("sqlalchemy")),
        ("psycopg", version("psycopg")),
        ("sqlite", sqlite3.sqlite_version),
        ("PostgreSQL server", common.postgres_version() or f"not available ({common.postgres_problem()})"),
    ]
    return "\n".join(f"- {k}: {v}" for k, v in items)


# -- data -----------------------------------------------------------------------------------


def fashion_problem() -> str | None:
    """Make sure Fashion-MNIST is there, installing Debian's package as root when it can;
    return why the benchmark must be skipped, or None."""
    if os.environ.get("POPBT_DATA") or FASHION_DIR.is_dir():
        return None
    if not shutil.which("apt-get"):
        return f"{FASHION_DIR} is missing and there is no apt-get to install {FASHION_PACKAGE}"
    if os.geteuid() != 0:
        return f"{FASHION_DIR} is missing; install it with `sudo apt-get install -y {FASHION_PACKAGE}`"
    log(f"run_all: installing {FASHION_PACKAGE}")
    done = subprocess.run(
        ["apt-get", "install", "-y", FASHION_PACKAGE], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if done.returncode != 0 or not FASHION_DIR.is_dir():
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        return f"`apt-get install -y {FASHION_PACKAGE}` failed: {last}"
    return None


# -- running --------------------------------------------------------------------------------


def run_one(name: str, flags: list[str]) -> str:
    """One benchmark's markdown (stdout); its progress goes straight to our stderr."""
    script = BENCH / f"{name}.py"
    log(f"run_all: {name} {' '.join(flags)}")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(script), *flags], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    minutes = (time.perf_counter() - start) / 60
    text = done.stdout.strip()
    if not text.startswith("### "):  # a script that prints only its table
        command = " ".join([".venv/bin/python", f"bench/{name}.py", *flags])
        text = f"### bench/{name}.py\n\nReproduce: `{command}`\n\n{text}"
    if done.returncode != 0:
        text += (
            f"\n\n**{name} failed** (exit status {done.returncode}); rerun "
            f"`.venv/bin/python bench/{name}.py {' '.join(flags)}` to see why."
        )
    return f"{text}\n\n*{name} took {minutes:.1f} min.*\n"


def mark(name: str, text: str) -> str:
    """Wrap a benchmark's section in comments, so a later --only run can keep it."""
    return f"<!-- bench:{name} -->\n{text.rstrip()}\n<!-- /bench:{name} -->\n"


def previous_sections() -> dict[str, str]:
    """Each benchmark's section in the existing docs/benchmarks.md, by name."""
    if not DOC.exists():
        return {}
    found = re.finditer(r"<!-- bench:([\w-]+) -->\n.*?<!-- /bench:\1 -->\n", DOC.read_text(), flags=re.S)
    return {m.group(1): m.group(0) for m in found}


KEPT = "*(Kept from an earlier run of run_all: its environment may differ from the one above.)*\n\n"


def kept(name: str, text: str) -> str:
    """A previous section, labelled as such once."""
    if KEPT in text:
        return text
    return text.replace(f"<!-- bench:{name} -->\n", f"<!-- bench:{name} -->\n{KEPT}", 1)


def fresh(name: str, flags: list[str]) -> str:
    """Run one benchmark now (quality's Fashion-MNIST part says why it was skipped, if it was)."""
    problem = fashion_problem() if name == "quality" else None
    if problem:
        log(f"run_all: quality's Fashion-MNIST part will be skipped: {problem}")
    return mark(name, run_one(name, flags))


def gpu_section() -> str:
    """The existing GPU section of docs/benchmarks.md, or the placeholder."""
    if DOC.exists():
        match = re.search(r"^## GPU\n.*?(?=^## |\Z)", DOC.read_text(), flags=re.S | re.M)
        if match:
            return match.group(0).rstrip() + "\n"
    return GPU_PLACEHOLDER


def document(env: str, sections: list[str]) -> str:
    return "\n".join(
        [
            "# Benchmarks",
            "",
            "Generated by `make bench` (`.venv/bin/python bench/run_all.py`); each section gives the exact "
            "command that reproduces it. A command with `--quick` ran at small sizes, to check that "
            "everything works: read those figures as indications, not results. The machine may be "
            "shared, so every figure is a median over repetitions and every comparison is measured side "
            "by side in the same run; ranges are min–max over the repetitions.",
            "",
            "## Environment",
            "",
            env,
            "",
            "## CPU results",
            "",
            *sections,
            gpu_section(),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help=f"comma-separated benchmarks to rerun (default {','.join(BENCHMARKS)}); any "
        "bench/NAME.py that prints markdown may be named; the other sections are kept",
    )
    args = p.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()]
    missing = [b for b in chosen if not (BENCH / f"{b}.py").is_file() or b in ("common", "run_all")]
    if missing:
        p.error(f"no benchmark called {', '.join(missing)} in bench/")
    flags = ["--quick"] if args.quick else []
    env = environment()
    previous = {n: text for n, text in previous_sections().items() if (BENCH / f"{n}.py").is_file()}
    order = list(dict.fromkeys([*BENCHMARKS, *previous, *chosen]))
    sections = []
    for name in order:
        if name in chosen:
            sections.append(fresh(name, flags))
        elif name in previous:
            sections.append(kept(name, previous[name]))
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(document(env, sections))
    log(f"run_all: wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
