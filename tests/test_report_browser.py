"""The quickstart's report and a compare report, opened in a real browser (headless Chromium): no console errors,
every row of results.json in the table, the charts present, the sorting script run, and a printable PDF."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from edgecraft.reports.results_file import load_results
from tests.conftest import edgecraft

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (.ci/run installs it: apt-get install chromium)"
)
# Headless and quiet: without the background-networking flags Chromium keeps trying to reach Google's servers.
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


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=180
    )


class Page(HTMLParser):
    """What a test needs from the DOM that Chromium dumps after the page's scripts ran."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.table: str | None = None
        self.rows: dict[str, list[str]] = {}
        self.charts: list[str] = []
        self.figure: str | None = None
        self.focusable_headers = 0
        self.body: dict[str, str | None] = {}
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self.table = attributes.get("id")
        elif tag == "tr" and "data-key" in attributes:
            self.rows.setdefault(self.table, []).append(attributes["data-key"])
        elif tag == "th" and attributes.get("tabindex") == "0":  # set by the inline sorting script
            self.focusable_headers += 1
        elif tag == "body":
            self.body = attributes
        elif tag == "figure":
            self.figure = attributes.get("id")
        elif tag == "svg" and self.figure:
            self.charts.append(self.figure)
            self.figure = None


def open_page(page: Path, tmp_path: Path) -> Page:
    completed = chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    assert completed.returncode == 0, completed.stderr[-2000:]
    console = [line for line in completed.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    pdf = tmp_path / f"{page.stem}.pdf"
    printed = chromium(tmp_path, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri())
    assert printed.returncode == 0 and pdf.read_bytes().startswith(b"%PDF"), printed.stderr[-2000:]
    return Page(completed.stdout)


def keys(run_dir: Path) -> list[str]:
    return [f"{r.model}|{r.variant}|{r.target}" for r in load_results(run_dir).rows]


def test_quickstart_report_in_chromium(quickstart_run: Path, tmp_path: Path) -> None:
    page = open_page(quickstart_run / "report.html", tmp_path)
    assert page.rows["results"] == keys(quickstart_run)
    assert page.charts == ["chart-accuracy-latency", "chart-size", "chart-latency", "chart-memory"]
    assert page.focusable_headers > 0, "the sorting script did not run"


# Clicks the p50 header of the results table and records the row order in a body attribute for the DOM dump.
CLICK_P50 = """<script>
const th = [...document.querySelectorAll("#results th")].find((t) => t.textContent.startsWith("p50"));
th.click();
document.body.dataset.sorted = [...document.querySelectorAll("#results tbody tr")].map((r) => r.dataset.key).join(";");
</script></body>"""


def test_sorting_the_table_in_chromium(quickstart_run: Path, tmp_path: Path) -> None:
    page = tmp_path / "sorted.html"
    page.write_text((quickstart_run / "report.html").read_text().replace("</body>", CLICK_P50))
    p50 = dict(zip(keys(quickstart_run), (r.measurement.latency_ms.p50 for r in load_results(quickstart_run).rows)))
    assert open_page(page, tmp_path).body["data-sorted"].split(";") == sorted(p50, key=p50.get)


def test_compare_report_in_chromium(quickstart_run: Path, tmp_path: Path) -> None:
    """The quickstart against a doctored copy of itself: one row twice as slow, one row failed."""
    results = load_results(quickstart_run)
    slow = results.rows[0].measurement.latency_ms
    doubled = slow.model_copy(update={"p50": 2 * slow.p50, "p50_ci95": (2 * slow.p50_ci95[0], 2 * slow.p50_ci95[1])})
    results.rows[0].measurement = results.rows[0].measurement.model_copy(update={"latency_ms": doubled})
    results.rows[1] = results.rows[1].model_copy(
        update={"status": "failed", "reason": "simulated crash", "measurement": None}
    )
    candidate = tmp_path / "candidate"
    candidate.mkdir()
    (candidate / "results.json").write_text(results.model_dump_json())

    completed = edgecraft("report", "compare", quickstart_run, candidate)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    regressions = [line for line in completed.stdout.splitlines() if line.startswith("regression:")]
    assert len(regressions) == 2 and "p50 latency +100.0 %" in regressions[0] and "simulated crash" in regressions[1]

    page = open_page(candidate / "compare.html", tmp_path)
    assert page.rows["diff"] == keys(quickstart_run)
    assert page.charts == ["chart-latency-change"]
    assert page.focusable_headers > 0
