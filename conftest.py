"""The wall time of each part of a test run, reported at its end: unit tests, the chapters under
nbval, the chapters under papermill with another seed, the website build, and the browser check
(``make test`` runs the unit tests first, under pytest-xdist, then the rest); and each chapter's
time under each, against the per-chapter budget."""

import time
from collections import defaultdict

_PARTS = defaultdict(lambda: {"tests": 0, "seconds": 0.0, "start": float("inf"), "stop": 0.0})
_CHAPTERS = defaultdict(lambda: {"nbval": 0.0, "papermill": 0.0})
_BEGIN = time.time()
CHAPTER_BUDGET_S = 120  # each chapter at SCALE = "ci" on the 2-core machine


def _part(nodeid: str) -> str:
    if nodeid.startswith("chapters/"):
        return "notebooks (nbval, SEED 0)"
    if nodeid.startswith("tests/test_book.py"):
        if "test_chapter_runs_with_another_seed" in nodeid:
            return "notebooks (papermill, SEED 1)"
        if "test_page_in_browser" in nodeid or "link_checker" in nodeid:
            return "website in Chromium"
        return "website build"
    return "unit tests"


def pytest_runtest_logreport(report):
    part = _PARTS[_part(report.nodeid)]
    part["seconds"] += report.duration
    part["start"] = min(part["start"], getattr(report, "start", time.time() - report.duration))
    part["stop"] = max(part["stop"], getattr(report, "stop", time.time()))
    if report.when == "call":
        part["tests"] += 1
    if report.nodeid.startswith("chapters/"):  # nbval: one test per cell
        _CHAPTERS[report.nodeid.split("::")[0].split("/")[-1].removesuffix(".ipynb")]["nbval"] += report.duration
    elif "test_chapter_runs_with_another_seed[" in report.nodeid:
        _CHAPTERS[report.nodeid.split("[")[-1].rstrip("]")]["papermill"] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _PARTS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("time per part")
    write(f"{'part':32} {'tests':>6} {'busy (s)':>9} {'span (s)':>9}")
    for name in sorted(_PARTS, key=lambda n: _PARTS[n]["start"]):
        p = _PARTS[name]
        write(f"{name:32} {p['tests']:6d} {p['seconds']:9.0f} {p['stop'] - p['start']:9.0f}")
    write(f"{'whole run (wall)':32} {'':6} {'':9} {time.time() - _BEGIN:9.0f}")
    write("busy: the sum of the tests' own times; span: from the first start to the last end (parts overlap "
          "when they run in parallel; the website build is timed in the setup of its first test)")
    if _CHAPTERS:
        terminalreporter.section("time per chapter (s, one torch thread per worker)")
        write(f"{'chapter':32} {'nbval':>9} {'papermill':>9}")
        for name in sorted(_CHAPTERS):
            c = _CHAPTERS[name]
            over = " over budget" if max(c.values()) > CHAPTER_BUDGET_S else ""
            write(f"{name:32} {c['nbval']:9.0f} {c['papermill']:9.0f}{over}")
        write(f"budget: {CHAPTER_BUDGET_S} s per chapter at SCALE = \"ci\" (two workers share the two cores)")
