"""The Python API: ``edgecraft.run(recipe) -> Run``. ``edgecraft run`` is a thin layer over ``run``.

A ``Run`` holds one run's results (``edgecraft.core.results.RunResults``, what results.json stores) and answers the
report's questions from them with the report's own code: ``verdict()`` is ``reports.analysis``, ``to_pandas()``
has the columns of results.csv, ``compare()`` is the ``edgecraft report compare`` gate.
"""

from __future__ import annotations

import html
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas
    from rich.console import Console

    from edgecraft.bench.settings import ProfileName
    from edgecraft.core.results import ResultRow, RunResults
    from edgecraft.recipe.schema import Recipe
    from edgecraft.reports import charts
    from edgecraft.reports.analysis import Analysis, Recommendation
    from edgecraft.reports.compare import Comparison


def run(
    recipe: Recipe | str | Path,
    *,
    output_dir: str | Path | None = None,
    profile: ProfileName | None = None,
    pin_cpus: list[int] | None = None,
    price_per_hour: float | None = None,
    use_cache: bool = True,
    console: Console | None = None,
) -> Run:
    """Run a recipe (a ``Recipe``, or the path of a recipe YAML file) into a new run folder and return the ``Run``.

    ``output_dir``: where the run folder is created (default: the recipe's ``output_dir``). ``profile``: "quick",
    "default" or "rigorous", overriding the recipe's benchmark profile. ``pin_cpus``, ``price_per_hour``: override
    the recipe's. ``use_cache=False`` recomputes every pass step. Raises ``EdgecraftError`` for a recipe that does
    not validate, and when no model could be prepared (the run folder is still written)."""
    from edgecraft.recipe.schema import Recipe
    from edgecraft.runner import execute_recipe

    if not isinstance(recipe, Recipe):
        recipe = Recipe.from_yaml(recipe)
    run_dir, results = execute_recipe(
        recipe,
        output_dir=Path(output_dir) if output_dir is not None else None,
        profile=profile,
        pin_cpus=pin_cpus,
        price_per_hour=price_per_hour,
        use_cache=use_cache,
        console=console,
    )
    return Run(results, run_dir)


class Run:
    """One run's results, and its run folder when it has one (``Run.load`` reads a run folder back)."""

    def __init__(self, results: RunResults, run_dir: str | Path | None = None) -> None:
        self.results = results
        self.run_dir = Path(run_dir) if run_dir is not None else None

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        """The run stored in ``run_dir`` (its results.json)."""
        from edgecraft.reports.results_file import load_results

        return cls(load_results(Path(run_dir)), run_dir)

    @property
    def rows(self) -> list[ResultRow]:
        """One row per (model, variant, target), as in results.json."""
        return self.results.rows

    @property
    def report_path(self) -> Path | None:
        """The run's report.html (None for results without a run folder)."""
        return self.run_dir / "report.html" if self.run_dir is not None else None

    @cached_property
    def analysis(self) -> Analysis:
        """Everything the report derives from the results, under the recipe's ``report`` settings."""
        from edgecraft.reports.analysis import analyse
        from edgecraft.reports.settings import report_settings

        return analyse(self.results, report_settings(self.results.recipe))

    def verdict(self, *, max_accuracy_drop: float | None = None) -> list[Recommendation]:
        """Per (model, target), the variant to ship: the fastest measured within the accuracy budget (the recipe's
        ``report.max_accuracy_drop`` unless given), or ``choice=None`` with the reason there is none."""
        if max_accuracy_drop is None:
            return self.analysis.recommendations
        from edgecraft.reports.analysis import analyse
        from edgecraft.reports.settings import with_overrides

        settings = with_overrides(self.analysis.settings, max_accuracy_drop=max_accuracy_drop)
        return analyse(self.results, settings).recommendations

    def to_pandas(self) -> pandas.DataFrame:
        """One line per row with the columns of results.csv (model, variant, target, status, size_bytes, p50_ms,
        accuracy, speedup_vs_fp32, ...); None where a number is absent."""
        try:
            import pandas
        except ImportError:
            raise ImportError(
                "Run.to_pandas() needs pandas, which edgecraft does not install: pip install pandas "
                "(or read run.rows, or the run folder's results.csv)"
            ) from None
        from edgecraft.reports.csv_table import COLUMNS

        return pandas.DataFrame(
            [{name: read(fact) for name, read in COLUMNS} for fact in self.analysis.facts],
            columns=[name for name, _ in COLUMNS],
        )

    def charts(self) -> dict[str, Chart]:
        """The report's charts, each shown inline by a notebook (``_repr_svg_``; ``.svg`` is the SVG text):
        ``accuracy_vs_latency`` (with the Pareto front), ``size``, ``latency`` (distributions) and ``memory``."""
        from edgecraft.reports import charts

        drawers = {
            "accuracy_vs_latency": charts.accuracy_vs_latency,
            "size": charts.size_per_variant,
            "latency": charts.latency_distributions,
            "memory": charts.memory_per_target,
        }
        return {name: Chart(name, charts.draw(drawer, self.analysis)) for name, drawer in drawers.items()}

    def compare(self, baseline: Run, *, allow_missing: bool = False, **thresholds: float | None) -> Comparison:
        """This run judged against ``baseline`` by the ``edgecraft report compare`` gate: ``.outcome`` is "PASS" or
        "FAIL", ``.rows`` the per-row findings. ``thresholds``: ``max_latency_increase``, ``max_size_increase``,
        ``max_accuracy_drop`` (default: the baseline recipe's ``report.gate``). Raises ``ResultsError`` when the
        runs are not comparable."""
        from edgecraft.reports.compare import compare_runs
        from edgecraft.reports.settings import GateThresholds

        unknown = set(thresholds) - set(GateThresholds.model_fields)
        if unknown:
            raise TypeError(f"unknown threshold(s) {sorted(unknown)}; known: {list(GateThresholds.model_fields)}")
        return compare_runs(baseline.results, self.results, thresholds, allow_missing=allow_missing)

    def __repr__(self) -> str:
        where = f" in {self.run_dir}" if self.run_dir else ""
        return f"<edgecraft.Run {self.results.name!r}: {len(self.rows)} row(s){where}>"

    def _repr_html_(self) -> str:
        """The verdict and a compact table, for a notebook."""
        e = html.escape
        lines = []
        for rec in self.verdict():
            if rec.choice is not None:
                f, m = rec.choice, rec.choice.row.measurement
                assert m is not None  # the chosen row was measured
                figures = [f"p50 {m.latency_ms.p50:.3f} ms"]
                if f.speedup:
                    figures.append(f"{f.speedup:.2f}× vs fp32")
                if m.accuracy is not None:
                    figures.append(f"{f.metric} {m.accuracy:.2%}")
                lines.append(
                    f"<li><b>{e(rec.model)}</b> on <code>{e(rec.target)}</code>: ship "
                    f"<b>{e(f.row.variant)}</b> ({e(', '.join(figures))})</li>"
                )
            else:
                lines.append(
                    f"<li><b>{e(rec.model)}</b> on <code>{e(rec.target)}</code>: nothing to ship: {e(rec.reason)}</li>"
                )
        header = ["model", "variant", "target", "status", "p50 ms", "speed-up", "size KB", "accuracy"]
        body = []
        for fact in self.analysis.facts:
            row, m = fact.row, fact.row.measurement
            status = row.status + (f": {row.reason}" if row.reason else "")
            cells = [
                row.model,
                row.variant,
                row.target,
                status,
                fact.timing_not_measured or (f"{m.latency_ms.p50:.3f}" if m else ""),
                f"{fact.speedup:.2f}×" if fact.speedup else "",
                f"{row.size_bytes / 1024:.1f}" if row.size_bytes is not None else "",
                f"{m.accuracy:.2%}" if m and m.accuracy is not None else "",
            ]
            body.append("<tr>" + "".join(f"<td>{e(str(cell))}</td>" for cell in cells) + "</tr>")
        report = f"<p>report: <code>{e(str(self.report_path))}</code></p>" if self.report_path else ""
        return (
            f"<div><h4>edgecraft · {e(self.results.name)}</h4><ul>{''.join(lines)}</ul>"
            f"<table><thead><tr>{''.join(f'<th>{h}</th>' for h in header)}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>{report}</div>"
        )


class Chart:
    """One of the report's charts: SVG that a notebook shows inline, or why it could not be drawn."""

    def __init__(self, name: str, drawn: charts.Chart) -> None:
        self.name = name
        self.svg = drawn.svg
        self.failure = drawn.failure

    def _repr_svg_(self) -> str | None:
        return self.svg

    def __repr__(self) -> str:
        return f"<edgecraft chart {self.name}: {'not drawn: ' + self.failure if self.failure else 'SVG'}>"
