"""Run a recipe: model → shared passes → ONNX export → variant passes → every target → results and report.

A failure in one pass, export or measurement fails only the rows that depend on it; every other row is still
measured and written.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.environment import environment
from bench import evaluators
from bench.evaluators import EvaluatorSpec
from bench.harness import MeasureJob, MeasurementFailed, measure_all, noise_warnings
from bench.settings import BenchSettings, ProfileName, resolve as resolve_benchmark
from compress import registry as pass_registry
from compress.base import Artifact, Dataset, PassContext
from compress.zoo import REFERENCE_MODELS
from edgecraft import data as datasets
from edgecraft import model_source
from edgecraft.errors import EdgecraftError
from edgecraft.recipe import ModelSpec, Recipe, TargetEntry, VariantSpec, load_recipe, starts_from_torch
from edgecraft.step_cache import StepCache, digest, library_versions, step_key
from reports.html import write_report
from reports.schema import ModelRecord, PassRecord, ResultRow, RunResults
from reports.settings import with_overrides
from targets import feeds
from targets import registry as target_registry
from compress.onnx_export import export_torch

log = logging.getLogger(__name__)

# Max |Δ| of logits tolerated between PyTorch and a lossless export before the row is flagged.
FP32_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Keyed:
    """An artifact and its step-cache key (the chain of content hashes that produced it)."""

    artifact: Artifact
    key: str


@dataclass
class PreparedModel:
    """A model ready for variants: after the shared passes (PyTorch, if it is one) and as its fp32 ONNX export,
    with the data splits and the fp32 reference outputs."""

    name: str
    torch: Keyed | None
    onnx: Keyed
    context: PassContext
    evaluation_inputs: Path
    reference_outputs: dict[str, np.ndarray]
    evaluator: EvaluatorSpec

    def scorer(self) -> Any:
        """What the harness calls on a row's outputs: this model's evaluator against its reference and targets."""
        targets = self.context.evaluation.targets
        return functools.partial(evaluators.evaluate, self.evaluator, reference=self.reference_outputs, targets=targets)


@dataclass(frozen=True)
class Pending:
    """A row whose runnable file is exported and waits for the benchmark rounds."""

    row: int
    job: MeasureJob
    lossless: bool


def sha256(*paths: Path) -> str:
    """One digest over the files that make up a runnable model (e.g. OpenVINO's .xml and .bin)."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def is_lossless(variant: VariantSpec) -> bool:
    """True for the fp32 export and pure format conversions: its outputs must match the fp32 reference."""
    return all(pass_registry.get(entry.type).is_lossless(entry) for entry in variant.passes)


def lossless(variant: VariantSpec, entry: TargetEntry) -> bool:
    """Whether a row must reproduce the fp32 reference: a lossless variant on a target run without options (an
    option such as OpenVINO's bf16 precision changes the numbers on purpose)."""
    return is_lossless(variant) and not entry.options


def brief(exc: BaseException, limit: int = 400) -> str:
    """'Type: message' cut to its first lines: converters (MLIR, onnx2tf) raise pages of diagnostics."""
    text = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def folder_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", label).strip("-")


def new_run_dir(output_dir: Path, name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = output_dir / f"{name}-{stamp}"
    suffix = 1
    while candidate.exists():
        suffix += 1
        candidate = output_dir / f"{name}-{stamp}-{suffix}"
    candidate.mkdir(parents=True)
    return candidate


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
        self.cache = cache
        self.recipe_text = recipe_text
        self.run_dir = run_dir
        self.settings = settings
        self.progress = progress
        self.models: list[ModelRecord] = []
        self.passes: list[PassRecord] = []
        self.rows: list[ResultRow] = []

    def execute(self) -> RunResults:
        """Export every row first, then measure them all in interleaved rounds (see ``bench.harness``)."""
        pending: list[Pending] = []
        for spec in self.recipe.models:
            prepared = self._prepare(spec)
            for variant in self.recipe.variants:
                artifact, failure = self._variant(prepared, variant)
                for entry in self._targets_for(variant):
                    row, job = self._export(prepared, variant, artifact, failure, entry)
                    if job:
                        pending.append(Pending(len(self.rows), job, row.lossless))
                    self.rows.append(row)
        machine = environment()
        measure_rows(self.rows, pending, self.settings, self.progress)
        return RunResults(
            name=self.recipe.name,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            recipe=self.recipe.model_dump(mode="json"),
            recipe_text=self.recipe_text,
            environment=machine,
            benchmark=self.settings.model_dump(mode="json"),
            models=self.models,
            passes=self.passes,
            rows=self.rows,
        )

    def _prepare(self, spec: ModelSpec) -> PreparedModel:
        name = spec.display_name
        model_dir = self.run_dir / "models" / name
        model_dir.mkdir(parents=True, exist_ok=True)
        data_spec = self.recipe.data
        source = model_source.data_source(spec, data_spec.source)
        origin = f"model {name!r}: data.source {source!r}"
        declared = model_source.declared_signature(spec)
        dataset = model_source.load_data(spec, data_spec.source, declared)
        model = model_source.factory_model(spec) if spec.factory else None
        signature = declared or model_source.signature_from_data(dataset, spec.outputs, model)
        dataset = datasets.conform(dataset, signature, origin)
        chosen = spec.evaluator or _builtin_evaluator(spec)
        splits = datasets.split(dataset, (data_spec.splits.train, data_spec.splits.calibration,
                                          data_spec.splits.evaluation), data_spec.seed,
                                grouped=evaluators.groups_targets(chosen))
        log.info("%s: %d train, %d calibration, %d evaluation samples (%s)", name, len(splits.train),
                 len(splits.calibration), len(splits.evaluation), splits.how)
        if spec.builtin:
            task = self.progress.add_task(f"loading {name}", total=None)

            def on_epoch(epoch: int, epochs: int, loss: float) -> None:
                self.progress.update(task, total=epochs, completed=epoch, description=f"training {name} (loss {loss:.3f})")

            model = model_source.builtin_model(spec.builtin, splits.train, on_epoch)
            self.progress.remove_task(task)
        if model is not None:
            signature = model_source.with_outputs(model, signature)
        evaluator = evaluators.choose(chosen, signature.outputs, splits.evaluation.targets)
        try:
            evaluators.check(evaluator, signature.outputs, splits.evaluation.targets)
        except evaluators.EvaluatorMismatch as exc:
            raise EdgecraftError(f"model {name!r}: {exc}") from None
        artifact = model_source.starting_artifact(spec, model, signature)
        model_source.check_accepts(artifact, splits.evaluation.head(1), source)

        context = PassContext(
            train=splits.train,
            calibration=splits.calibration,
            evaluation=splits.evaluation,
            work_dir=model_dir,
            cache_dir=self.run_dir / "cache",
            seed=data_spec.seed,
            original=model,
        )
        start = Keyed(artifact, digest(_content_key(artifact), _data_key(splits), data_spec.seed))
        shared = self._apply(name, None, start, self.recipe.passes, context, model_dir / "shared")
        artifact = shared.artifact
        evaluation = splits.evaluation
        if artifact.format == "torch":
            from compress.torch_io import predict

            reference = predict(artifact.model, evaluation.inputs, signature)
            onnx_path = export_torch(artifact.model, signature, model_dir / "fp32.onnx")
            parameters = sum(p.numel() for p in artifact.model.parameters())
            onnx_key = digest(shared.key, "export_torch", library_versions(()))
        else:
            # A user's ONNX model: there is no PyTorch model to compare with, the file is its own reference.
            reference = reference_outputs(target_registry.get("onnxruntime"), artifact.path, "cpu", {},
                                          evaluation.inputs, threads=1)
            onnx_path = artifact.path
            parameters = None
            onnx_key = shared.key
        evaluation_inputs = feeds.save(evaluation.inputs, model_dir / "evaluation-inputs")
        self.models.append(
            ModelRecord(
                name=name,
                source=spec.source,
                signature=signature,
                data_shapes=feeds.measured_shapes(evaluation.inputs),
                data_notes=data_notes(evaluation, splits.how),
                parameters=parameters,
                reference=evaluators.evaluate(evaluator, reference, reference, evaluation.targets),
            )
        )
        onnx = Keyed(Artifact("onnx", signature, path=onnx_path), onnx_key)
        return PreparedModel(name, shared if artifact.format == "torch" else None, onnx, context, evaluation_inputs,
                             reference, evaluator)

    def _apply(
        self, model: str, variant: str | None, current: Keyed, entries: list[Any], context: PassContext, folder: Path
    ) -> Keyed:
        """Run ``entries`` in order, each one from the step cache when an identical step has finished before."""
        for index, entry in enumerate(entries):
            step = pass_registry.get(entry.type)
            key = step_key(current.key, step, entry)
            step_dir = folder / f"{index}-{entry.type}"
            step_dir.mkdir(parents=True, exist_ok=True)
            where = f"{model} · {variant or 'shared'} · {entry.type}"
            cached = self.cache.load(key, step_dir)
            if cached:
                log.info("%s: finished before, reused from the step cache (%s)", where, key)
                outcome, seconds = cached.outcome, cached.seconds
            else:
                outcome, seconds = self._run_step(model, step, entry, current.artifact, context, step_dir)
                self.cache.store(key, outcome, step_dir, seconds)
            self.passes.append(
                PassRecord(
                    model=model,
                    variant=variant,
                    name=entry.type,
                    config=entry.model_dump(mode="json"),
                    seconds=seconds,
                    details=outcome.details,
                    cached=cached is not None,
                )
            )
            current = Keyed(outcome.artifact, key)
        return current

    def _run_step(
        self, model: str, step: Any, entry: Any, artifact: Artifact, context: PassContext, step_dir: Path
    ) -> tuple[Any, float]:
        task = self.progress.add_task(f"{model}: {entry.type}", total=None)

        def report(description: str, done: int, total: int) -> None:
            self.progress.update(task, description=f"{model}: {description}", completed=done, total=total)

        step_context = PassContext(**{**vars(context), "work_dir": step_dir, "progress": report})
        start = time.perf_counter()
        try:
            outcome = step.apply(artifact, entry, step_context)
        finally:
            self.progress.remove_task(task)
        return outcome, time.perf_counter() - start

    def _targets_for(self, variant: VariantSpec) -> list[TargetEntry]:
        """The recipe's targets this variant runs on: those it names (or all) that accept its final format.

        The format comes from the passes' declarations, so a variant whose pass failed still gets its failed
        rows on exactly the targets it was meant for.
        """
        fmt = pass_registry.passes()[variant.passes[-1].type].output_format if variant.passes else "onnx"
        runnable = []
        for entry in self.recipe.targets:
            if variant.targets is not None and entry.label not in variant.targets:
                continue
            if fmt in target_registry.runtimes()[entry.spec.runtime].accepts:
                runnable.append(entry)
            else:
                log.debug("no row: %s is a %s model; %s does not run that format", variant.name, fmt, entry.label)
        return runnable

    def _variant(self, prepared: PreparedModel, variant: Any) -> tuple[Artifact | None, str | None]:
        """Apply the variant's passes; a failing pass fails this variant's rows, not the run.

        A variant whose first pass takes a PyTorch model (QAT, autotune) starts from the model after the shared
        passes; any other starts from its fp32 ONNX export."""
        folder = self.run_dir / "models" / prepared.name / variant.name
        start = prepared.torch if starts_from_torch(variant.passes) else prepared.onnx
        try:
            keyed = self._apply(prepared.name, variant.name, start, variant.passes, prepared.context, folder)
            return keyed.artifact, None
        except Exception as exc:  # noqa: BLE001 - recorded in every row of the variant
            log.warning("%s/%s: a pass failed: %s", prepared.name, variant.name, brief(exc))
            return None, f"pass failed: {brief(exc)}"

    def _export(
        self,
        prepared: PreparedModel,
        variant: VariantSpec,
        artifact: Artifact | None,
        failure: str | None,
        entry: TargetEntry,
    ) -> tuple[ResultRow, MeasureJob | None]:
        """The row of one (variant, target) with its runnable file, and the job that will measure it; a row
        that is already failed or skipped has no job."""
        spec = entry.spec
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
        target = target_registry.get(spec.runtime)
        reason = target.unavailable_reason(spec.device)
        if reason:
            log.info("skipped %s/%s on %s: %s", prepared.name, variant.name, entry.label, reason)
            return row.model_copy(update={"status": "skipped", "reason": reason}), None
        out_dir = self.run_dir / "models" / prepared.name / variant.name / folder_name(entry.label)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            runnable = target.export(artifact.path, artifact.format, out_dir)
        except Exception as exc:  # noqa: BLE001 - a converter crash fails only this row
            log.warning("%s/%s: export to %s failed: %s", prepared.name, variant.name, entry.label, brief(exc))
            return row.model_copy(update={"reason": f"export failed: {brief(exc)}"}), None
        row = runnable_row(row, runnable, target.files(runnable), self.run_dir, self.settings)
        job = MeasureJob(
            runtime=spec.runtime,
            device=spec.device,
            options=entry.options,
            model=runnable,
            inputs=prepared.evaluation_inputs,
            reference_outputs=prepared.reference_outputs,
            evaluate=prepared.scorer(),
            work_dir=out_dir / "bench",
        )
        return row, job


def runnable_row(row: ResultRow, runnable: Path, files: list[Path], run_dir: Path, settings: BenchSettings) -> ResultRow:
    """``row`` with the facts of its runnable file: where it is, its size and digest, the threads it runs with."""
    return row.model_copy(
        update={
            "artifact": str(runnable.relative_to(run_dir)),
            "size_bytes": sum(path.stat().st_size for path in files),
            "sha256": sha256(*files),
            "threads": settings.threads,
        }
    )


def drift_warning(drift: float) -> list[str]:
    """A lossless variant (fp32 export or conversion) that drifts from the reference points at a conversion bug."""
    if drift > FP32_TOLERANCE:
        return [f"conversion bug? fp32 outputs differ from the reference by {drift:.2e} (tolerance {FP32_TOLERANCE:g})"]
    return []


def measure_rows(rows: list[ResultRow], pending: list[Pending], settings: BenchSettings, progress: Progress) -> None:
    """Measure the pending rows in interleaved rounds and put each one's measurement (or failure) into ``rows``."""
    task = progress.add_task("measuring", total=len(pending) * settings.repetitions)
    started = 0

    def on_process(index: int, repetition: int) -> None:
        nonlocal started
        row = rows[pending[index].row]
        progress.update(task, completed=started, description=f"round {repetition + 1}/{settings.repetitions} · "
                        f"{row.model} · {row.variant} · {row.target}")
        started += 1

    outcomes = measure_all([p.job for p in pending], settings, on_process)
    progress.remove_task(task)
    for entry, outcome in zip(pending, outcomes):
        row = rows[entry.row]
        if isinstance(outcome, MeasurementFailed):
            log.warning("%s/%s on %s: %s", row.model, row.variant, row.target, outcome)
            rows[entry.row] = row.model_copy(update={"reason": str(outcome)})
            continue
        warnings = drift_warning(outcome.fidelity.max_abs_diff) if entry.lossless else []
        rows[entry.row] = row.model_copy(
            update={"status": "ok", "measurement": outcome, "warnings": warnings + noise_warnings(outcome, settings)}
        )


def bench_settings(
    spec: Any, profile: ProfileName | None = None, pin_cpus: list[int] | None = None, threads: int | None = None
) -> BenchSettings:
    """The protocol for a run: the recipe's (or default) ``benchmark`` section with command-line overrides, and
    pinned CPUs that exist on this machine."""
    settings = resolve_benchmark(spec, profile, pin_cpus=pin_cpus, threads=threads)
    cpus = os.cpu_count() or 1
    missing = sorted(cpu for cpu in settings.pin_cpus or [] if cpu >= cpus)
    if missing:
        raise EdgecraftError(f"benchmark.pin_cpus: CPU {missing[0]} does not exist here (CPUs 0-{cpus - 1})")
    if settings.pin_cpus and not hasattr(os, "sched_setaffinity"):
        raise EdgecraftError("benchmark.pin_cpus: this platform cannot pin processes to CPUs")
    return settings


def progress_bar(console: Console | None) -> Progress:
    """Rich progress on stderr, shown only on a terminal: runs are quiet in logs and tests."""
    console = console or Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, disable=not console.is_terminal)


def write_run(results: RunResults, run_dir: Path) -> Path:
    """results.json and everything rendered from it; the report's path."""
    (run_dir / "results.json").write_text(results.model_dump_json(indent=2))
    return write_report(results, run_dir)


def reference_outputs(target: Any, path: Path, device: str, options: dict, inputs: dict[str, np.ndarray],
                      threads: int, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Every output of a model file on ``target``, in this process, over all the inputs."""
    session = target.load(path, device, threads, target.options_model(**options))
    batches = [target.run(session, feeds.take(inputs, start, start + batch_size))
               for start in range(0, feeds.count(inputs), batch_size)]
    return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}


def _builtin_evaluator(spec: ModelSpec) -> EvaluatorSpec | None:
    return EvaluatorSpec(type=REFERENCE_MODELS[spec.builtin].evaluator) if spec.builtin else None


def data_notes(evaluation: Dataset, how: str) -> list[str]:
    """What a reader needs to know about the evaluation data: its size, how it was split, sequence lengths."""
    notes = [f"{len(evaluation)} evaluation samples ({how} split)"]
    for name, array in evaluation.inputs.items():
        if "mask" in name.lower() and array.ndim == 2 and array.dtype.kind in "iub":
            lengths = array.sum(axis=1)
            notes.append(f"sequence length {array.shape[1]} (padded); real tokens per sample (from {name}): "
                         f"min {int(lengths.min())}, median {int(np.median(lengths))}, max {int(lengths.max())}")
    return notes


def _content_key(artifact: Artifact) -> str:
    """What a starting model is, by content: its weights and class (PyTorch) or its file's bytes."""
    signature = artifact.signature.model_dump(mode="json")
    if artifact.format == "torch":
        state = artifact.model.state_dict()
        tensors = [name.encode() + state[name].detach().cpu().numpy().tobytes() for name in sorted(state)]
        return digest(type(artifact.model).__qualname__, signature, *tensors)
    return digest(artifact.path.read_bytes(), signature)


def _data_key(splits: Any) -> str:
    """The exact train / calibration / evaluation arrays: passes train, calibrate and evaluate on them."""
    arrays = []
    for part in (splits.train, splits.calibration, splits.evaluation):
        arrays += [*part.inputs.values(), *([] if part.targets is None else [part.targets])]
    return digest(*(np.ascontiguousarray(array).tobytes() for array in arrays))


def run_recipe(
    recipe_path: Path,
    *,
    output_dir: Path | None = None,
    quick: bool = False,
    use_cache: bool = True,
    profile: ProfileName | None = None,
    pin_cpus: list[int] | None = None,
    price_per_hour: float | None = None,
    console: Console | None = None,
) -> Path:
    """Execute the recipe at ``recipe_path``; return the run folder holding results.json and report.html.

    Finished pass steps are kept in the step cache (``use_cache=False`` recomputes and replaces them), so a
    second run, or one resumed after an interruption, redoes only what did not finish. ``quick`` is the
    ``quick`` profile; ``profile``, ``pin_cpus`` and ``price_per_hour`` override the recipe's."""
    recipe, text = load_recipe(recipe_path)
    settings = bench_settings(recipe.benchmark, "quick" if quick else profile, pin_cpus)
    if price_per_hour is not None:
        recipe = recipe.model_copy(update={"report": with_overrides(recipe.report, price_per_hour=price_per_hour)})
    # Absolute: passes such as convert.tflite change the working directory while they write into the run folder.
    run_dir = new_run_dir(Path(output_dir or recipe.output_dir).resolve(), recipe.name)
    (run_dir / "recipe.yaml").write_text(text)
    cache = StepCache(model_source.cache_dir() / "steps", enabled=use_cache)
    with progress_bar(console) as progress:
        results = RecipeRun(recipe, text, run_dir, settings, progress, cache).execute()
    if cache.hits:
        (console or Console(stderr=True)).print(
            f"reused {cache.hits} finished step(s) from the step cache {cache.root} (--no-cache recomputes them)"
        )
    write_run(results, run_dir)
    return run_dir
