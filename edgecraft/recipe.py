"""The recipe: a typed (pydantic) description of models, data, passes, variants, targets and benchmark settings.

``load_recipe`` reads YAML (no key given twice, aliases bounded) and turns every problem into one line
``file:line: field: problem`` so that a user can jump to it; what validates is meant to run, so whatever can be
checked without running the user's code (files that must be ONNX or .npz, CPUs that must exist, names that become
folders) is checked here. ``recipe_json_schema`` is what ``edgecraft recipe schema`` publishes.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
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
from edgecraft.core.errors import EdgecraftError
from edgecraft.core.signature import TensorSpec
from edgecraft.data import TARGET_KEYS
from edgecraft.devices import RemoteDevice
from edgecraft.reports.settings import ReportSettings
from edgecraft.targets import registry as target_registry
from edgecraft.targets.base import TargetSpec
from edgecraft.tune.space import SearchSpec

# Names become folder names in the run folder: no separators, no leading '.', short enough for any file system.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


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


class _Strict(BaseModel):
    model_config = _STRICT


class _PythonObjects(_Strict):
    """A recipe part that may hold Python objects (an ``nn.Module``, arrays, a torch ``Dataset``): the Python API.

    Those fields are absent from the JSON Schema (YAML cannot give them), are dumped to JSON (results.json, the
    stored recipe YAML) as a one-line description with a content digest, and are left out of dumps when unset.
    Built in code, a part that does not validate raises ``EdgecraftError``, one line per problem, like a YAML
    recipe does (``model_validate``, which ``load_recipe`` uses, keeps pydantic's ``ValidationError``)."""

    _objects: tuple[str, ...] = ()

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise EdgecraftError(validation_message(exc, _API_NAMES.get(type(self).__name__, ""))) from None

    # Only a part built in code goes through this __init__: pydantic validates nested parts and model_validate()
    # without it (a custom __init__ would be called there too), so a YAML recipe keeps its file:line errors.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @model_serializer(mode="wrap")
    def _without_unset_objects(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped = handler(self)
        for name in self._objects:
            if dumped.get(name) is None:
                dumped.pop(name, None)
        return dumped


def validation_message(exc: ValidationError, prefix: str = "") -> str:
    """pydantic's errors as ``field: problem`` lines (no input dumps: a value may be a whole tensor)."""
    lines = []
    for error in exc.errors(include_url=False):
        field = _dotted(tuple(part for part in error["loc"] if not _is_union_tag(part)))
        field = f"{prefix}.{field}" if prefix and field != "recipe" else (prefix or field)
        lines.append(_one_line(f"{field}: {error['msg'].removeprefix('Value error, ')}"))
    return "\n".join(dict.fromkeys(lines))


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part.startswith(("function-", "tagged-union")) or "." in part)


# How a part built in code is named in its error messages.
_API_NAMES = {"ModelSpec": "model", "DataSpec": "data", "Recipe": ""}


def _torch_module(value: Any) -> bool:
    """Whether ``value`` is a ``torch.nn.Module``, without importing torch (no torch loaded: it cannot be one)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def _torch_dataset(value: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.utils.data.Dataset)


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
        raise ValueError(f"{value} is not an ONNX model ({_first_line(exc)})") from None
    if not model.graph.output:
        raise ValueError(f"{value} is not an ONNX model (no graph with outputs)")
    return value


def _npz_archive(value: str) -> str:
    """Read the archive's table of contents (not its arrays): a file that is not an .npz fails here."""
    try:
        with np.load(value, allow_pickle=False) as archive:
            names = archive.files
    except Exception as exc:  # noqa: BLE001 - numpy's errors for a file that is not a zip of .npy arrays
        raise ValueError(f"{value} is not an .npz archive ({_first_line(exc)})") from None
    if not names:
        raise ValueError(f"{value} holds no arrays")
    return value


class InputSpec(TensorSpec):
    """A declared model input: a name, a dtype, a shape whose symbolic axes are names (the first is the batch)."""

    model_config = _STRICT
    dtype: str = Field("float32", description="numpy dtype name: float32, int64, ...")
    shape: list[Annotated[int, Field(gt=0)] | str] = Field(
        description="e.g. [batch, 3, 224, 224] or [batch, sequence]; names stay dynamic in exports."
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

    model_config = _STRICT


class ModelSpec(_PythonObjects):
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
    outputs: list[str | OutputSpec] | None = Field(
        None,
        description="Names of the model's outputs, in the order forward() returns them (default: 'logits' "
        "for one, output_0, output_1, ... for several); an entry may be {name, kind} with kind scores, "
        "embedding or values.",
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
        if value is not None and not _torch_module(value):
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
        if (self.inputs or self.outputs) and not (self.factory or self.module is not None):
            raise ValueError(
                "inputs and outputs declare a factory model's signature (or an in-memory module's); "
                "built-in and onnx models carry their own"
            )
        if self.inputs:
            names = [spec.name for spec in self.inputs]
            if len(set(names)) != len(names):
                raise ValueError(f"input names must be unique, got {names}")
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
        return _safe_name(self.factory.rpartition(":")[2] if self.factory else Path(self.onnx).stem)


class SplitSpec(_Strict):
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


class DataSpec(_PythonObjects):
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
            arrays[name] = _as_array(array, f"'{name}'")
        return arrays

    @field_validator("targets")
    @classmethod
    def _target_array(cls, value: Any) -> np.ndarray | None:
        return None if value is None else _as_array(value, "targets")

    @field_validator("dataset")
    @classmethod
    def _a_dataset(cls, value: Any) -> Any:
        if value is None:
            return None
        if not _torch_dataset(value):
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
        return f"<in-memory arrays {shown}; sha256 {_arrays_digest(list(value.values()))}>"

    @field_serializer("targets", when_used="json")
    def _describe_targets(self, value: np.ndarray | None) -> str | None:
        if value is None:
            return None
        return f"<in-memory array {value.dtype.name} {list(value.shape)}; sha256 {_arrays_digest([value])}>"

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


def _as_array(value: Any, what: str) -> np.ndarray:
    """An array of samples (a numpy array, a CPU tensor, a list), as numpy; never an object array."""
    if hasattr(value, "detach"):  # a torch tensor: read without autograd, on the CPU
        value = value.detach().cpu()
    try:
        array = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - whatever np.asarray refuses
        raise ValueError(f"{what}: not an array ({_first_line(exc)})") from None
    if array.dtype == object or array.ndim == 0:
        raise ValueError(
            f"{what}: expected an array of samples [samples, ...] of numbers, got "
            f"{type(value).__name__}" + (" of dtype object" if array.dtype == object else " (a scalar)")
        )
    return array


def _arrays_digest(arrays: list[np.ndarray]) -> str:
    import hashlib

    sha = hashlib.sha256()
    for array in arrays:
        sha.update(f"{array.dtype.str}{array.shape}".encode())
        sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()[:16]


def _pass_union() -> Any:
    models = pass_registry.config_models()
    union = Union[tuple(models)] if len(models) > 1 else models[0]  # noqa: UP007 - built at run time
    return Annotated[union, Field(discriminator="type")] if len(models) > 1 else union


PassEntry = _pass_union()


class VariantSpec(_Strict):
    """A named chain of passes applied to the exported fp32 ONNX model; no passes means fp32 itself.

    Passes may change the format (convert.openvino, convert.tflite): the variant then runs on the targets
    that accept its final format."""

    name: Name
    passes: list[PassEntry] = []  # type: ignore[valid-type]
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


class TargetEntry(_Strict):
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


class Recipe(_PythonObjects):
    """A whole recipe: what ``edgecraft run`` reads from YAML, and what ``edgecraft.run()`` takes.

    In code, a model may be an in-memory ``torch.nn.Module`` (``ModelSpec(module=net)``) and the data in-memory
    arrays or a torch ``Dataset`` (``DataSpec(arrays={...}, targets=...)``, ``DataSpec(dataset=...)``)."""

    name: Name
    models: list[ModelSpec] = Field(min_length=1)
    data: DataSpec = DataSpec()
    passes: list[PassEntry] = Field(  # type: ignore[valid-type]
        [], description="Passes on the PyTorch model before export, shared by every variant."
    )
    variants: list[VariantSpec] = Field(min_length=1)
    targets: list[TargetEntry] = Field(
        [TargetEntry(target="onnxruntime:cpu")],
        min_length=1,
        description="'runtime:device' strings or {target, options} entries. A variant runs on every target that "
        "accepts its format (ONNX: onnxruntime, openvino; OpenVINO IR: openvino; TFLite: litert).",
    )
    benchmark: BenchmarkSpec = Field(  # type: ignore[valid-type]
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


class _Refused(yaml.YAMLError):
    """A YAML construct a recipe may not use, with where it is."""

    def __init__(self, mark: yaml.Mark, field: tuple, problem: str) -> None:
        super().__init__(problem)
        self.line = mark.line + 1
        self.field = field
        self.problem = problem


_MAX_DEPTH = 32  # recipes nest a few levels; PyYAML's composer recurses once per level
# Values in the document with every alias written out. Aliases are shared, not copied, when YAML is read, but
# validation walks each use: ten-fold aliases nested six deep make 460 bytes a million values.
_MAX_VALUES = 100_000


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader minus what makes a recipe ambiguous or expensive, and recording each field's line.

    Refused: a key given twice (YAML would silently keep the last), an alias inside the value it names (a cycle),
    nesting deeper than ``_MAX_DEPTH``. Anchors and aliases are allowed (recipes share a pass's settings between
    variants with them); ``_parse`` bounds what they expand to.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lines: dict[tuple, int] = {}  # field path -> 1-based line (a mapping value's: its key's line)
        self._fields: list[tuple] = [()]
        self._open_anchors: list[str] = []
        self._field_of: dict[int, tuple] = {}  # id(node) -> field path, to name the field of a bad scalar

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        field = self._fields[-1] + _path_part(index)
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) and event.anchor in self._open_anchors:
            raise _Refused(event.start_mark, field, f"alias *{event.anchor} is inside the value it names")
        if len(self._fields) > _MAX_DEPTH:
            raise _Refused(event.start_mark, field, f"nested deeper than {_MAX_DEPTH} levels")
        mark = index.start_mark if isinstance(index, yaml.Node) else event.start_mark
        self.lines.setdefault(field, mark.line + 1)
        anchor = None if isinstance(event, yaml.AliasEvent) else event.anchor
        self._fields.append(field)
        if anchor:
            self._open_anchors.append(anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._fields.pop()
            if anchor:
                self._open_anchors.pop()
        self._field_of.setdefault(id(node), field)
        return node

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], yaml.Node] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                earlier = first.setdefault((key.tag, key.value), key)
                if earlier is not key:
                    raise _Refused(
                        key.start_mark,
                        self._fields[-1] + (key.value,),
                        f"given twice, on lines {earlier.start_mark.line + 1} and {key.start_mark.line + 1} "
                        "(YAML would silently keep only the last)",
                    )
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # noqa: BLE001 - PyYAML raises ValueError, KeyError... for a bad tagged scalar
            raise _Refused(
                node.start_mark,
                self._field_of.get(id(node), ()),
                f"cannot read {node.value!r} as {node.tag.rpartition(':')[2]}: {_first_line(exc)}",
            ) from None


def _path_part(index: Any) -> tuple:
    """The path step PyYAML's composer is on: a sequence position, a mapping value's key, or none (a key)."""
    if isinstance(index, int):
        return (index,)
    if isinstance(index, yaml.ScalarNode):
        return (index.value,)
    return () if index is None else ("?",)


def _dotted(path: tuple) -> str:
    """('variants', 1, 'passes') -> 'variants[1].passes'; a key that is not a plain word is quoted: ['a b']."""
    text = ""
    for part in path:
        if isinstance(part, int) or not re.fullmatch(r"[\w-]+", str(part)):
            text += f"[{part!r}]"
        else:
            text += f".{part}" if text else part
    return text or "recipe"


def _locate(loc: tuple, lines: dict[tuple, int], missing: bool) -> tuple[str, int | None]:
    """Turn a pydantic error location into 'a.b[2].c' and the line of its deepest part present in the file."""
    path: tuple = ()
    shown: tuple = ()
    for position, part in enumerate(loc):
        present = (*path, part) in lines
        if present:
            path += (part,)
        # Parts absent from the file are pydantic's union tags (skipped) or the missing field (the last part).
        if present or (missing and position == len(loc) - 1):
            shown += (part,)
    return _dotted(shown), lines.get(path)


def _parse(text: str) -> tuple[Any, dict[tuple, int]]:
    """The YAML document and the line of each of its fields."""
    loader = _RecipeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, loader.lines
        _refuse_expansion(node)
        return loader.construct_document(node), loader.lines
    finally:
        loader.dispose()


def _refuse_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases, written out, exceed ``_MAX_VALUES``; counted once per distinct node."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            children = (
                [part for pair in node.value for part in pair]
                if isinstance(node, yaml.MappingNode)
                else (node.value if isinstance(node, yaml.SequenceNode) else [])
            )
            sizes[id(node)] = 1 + sum(size(child) for child in children)
        return sizes[id(node)]

    if size(root) > _MAX_VALUES:
        entries = root.value if isinstance(root, yaml.MappingNode) else [(None, root)]
        key, _ = max(entries, key=lambda pair: size(pair[1]))
        field = (key.value,) if isinstance(key, yaml.ScalarNode) else ()
        raise _Refused(
            key.start_mark if key else root.start_mark,
            field,
            f"its aliases expand to more than {_MAX_VALUES} values; write it out without nested aliases",
        )


def _yaml_error(path: Path, text: str, exc: yaml.YAMLError) -> str:
    if isinstance(exc, _Refused):
        return f"{path}:{exc.line}: {_dotted(exc.field)}: {exc.problem}"
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow; it has a position, no mark
        line = text.count("\n", 0, exc.position) + 1
        return f"{path}:{line}: malformed YAML: unacceptable character #x{exc.character:04x}"
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    return f"{where}: malformed YAML: {getattr(exc, 'problem', None) or _first_line(exc)}"


def load_recipe(path: Path) -> tuple[Recipe, str]:
    """Read and validate a recipe file; return it with its text (stored verbatim in results).

    Every problem is one line ``file:line: field: problem``; several problems are several lines."""
    path = Path(path)
    if not path.is_file():
        raise EdgecraftError(f"{path}: recipe file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise EdgecraftError(f"{path}: cannot read the recipe: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise EdgecraftError(f"{path}: a recipe must be UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data, lines = _parse(text)
    except yaml.YAMLError as exc:
        raise EdgecraftError(_one_line(_yaml_error(path, text, exc))) from None
    if not isinstance(data, dict):
        raise EdgecraftError(
            f"{path}:{lines.get((), 1)}: recipe: must be a YAML mapping (name, models, variants, "
            f"...), got {type(data).__name__}"
        )
    try:
        recipe = Recipe.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        messages: dict[tuple[int, str], str] = {}
        for error in exc.errors(include_url=False):
            field, line = _locate(error["loc"], lines, missing=error["type"] == "missing")
            where = f"{path}:{line}" if line else str(path)
            problem = error["msg"].removeprefix("Value error, ")
            shown = error["type"] != "missing" and _short(error["input"]) and f"got {error['input']!r}" not in problem
            got = f" (got {error['input']!r})" if shown else ""
            # The branches of a union each report the same value: its first complaint is enough.
            messages.setdefault((line or 0, field), _one_line(f"{where}: {field}: {problem}{got}"))
        # A branch that rejects a value whole ("not a string") beside one that finds a problem inside it: the inner.
        inner = {field for _, field in messages}
        shown = [
            message
            for (_, field), message in sorted(messages.items())
            if not any(other.startswith((f"{field}.", f"{field}[")) for other in inner)
        ]
        raise EdgecraftError("\n".join(shown)) from None
    return recipe, text


def _short(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 60


def _first_line(exc: BaseException) -> str:
    return next(iter(str(exc).strip().splitlines()), type(exc).__name__)


def _one_line(text: str) -> str:
    """A file name or a value may hold a line break; the message must not."""
    return " ".join(text.splitlines())
