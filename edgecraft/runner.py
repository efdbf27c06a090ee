"""Run a recipe: each model → shared passes → ONNX export → variant passes → every target → results and report.

A failure in one model's preparation, one pass, one export or one measurement fails only the rows that depend
on it; every other row is still measured and written. The pieces live in files named for what they do:
``preparation`` (a model ready for variants), ``steps`` (passes through the step cache), ``rows`` (exports and
measurement jobs, shared with ``edgecraft bench``) and ``run_folder``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgecraft import devices, model_source
from edgecraft.bench.environment import environment
from edgecraft.bench.settings import BenchSettings, ProfileName, check_pinnable
from edgecraft.bench.settings import resolve as resolve_benchmark
from edgecraft.compress import registry as pass_registry
from edgecraft.compress.base import Artifact
from edgecraft.core.errors import EdgecraftError, brief, failure_text
from edgecraft.core.results import ModelRecord, ResultRow, RunResults
from edgecraft.preparation import PreparedModel, prepare_model
from edgecraft.recipe.schema import ModelSpec, Recipe, TargetEntry, VariantSpec, starts_from_torch
from edgecraft.reports.settings import with_overrides
from edgecraft.rows import Pending, export_row, measure_rows, summary_lines
from edgecraft.run_folder import folder_name, new_run_dir, write_run
from edgecraft.step_cache import StepCache
from edgecraft.steps import StepRunner

log = logging.getLogger(__name__)


def lossless(variant: VariantSpec, entry: TargetEntry) -> bool:
    """Whether a row must reproduce the fp32 reference: the fp32 export or pure format conversions, on a target
    run without options (an option such as OpenVINO's bf16 precision changes the numbers on purpose)."""
    return all(pass_registry.get(step.type).is_lossless(step) for step in variant.passes) and not entry.options


class RecipeRun:
    """One execution of a recipe into one run folder."""

    def __init__(
        self,
        recipe: Recipe,
        recipe_text: str,
        run_dir: Path,
        settings: BenchSettings,
        progress: Progress,
        cache: StepCache,
    ):
        self.recipe = recipe
        self.recipe_text = recipe_text
        self.run_dir = run_dir
        self.settings = settings
        self.progress = progress
        self.steps = StepRunner(cache, progress)
        self.devices = devices.links(recipe.devices)
        self.models: list[ModelRecord] = []
        self.rows: list[ResultRow] = []
        self.parallel_devices: list[str] = []

    def execute(self) -> RunResults:
        """Export every row first, then measure them all in interleaved rounds (see ``bench.harness``)."""
        pending: list[Pending] = []
        for spec in self.recipe.models:
            prepared = self._prepare(spec)
            if prepared is None:
                continue
            for variant in self.recipe.variants:
                artifact, failure = self._variant(prepared, variant)
                for entry in self.recipe.targets_for(variant):
                    row, job = self._export(prepared, variant, artifact, failure, entry)
                    if job:
                        pending.append(Pending(len(self.rows), job, row.lossless))
                    self.rows.append(row)
        machine = environment()
        self._measure(pending)
        return RunResults(
            name=self.recipe.name,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            recipe=self.recipe.model_dump(mode="json"),
            recipe_text=self.recipe_text,
            environment=machine,
            benchmark=self.settings.model_dump(mode="json"),
            models=self.models,
            passes=self.steps.records,
            rows=self.rows,
            devices={name: link.description for name, link in self.devices.items() if link.description},
            parallel_devices=self.parallel_devices,
        )

    def _measure(self, pending: list[Pending]) -> None:
        """Measure every exported row (a tune trial times this phase and holds a machine-wide lock around it)."""
        self.parallel_devices = measure_rows(self.rows, pending, self.settings, self.progress)

    def _prepare(self, spec: ModelSpec) -> PreparedModel | None:
        """The model ready for its variants, or None after recording why it is not: every row it would have
        had is failed with the reason, and the other models go on."""
        try:
            prepared = prepare_model(
                spec, self.recipe.data, self.recipe.passes, self.run_dir, self.steps, self.progress
            )
        except Exception as exc:  # noqa: BLE001 - one model's factory, data, shared pass or export
            reason = str(exc) if isinstance(exc, EdgecraftError) else failure_text(exc)
            self.models.append(ModelRecord(name=spec.display_name, source=spec.source, failure=reason))
            self.rows += [
                ResultRow(
                    model=spec.display_name,
                    variant=variant.name,
                    target=entry.label,
                    status="failed",
                    reason=f"model not prepared: {reason}",
                    lossless=lossless(variant, entry),
                )
                for variant in self.recipe.variants
                for entry in self.recipe.targets_for(variant)
            ]
            return None
        self.models.append(prepared.record)
        return prepared

    def _variant(self, prepared: PreparedModel, variant: VariantSpec) -> tuple[Artifact | None, str | None]:
        """Apply the variant's passes; a failing pass fails this variant's rows, not the run.

        A variant whose first pass takes a PyTorch model (QAT, autotune) starts from the model after the shared
        passes; any other starts from its fp32 ONNX export."""
        folder = self.run_dir / "models" / prepared.name / variant.name
        start = prepared.torch if starts_from_torch(variant.passes) else prepared.onnx
        try:
            if start is None:  # the shared passes ended in a model file (export.onnx, quantize.qat)
                raise EdgecraftError(
                    f"{variant.passes[0].type} needs a PyTorch model, but the shared 'passes' end with a model file"
                )
            keyed = self.steps.apply(prepared.name, variant.name, start, variant.passes, prepared.context, folder)
            return keyed.artifact, None
        except Exception as exc:  # noqa: BLE001 - recorded in every row of the variant
            log.warning("%s/%s: a pass failed: %s", prepared.name, variant.name, brief(exc))
            return None, f"pass failed: {failure_text(exc)}"

    def _export(
        self,
        prepared: PreparedModel,
        variant: VariantSpec,
        artifact: Artifact | None,
        failure: str | None,
        entry: TargetEntry,
    ) -> tuple[ResultRow, Any]:
        """The row of one (variant, target) and the job that will measure it; a failed row has no job."""
        row = ResultRow(
            model=prepared.name,
            variant=variant.name,
            target=entry.label,
            status="failed",
            reason=failure,
            lossless=lossless(variant, entry),
        )
        if artifact is None:
            return row, None
        assert artifact.path is not None  # a variant ends in a model file (Recipe._consistent), which has its path
        out_dir = self.run_dir / "models" / prepared.name / variant.name / folder_name(entry.label)
        return export_row(
            row,
            entry,
            artifact.path,
            artifact.format,
            out_dir,
            self.run_dir,
            self.settings,
            prepared.evaluation,
            self.devices,
        )


def bench_settings(
    spec: Any, profile: ProfileName | None = None, pin_cpus: list[int] | None = None, threads: int | None = None
) -> BenchSettings:
    """The protocol for a run: the recipe's (or default) ``benchmark`` section with command-line overrides; pinned
    CPUs must exist on this machine."""
    try:
        check_pinnable(pin_cpus)  # the recipe's own pins were checked when it was validated
    except ValueError as exc:
        raise EdgecraftError(f"benchmark.pin_cpus: {exc}") from None
    return resolve_benchmark(spec, profile, pin_cpus=pin_cpus, threads=threads)


def progress_bar(console: Console | None) -> Progress:
    """Rich progress on stderr, shown only on a terminal: runs are quiet in logs and tests."""
    console = console or Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, disable=not console.is_terminal)


def run_recipe(recipe_path: Path, *, quick: bool = False, profile: ProfileName | None = None, **options: Any) -> Path:
    """Execute the recipe file at ``recipe_path``; return the run folder holding results.json and report.html.

    ``quick`` is the ``quick`` profile; the other options are ``execute_recipe``'s."""
    return execute_recipe(Recipe.from_yaml(recipe_path), profile="quick" if quick else profile, **options)[0]


def execute_recipe(
    recipe: Recipe,
    *,
    output_dir: Path | None = None,
    use_cache: bool = True,
    profile: ProfileName | None = None,
    pin_cpus: list[int] | None = None,
    price_per_hour: float | None = None,
    console: Console | None = None,
) -> tuple[Path, RunResults]:
    """Execute a validated recipe into a new run folder; return the folder and its results.

    The one code path of ``edgecraft run`` and ``edgecraft.run()``. Finished pass steps are kept in the step cache
    (``use_cache=False`` neither reads nor writes it), so a second run, or one resumed after an interruption, redoes
    only what did not finish. ``profile``, ``pin_cpus`` and ``price_per_hour`` override the recipe's. When no model
    could be prepared, the run folder is still written, and the reasons are raised as the error."""
    text = recipe.to_yaml()
    settings = bench_settings(recipe.benchmark, profile, pin_cpus)
    if price_per_hour is not None:
        recipe = recipe.model_copy(update={"report": with_overrides(recipe.report, price_per_hour=price_per_hour)})
    # Absolute: passes such as convert.tflite change the working directory while they write into the run folder.
    run_dir = new_run_dir(Path(output_dir or recipe.output_dir).resolve(), recipe.name)
    (run_dir / "recipe.yaml").write_text(text)
    cache = StepCache(model_source.cache_dir() / "steps", enabled=use_cache)
    console = console or Console(stderr=True)
    with progress_bar(console) as progress:
        results = RecipeRun(recipe, text, run_dir, settings, progress, cache).execute()
    if cache.hits:
        console.print(
            f"reused {cache.hits} finished step(s) from the step cache {cache.root} (--no-cache recomputes them)"
        )
    report = write_run(results, run_dir)
    failed = [model for model in results.models if model.failure]
    if failed and len(failed) == len(results.models):  # nothing was measured: the reasons are the answer
        if len(failed) == 1:
            raise EdgecraftError(failed[0].failure)
        raise EdgecraftError("\n".join(f"model {model.name!r}: {model.failure}" for model in failed))
    for line in summary_lines(results):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    for model in failed:
        log.warning("model %s could not be prepared, its rows are failed: %s", model.name, model.failure)
    return report.parent, results
