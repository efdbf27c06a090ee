"""Charts as inline SVG (matplotlib's SVG backend), so that the report needs no JavaScript library or CDN."""

from __future__ import annotations

import io

from reports.schema import RunResults


def _svg(figure) -> str:  # noqa: ANN001 - matplotlib Figure, imported lazily
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prologue and DOCTYPE so the SVG can sit inside HTML


def accuracy_vs_latency(results: RunResults) -> str:
    """One panel per model: p50 latency (x, log scale) against accuracy (y), a marker per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # text stays text: smaller file, searchable, crisp when printed
    models = [model.name for model in results.models]
    figure, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.8), squeeze=False)
    markers = "osD^vP*X"
    targets = sorted({row.target for row in results.rows})
    for axis, model in zip(axes[0], models):
        for index, target in enumerate(targets):
            rows = [r for r in results.rows if r.model == model and r.target == target and r.measurement]
            if not rows:
                continue
            xs = [r.measurement.latency_ms.p50 for r in rows]
            ys = [100 * r.measurement.accuracy for r in rows]
            axis.scatter(xs, ys, marker=markers[index % len(markers)], s=48, label=target, zorder=3)
            for row, x, y in zip(rows, xs, ys):
                axis.annotate(row.variant, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        axis.set_title(model, fontsize=11)
        axis.set_xscale("log")
        axis.set_xlabel("latency p50 (ms, log scale) →  lower is better")
        axis.set_ylabel("accuracy (%)")
        axis.grid(True, which="both", alpha=0.3)
        if axis.has_data():
            axis.legend(fontsize=8, loc="lower right")
        else:
            axis.text(0.5, 0.5, "no measured rows", ha="center", va="center", transform=axis.transAxes)
    figure.tight_layout()
    return _svg(figure)
