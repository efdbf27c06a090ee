"""``edgecraft bench MODEL_FILE``: measure a ready ONNX, OpenVINO IR or TFLite file on targets, without a recipe.

The file goes through the same protocol as a recipe's rows and ends as the same kind of run folder (results.json,
report.html). It runs on real inputs: an .npz file (``inputs``, ``labels``) or, by default, the digits set
resized to the model's input. Fidelity and the reference accuracy compare with the file itself on the first
target (there is no PyTorch model to compare with).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from rich.console import Console

from edgecraft import data as datasets
from edgecraft import devices
from edgecraft.bench import evaluators
from edgecraft.bench.environment import environment
from edgecraft.bench.settings import BenchSettings
from edgecraft.compress.base import Dataset
from edgecraft.core import formats
from edgecraft.core.errors import EdgecraftError, brief
from edgecraft.core.results import ModelRecord, Quality, ResultRow, RunResults
from edgecraft.core.signature import Signature
from edgecraft.devices import RemoteDevice
from edgecraft.recipe.schema import TargetEntry
from edgecraft.rows import Evaluation, Pending, export_row, measure_rows, reference_outputs, summary_lines
from edgecraft.run_folder import folder_name, new_run_dir, write_run
from edgecraft.runner import progress_bar
from edgecraft.targets import feeds
from edgecraft.targets import registry as target_registry


def _format(path: Path) -> str:
    if not path.is_file():
        raise EdgecraftError(f"{path}: model file not found")
    fmt = formats.for_path(path)
    if fmt is None:
        raise EdgecraftError(f"{path}: unknown model format {path.suffix!r}; expected {', '.join(formats.suffixes())}")
    missing = fmt.missing(path)
    if missing:
        raise EdgecraftError(f"{path}: {missing}")
    return fmt.name


def _default_target(fmt: str) -> str:
    """A file's default target: its format's first runtime, on this machine's CPU."""
    return f"{formats.get(fmt).runtimes[0]}:cpu"


def _targets(
    texts: list[str], fmt: str, path: Path, device: str | None, known: dict[str, RemoteDevice]
) -> list[TargetEntry]:
    """The ``--target`` entries, each sent to ``--device`` when one is given (``runtime:device@name``)."""
    entries: list[TargetEntry] = []
    for text in texts or [_default_target(fmt)]:
        if device and "@" not in text:
            text = f"{text}@{device}"
        try:
            entry = TargetEntry(target=text)
        except ValidationError as exc:
            raise EdgecraftError(f"--target {text!r}: {exc.errors(include_url=False)[0]['msg']}") from None
        remote = entry.spec.remote
        if remote is not None and remote not in known:
            where = f"the devices file's {', '.join(known)}" if known else "no devices file (--devices FILE)"
            raise EdgecraftError(f"--target {entry.label}: the device {remote!r} is not configured ({where})")
        accepts = formats.loaded_by(entry.spec.runtime)
        if fmt not in accepts:
            raise EdgecraftError(
                f"--target {entry.label}: {entry.spec.runtime} runs {' or '.join(accepts)} models, "
                f"not {path.name} ({fmt})"
            )
        if entry.label in [e.label for e in entries]:
            raise EdgecraftError(f"--target {entry.label} is given twice")
        entries.append(entry)
    return entries


# Samples drawn from the signature when no data is given: enough for a latency ring and a throughput pass.
SYNTHETIC_SAMPLES = 64


@dataclass(frozen=True)
class InputOptions:
    """What ``bench``'s options say about the model's inputs: the shapes to measure at (``--shape``), values
    fed as they are (``--input sr=16000``), batch axes (``--batch-axis state=1``) and state (``--state``)."""

    shapes: dict[str, list[int]] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    batch_axes: dict[str, int | None] = field(default_factory=dict)
    state_from: dict[str, str] = field(default_factory=dict)


def _signature(path: Path, entry: TargetEntry, options: InputOptions) -> Signature:
    """The file's signature with its batch axes read from its shapes, then what the options say."""
    try:
        read = feeds.infer_batch_axes(target_registry.get(entry.spec.runtime).signature(path))
    except Exception as exc:  # noqa: BLE001 - the runtime's own words say why it cannot read the file
        raise EdgecraftError(f"{path}: {entry.label} cannot read it: {brief(exc)}") from None
    try:
        return feeds.override(read, path.name, batch_axes=options.batch_axes, state_from=options.state_from)
    except feeds.DataMismatch as exc:
        raise EdgecraftError(str(exc)) from None


def _data(path: Path, inputs: Path | None, signature: Signature, options: InputOptions) -> tuple[Dataset, str]:
    """The evaluation data and where it came from: the user's .npz (one array per input name in the model's own
    layout, optional ``targets``), else synthetic inputs drawn from the model's signature at ``--shape`` (no
    targets: nothing to score); ``--input`` values replace an input's arrays."""
    _check_shapes(signature, options.shapes, path)
    given = {name: _value(signature, name, text) for name, text in options.values.items()}
    if inputs is not None:
        if inputs.suffix != ".npz":
            raise EdgecraftError(
                f"--inputs {inputs}: expected an .npz file with one array per model input (and optionally 'targets')"
            )
        if options.shapes:
            raise EdgecraftError("--shape sets the shape of synthetic inputs; with --inputs the data's shapes are used")
        dataset = datasets.load_source(str(inputs), Path("."), signature)
        arrays = dataset.inputs | {name: _repeat(value, len(dataset)) for name, value in given.items()}
        origin = str(inputs)
    else:
        vocabulary = _vocabularies(path) if path.suffix.lower() == ".onnx" else {}
        drawn = signature.model_copy(update={"inputs": [s for s in signature.inputs if s.name not in given]})
        try:
            arrays = feeds.synthetic(drawn, SYNTHETIC_SAMPLES, seed=0, vocabulary=vocabulary, shapes=options.shapes)
        except feeds.DataMismatch as exc:
            raise EdgecraftError(f"{path}: {exc}") from None
        arrays |= {name: _repeat(value, SYNTHETIC_SAMPLES) for name, value in given.items()}
        arrays = {spec.name: arrays[spec.name] for spec in signature.inputs}
        dataset = Dataset(arrays)
        origin = "synthetic (drawn from the model's signature)"
    where = f"--inputs {inputs}" if inputs is not None else f"{path.name}"
    return datasets.conform(Dataset(arrays, dataset.targets), signature, where), origin


def _check_shapes(signature: Signature, shapes: dict[str, list[int]], path: Path) -> None:
    """``--shape`` names real inputs, with their rank, their fixed sizes and a batch of one (latency is measured
    per sample; batched figures come from the benchmark's batch sizes)."""
    specs = {spec.name: spec for spec in signature.inputs}
    for name, dims in shapes.items():
        spec = specs.get(name)
        if spec is None:
            raise EdgecraftError(f"--shape {name}=...: {path.name} has no input {name!r}; its inputs are {list(specs)}")
        wanted = spec.shape or []
        if len(dims) != len(wanted):
            raise EdgecraftError(
                f"--shape {name}={','.join(map(str, dims))}: input {spec.describe()} has {len(wanted)} dimensions"
            )
        for axis, (have, want) in enumerate(zip(dims, wanted)):
            batch = axis == spec.batch_axis
            if (isinstance(want, int) and have != want) or (batch and not isinstance(want, int) and have != 1):
                why = f"fixed at {want} in the file" if isinstance(want, int) else "the batch: latency is per sample, 1"
                raise EdgecraftError(f"--shape {name}={','.join(map(str, dims))}: dimension {axis} is {why}")


def _value(signature: Signature, name: str, text: str) -> np.ndarray:
    """``--input NAME=VALUE``: a number or a comma-separated list, of the input's dtype and one sample's shape."""
    spec = next((spec for spec in signature.inputs if spec.name == name), None)
    if spec is None:
        raise EdgecraftError(
            f"--input {name}={text}: the model has no input {name!r}; its inputs are {signature.input_names}"
        )
    try:
        numbers = [float(part) for part in text.split(",")]
    except ValueError:
        raise EdgecraftError(f"--input {name}={text}: expected a number or numbers separated by commas") from None
    value = np.asarray(numbers[0] if "," not in text else numbers, dtype=spec.dtype or "float32")
    sample = spec.sample_shape()
    if sample is None:
        return value
    fixed = [d for d in sample if isinstance(d, int)]
    if len(fixed) == len(sample) and value.size == int(np.prod(fixed)):
        return value.reshape(fixed)
    if value.ndim != len(sample):
        raise EdgecraftError(
            f"--input {name}={text}: input {spec.describe()} takes {len(sample)} dimensions per call; give "
            f"{int(np.prod(fixed))} values or pass it in --inputs"
        )
    return value


def _repeat(value: np.ndarray, samples: int) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(value, (samples, *value.shape)))


def _vocabularies(path: Path) -> dict[str, int]:
    """For integer inputs that index an embedding table (a Gather on a weight), the table's size: synthetic
    token ids then stay within the vocabulary."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    tables = {init.name: init.dims[0] for init in graph.initializer if init.dims}
    inputs = {i.name for i in graph.input}
    return {
        node.input[1]: int(tables[node.input[0]])
        for node in graph.node
        if node.op_type == "Gather" and node.input[0] in tables and node.input[1] in inputs
    }


def _reference_target(entries: list[TargetEntry], fmt: str) -> TargetEntry:
    """Where the file's signature is read and its own reference outputs are computed: the format's own runtime
    (ONNX Runtime for .onnx) where it is one of the targets, else the first target that runs here, else (every
    target being remote) the format's CPU runtime here. Another runtime that cannot read the file then fails its
    own row, not the command."""
    local = [e for e in entries if e.spec.remote is None] or [TargetEntry(target=_default_target(fmt))]
    own = formats.get(fmt).runtimes[0]
    local.sort(key=lambda entry: entry.spec.runtime != own)  # stable: otherwise the order given
    for entry in local:
        if not target_registry.get(entry.spec.runtime).unavailable_reason(entry.spec.device):
            return entry
    raise EdgecraftError(
        f"none of {', '.join(e.label for e in local)} can run on this machine to compute the "
        "reference outputs (see `edgecraft targets`)"
    )


def _reference(path: Path, entry: TargetEntry, dataset: Dataset, threads: int) -> dict[str, np.ndarray]:
    """The file's own outputs on the first target, in this process; a model that rejects the inputs stops here."""
    inputs, layout = dataset.inputs, dataset.layout
    try:
        return reference_outputs(
            target_registry.get(entry.spec.runtime), path, entry.spec.device, entry.options, inputs, threads, layout
        )
    except Exception as exc:  # noqa: BLE001 - the runtime's message is what the user needs
        shapes = ", ".join(
            f"{name} {inputs[name].dtype.name} {shape}" for name, shape in layout.call_shapes(inputs).items()
        )
        raise EdgecraftError(f"{path}: {entry.label} cannot run it on inputs {shapes}: {brief(exc)}") from None


def _evaluator(
    name: str | None, outputs: list[str] | None, signature: Signature, dataset: Dataset
) -> evaluators.EvaluatorSpec | None:
    """``--evaluator`` (else the default for the data) reading ``--evaluator-output``, checked against the model
    and the data before anything is measured; None when there is nothing to score (no labels, none asked for)."""
    if name is None and not outputs and dataset.targets is None:
        return None
    try:
        asked = evaluators.EvaluatorSpec(type=name) if name else None
    except ValidationError as exc:
        raise EdgecraftError(f"--evaluator: {exc.errors(include_url=False)[0]['msg']}") from None
    spec = evaluators.choose(asked, signature.outputs, dataset.targets)
    if outputs:
        spec = spec.model_copy(update={"outputs": outputs})
    try:
        evaluators.check(spec, signature.outputs, dataset.targets)
    except evaluators.EvaluatorMismatch as exc:
        raise EdgecraftError(f"{_evaluator_origin(name)}: {exc}") from None
    return spec


def _evaluator_origin(name: str | None) -> str:
    return "--evaluator" if name else "the default evaluator"


def _scoring(
    spec: evaluators.EvaluatorSpec | None, dataset: Dataset, reference: dict[str, np.ndarray]
) -> Callable[[dict[str, np.ndarray]], Quality]:
    """The evaluator a bench row is scored with (against the file's own outputs on the first target), or none
    when there are no targets and none was asked for: accuracy then reads "not measured", never a number."""
    if spec is None:
        return lambda outputs: evaluators.not_measured(None, "not measured (no labelled data)")
    targets = dataset.targets
    return lambda outputs: evaluators.evaluate(spec, outputs, reference, targets)


def _shapes_text(shapes: dict[str, list[int]]) -> str:
    return ", ".join(f"{name} [{', '.join(map(str, shape))}]" for name, shape in shapes.items())


def bench_file(
    model: Path,
    targets: list[str],
    settings: BenchSettings,
    *,
    inputs: Path | None = None,
    evaluator: str | None = None,
    output_dir: Path = Path("runs"),
    price_per_hour: float | None = None,
    command: list[str] | None = None,
    console: Console | None = None,
    device: str | None = None,
    remote_devices: dict[str, RemoteDevice] | None = None,
    input_options: InputOptions | None = None,
    evaluator_outputs: list[str] | None = None,
) -> Path:
    """Measure ``model`` on every target; return the run folder. With ``device``, every target is measured by
    that remote device's agent (one of ``remote_devices``); the reference outputs still come from this machine."""
    model = Path(model)
    fmt = _format(model)
    remote_devices = remote_devices or {}
    entries = _targets(targets, fmt, model, device, remote_devices)
    first = _reference_target(entries, fmt)
    options = input_options or InputOptions()
    signature = _signature(model, first, options)
    dataset, data_origin = _data(model, inputs, signature, options)
    chosen = _evaluator(evaluator, evaluator_outputs, signature, dataset)
    shapes = dataset.layout.call_shapes(dataset.inputs)
    if console is not None:
        console.print(
            f"{model.name}: measured at {_shapes_text(shapes)}; {data_origin}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    reference = _reference(model, first, dataset, settings.threads)
    score = _scoring(chosen, dataset, reference)

    name = model.stem
    run_dir = new_run_dir(Path(output_dir).resolve(), f"bench-{folder_name(name)}")
    evaluation_inputs = feeds.save(dataset.inputs, run_dir / "evaluation-inputs", dataset.layout)
    rows: list[ResultRow] = []
    pending: list[Pending] = []
    evaluation = Evaluation(evaluation_inputs, reference, score)
    device_links = devices.links(remote_devices)
    for entry in entries:
        row = ResultRow(model=name, variant=model.name, target=entry.label, status="failed", lossless=True)
        row, job = export_row(
            row,
            entry,
            model,
            fmt,
            run_dir / "models" / folder_name(entry.label),
            run_dir,
            settings,
            evaluation,
            device_links,
        )
        if job:
            pending.append(Pending(len(rows), job, lossless=False))  # no independent reference to check drift against
        rows.append(row)

    machine = environment()
    with progress_bar(console) as progress:
        parallel_devices = measure_rows(rows, pending, settings, progress)
    command_line = shlex.join(["edgecraft", "bench", *(command or [str(model)])])
    results = RunResults(
        name=f"bench-{name}",
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        recipe={
            "name": f"bench-{name}",
            "models": [{"file": str(model.resolve())}],
            "data": {"source": data_origin},
            "targets": [e.label for e in entries],
            "benchmark": settings.model_dump(mode="json"),
            "report": {"price_per_hour": price_per_hour} if price_per_hour else {},
        },
        recipe_text=command_line + "\n",
        environment=machine,
        benchmark=settings.model_dump(mode="json"),
        models=[
            ModelRecord(
                name=name,
                source=str(model.resolve()),
                signature=signature,
                data_shapes=shapes,
                data_notes=[f"{len(dataset)} samples, {data_origin}"],
                evaluation_data=datasets.fingerprint(dataset),
                reference=score(reference),
            )
        ],
        passes=[],
        rows=rows,
        devices={name: link.description for name, link in device_links.items() if link.description},
        parallel_devices=parallel_devices,
    )
    write_run(results, run_dir)
    if console is not None:
        for line in summary_lines(results)[1:]:  # the shapes were said before measuring
            console.print(line, highlight=False, markup=False, soft_wrap=True)
    return run_dir
