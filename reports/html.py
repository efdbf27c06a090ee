"""Render a run's results into a self-contained HTML page (inline CSS and SVG, no network needed to open it)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from reports.charts import accuracy_vs_latency
from reports.schema import RunResults


def render_html(results: RunResults) -> str:
    env = Environment(loader=PackageLoader("reports", "templates"), autoescape=select_autoescape(["html"]))
    css = env.loader.get_source(env, "report.css")[0]
    counts = Counter(row.status for row in results.rows)
    benchmark = results.recipe.get("benchmark", {})
    measured = [row.measurement for row in results.rows if row.measurement]
    return env.get_template("report.html").render(
        results=results,
        env=results.environment,
        css=css,
        chart=accuracy_vs_latency(results),
        counts={status: counts.get(status, 0) for status in ("ok", "skipped", "failed")},
        threads=benchmark.get("threads", "?"),
        runs=measured[0].latency_ms.runs if measured else "?",
    )


def write_report(results: RunResults, run_dir: Path) -> Path:
    """Write ``report.html`` into ``run_dir`` and return its path."""
    path = run_dir / "report.html"
    path.write_text(render_html(results), encoding="utf-8")
    return path
