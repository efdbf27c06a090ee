"""Charts as inline SVG (matplotlib's SVG backend), so that the report needs no JavaScript library or CDN.

Rows that were not measured (failed or skipped) stay in every chart as a labelled gap: a chart that silently
drops them would make a partial run look complete. Rows whose timings are not device timings (an emulated device,
``RowFacts.timing_not_measured``) are left out of the timing charts: the accuracy/latency chart lists them under its
axes, and the report's captions say how many were left out.

Every text that comes from the results (names, reasons) goes through ``_plain``: matplotlib reads a pair of ``$``
as math and raises on what is not. A chart is an illustration of numbers the tables also hold, so ``draw`` turns
any failure to draw one into a note instead of losing the report.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from edgecraft.core.results import ResultRow
from edgecraft.reports.analysis import Analysis, RowFacts
from edgecraft.reports.compare import Comparison

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MARKERS = "osD^vP*X"
STATUS_COLORS = {"ok": "#1a7f37", "skipped": "#9a6700", "failed": "#cf222e"}
ROW_HEIGHT_IN = 0.32
S = TypeVar("S", Analysis, Comparison)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chart:
    """An inline SVG chart, or why it could not be drawn."""

    svg: str | None = None
    failure: str | None = None


def draw(chart: Callable[[S], str], subject: S) -> Chart:
    """``chart(subject)``; any exception becomes the chart's ``failure`` and a logged warning."""
    try:
        return Chart(svg=chart(subject))
    except Exception as exc:  # noqa: BLE001 - whatever breaks a chart must not break the report around it
        failure = f"{type(exc).__name__}: {exc}"
        log.warning("the %s chart could not be drawn: %s", chart.__name__, failure)
        return Chart(failure=failure)


def _plain(text: str) -> str:
    """``text`` as matplotlib shows it literally: an escaped ``$`` never starts math."""
    return text.replace("$", r"\$")


@contextmanager
def _style(name: str) -> Iterator[None]:
    """Shared look; ``name`` salts the SVG ids so that several charts can sit in one page without clashing and the
    same results always give the same bytes."""
    import matplotlib

    with matplotlib.rc_context(
        {
            "svg.fonttype": "none",  # text stays text: smaller file, searchable, crisp when printed
            "svg.hashsalt": name,
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlesize": 10,
        }
    ):
        yield


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prologue and DOCTYPE so the SVG can sit inside HTML


def _figure(width: float, height: float, panels: int) -> tuple[Figure, Any]:
    """A figure without pyplot: no global state to close, safe to call from any thread."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.subplots(1, panels, squeeze=False)[0]


def _not_measured(row: ResultRow, width: int = 70) -> str:
    if row.measurement is not None:  # measured, but its quality could not be
        reason = row.measurement.quality.not_measured or "quality not measured"
        return _plain(reason[:width] + ("…" if len(reason) > width else ""))
    reason = (row.reason or "").replace("\n", " ")
    return _plain(f"{row.status}: {reason[:width]}{'…' if len(reason) > width else ''}")


def _row_label(row: ResultRow, with_target: bool) -> str:
    return _plain(f"{row.model} · {row.variant}" + (f" · {row.target}" if with_target else ""))


def _by(facts: list[RowFacts], key: Callable[[ResultRow], str]) -> dict[str, list[RowFacts]]:
    groups: dict[str, list[RowFacts]] = {}
    for fact in facts:
        groups.setdefault(key(fact.row), []).append(fact)
    return groups


def _timed(facts: list[RowFacts]) -> list[RowFacts]:
    """The rows whose timings are device timings (every row but an emulated device's)."""
    return [f for f in facts if not f.timing_not_measured]


def _nothing_timed(name: str) -> str:
    """A chart with no row to show: every row's timings are an emulator's."""
    with _style(name):
        figure, (axis,) = _figure(6.5, 0.9, 1)
        axis.set_axis_off()
        axis.text(
            0,
            0.5,
            "no row with device timings: every measured row ran on an emulated device",
            transform=axis.transAxes,
            va="center",
            fontsize=8,
            color=STATUS_COLORS["skipped"],
        )
        return _svg(figure)


def accuracy_vs_latency(analysis: Analysis) -> str:
    """One panel per model: p50 latency (x, log) against accuracy (y), a marker per target, the Pareto front of each
    target as a step line, the accuracy budget as a dashed line, and the unmeasured rows (and those left out: an
    emulated device's) listed under the axes."""
    by_model = _by(analysis.facts, lambda r: r.model)
    targets = list(dict.fromkeys(f.row.target for f in _timed(analysis.facts)))
    with _style("accuracy-latency"):
        figure, axes = _figure(5.0 * len(by_model), 3.6, len(by_model))
        for axis, (model, facts) in zip(axes, by_model.items()):
            if facts[0].reference_accuracy is not None:
                budget = facts[0].reference_accuracy - analysis.settings.max_accuracy_drop
                axis.axhline(100 * budget, color="#8c959f", linestyle="--", linewidth=1)
                axis.annotate(
                    "accuracy budget",
                    (0, 100 * budget),
                    xycoords=("axes fraction", "data"),
                    xytext=(2, 3),
                    textcoords="offset points",
                    color="#57606a",
                    fontsize=7,
                )
            for index, target in enumerate(targets):
                plotted = [
                    (f, (m.latency_ms.p50, 100 * m.accuracy))
                    for f in _timed(facts)
                    if f.row.target == target and (m := f.row.measurement) and m.accuracy is not None
                ]
                if not plotted:
                    continue
                measured = [f for f, _ in plotted]
                points = [point for _, point in plotted]
                colour = f"C{index}"
                front = sorted(p for p, f in zip(points, measured) if f.on_front)
                axis.step(*zip(*front), where="post", color=colour, alpha=0.5, linewidth=1.2)
                axis.scatter(
                    *zip(*points),
                    marker=MARKERS[index % len(MARKERS)],
                    s=44,
                    zorder=3,
                    label=_plain(target),
                    facecolors=[colour if f.on_front else "white" for f in measured],
                    edgecolors=colour,
                )
                # Labels alternate above and below in latency order: variants often share an accuracy.
                for rank, (fact, (x, y)) in enumerate(sorted(zip(measured, points), key=lambda item: item[1])):
                    slow = " (slower than fp32)" if fact.slower_than_fp32 else ""
                    axis.annotate(
                        _plain(fact.row.variant) + slow,
                        (x, y),
                        textcoords="offset points",
                        ha="center",
                        xytext=(0, 7 if rank % 2 == 0 else -13),
                        fontsize=7,
                        color=STATUS_COLORS["failed"] if slow else "#1d232b",
                    )
            axis.set_title(_plain(model))
            axis.margins(x=0.15, y=0.15)
            axis.set_xscale("log")
            axis.set_xlabel("latency p50 (ms, log) — lower is better")
            axis.set_ylabel(_plain(f"{facts[0].metric} (%)"))
            axis.grid(True, which="both", alpha=0.25)
            if any(f.row.measurement and f.row.measurement.accuracy is not None for f in _timed(facts)):
                axis.legend(fontsize=7, loc="lower right", title="filled: Pareto front", title_fontsize=7)
            missing = [
                f"{_plain(f.row.variant)} · {_plain(f.row.target)} — {_not_measured(f.row, 45)}"
                for f in facts
                if not f.row.measurement or f.row.measurement.accuracy is None
            ]
            missing += [
                f"{_plain(f.row.variant)} · {_plain(f.row.target)} — left out: emulated device, timings "
                "are not device timings"
                for f in facts
                if f.timing_not_measured and f.row.measurement and f.row.measurement.accuracy is not None
            ]
            if missing:
                axis.text(
                    0,
                    -0.28,
                    "not measured:\n" + "\n".join(missing),
                    transform=axis.transAxes,
                    va="top",
                    fontsize=7,
                    color=STATUS_COLORS["failed"],
                )
        return _svg(figure)


def _horizontal_rows(axis: Axes, facts: list[RowFacts], with_target: bool, drawn: list[bool]) -> None:
    """Rows top to bottom in results order; where a row has nothing ``drawn``, its status and reason instead."""
    axis.set_yticks(range(len(facts)), [_row_label(f.row, with_target) for f in facts])
    axis.set_ylim(len(facts) - 0.5, -0.5)
    axis.grid(True, axis="x", which="both", alpha=0.25)
    if not any(drawn):  # an empty panel's x ticks would be made-up numbers
        axis.set_xticks([], minor=False)
        axis.set_xticks([], minor=True)
    for position, (fact, shown) in enumerate(zip(facts, drawn)):
        if not shown:
            axis.text(
                0.01,
                position,
                _not_measured(fact.row),
                transform=axis.get_yaxis_transform(),
                va="center",
                fontsize=7,
                color=STATUS_COLORS[fact.row.status],
            )


def size_per_variant(analysis: Analysis) -> str:
    """Artifact size of every row (failed rows keep their size when the export got that far)."""
    facts = analysis.facts
    with_target = len({f.row.target for f in facts}) > 1
    with _style("size"):
        figure, (axis,) = _figure(7.5, 0.8 + ROW_HEIGHT_IN * len(facts), 1)
        sizes = [(f.row.size_bytes or 0) / 1024 for f in facts]
        variants = list(dict.fromkeys(f.row.variant for f in facts))
        axis.barh(range(len(facts)), sizes, height=0.6, color=[f"C{variants.index(f.row.variant) % 10}" for f in facts])
        for position, (fact, size) in enumerate(zip(facts, sizes)):
            if fact.row.size_bytes:
                smaller = f"  {fact.size_reduction:.1f}× smaller" if fact.size_reduction else ""
                status = "" if fact.row.status == "ok" else f"  ({fact.row.status})"
                axis.text(
                    size,
                    position,
                    f" {size:,.0f} KB{smaller}{status}",
                    va="center",
                    fontsize=7,
                    color=STATUS_COLORS[fact.row.status] if status else "#1d232b",
                )
        _horizontal_rows(axis, facts, with_target, [bool(f.row.size_bytes) for f in facts])
        axis.set_xlabel("size on disk (KB)")
        axis.set_xlim(0, max(sizes, default=1) * 1.5 or 1)  # room for the labels
        return _svg(figure)


def latency_distributions(analysis: Analysis) -> str:
    """Per target, a box per row over every timed sample (whiskers at the 1st and 99th percentiles)."""
    by_target = _by(_timed(analysis.facts), lambda r: r.target)
    if not by_target:
        return _nothing_timed("latency")
    with _style("latency"):
        height = 0.9 + ROW_HEIGHT_IN * max(len(facts) for facts in by_target.values())
        figure, axes = _figure(6.5 * len(by_target), height, len(by_target))
        for axis, (target, facts) in zip(axes, by_target.items()):
            samples = [(i, m.samples_ms) for i, f in enumerate(facts) if (m := f.row.measurement) and m.samples_ms]
            positions = [i for i, _ in samples]
            if positions:
                axis.boxplot(
                    [row_samples for _, row_samples in samples],
                    positions=positions,
                    orientation="horizontal",
                    whis=(1, 99),
                    showfliers=False,
                    widths=0.55,
                    patch_artist=True,
                    boxprops={"facecolor": "#ddf4ff", "edgecolor": "#0969da"},
                    medianprops={"color": "#0969da"},
                )
            axis.set_xscale("log")
            _horizontal_rows(axis, facts, False, [i in positions for i in range(len(facts))])
            axis.set_title(_plain(target))
            axis.set_xlabel("latency per inference (ms, log)")
        return _svg(figure)


def memory_per_target(analysis: Analysis) -> str:
    """Per target and row, what importing the runtime costs the process and, stacked on it, what the model adds
    (model memory, labelled): the runtime's share is paid once per process, the model's per model."""
    by_target = _by(_timed(analysis.facts), lambda r: r.target)
    if not by_target:
        return _nothing_timed("memory")
    with _style("memory"):
        height = 0.9 + ROW_HEIGHT_IN * max(len(facts) for facts in by_target.values())
        figure, axes = _figure(6.5 * len(by_target), height, len(by_target))
        for axis, (target, facts) in zip(axes, by_target.items()):
            measured = [f.row.measurement for f in facts]
            runtime = [m.runtime_import_mb if m else 0 for m in measured]
            model = [m.model_memory_mb if m else 0 for m in measured]
            axis.barh(range(len(facts)), runtime, color="#d0d7de", height=0.6, label="runtime import")
            axis.barh(range(len(facts)), model, left=runtime, color="#0969da", height=0.6, label="model memory")
            for position, m in enumerate(measured):
                if m:
                    axis.text(
                        m.runtime_import_mb + m.model_memory_mb,
                        position,
                        f" {m.model_memory_mb:.1f} MB",
                        va="center",
                        fontsize=7,
                    )
            _horizontal_rows(axis, facts, False, [m is not None for m in measured])
            axis.set_title(_plain(target))
            axis.set_xlabel("resident memory added to the benchmark process (MB)")
            axis.set_xlim(0, axis.get_xlim()[1] * 1.15)  # room for the labels
        figure.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="outside lower center", ncol=2)
        return _svg(figure)


def server_searched(analysis: Analysis) -> list[RowFacts]:
    """The timed rows whose Server scenario tried at least one rate."""
    return [
        f
        for f in _timed(analysis.facts)
        if f.row.measurement and any(s.scenario == "server" and s.probes for s in f.row.measurement.scenarios)
    ]


def latency_vs_offered_qps(analysis: Analysis) -> str:
    """Per target, each row's Server search: p50 and p99 latency at every rate LoadGen was offered (filled: VALID,
    hollow: INVALID), the latency bound dashed. Where the p99 line crosses the bound is the row's Server QPS."""
    by_target = _by(server_searched(analysis), lambda r: r.target)
    bound = (analysis.results.benchmark or {}).get("server", {}).get("target_latency_ms")
    with _style("server"):
        figure, axes = _figure(6.5 * len(by_target), 3.2, len(by_target))
        for axis, (target, facts) in zip(axes, by_target.items()):
            for index, fact in enumerate(facts):
                assert fact.row.measurement is not None  # server_searched keeps measured rows only
                server = next(s for s in fact.row.measurement.scenarios if s.scenario == "server")
                probes = sorted(server.probes, key=lambda probe: probe.target_qps)
                color = f"C{index}"
                for percentile, style in (("p50", ":"), ("p99", "-")):
                    points = [
                        (p.target_qps, p.percentiles_ms[percentile], p.valid)
                        for p in probes
                        if percentile in p.percentiles_ms
                    ]
                    if not points:
                        continue
                    axis.plot(
                        [x for x, _, _ in points],
                        [y for _, y, _ in points],
                        style,
                        color=color,
                        label=_plain(f"{fact.row.variant} {percentile}"),
                    )
                    for x, y, valid in points:
                        axis.plot(x, y, "o", color=color, markerfacecolor=color if valid else "white", markersize=4)
            if bound:
                axis.axhline(bound, linestyle="--", color=STATUS_COLORS["failed"], linewidth=1, label="latency bound")
            axis.set_yscale("log")
            axis.set_title(_plain(target))
            axis.set_xlabel("offered rate (queries / s)")
            axis.set_ylabel("latency (ms, log)")
            axis.legend(fontsize=7)
        return _svg(figure)


def latency_change(comparison: Comparison) -> str:
    """Per row, the baseline's and the candidate's p50 with their 95 % CIs: overlap at a glance."""
    rows = comparison.rows
    with_target = len({row.target for row in rows}) > 1
    with _style("latency-change"):
        figure, (axis,) = _figure(7.5, 1.1 + 1.4 * ROW_HEIGHT_IN * len(rows), 1)
        for offset, side, colour in ((-0.17, "baseline", "#8c959f"), (0.17, "candidate", "#0969da")):
            points = [
                (i + offset, getattr(row, side).measurement.latency_ms)
                for i, row in enumerate(rows)
                if getattr(row, side) and getattr(row, side).measurement and not row.latency_not_compared
            ]
            if points:
                ys, stats = zip(*points)
                p50 = [s.p50 for s in stats]
                errors = [[s.p50 - s.p50_ci95[0] for s in stats], [s.p50_ci95[1] - s.p50 for s in stats]]
                axis.errorbar(
                    p50,
                    ys,
                    xerr=errors,
                    fmt="o",
                    color=colour,
                    capsize=3,
                    markersize=4,
                    label=_plain(f"{side}: {getattr(comparison, side).name}"),
                )
        labels = [f"{r.model} · {r.variant}" + (f" · {r.target}" if with_target else "") for r in rows]
        axis.set_yticks(range(len(rows)), [_plain(label) for label in labels])
        axis.set_ylim(len(rows) - 0.5, -0.5)
        for position, row in enumerate(rows):
            unmeasured = next((s for s in (row.candidate, row.baseline) if s and not s.measurement), None)
            if row.latency_not_compared:
                axis.text(
                    0.01,
                    position,
                    _plain(row.latency_not_compared),
                    transform=axis.get_yaxis_transform(),
                    va="center",
                    fontsize=7,
                    color=STATUS_COLORS["skipped"],
                )
            elif unmeasured or not (row.baseline and row.candidate):
                note = (
                    _not_measured(unmeasured)
                    if unmeasured
                    else "only in " + ("baseline" if row.baseline else "candidate")
                )
                axis.text(
                    0.01,
                    position,
                    note,
                    transform=axis.get_yaxis_transform(),
                    va="center",
                    fontsize=7,
                    color=STATUS_COLORS["failed"],
                )
            if row.failures:
                axis.get_yticklabels()[position].set_color(STATUS_COLORS["failed"])
        axis.set_xscale("log")
        axis.set_xlabel("latency p50 with 95 % CI (ms, log)")
        axis.grid(True, axis="x", which="both", alpha=0.25)
        if axis.get_legend_handles_labels()[0]:  # nothing to label where every row's latency went uncompared
            figure.legend(fontsize=7, loc="outside lower center", ncol=2)
        return _svg(figure)
