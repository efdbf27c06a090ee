"""Render a run (or a comparison of two runs) into the files people read: a self-contained HTML page (inline CSS,
SVG and a few lines of inline JavaScript; nothing to fetch), ``results.csv`` and a Markdown summary for a
pull-request comment. Every number comes from ``reports.analysis`` / ``reports.compare``; this module only formats.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from edgecraft.core.files import write_atomic
from edgecraft.core.results import RunResults
from edgecraft.reports import charts
from edgecraft.reports.analysis import Analysis, analyse, timing_not_measured
from edgecraft.reports.compare import Comparison
from edgecraft.reports.csv_table import results_csv
from edgecraft.reports.settings import ReportSettings, report_settings

DASH = "–"


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return DASH if value is None else f"{value:{spec}}{suffix}"


def _pts(value: float | None) -> str:
    """A fraction as signed percentage points, with a real minus sign."""
    return DASH if value is None else f"{round(100 * value, 2) + 0.0:+.2f} pt".replace("-", "−")  # no "−0.00"


def _top_ops(profile: Any, count: int = 3, nodes_only: bool = False) -> str:
    """An operator profile's top op types, compactly: 'Conv 50 % · QuantizeLinear 22 %' (or node counts,
    'CONV_2D ×12', where per-op time is not measured, or where it means nothing: ``nodes_only``, the most nodes
    first)."""
    if profile is None:
        return DASH
    if nodes_only:
        ops = sorted(profile.ops, key=lambda op: (-op.nodes, op.op_type))[:count]
        return " · ".join(f"{op.op_type} ×{op.nodes}" for op in ops) or DASH
    parts = [
        f"{op.op_type} {100 * op.share:.0f} %" if op.share is not None else f"{op.op_type} ×{op.nodes}"
        for op in profile.top(count)
    ]
    return " · ".join(parts) or (profile.not_measured or DASH)


def _counts(counts: dict[str, int]) -> str:
    """{'Conv': 12, 'Mul': 13} → 'Conv ×12, Mul ×13'."""
    return ", ".join(f"{name} ×{count}" for name, count in sorted(counts.items())) or DASH


def _reason_head(text: str | None, lines: int = 3, limit: int = 400) -> str | None:
    """The first ``lines`` lines of a long reason on one line, cut to ``limit`` characters; None where the whole
    reason is that short (the report then shows it as it is). A converter's failure keeps its full message in
    results.json: the report shows these first lines and the whole text in a ``<details>`` element."""
    if not text:
        return None
    kept = [line.strip() for line in text.strip().splitlines()]
    head = " ".join(line for line in kept[:lines] if line)
    if len(kept) <= lines and len(head) <= limit:
        return None
    return head if len(head) <= limit else head[: limit - 1] + "…"


# Markdown's characters that make emphasis, code, links and table cells; '_' only where it can open or close emphasis
# (GitHub never reads an underscore inside a word as one, so 'digits_cnn' stays readable in the file).
_MARKDOWN_SPECIAL = re.compile(r"[\\`*\[\]|~]|(?<!\w)_|_(?!\w)")


def markdown_text(value: Any) -> str:
    """A string from outside (a name, an agent's description or reason, a warning) as literal Markdown text on one
    line: summary.md is posted as a pull-request comment, where ``<img onerror=…>``, ``[x](javascript:…)`` or a
    ``|`` in a table cell must read as the characters they are. HTML's ``& < >`` become entities, Markdown's own
    characters are backslash-escaped."""
    text = " ".join(str(value).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(lambda found: "\\" + found.group(), text)


def _change(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:+.1f} %".replace("-", "−")


def template_environment() -> Environment:
    """The package's Jinja templates, found by the package's import name (installed, there is no other)."""
    return Environment(
        loader=PackageLoader("edgecraft.reports", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@cache
def _environment() -> Environment:
    env = template_environment()
    env.filters.update(
        fmt=_fmt,
        pct=lambda value: _fmt(None if value is None else 100 * value, ".2f", " %"),
        pts=_pts,
        drop_pts=lambda drop: _pts(None if drop is None else -drop),
        change=_change,
        reason_head=_reason_head,
        times=lambda value: _fmt(value, ".2f", "×"),
        kb=lambda size: _fmt(None if size is None else size / 1024, ",.1f"),
        compact_json=lambda value: json.dumps(value, separators=(", ", ": ")),
        top_ops=_top_ops,
        timing_not_measured=timing_not_measured,
        counts=_counts,
        figures=lambda metrics: ", ".join(f"{key}={value:.4g}" for key, value in sorted(metrics.items())),
        md=markdown_text,
    )
    return env


def inline_assets(env: Environment) -> dict[str, str]:
    """The stylesheet and the sorting script every page inlines (a report is one self-contained file)."""
    assert env.loader is not None  # template_environment gives it the package's templates
    return {"css": env.loader.get_source(env, "report.css")[0], "script": env.loader.get_source(env, "sort.js")[0]}


def _render(template: str, **context: Any) -> str:
    env = _environment()
    return env.get_template(template).render(**inline_assets(env), **context)


def _run_context(results: RunResults) -> dict[str, Any]:
    counts = Counter(row.status for row in results.rows)
    measured = [row.measurement for row in results.rows if row.measurement]
    return {
        "results": results,
        "env": results.environment,
        "counts": {status: counts.get(status, 0) for status in ("ok", "skipped", "failed")},
        # The protocol as it ran; older results only have the recipe's section.
        "benchmark": results.benchmark or results.recipe.get("benchmark", {}),
        "timed_runs": sorted({m.latency_ms.runs for m in measured}),
    }


def render_html(analysis: Analysis) -> str:
    return _render(
        "report.html",
        a=analysis,
        charts={
            "accuracy-latency": charts.draw(charts.accuracy_vs_latency, analysis),
            "size": charts.draw(charts.size_per_variant, analysis),
            "latency": charts.draw(charts.latency_distributions, analysis),
            "memory": charts.draw(charts.memory_per_target, analysis),
            **(
                {"server": charts.draw(charts.latency_vs_offered_qps, analysis)}
                if charts.server_searched(analysis)
                else {}
            ),
        },
        **_run_context(analysis.results),
    )


def render_summary(analysis: Analysis) -> str:
    return _render("summary.md", a=analysis, **_run_context(analysis.results))


def write_report(results: RunResults, run_dir: Path, settings: ReportSettings | None = None) -> Path:
    """Write ``report.html``, ``results.csv`` and ``summary.md`` into ``run_dir``; return the HTML file's path.

    ``settings`` default to the run's own recipe ``report`` section. Each file is replaced whole or not at all."""
    analysis = analyse(results, settings or report_settings(results.recipe))
    write_atomic(run_dir / "results.csv", results_csv(analysis))
    write_atomic(run_dir / "summary.md", render_summary(analysis))
    return write_atomic(run_dir / "report.html", render_html(analysis))


def write_comparison(comparison: Comparison, out_dir: Path) -> Path:
    """Write ``compare.html`` and ``compare.md`` (for the pull-request comment) into ``out_dir``."""
    context = {"c": comparison, "base": comparison.baseline, "cand": comparison.candidate}
    write_atomic(out_dir / "compare.md", _render("compare.md", **context))
    chart = charts.draw(charts.latency_change, comparison)
    return write_atomic(out_dir / "compare.html", _render("compare.html", chart=chart, **context))
