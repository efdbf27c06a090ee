"""``edgecraft bench MODEL_FILE``: measure a ready ONNX, OpenVINO IR or TFLite file on targets, without a recipe.

The file goes through the same protocol as a recipe's rows and ends as the same kind of run folder (results.json,
report.html). It runs on real inputs: an .npz file (``inputs``, ``labels``) or, by default, the digits set
resized to the model's input. Fidelity and the reference accuracy compare with the file itself on the first
target (there is no PyTorch model to compare with).
"""

from __future__ import annotations

import shlex
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from rich.console import Console

from bench.environment import environment
from bench.harness import MeasureJob, accuracy
from bench.settings import BenchSettings
from edgecraft import data as datasets
from edgecraft.errors import EdgecraftError
from edgecraft.recipe import TargetEntry
from edgecraft.runner import Pending, folder_name, brief, measure_rows, new_run_dir, progress_bar, runnable_row, write_run
from reports.schema import ModelRecord, ResultRow, RunResults
from targets import registry as target_registry

FORMATS = {".onnx": "onnx", ".xml": "openvino", ".tflite": "tflite"}
DEFAULT_TARGET = {"onnx": "onnxruntime:cpu", "openvino": "openvino:cpu", "tflite": "litert:cpu"}


def _format(path: Path) -> str:
    if not path.is_file():
        raise EdgecraftError(f"{path}: model file not found")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise EdgecraftError(f"{path}: unknown model format {path.suffix!r}; expected {', '.join(FORMATS)}")
    if fmt == "openvino" and not path.with_suffix(".bin").is_file():
        raise EdgecraftError(f"{path}: OpenVINO IR needs its weights file {path.with_suffix('.bin').name} beside it")
    return fmt


def _targets(texts: list[str], fmt: str, path: Path) -> list[TargetEntry]:
    entries = []
    for text in texts or [DEFAULT_TARGET[fmt]]:
        try:
            entry = TargetEntry(target=text)
        except ValidationError as exc:
            raise EdgecraftError(f"--target {text!r}: {exc.errors(include_url=False)[0]['msg']}") from None
        accepts = target_registry.runtimes()[entry.spec.runtime].accepts
        if fmt not in accepts:
            raise EdgecraftError(
                f"--target {entry.label}: {entry.spec.runtime} runs {' or '.join(accepts)} models, not {path.name} ({fmt})"
            )
        if entry.label in [e.label for e in entries]:
            raise EdgecraftError(f"--target {entry.label} is given twice")
        entries.append(entry)
    return entries


def _data(path: Path, inputs: Path | None, entry: TargetEntry) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation inputs and labels: the user's .npz, or digits' evaluation split at the model's input shape."""
    if inputs is not None:
        if inputs.suffix != ".npz":
            raise EdgecraftError(f"--inputs {inputs}: expected an .npz file with 'inputs' and 'labels' arrays")
        return datasets.load_source(str(inputs), Path("."), None)
    shape = target_registry.get(entry.spec.runtime).input_shape(path)
    sample = tuple(shape[1:])
    if len(sample) != 3 or not all(sample):
        raise EdgecraftError(
            f"{path}: input shape {list(shape)} is not a fixed C×H×W image, so the digits set cannot stand in "
            "for its data: pass --inputs data.npz (arrays 'inputs' and 'labels')"
        )
    x, y = datasets.digits(sample)
    return datasets.split(x, y, (0.6, 0.2, 0.2), seed=0).evaluation


def _reference(path: Path, entry: TargetEntry, inputs: np.ndarray, threads: int) -> np.ndarray:
    """The file's own outputs on the first target, in this process; a model that rejects the inputs stops here."""
    target = target_registry.get(entry.spec.runtime)
    try:
        session = target.load(path, entry.spec.device, threads, target.options_model(**entry.options))
        return np.concatenate([target.run(session, inputs[i : i + 64]) for i in range(0, len(inputs), 64)])
    except Exception as exc:  # noqa: BLE001 - the runtime's message is what the user needs
        raise EdgecraftError(
            f"{path}: {entry.label} cannot run it on inputs of shape {list(inputs.shape[1:])} (plus batch): {brief(exc)}"
        ) from None


def bench_file(
    model: Path,
    targets: list[str],
    settings: BenchSettings,
    *,
    inputs: Path | None = None,
    output_dir: Path = Path("runs"),
    price_per_hour: float | None = None,
    command: list[str] | None = None,
    console: Console | None = None,
) -> Path:
    """Measure ``model`` on every target; return the run folder."""
    model = Path(model)
    fmt = _format(model)
    entries = _targets(targets, fmt, model)
    runnable_entries = [e for e in entries if not target_registry.get(e.spec.runtime).unavailable_reason(e.spec.device)]
    if not runnable_entries:
        raise EdgecraftError(f"none of the targets can run on this machine: {', '.join(e.label for e in entries)} "
                             "(see `edgecraft targets`)")
    x, y = _data(model, inputs, runnable_entries[0])
    reference = _reference(model, runnable_entries[0], x, settings.threads)

    name = model.stem
    run_dir = new_run_dir(Path(output_dir).resolve(), f"bench-{folder_name(name)}")
    evaluation_inputs = run_dir / "evaluation-inputs.npy"
    np.save(evaluation_inputs, x)
    rows: list[ResultRow] = []
    pending: list[Pending] = []
    for entry in entries:
        target = target_registry.get(entry.spec.runtime)
        row = ResultRow(model=name, variant=model.name, target=entry.label, status="failed", lossless=True)
        reason = target.unavailable_reason(entry.spec.device)
        if reason:
            rows.append(row.model_copy(update={"status": "skipped", "reason": reason}))
            continue
        out_dir = run_dir / "models" / folder_name(entry.label)
        out_dir.mkdir(parents=True)
        try:
            runnable = target.export(model, fmt, out_dir)
        except Exception as exc:  # noqa: BLE001 - a converter crash fails only this row
            rows.append(row.model_copy(update={"reason": f"export failed: {brief(exc)}"}))
            continue
        job = MeasureJob(entry.spec.runtime, entry.spec.device, entry.options, runnable, evaluation_inputs, y,
                         reference, out_dir / "bench")
        pending.append(Pending(len(rows), job, lossless=False))  # no independent reference to check drift against
        rows.append(runnable_row(row, runnable, target.files(runnable), run_dir, settings))

    machine = environment()
    with progress_bar(console) as progress:
        measure_rows(rows, pending, settings, progress)
    command_line = shlex.join(["edgecraft", "bench", *(command or [str(model)])])
    results = RunResults(
        name=f"bench-{name}",
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        recipe={
            "name": f"bench-{name}",
            "models": [{"file": str(model.resolve())}],
            "data": {"source": str(inputs) if inputs else "digits (evaluation split)"},
            "targets": [e.label for e in entries],
            "benchmark": settings.model_dump(mode="json"),
            "report": {"price_per_hour": price_per_hour} if price_per_hour else {},
        },
        recipe_text=command_line + "\n",
        environment=machine,
        benchmark=settings.model_dump(mode="json"),
        models=[ModelRecord(name=name, source=str(model.resolve()), input_shape=list(x.shape[1:]),
                            reference_accuracy=accuracy(reference, y))],
        passes=[],
        rows=rows,
    )
    write_run(results, run_dir)
    return run_dir
