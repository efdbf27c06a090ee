"""The tune report: one self-contained HTML file (inline CSS and SVG, the run report's style) for a study.

It takes plain data (``TuneReport``: the study's trials as dicts) and imports no ML framework or optimiser: the
Pareto front of the feasible trials (metric × latency, size as the marker's area) with the chosen point, the study
history (objective per trial with the best-so-far line), and every trial's parameters and rows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from markupsafe import Markup
from pydantic import BaseModel

from edgecraft.core.files import write_atomic
from edgecraft.reports.html import inline_assets, template_environment


class TuneReport(BaseModel):
    study: str
    recipe: str
    storage: str
    objectives: list[str]
    statistic: str
    latency_tolerance: float = 0.0
    variant: str
    target: str
    model: str
    max_drop: float
    parameters: dict[str, dict[str, Any]]
    trials: list[dict[str, Any]]
    chosen: int | None = None
    pareto: list[int] = []
    best_recipe: str | None = None


def _esc(text: Any) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _scale(values: list[float], low_px: float, high_px: float) -> Any:
    low, high = min(values), max(values)
    span = (high - low) or abs(high) or 1.0
    low, high = low - 0.05 * span, high + 0.05 * span
    return lambda v: low_px + (v - low) / (high - low) * (high_px - low_px), (low, high)


def pareto_svg(data: TuneReport) -> str:
    """Metric (y) against latency (x) of every complete trial; size as the marker's area; the feasible Pareto
    front joined; infeasible trials hollow; the chosen point ringed."""
    points = [t for t in data.trials if t["state"] == "complete" and t.get("row")]
    if not points:
        return '<p class="note">No complete trial to plot.</p>'
    width, height, left, bottom = 720, 360, 64, 44
    latency = [t["row"][data.statistic] for t in points]
    metric = [100 * (t["metric"] or 0) for t in points]
    sizes = [t["row"]["size_bytes"] or 1 for t in points]
    x, (x0, x1) = _scale(latency, left, width - 16)
    y, (y0, y1) = _scale([*metric, min(100.0, max(metric) + 0.5)], height - bottom, 16)
    largest = max(sizes)
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="Pareto front of the trials">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 16}" y2="{height - bottom}" stroke="#d9dee5"/>',
        f'<line x1="{left}" y1="16" x2="{left}" y2="{height - bottom}" stroke="#d9dee5"/>',
        f'<text x="{(left + width) / 2}" y="{height - 8}" text-anchor="middle" font-size="12">'
        f"{data.statistic} latency on {_esc(data.target)} (ms)</text>",
        f'<text x="14" y="{(height - bottom) / 2}" font-size="12" transform="rotate(-90 14 {(height - bottom) / 2})" '
        f'text-anchor="middle">metric (%)</text>',
    ]
    for value in (x0, (x0 + x1) / 2, x1):
        parts.append(
            f'<text x="{x(value):.1f}" y="{height - bottom + 16}" font-size="11" text-anchor="middle">'
            f"{value:.3g}</text>"
        )
    for value in (y0, (y0 + y1) / 2, y1):
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" font-size="11" text-anchor="end">{value:.4g}</text>')
    reference = next((t["reference"] for t in points if t.get("reference") is not None), None)
    if reference is not None:
        floor = 100 * (reference - data.max_drop)
        if y0 <= floor <= y1:
            parts.append(
                f'<line x1="{left}" x2="{width - 16}" y1="{y(floor):.1f}" y2="{y(floor):.1f}" '
                f'stroke="#cf222e" stroke-dasharray="4 3"/><text x="{width - 18}" y="{y(floor) - 4:.1f}" '
                f'font-size="11" fill="#cf222e" text-anchor="end">budget: fp32 − {100 * data.max_drop:g} pt</text>'
            )
    front = sorted((t for t in points if t["number"] in data.pareto), key=lambda t: t["row"][data.statistic])
    if len(front) > 1:
        path = " ".join(f"{x(t['row'][data.statistic]):.1f},{y(100 * t['metric']):.1f}" for t in front)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#0969da" stroke-width="1.5"/>')
    for t, lat, met, size in zip(points, latency, metric, sizes):
        radius = 3 + 9 * math.sqrt(size / largest)
        feasible = t.get("feasible")
        fill = "#0969da" if t["number"] in data.pareto else ("#8c959f" if feasible else "none")
        stroke = "#cf222e" if not feasible else "#0969da"
        title = f"trial {t['number']}: {lat:.3f} ms, {met:.2f} %, {size / 1024:.1f} KB; " + ", ".join(
            f"{k.rsplit('.', 1)[-1]}={v}" for k, v in t["params"].items()
        )
        parts.append(
            f'<circle cx="{x(lat):.1f}" cy="{y(met):.1f}" r="{radius:.1f}" fill="{fill}" fill-opacity="0.55" '
            f'stroke="{stroke}"><title>{_esc(title)}</title></circle>'
        )
        if t["number"] == data.chosen:
            parts.append(
                f'<circle cx="{x(lat):.1f}" cy="{y(met):.1f}" r="{radius + 5:.1f}" fill="none" '
                f'stroke="#1a7f37" stroke-width="2.5"/><text x="{x(lat) + radius + 8:.1f}" '
                f'y="{y(met) - radius - 4:.1f}" font-size="12" fill="#1a7f37">chosen: trial {t["number"]}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def history_svg(data: TuneReport) -> str:
    """The first objective of every complete trial by trial number, the best feasible so far as a step line,
    pruned and failed trials as marks on the axis."""
    if not data.trials:
        return '<p class="note">No trial yet.</p>'
    width, height, left, bottom = 720, 240, 64, 40
    values = [t["values"][0] for t in data.trials if t["state"] == "complete" and t["values"]]
    numbers = [t["number"] for t in data.trials]
    x, _ = _scale([min(numbers), max(numbers) + 1], left, width - 16)
    y, (y0, y1) = _scale(values or [0, 1], height - bottom, 16)
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="Study history">',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 16}" y2="{height - bottom}" stroke="#d9dee5"/>',
        f'<text x="{(left + width) / 2}" y="{height - 6}" text-anchor="middle" font-size="12">trial</text>',
        f'<text x="14" y="{(height - bottom) / 2}" font-size="12" transform="rotate(-90 14 {(height - bottom) / 2})" '
        f'text-anchor="middle">{_esc(data.objectives[0])}</text>',
    ]
    for value in (y0, y1):
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" font-size="11" text-anchor="end">{value:.3g}</text>')
    best, steps = None, []
    for t in data.trials:
        cx = x(t["number"])
        if t["state"] == "complete" and t["values"]:
            v = t["values"][0]
            colour = "#0969da" if t.get("feasible") else "#cf222e"
            parts.append(
                f'<circle cx="{cx:.1f}" cy="{y(v):.1f}" r="4" fill="{colour}"><title>trial {t["number"]}: '
                f"{v:.4g}{'' if t.get('feasible') else ' (over budget)'}</title></circle>"
            )
            if t.get("feasible") and (best is None or v < best):
                best = v
        else:
            parts.append(
                f'<text x="{cx:.1f}" y="{height - bottom - 4}" font-size="11" text-anchor="middle" '
                f'fill="#9a6700">{"✂" if t["state"] == "pruned" else "×"}<title>trial {t["number"]}: '
                f"{_esc(t['state'])} {_esc(t.get('reason') or '')}</title></text>"
            )
        if best is not None:
            steps.append(f"{cx:.1f},{y(best):.1f}")
    if steps:
        parts.append(f'<polyline points="{" ".join(steps)}" fill="none" stroke="#1a7f37" stroke-width="1.5"/>')
    parts.append("</svg>")
    return "".join(parts)


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def render_tune_report(data: TuneReport) -> str:
    env = template_environment()
    env.filters.update(
        fmt=_fmt,
        pct=lambda v: "–" if v is None else f"{100 * v:.2f} %",
        kb=lambda v: "–" if v is None else f"{v / 1024:,.1f}",
    )
    counts = {
        state: sum(1 for t in data.trials if t["state"] == state)
        for state in ("complete", "pruned", "fail", "running", "waiting")
    }
    chosen = next((t for t in data.trials if t["number"] == data.chosen), None)
    return env.get_template("tune.html").render(
        d=data,
        chosen=chosen,
        counts=counts,
        **inline_assets(env),
        pareto_svg=Markup(pareto_svg(data)),
        history_svg=Markup(history_svg(data)),
    )


def write_tune_report(data: TuneReport, folder: Path) -> Path:
    """``folder/tune-report.html`` (replaced whole) and ``folder/trials.json`` (the same data)."""
    write_atomic(folder / "trials.json", data.model_dump_json(indent=2))
    return write_atomic(folder / "tune-report.html", render_tune_report(data))
