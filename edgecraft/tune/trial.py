"""One trial: the concrete recipe run into its own run folder, with the cheap pruning proxy.

The run is ``edgecraft.runner``'s ``RecipeRun`` (the same preparation, step cache, export, measurement and run
folder as ``edgecraft run``) with two additions: after the training passes of the scored variant (its leading
PyTorch → PyTorch passes), the PyTorch model is scored with the recipe's evaluator on the calibration split, and
when it is already further below the fp32 model than the budget the trial stops before any export or benchmark;
and the trial holds a machine-wide reader/writer lock (``machine_lock``): shared while it prepares, trains and
exports, exclusive while it measures. Trials on one machine (several Ray nodes on one host, two tunes side by side)
train together, but a measurement never runs beside another trial's training or measurement, which would take
the CPUs its latency is read from; each phase is timed, so a distributed tune can show it.
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from filelock import ReadWriteLock

from edgecraft import model_source
from edgecraft.bench.settings import ProfileName
from edgecraft.compress import registry as pass_registry
from edgecraft.core.errors import EdgecraftError, brief
from edgecraft.core.results import RunResults
from edgecraft.recipe.in_memory import validation_message
from edgecraft.recipe.schema import Recipe
from edgecraft.rows import Pending
from edgecraft.run_folder import new_run_dir, write_run
from edgecraft.runner import RecipeRun, bench_settings, progress_bar
from edgecraft.step_cache import StepCache
from edgecraft.tune.space import SearchSpec, concrete


class Pruned(Exception):
    """The proxy metric after the training passes already misses the budget."""

    def __init__(self, proxy: float, fp32: float):
        super().__init__(
            f"pruned: metric after the training passes {proxy:.4f} on the calibration split, fp32 "
            f"{fp32:.4f}: already more than the budget below"
        )
        self.proxy, self.fp32 = proxy, fp32


class TrialRun(RecipeRun):
    """``RecipeRun`` with the pruning proxy on one variant, and its work before measurement (shared hold of
    ``lock``) and its measurement (exclusive hold) timed."""

    def __init__(
        self, *args: Any, watch: str | None, max_drop: float | None, lock: ReadWriteLock | None = None, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.watch, self.max_drop, self.lock = watch, max_drop, lock
        self.proxy: dict[str, float] | None = None
        self.prepare_interval: tuple[float, float] | None = None
        self.measure_interval: tuple[float, float] | None = None
        self._started = 0.0

    def execute(self) -> RunResults:
        if self.lock is not None:
            self.lock.acquire_read()
        self._started = time.time()
        try:
            return super().execute()
        finally:
            self._stop_reading()

    def _stop_reading(self) -> None:
        """End the shared hold (held from ``execute`` until the prepare interval is closed), once."""
        if self.prepare_interval is None:
            self.prepare_interval = (self._started, time.time())
            if self.lock is not None:
                self.lock.release()

    def _variant(self, prepared: Any, variant: Any) -> Any:
        if variant.name == self.watch:
            self._check_proxy(prepared, variant)
        return super()._variant(prepared, variant)

    def _check_proxy(self, prepared: Any, variant: Any) -> None:
        training = []
        for entry in variant.passes:
            cls = pass_registry.passes()[entry.type]
            if cls.output_format != "torch" or "torch" not in cls.input_formats:
                break
            training.append(entry)
        validation = prepared.context.validation
        if not training or prepared.torch is None or validation is None:
            return
        from edgecraft.compress.torch_io import predict

        kept = len(self.steps.records)
        folder = self.run_dir / "models" / prepared.name / variant.name
        keyed = self.steps.apply(prepared.name, variant.name, prepared.torch, training, prepared.context, folder)
        del self.steps.records[kept:]  # recorded again (from the step cache) when the variant runs
        outputs = predict(keyed.artifact.model, validation.data.inputs, keyed.artifact.signature)
        proxy, fp32 = validation.score(outputs), validation.score(validation.reference)
        self.proxy = {"metric": proxy, "fp32": fp32, "drop": fp32 - proxy}
        if self.max_drop is not None and fp32 - proxy > self.max_drop:
            raise Pruned(proxy, fp32)

    def _measure(self, pending: list[Pending]) -> None:
        """The measurement phase, timed, under the exclusive hold (the shared one is let go first: SQLite's
        pending lock then keeps new readers out until the measurement is done)."""
        self._stop_reading()
        with self.lock.write_lock() if self.lock is not None else contextlib.nullcontext():
            start = time.time()
            super()._measure(pending)
            self.measure_interval = (start, time.time())


def machine_lock() -> ReadWriteLock:
    """This machine's reader/writer lock for trials, in its temporary folder: filelock's SQLite lock, released
    by the operating system when a trial's process dies, so a killed trial never leaves the machine locked."""
    return ReadWriteLock(Path(tempfile.gettempdir()) / "edgecraft-trials.lock.db")


def recipe_from_data(data: dict[str, Any], base_dir: Path, where: str) -> tuple[Recipe, str]:
    """A validated recipe from YAML data (relative files resolved against ``base_dir``) and its YAML text."""
    from pydantic import ValidationError

    text = yaml.safe_dump(data, sort_keys=False)
    try:
        recipe = Recipe.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise EdgecraftError(f"{where}: {validation_message(exc)}") from None
    recipe._text = text
    return recipe, text


def run_trial(
    data: dict[str, Any],
    base_dir: str,
    search: dict[str, Any],
    values: dict[str, Any],
    trials_dir: str,
    number: int,
    profile: ProfileName | None = None,
    lock: ReadWriteLock | None = None,
) -> dict[str, Any]:
    """Run trial ``number`` with the sampled ``values``; a plain dict (it crosses process boundaries) with
    ``state`` complete, pruned or failed, the scored row's figures and every row's."""
    spec = SearchSpec.model_validate(search)
    started = time.time()
    outcome: dict[str, Any] = {
        "number": number,
        "values": values,
        "node": socket.gethostname(),
        "started": started,
        "state": "failed",
    }
    run: TrialRun | None = None
    try:
        recipe, text = recipe_from_data(concrete(data, values), Path(base_dir), f"trial {number}")
        settings = bench_settings(recipe.benchmark, profile)
        run_dir = new_run_dir(Path(trials_dir).resolve(), f"trial-{number:04d}")
        outcome["run_dir"] = str(run_dir)
        (run_dir / "recipe.yaml").write_text(text)
        cache = StepCache(model_source.cache_dir() / "steps", enabled=True)
        from rich.console import Console

        with progress_bar(Console(stderr=True)) as progress:
            run = TrialRun(
                recipe,
                text,
                run_dir,
                settings,
                progress,
                cache,
                watch=spec.variant,
                max_drop=spec.max_drop if spec.prune else None,
                lock=lock or machine_lock(),
            )
            results = run.execute()
        write_run(results, run_dir)
        outcome.update(score(results, spec))
    except Pruned as exc:
        outcome.update(state="pruned", reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - a failing trial fails alone
        outcome.update(state="failed", reason=str(exc) if isinstance(exc, EdgecraftError) else brief(exc))
    if run is not None:
        outcome["proxy"] = run.proxy
        outcome["prepare_interval"] = run.prepare_interval
        outcome["measure_interval"] = run.measure_interval
    outcome["finished"] = time.time()
    return outcome


def score(results: RunResults, spec: SearchSpec) -> dict[str, Any]:
    """The scored row's objectives and constraint, and a summary of every row."""
    rows = [row_summary(row) for row in results.rows]
    model = next(m for m in results.models if spec.model in (None, m.name))
    reference = model.reference.value if model.reference else None
    scored = next(
        (
            row
            for row in rows
            if row["model"] == model.name and row["variant"] == spec.variant and row["target"] == spec.target
        ),
        None,
    )
    base = {"rows": rows, "reference": reference, "metric_name": model.reference.metric if model.reference else None}
    if model.failure:
        return {**base, "state": "failed", "reason": f"model not prepared: {model.failure}"}
    if scored is None or scored["status"] != "ok":
        why = scored["reason"] if scored else "no such row"
        return {**base, "state": "failed", "reason": f"{spec.variant} on {spec.target}: {why}"}
    metric = scored["metric"]
    drop = None if metric is None or reference is None else reference - metric
    latency = scored[spec.statistic]
    objectives = {"latency": latency, "size": scored["size_bytes"]}
    fp32 = next(
        (
            row
            for row in rows
            if row["model"] == model.name and row["target"] == spec.target and row["lossless"] and row["status"] == "ok"
        ),
        None,
    )
    return {
        **base,
        "state": "complete",
        "row": scored,
        "metric": metric,
        "drop": drop,
        "values_objective": [objectives[name] for name in spec.objectives],
        "constraint": (1.0 if drop is None else drop - spec.max_drop),
        "feasible": drop is not None and drop <= spec.max_drop + 1e-12,
        "fp32_row": fp32,
        "speedup": fp32[spec.statistic] / latency if fp32 and latency else None,
    }


def row_summary(row: Any) -> dict[str, Any]:
    measurement = row.measurement
    latency = measurement.latency_ms if measurement else None
    quality = measurement.quality if measurement else None
    return {
        "model": row.model,
        "variant": row.variant,
        "target": row.target,
        "status": row.status,
        "reason": row.reason,
        "lossless": row.lossless,
        "artifact": row.artifact,
        "size_bytes": row.size_bytes,
        "p50": latency.p50 if latency else None,
        "p90": latency.p90 if latency else None,
        "p95": latency.p95 if latency else None,
        "p99": latency.p99 if latency else None,
        "metric": quality.value if quality else None,
        "peak_mb": measurement.process_peak_mb if measurement else None,
    }
