"""Run a recipe: model → shared passes → ONNX export → variant passes → every target → results and report.

A failure in one pass, export or measurement fails only the rows that depend on it; every other row is still
measured and written.
"""

from __future__ import annotations

import hashlib
import logging
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
from bench.harness import BenchSettings, MeasurementFailed, accuracy, measure
from compress import registry as pass_registry
from compress.base import Artifact, PassContext
from edgecraft import data as datasets
from edgecraft import model_source
from edgecraft.errors import EdgecraftError
from edgecraft.recipe import ModelSpec, Recipe, TargetEntry, VariantSpec, load_recipe, starts_from_torch
from edgecraft.step_cache import StepCache, digest, library_versions, step_key
from reports.html import write_report
from reports.schema import Measurement, ModelRecord, PassRecord, ResultRow, RunResults
from targets import registry as target_registry
from compress.onnx_export import export_torch

log = logging.getLogger(__name__)

QUICK = BenchSettings(warmup_runs=3, runs=20)
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
    reference_outputs: np.ndarray


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


def brief(exc: BaseException, limit: int = 400) -> str:
    """'Type: message' cut to its first lines: converters (MLIR, onnx2tf) raise pages of diagnostics."""
    text = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3])
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _folder_name(label: str) -> str:
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
        task = self.progress.add_task("measuring", total=None)
        for spec in self.recipe.models:
            prepared = self._prepare(spec)
            for variant in self.recipe.variants:
                artifact, failure = self._variant(prepared, variant)
                for entry in self._targets_for(variant):
                    self.progress.update(task, description=f"{prepared.name} · {variant.name} · {entry.label}")
                    row = self._measure(prepared, variant, artifact, failure, entry)
                    self.rows.append(row)
                    self.progress.advance(task)
        return RunResults(
            name=self.recipe.name,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            recipe=self.recipe.model_dump(mode="json"),
            recipe_text=self.recipe_text,
            environment=environment(),
            models=self.models,
            passes=self.passes,
            rows=self.rows,
        )

    def _prepare(self, spec: ModelSpec) -> PreparedModel:
        name = spec.display_name
        model_dir = self.run_dir / "models" / name
        model_dir.mkdir(parents=True, exist_ok=True)
        data_spec = self.recipe.data
        x, y = datasets.load_source(data_spec.source, Path("."), model_source.declared_input_shape(spec))
        splits = datasets.split(
            x, y, (data_spec.splits.train, data_spec.splits.calibration, data_spec.splits.evaluation), data_spec.seed
        )
        if spec.input_shape and tuple(spec.input_shape) != x.shape[1:]:
            raise EdgecraftError(
                f"wrong input shape: model {name!r} declares input_shape {spec.input_shape} but "
                f"data.source {data_spec.source!r} gives {list(x.shape[1:])}"
            )
        model = None
        if spec.builtin:
            task = self.progress.add_task(f"training {name}", total=None)

            def on_epoch(epoch: int, epochs: int, loss: float) -> None:
                self.progress.update(task, total=epochs, completed=epoch, description=f"training {name} (loss {loss:.3f})")

            model = model_source.builtin_model(spec.builtin, splits.train, on_epoch)
            self.progress.remove_task(task)
        elif spec.factory:
            model = model_source.factory_model(spec)
        artifact = model_source.starting_artifact(spec, model, tuple(x.shape[1:]))
        model_source.check_accepts(artifact, splits.evaluation[0][:1], data_spec.source)

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
        if artifact.format == "torch":
            from compress.training import predict

            reference = predict(artifact.model, splits.evaluation[0])
            onnx_path = export_torch(artifact.model, artifact.input_shape, model_dir / "fp32.onnx")
            parameters = sum(p.numel() for p in artifact.model.parameters())
            onnx_key = digest(shared.key, "export_torch", library_versions(()))
        else:
            reference = _onnx_outputs(artifact.path, splits.evaluation[0])
            onnx_path = artifact.path
            parameters = None
            onnx_key = shared.key
        evaluation_inputs = model_dir / "evaluation-inputs.npy"
        np.save(evaluation_inputs, splits.evaluation[0])
        self.models.append(
            ModelRecord(
                name=name,
                source=spec.source,
                input_shape=list(artifact.input_shape),
                parameters=parameters,
                reference_accuracy=accuracy(reference, splits.evaluation[1]),
            )
        )
        onnx = Keyed(Artifact("onnx", artifact.input_shape, path=onnx_path), onnx_key)
        return PreparedModel(name, shared if artifact.format == "torch" else None, onnx, context, evaluation_inputs, reference)

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

    def _measure(
        self,
        prepared: PreparedModel,
        variant: VariantSpec,
        artifact: Artifact | None,
        failure: str | None,
        entry: TargetEntry,
    ) -> ResultRow:
        spec = entry.spec
        row = ResultRow(
            model=prepared.name,
            variant=variant.name,
            target=entry.label,
            status="failed",
            reason=failure,
            lossless=is_lossless(variant) and not entry.options,
        )
        if artifact is None:
            return row
        target = target_registry.get(spec.runtime)
        reason = target.unavailable_reason(spec.device)
        if reason:
            log.info("skipped %s/%s on %s: %s", prepared.name, variant.name, entry.label, reason)
            return row.model_copy(update={"status": "skipped", "reason": reason})
        out_dir = self.run_dir / "models" / prepared.name / variant.name / _folder_name(entry.label)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            runnable = target.export(artifact.path, artifact.format, out_dir)
        except Exception as exc:  # noqa: BLE001 - a converter crash fails only this row
            log.warning("%s/%s: export to %s failed: %s", prepared.name, variant.name, entry.label, brief(exc))
            return row.model_copy(update={"reason": f"export failed: {brief(exc)}"})
        files = target.files(runnable)
        row = row.model_copy(
            update={
                "artifact": str(runnable.relative_to(self.run_dir)),
                "size_bytes": sum(path.stat().st_size for path in files),
                "sha256": sha256(*files),
                "threads": self.settings.threads,
            }
        )
        try:
            measurement = measure(
                spec.runtime,
                spec.device,
                entry.options,
                runnable,
                prepared.evaluation_inputs,
                prepared.context.evaluation[1],
                prepared.reference_outputs,
                self.settings,
                out_dir / "bench",
            )
        except MeasurementFailed as exc:
            log.warning("%s/%s on %s: %s", prepared.name, variant.name, entry.label, exc)
            return row.model_copy(update={"reason": str(exc)})
        return row.model_copy(
            update={"status": "ok", "measurement": measurement, "warnings": self._warnings(variant, entry, measurement)}
        )

    def _warnings(self, variant: VariantSpec, entry: TargetEntry, measurement: Measurement) -> list[str]:
        """A lossless variant (fp32 export or conversion) that drifts from PyTorch points at a conversion bug."""
        drift = measurement.fidelity.max_abs_diff
        if is_lossless(variant) and not entry.options and drift > FP32_TOLERANCE:
            return [f"conversion bug? fp32 outputs differ from the reference by {drift:.2e} (tolerance {FP32_TOLERANCE:g})"]
        return []


def _onnx_outputs(path: Path, inputs: np.ndarray) -> np.ndarray:
    """Reference outputs of a user-supplied ONNX model (there is no PyTorch model to compare with)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: inputs[i : i + 64]})[0] for i in range(0, len(inputs), 64)])


def _content_key(artifact: Artifact) -> str:
    """What a starting model is, by content: its weights and class (PyTorch) or its file's bytes."""
    if artifact.format == "torch":
        state = artifact.model.state_dict()
        tensors = [name.encode() + state[name].detach().cpu().numpy().tobytes() for name in sorted(state)]
        return digest(type(artifact.model).__qualname__, list(artifact.input_shape), *tensors)
    return digest(artifact.path.read_bytes())


def _data_key(splits: Any) -> str:
    """The exact train / calibration / evaluation arrays: passes train, calibrate and evaluate on them."""
    arrays = (*splits.train, *splits.calibration, *splits.evaluation)
    return digest(*(np.ascontiguousarray(array).tobytes() for array in arrays))


def run_recipe(
    recipe_path: Path,
    *,
    output_dir: Path | None = None,
    quick: bool = False,
    use_cache: bool = True,
    console: Console | None = None,
) -> Path:
    """Execute the recipe at ``recipe_path``; return the run folder holding results.json and report.html.

    Finished pass steps are kept in the step cache (``use_cache=False`` recomputes and replaces them), so a
    second run, or one resumed after an interruption, redoes only what did not finish."""
    recipe, text = load_recipe(recipe_path)
    bench = recipe.benchmark
    settings = BenchSettings(
        threads=bench.threads,
        warmup_runs=QUICK.warmup_runs if quick else bench.warmup_runs,
        runs=QUICK.runs if quick else bench.runs,
        timeout_s=bench.timeout_s,
    )
    run_dir = new_run_dir(Path(output_dir or recipe.output_dir), recipe.name)
    (run_dir / "recipe.yaml").write_text(text)
    console = console or Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        cache = StepCache(model_source.cache_dir() / "steps", enabled=use_cache)
        results = RecipeRun(recipe, text, run_dir, settings, progress, cache).execute()
    if cache.hits:
        console.print(f"reused {cache.hits} finished step(s) from the step cache {cache.root} (--no-cache recomputes them)")
    (run_dir / "results.json").write_text(results.model_dump_json(indent=2))
    write_report(results, run_dir)
    return run_dir
