"""The recipe: a typed (pydantic) description of models, data, passes, variants, targets and benchmark settings.

What validates is meant to run, so whatever can be checked without running the user's code (files that must be
ONNX or .npz, CPUs that must exist, names that become folders) is checked here. ``recipe_json_schema`` is what
``edgecraft recipe schema`` publishes. A file is read by ``edgecraft.recipe.load``; objects only Python can give
(a module, arrays, a Dataset) are handled by ``edgecraft.recipe.in_memory``.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, Union

import numpy as np
import yaml
from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from edgecraft.bench.evaluators import FUNCTION_REFERENCE, EvaluatorSpec
from edgecraft.bench.settings import BenchmarkSpec
from edgecraft.bench.settings import resolve as resolve_benchmark
from edgecraft.compress import registry as pass_registry
from edgecraft.compress.zoo import REFERENCE_MODELS
from edgecraft.core import formats
from edgecraft.core.signature import StrictModel, TensorSpec
from edgecraft.data import TARGET_KEYS
from edgecraft.devices import RemoteDevice
from edgecraft.imports import RecipeFolder
from edgecraft.recipe.in_memory import PythonObjects, arrays_digest, as_array, torch_dataset, torch_module
from edgecraft.recipe.yaml_loader import first_line
from edgecraft.reports.settings import ReportSettings
from edgecraft.targets import registry as target_registry
from edgecraft.targets.base import TargetSpec
from edgecraft.tune.space import SearchSpec

if TYPE_CHECKING:
    from edgecraft.compress.base import PassConfig

# Names become folder names in the run folder: no separators, no leading '.', short enough for any file system.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"use letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64 "
            f"characters, got {value!r}"
        )
    return value


def _safe_name(text: str) -> str:
    """A name derived from a file stem or a function name, made into one that ``_check_name`` accepts."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).lstrip("._-")[:64] or "model"


def _check_function(value: str) -> str:
    if not FUNCTION_REFERENCE.fullmatch(value):
        raise ValueError(f"expected 'package.module:function', got {value!r}")
    return value


Name = Annotated[str, AfterValidator(_check_name)]
FunctionReference = Annotated[str, AfterValidator(_check_function)]


def _existing_file(value: str | None, info: ValidationInfo) -> str | None:
    """Resolve a path relative to the recipe's folder and insist that the file exists."""
    if value is None:
        return None
    base = Path((info.context or {}).get("base_dir", "."))
    path = (base / value).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return str(path)


def rebase_files(data: dict[str, Any], old_base: Path, new_base: Path) -> dict[str, Any]:
    """Recipe YAML data written in ``new_base`` that names the same files as ``data`` read from ``old_base``.

    The fields read relative to the recipe's folder (``_existing_file``: a model's ``weights`` and ``onnx``, an
    ``.npz`` data ``source``) are rewritten relative to ``new_base``; everything else is copied as it is. For a
    recipe written elsewhere than the one it came from, such as a tune's best recipe."""

    def moved(value: Any) -> Any:
        if not isinstance(value, str) or Path(value).expanduser().is_absolute():
            return value
        return os.path.relpath((Path(old_base) / value).resolve(), Path(new_base).resolve())

    result = copy.deepcopy(data)
    for model in result.get("models") or []:
        if isinstance(model, dict):
            for field in ("weights", "onnx"):
                if field in model:
                    model[field] = moved(model[field])
    source = (result.get("data") or {}).get("source") if isinstance(result.get("data"), dict) else None
    if isinstance(source, str) and source.endswith(".npz"):
        result["data"]["source"] = moved(source)
    return result


def _onnx_model(value: str | None) -> str | None:
    """Read the file's graph now (not its external data), so that a file that is not ONNX is one line here rather
    than a DecodeError at run time."""
    if value is None:
        return None
    import onnx

    try:
        model = onnx.load(value, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends: the file is not ONNX
        raise ValueError(f"{value} is not an ONNX model ({first_line(exc)})") from None
    if not model.graph.output:
        raise ValueError(f"{value} is not an ONNX model (no graph with outputs)")
    return value


def _npz_archive(value: str) -> str:
    """Read the archive's table of contents (not its arrays): a file that is not an .npz fails here."""
    try:
        with np.load(value, allow_pickle=False) as archive:
            names = archive.files
    except Exception as exc:  # noqa: BLE001 - numpy's errors for a file that is not a zip of .npy arrays
        raise ValueError(f"{value} is not an .npz archive ({first_line(exc)})") from None
    if not names:
        raise ValueError(f"{value} holds no arrays")
    return value


if TYPE_CHECKING:
    # For mypy, TensorSpec's own dimension: a subclass cannot narrow the items of an inherited list field.
    _InputDim: TypeAlias = int | str | None
else:
    # Validated: a positive size or a name; never unknown (None).
    _InputDim = Annotated[int, Field(gt=0)] | str


class InputSpec(TensorSpec):
    """A declared model input: a name, a dtype, a shape whose symbolic axes are names (the batch on
    ``batch_axis``, the first by default). For a model file (``onnx:``) an entry says only what the file cannot:
    its ``batch_axis`` (null: none) and a ``shape`` that fixes its dynamic axes."""

    dtype: str = Field("float32", description="numpy dtype name: float32, int64, ...")
    shape: list[_InputDim] | None = Field(
        None,
        description="e.g. [batch, 3, 224, 224] or [batch, sequence]; names stay dynamic in exports. Required for "
        "a factory model's inputs.",
    )

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        known = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
        if value not in known:
            raise ValueError(f"unknown dtype {value!r}; known: {', '.join(known)}")
        return value


class OutputSpec(TensorSpec):
    """A declared model output: a name, and the kind of values it holds."""


if TYPE_CHECKING:
    # For mypy, what ModelSpec.outputs holds once validated: ``_output_specs`` makes each name an OutputSpec.
    OutputEntry: TypeAlias = OutputSpec
else:
    # As a recipe writes it: a name, or {name, kind}.
    OutputEntry = str | OutputSpec


class ModelSpec(PythonObjects, RecipeFolder):
    """Exactly one of ``builtin``, ``factory``, ``onnx`` or (Python API) ``module``."""

    _objects = ("module",)

    name: Name | None = Field(
        None,
        description="Name in results (and of its folder in the run folder); defaults to "
        "the builtin name, the factory function's name or the file stem.",
    )
    builtin: Literal[tuple(REFERENCE_MODELS)] | None = Field(  # type: ignore[valid-type]
        None,
        description="A built-in model: "
        + "; ".join(f"{name}: {m.description}" for name, m in REFERENCE_MODELS.items()),
    )
    factory: FunctionReference | None = Field(
        None, description="'package.module:function' returning an nn.Module (imported and called: it runs your code)."
    )
    weights: str | None = Field(None, description="State-dict file loaded into the factory's model.")
    onnx: str | None = Field(None, description="A ready ONNX model file.")
    module: SkipJsonSchema[Any] = Field(
        None,
        description="Python API only: an in-memory torch.nn.Module (copied; the object you pass is never "
        "changed). Stored in results as a description with the digest of its weights.",
    )
    input_shape: list[Annotated[int, Field(gt=0)]] | None = Field(
        None,
        description="Shorthand for one float32 input named 'input': its shape without the batch, e.g. [3, 64, 64].",
    )
    inputs: list[InputSpec] | None = Field(
        None, description="The PyTorch model's inputs, in forward()'s order (default: read from the data)."
    )
    outputs: list[OutputEntry] | None = Field(
        None,
        description="Names of the model's outputs, in the order forward() returns them (default: 'logits' "
        "for one, output_0, output_1, ... for several); an entry may be {name, kind} with kind scores, "
        "embedding or values.",
    )
    state_from: dict[str, str] = Field(
        default_factory=dict,
        description="A stateful model's inputs fed from its previous call's outputs, {input: output} (e.g. "
        "{state: stateN}): samples run one at a time, in order, as a deployed stream does.",
    )
    evaluator: EvaluatorSpec | None = Field(
        None,
        description="How quality is measured: classification, agreement, embedding, regression or "
        "'module:function', with the outputs it reads (default: the built-in's own; else classification "
        "when the data has class labels, agreement with fp32 when it has none).",
    )

    @field_validator("evaluator", mode="before")
    @classmethod
    def _evaluator_shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @field_validator("outputs")
    @classmethod
    def _output_specs(cls, values: list | None) -> list | None:
        if values is None:
            return None
        specs = [OutputSpec(name=value) if isinstance(value, str) else value for value in values]
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"output names must be unique, got {names}")
        return specs

    _check_weights = field_validator("weights", "onnx")(_existing_file)
    _check_onnx = field_validator("onnx")(_onnx_model)

    @field_validator("module")
    @classmethod
    def _a_module(cls, value: Any) -> Any:
        if value is not None and not torch_module(value):
            hint = (
                " (in a YAML recipe, name a function that builds it: factory: 'package.module:function')"
                if isinstance(value, str)
                else ""
            )
            raise ValueError(f"expected a torch.nn.Module object, got {type(value).__name__}{hint}")
        return value

    @field_serializer("module", when_used="json")
    def _describe_module(self, value: Any) -> str | None:
        from edgecraft.step_cache import describe_module

        return None if value is None else describe_module(value)

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        sources = [key for key in ("builtin", "factory", "onnx", "module") if getattr(self, key) is not None]
        if len(sources) != 1:
            raise ValueError(f"give exactly one of builtin, factory, onnx or module (got {sources or 'none'})")
        if self.weights and not self.factory:
            raise ValueError("weights is only used with factory (load an in-memory module's weights yourself)")
        if self.inputs and self.input_shape:
            raise ValueError("give inputs or input_shape, not both")
        if (self.inputs or self.outputs or self.state_from) and self.builtin:
            raise ValueError("a built-in model carries its own inputs and outputs")
        if self.inputs:
            names = [spec.name for spec in self.inputs]
            if len(set(names)) != len(names):
                raise ValueError(f"input names must be unique, got {names}")
            shapeless = [spec.name for spec in self.inputs if spec.shape is None]
            if shapeless and not self.onnx:
                raise ValueError(f"input(s) {shapeless} need a shape: a factory model's inputs declare its signature")
        return self

    @property
    def source(self) -> str:
        """What the model is, for results and the compare gate (a module by its class, not its weights)."""
        if self.module is not None:
            return f"in-memory:{type(self.module).__module__}.{type(self.module).__qualname__}"
        return self.builtin or self.factory or f"onnx:{self.onnx}"

    @property
    def display_name(self) -> str:
        """The model's name in results and its folder's name in the run folder."""
        if self.name:
            return self.name
        if self.builtin:
            return self.builtin
        if self.module is not None:
            return _safe_name(type(self.module).__name__)
        if self.factory:
            return _safe_name(self.factory.rpartition(":")[2])
        assert self.onnx is not None  # _one_source: exactly one of builtin, factory, onnx and module
        return _safe_name(Path(self.onnx).stem)


class SplitSpec(StrictModel):
    """Fractions of the data set (together at most 1; the rest is left out); the digits models train on ``train``."""

    train: float = Field(0.6, ge=0, lt=1)
    calibration: float = Field(0.2, gt=0, le=1)
    evaluation: float = Field(0.2, gt=0, le=1)

    @model_validator(mode="after")
    def _at_most_one(self) -> SplitSpec:
        total = self.train + self.calibration + self.evaluation
        if total > 1 + 1e-6:
            raise ValueError(f"train + calibration + evaluation must be at most 1, got {total:g}")
        return self


class DataSpec(PythonObjects, RecipeFolder):
    """Where the data comes from: ``source`` (a recipe's), or in memory (Python API): ``arrays`` (+ ``targets``)
    or a torch ``dataset``."""

    _objects = ("arrays", "targets", "dataset")

    source: str = Field(
        "auto",
        description="'auto': each built-in model's own data set (digits for the digits models), digits for other "
        "models; 'digits' (scikit-learn's bundled set, resized to the model's image input); a .npz file with one "
        "array per model input, by name, plus optional 'targets' (or 'labels'); or 'module:function' returning "
        "such a dict.",
    )
    splits: SplitSpec = SplitSpec()
    seed: int = Field(0, ge=0, lt=2**32, description="Seed of the splits and of training (numpy's range).")
    arrays: SkipJsonSchema[dict[str, Any] | None] = Field(
        None,
        description="Python API only: named arrays (numpy, or anything np.asarray reads), one per model "
        "input, [samples, ...] each; a 'targets' (or 'labels') entry holds the targets.",
    )
    targets: SkipJsonSchema[Any] = Field(
        None,
        description="Python API only: the targets of ``arrays``, [samples, ...] (class labels, values, group ids).",
    )
    dataset: SkipJsonSchema[Any] = Field(
        None,
        description="Python API only: a map-style torch.utils.data.Dataset whose items are a tensor (one "
        "input), a pair (inputs, target) with inputs a tensor, a tuple of tensors or a dict of them, or a dict of "
        "named tensors (a 'targets' or 'labels' entry holds the target).",
    )

    @field_validator("arrays")
    @classmethod
    def _named_arrays(cls, value: dict[str, Any] | None) -> dict[str, np.ndarray] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("no arrays: give one array per model input, by name")
        arrays = {}
        for name, array in value.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"array names must be non-empty strings, got {name!r}")
            arrays[name] = as_array(array, f"'{name}'")
        return arrays

    @field_validator("targets")
    @classmethod
    def _target_array(cls, value: Any) -> np.ndarray | None:
        return None if value is None else as_array(value, "targets")

    @field_validator("dataset")
    @classmethod
    def _a_dataset(cls, value: Any) -> Any:
        if value is None:
            return None
        if not torch_dataset(value):
            raise ValueError(
                f"expected a torch.utils.data.Dataset, got {type(value).__name__} (numpy arrays go in "
                "'arrays', by input name)"
            )
        try:
            size = len(value)
        except TypeError:
            raise ValueError(
                f"{type(value).__name__} has no len(): give a map-style Dataset (an "
                "IterableDataset cannot be split reproducibly)"
            ) from None
        if size == 0:
            raise ValueError(f"{type(value).__name__} is empty")
        return value

    @field_serializer("arrays", when_used="json")
    def _describe_arrays(self, value: dict[str, np.ndarray] | None) -> str | None:
        if value is None:
            return None
        shown = ", ".join(f"{name} {array.dtype.name} {list(array.shape)}" for name, array in value.items())
        return f"<in-memory arrays {shown}; sha256 {arrays_digest(list(value.values()))}>"

    @field_serializer("targets", when_used="json")
    def _describe_targets(self, value: np.ndarray | None) -> str | None:
        if value is None:
            return None
        return f"<in-memory array {value.dtype.name} {list(value.shape)}; sha256 {arrays_digest([value])}>"

    @field_serializer("dataset", when_used="json")
    def _describe_dataset(self, value: Any) -> str | None:
        return None if value is None else f"<in-memory torch Dataset {type(value).__qualname__}, {len(value)} items>"

    @model_validator(mode="after")
    def _one_origin(self) -> DataSpec:
        given = [name for name in ("arrays", "dataset") if getattr(self, name) is not None]
        if "source" in self.model_fields_set and self.source != "auto":
            given.insert(0, "source")
        if len(given) > 1:
            raise ValueError(f"give one of source, arrays or dataset (got {', '.join(given)})")
        if self.targets is not None:
            if self.arrays is None:
                raise ValueError("targets go with arrays (a Dataset's items carry their own targets)")
            named = [key for key in TARGET_KEYS if key in self.arrays]
            if named:
                raise ValueError(f"targets given twice: as targets and as arrays[{named[0]!r}]")
        if self.arrays is not None:
            counts = {name: len(array) for name, array in self.arrays.items()}
            if self.targets is not None:
                counts["targets"] = len(self.targets)
            if len(set(counts.values())) != 1:
                raise ValueError(
                    f"arrays of different lengths: every array needs the same number of samples "
                    f"(first dimension), got {counts}"
                )
        return self

    @property
    def in_memory(self) -> bool:
        return self.arrays is not None or self.dataset is not None

    @model_serializer(mode="wrap")
    def _without_unset_objects(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped = super()._without_unset_objects(handler)
        if self.in_memory and dumped.get("source") == "auto":  # not where this data came from
            dumped.pop("source")
        return dumped

    @field_validator("source")
    @classmethod
    def _source_exists(cls, value: str, info: ValidationInfo) -> str:
        if value.endswith(".npz"):
            return _npz_archive(_existing_file(value, info))  # type: ignore[arg-type]
        if value not in ("auto", "digits") and not FUNCTION_REFERENCE.fullmatch(value):
            raise ValueError(f"expected 'auto', 'digits', a .npz file or 'module:function', got {value!r}")
        return value


def _pass_union() -> Any:
    models = pass_registry.config_models()
    union = Union[tuple(models)] if len(models) > 1 else models[0]  # noqa: UP007 - built at run time
    return Annotated[union, Field(discriminator="type")] if len(models) > 1 else union


if TYPE_CHECKING:
    # For mypy, every pass's config: the discriminated union of the registered ones is only known at run time.
    PassEntry: TypeAlias = PassConfig
else:
    PassEntry = _pass_union()


class VariantSpec(StrictModel):
    """A named chain of passes applied to the exported fp32 ONNX model; no passes means fp32 itself.

    Passes may change the format (convert.openvino, convert.tflite): the variant then runs on the targets
    that accept its final format."""

    name: Name
    passes: list[PassEntry] = Field([])
    targets: list[str] | None = Field(
        None,
        description="Only these of the recipe's targets (by label); default: every target that accepts the format.",
    )

    @field_validator("targets")
    @classmethod
    def _some_targets(cls, values: list[str] | None) -> list[str] | None:
        if values == []:
            raise ValueError(
                "an empty list would give the variant no rows; name at least one target, or leave "
                "'targets' out for every target"
            )
        return values


class TargetEntry(StrictModel):
    """A ``runtime:device`` to measure on, with the runtime's own options (e.g. OpenVINO's inference precision)."""

    target: str = Field(
        description="'runtime:device', e.g. 'onnxruntime:cpu', 'openvino:gpu', 'litert:arm'; "
        "'runtime:device@name' measures on the remote device 'name' of the recipe's 'devices'."
    )
    options: dict[str, Any] = Field({}, description="Runtime options; see each runtime's options in the README.")

    @field_validator("target")
    @classmethod
    def _known_target(cls, value: str) -> str:
        spec = TargetSpec.parse(value)
        runtimes = target_registry.runtimes()
        if spec.runtime not in runtimes:
            raise ValueError(f"unknown runtime {spec.runtime!r} in {value!r}; known: {', '.join(runtimes)}")
        devices = runtimes[spec.runtime].devices
        if spec.device not in devices:
            raise ValueError(f"{spec.runtime} has no device {spec.device!r}; known: {', '.join(devices)}")
        if spec.remote is not None:
            _check_name(spec.remote)
        return str(spec)

    @model_validator(mode="after")
    def _valid_options(self) -> TargetEntry:
        options_model = target_registry.runtimes()[self.spec.runtime].options_model
        try:
            self.options = options_model(**self.options).model_dump(exclude_defaults=True)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            raise ValueError(f"options.{'.'.join(map(str, error['loc']))}: {error['msg']}") from None
        return self

    @property
    def spec(self) -> TargetSpec:
        return TargetSpec.parse(self.target)

    @property
    def label(self) -> str:
        """How rows name this target: the options that differ from the runtime's defaults are part of it."""
        extra = ",".join(f"{key}={value}" for key, value in sorted(self.options.items()))
        return f"{self.target}[{extra}]" if extra else self.target


class Recipe(PythonObjects):
    """A whole recipe: what ``edgecraft run`` reads from YAML, and what ``edgecraft.run()`` takes.

    In code, a model may be an in-memory ``torch.nn.Module`` (``ModelSpec(module=net)``) and the data in-memory
    arrays or a torch ``Dataset`` (``DataSpec(arrays={...}, targets=...)``, ``DataSpec(dataset=...)``)."""

    name: Name
    models: list[ModelSpec] = Field(min_length=1)
    data: DataSpec = DataSpec()
    passes: list[PassEntry] = Field(
        [], description="Passes on the PyTorch model before export, shared by every variant."
    )
    variants: list[VariantSpec] = Field(min_length=1)
    targets: list[TargetEntry] = Field(
        [TargetEntry(target="onnxruntime:cpu")],
        min_length=1,
        description="'runtime:device' strings or {target, options} entries. A variant runs on every target that "
        "accepts its format (ONNX: onnxruntime, openvino; OpenVINO IR: openvino; TFLite: litert).",
    )
    benchmark: BenchmarkSpec = Field(
        BenchmarkSpec(), description="The benchmark protocol: a profile and any of its settings overridden."
    )
    devices: dict[Name, RemoteDevice] = Field(
        {},
        description="Remote devices by name, each running 'edgecraft agent serve'; a target 'runtime:device@name' "
        "is measured there.",
    )
    output_dir: str = Field("runs", description="Run folders are created here (relative to the working directory).")
    report: ReportSettings = Field(ReportSettings(), description="Verdict constraints, price, compare-gate thresholds.")
    search: SearchSpec | None = Field(
        None,
        description="What 'edgecraft tune' searches (pass parameters, objectives, accuracy budget); "
        "'edgecraft run' ignores it.",
    )
    _text: str | None = PrivateAttr(None)  # the YAML it was read from, stored verbatim with the results

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        """Read and validate a recipe file (see ``load_recipe``); its text is kept for the run's results."""
        from edgecraft.recipe.load import load_recipe  # the loader is built on these types, not the other way

        recipe, text = load_recipe(Path(path))
        recipe._text = text
        return recipe

    def __eq__(self, other: object) -> bool:  # the same fields, however they were written
        return type(other) is type(self) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]

    def to_yaml(self) -> str:
        """The recipe as YAML: the text it was read from, else the fields that were given."""
        if self._text is not None:
            return self._text
        return yaml.safe_dump(self.model_dump(mode="json", exclude_unset=True), sort_keys=False)

    @field_validator("output_dir")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if "\0" in value:
            raise ValueError("a folder name cannot hold a NUL character")
        return value

    @field_validator("targets", mode="before")
    @classmethod
    def _strings_are_targets(cls, values: Any) -> Any:
        if isinstance(values, list):
            return [{"target": value} if isinstance(value, str) else value for value in values]
        return values

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        labels = [entry.label for entry in self.targets]
        for entry in self.targets:
            remote = entry.spec.remote
            if remote is not None and remote not in self.devices:
                known = f"; devices: {', '.join(self.devices)}" if self.devices else "; the recipe has no 'devices:'"
                raise ValueError(
                    f"target {entry.target!r} names the device {remote!r}, which is not in 'devices'{known}"
                )
        if len(set(labels)) != len(labels):
            raise ValueError(f"targets must differ in device or options, got {labels}")
        for variant in self.variants:
            unknown = set(variant.targets or []) - set(labels)
            if unknown:
                raise ValueError(f"variant {variant.name!r} names targets not in 'targets': {sorted(unknown)}")
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        model_names = [model.display_name for model in self.models]
        if len(set(model_names)) != len(model_names):
            raise ValueError(f"model names must be unique (set models[].name), got {model_names}")
        trained = [model.builtin for model in self.models if model.builtin and REFERENCE_MODELS[model.builtin].training]
        if trained and self.data.splits.train == 0:
            raise ValueError(f"the built-in {trained[0]} is trained on data.splits.train, which is 0")
        try:
            resolve_benchmark(self.benchmark)
        except ValidationError as exc:
            problem = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"benchmark: {problem}") from None
        if self.passes and any(model.onnx for model in self.models):
            raise ValueError("'passes' change a PyTorch model; they cannot apply to an onnx model")
        _check_formats(self.passes, "torch", "passes")
        for index, variant in enumerate(self.variants):
            where = f"variants[{index}].passes"
            if starts_from_torch(variant.passes) and any(model.onnx for model in self.models):
                raise ValueError(
                    f"{where}[0] ({variant.passes[0].type}) changes a PyTorch model; it cannot apply to an onnx model"
                )
            final = _check_formats(variant.passes, "torch" if starts_from_torch(variant.passes) else "onnx", where)
            if final == "torch":
                raise ValueError(
                    f"{where} end with a PyTorch model; put PyTorch-only passes in the recipe's "
                    "shared 'passes', or end the variant with a pass that writes a model file"
                )
            if not self.targets_for(variant):
                raise ValueError(
                    f"variant {variant.name!r} ends in a {final} model that none of its targets runs "
                    f"({', '.join(variant.targets or labels)}); it would give no rows"
                )
        return self

    def targets_for(self, variant: VariantSpec) -> list[TargetEntry]:
        """The targets a variant runs on: those it names (or all) that accept the format its passes end in."""
        fmt = pass_registry.passes()[variant.passes[-1].type].output_format if variant.passes else "onnx"
        return [
            entry
            for entry in self.targets
            if (variant.targets is None or entry.label in variant.targets)
            and fmt in formats.loaded_by(entry.spec.runtime)
        ]


def starts_from_torch(entries: list[Any]) -> bool:
    """A variant whose first pass takes only PyTorch models (QAT, autotune) starts before the ONNX export."""
    return bool(entries) and "onnx" not in pass_registry.passes()[entries[0].type].input_formats


def _check_formats(entries: list[Any], start: str, where: str) -> str:
    """Each pass must accept the format the previous step produced; returns the final format."""
    current = start
    for index, entry in enumerate(entries):
        cls = pass_registry.passes()[entry.type]
        if current not in cls.input_formats:
            needs = " or ".join(cls.input_formats)
            raise ValueError(f"{where}[{index}] ({entry.type}) needs a {needs} model but gets {current}")
        current = cls.output_format
    return current


def recipe_json_schema() -> dict[str, Any]:
    return Recipe.model_json_schema()
