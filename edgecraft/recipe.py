"""The recipe: a typed (pydantic) description of models, data, passes, variants, targets and benchmark settings.

``load_recipe`` reads YAML and turns every validation problem into ``file:line: field: message`` so that a user
can jump to the line; ``recipe_json_schema`` is what ``edgecraft recipe schema`` publishes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from bench.evaluators import EvaluatorSpec
from bench.settings import BenchmarkSpec, resolve as resolve_benchmark
from compress import registry as pass_registry
from compress.zoo import REFERENCE_MODELS
from edgecraft.errors import EdgecraftError
from reports.schema import TensorSpec
from reports.settings import ReportSettings
from targets import registry as target_registry
from targets.base import TargetSpec

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _existing_file(value: str | None, info: ValidationInfo) -> str | None:
    """Resolve a path relative to the recipe's folder and insist that the file exists."""
    if value is None:
        return None
    base = Path((info.context or {}).get("base_dir", "."))
    path = (base / value).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return str(path)


class InputSpec(TensorSpec):
    """A declared model input: a name, a dtype, a shape whose symbolic axes are names (the first is the batch)."""

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


class ModelSpec(_Strict):
    """Exactly one of ``builtin``, ``factory`` or ``onnx``."""

    name: str | None = Field(None, description="Name in results; defaults to the builtin name or the file stem.")
    builtin: Literal[tuple(REFERENCE_MODELS)] | None = Field(  # type: ignore[valid-type]
        None, description="A built-in model: " + "; ".join(f"{name}: {m.description}" for name, m in REFERENCE_MODELS.items()),
    )
    factory: str | None = Field(None, description="'package.module:function' returning an nn.Module.")
    weights: str | None = Field(None, description="State-dict file loaded into the factory's model.")
    onnx: str | None = Field(None, description="A ready ONNX model file.")
    input_shape: list[Annotated[int, Field(gt=0)]] | None = Field(
        None, description="Shorthand for one float32 input named 'input': its shape without the batch, e.g. [3, 64, 64]."
    )
    inputs: list[InputSpec] | None = Field(
        None, description="The PyTorch model's inputs, in forward()'s order (default: read from the data)."
    )
    outputs: list[str | TensorSpec] | None = Field(
        None, description="Names of the model's outputs, in the order forward() returns them (default: 'logits' "
        "for one, output_0, output_1, ... for several); an entry may be {name, kind} with kind scores, "
        "embedding or values."
    )
    evaluator: EvaluatorSpec | None = Field(
        None, description="How quality is measured: classification, agreement, embedding, regression or "
        "'module:function', with the outputs it reads (default: the built-in's own; else classification "
        "when the data has class labels, agreement with fp32 when it has none)."
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
        specs = [TensorSpec(name=value) if isinstance(value, str) else value for value in values]
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"output names must be unique, got {names}")
        return specs

    _check_weights = field_validator("weights", "onnx")(_existing_file)

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[\w.]+:\w+", value):
            raise ValueError(f"expected 'package.module:function', got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        sources = [key for key in ("builtin", "factory", "onnx") if getattr(self, key) is not None]
        if len(sources) != 1:
            raise ValueError(f"give exactly one of builtin, factory or onnx (got {sources or 'none'})")
        if self.weights and not self.factory:
            raise ValueError("weights is only used with factory")
        if self.inputs and self.input_shape:
            raise ValueError("give inputs or input_shape, not both")
        if (self.inputs or self.outputs) and not self.factory:
            raise ValueError("inputs and outputs declare a factory model's signature; built-in and onnx models "
                             "carry their own")
        if self.inputs:
            names = [spec.name for spec in self.inputs]
            if len(set(names)) != len(names):
                raise ValueError(f"input names must be unique, got {names}")
        return self

    @property
    def source(self) -> str:
        return self.builtin or self.factory or f"onnx:{self.onnx}"

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.builtin:
            return self.builtin
        if self.factory:
            return self.factory.rpartition(":")[2]
        return Path(self.onnx).stem


class SplitSpec(_Strict):
    """Fractions of the data set (together at most 1; the rest is left out); the digits models train on ``train``."""

    train: float = Field(0.6, ge=0, lt=1)
    calibration: float = Field(0.2, gt=0, le=1)
    evaluation: float = Field(0.2, gt=0, le=1)

    @model_validator(mode="after")
    def _at_most_one(self) -> "SplitSpec":
        total = self.train + self.calibration + self.evaluation
        if total > 1 + 1e-6:
            raise ValueError(f"train + calibration + evaluation must be at most 1, got {total:g}")
        return self


class DataSpec(_Strict):
    source: str = Field(
        "auto",
        description="'auto': each built-in model's own data set (digits for the digits models), digits for other "
        "models; 'digits' (scikit-learn's bundled set, resized to the model's image input); a .npz file with one "
        "array per model input, by name, plus optional 'targets' (or 'labels'); or 'module:function' returning "
        "such a dict.",
    )
    splits: SplitSpec = SplitSpec()
    seed: int = 0

    @field_validator("source")
    @classmethod
    def _source_exists(cls, value: str, info: ValidationInfo) -> str:
        if value.endswith(".npz"):
            return _existing_file(value, info)  # type: ignore[return-value]
        if value not in ("auto", "digits") and not re.fullmatch(r"[\w.]+:\w+", value):
            raise ValueError(f"expected 'auto', 'digits', a .npz file or 'module:function', got {value!r}")
        return value


def _pass_union() -> Any:
    models = pass_registry.config_models()
    union = Union[tuple(models)] if len(models) > 1 else models[0]  # noqa: UP007 - built at run time
    return Annotated[union, Field(discriminator="type")] if len(models) > 1 else union


PassEntry = _pass_union()


class VariantSpec(_Strict):
    """A named chain of passes applied to the exported fp32 ONNX model; no passes means fp32 itself.

    Passes may change the format (convert.openvino, convert.tflite): the variant then runs on the targets
    that accept its final format."""

    name: str
    passes: list[PassEntry] = []  # type: ignore[valid-type]
    targets: list[str] | None = Field(
        None, description="Only these of the recipe's targets (by label); default: every target that accepts the format."
    )

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"use letters, digits, '.', '_' or '-' (got {value!r})")
        return value


class TargetEntry(_Strict):
    """A ``runtime:device`` to measure on, with the runtime's own options (e.g. OpenVINO's inference precision)."""

    target: str = Field(description="'runtime:device', e.g. 'onnxruntime:cpu', 'openvino:gpu', 'litert:arm'.")
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
        return str(spec)

    @model_validator(mode="after")
    def _valid_options(self) -> "TargetEntry":
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


class Recipe(_Strict):
    name: str
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
    output_dir: str = Field("runs", description="Run folders are created here (relative to the working directory).")
    report: ReportSettings = Field(ReportSettings(), description="Verdict constraints, price, compare-gate thresholds.")

    _name_slug = field_validator("name")(VariantSpec._slug.__func__)  # type: ignore[attr-defined]

    @field_validator("targets", mode="before")
    @classmethod
    def _strings_are_targets(cls, values: Any) -> Any:
        if isinstance(values, list):
            return [{"target": value} if isinstance(value, str) else value for value in values]
        return values

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        labels = [entry.label for entry in self.targets]
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
        try:
            resolve_benchmark(self.benchmark)
        except ValidationError as exc:
            raise ValueError(f"benchmark: {exc.errors(include_url=False)[0]['msg']}") from None
        if self.passes and any(model.onnx for model in self.models):
            raise ValueError("'passes' change a PyTorch model; they cannot apply to an onnx model")
        _check_formats(self.passes, "torch", "passes")
        for index, variant in enumerate(self.variants):
            where = f"variants[{index}].passes"
            if starts_from_torch(variant.passes) and any(model.onnx for model in self.models):
                raise ValueError(f"{where}[0] ({variant.passes[0].type}) changes a PyTorch model; "
                                 "it cannot apply to an onnx model")
            final = _check_formats(variant.passes, "torch" if starts_from_torch(variant.passes) else "onnx", where)
            if final == "torch":
                raise ValueError(f"{where} end with a PyTorch model; put PyTorch-only passes in the recipe's "
                                 "shared 'passes', or end the variant with a pass that writes a model file")
        return self


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


def _line_index(node: yaml.Node, path: tuple = (), index: dict | None = None) -> dict[tuple, int]:
    """Map each key path of the YAML document to its 1-based line."""
    index = {} if index is None else index
    index[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            index[path + (key.value,)] = key.start_mark.line + 1
            _line_index(value, path + (key.value,), index)
            index[path + (key.value,)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for position, item in enumerate(node.value):
            _line_index(item, path + (position,), index)
    return index


def _locate(loc: tuple, lines: dict[tuple, int]) -> tuple[str, int | None]:
    """Turn a pydantic error location into 'a.b[2].c' and the line of its deepest part present in the file."""
    path: tuple = ()
    text = ""
    for position, part in enumerate(loc):
        present = path + (part,) in lines
        if present:
            path += (part,)
        # Parts absent from the file are pydantic's union tags (skipped) or a missing field (the last part).
        if present or position == len(loc) - 1:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "recipe", lines.get(path)


def load_recipe(path: Path) -> tuple[Recipe, str]:
    """Read and validate a recipe file; return it with its text (stored verbatim in results)."""
    path = Path(path)
    if not path.is_file():
        raise EdgecraftError(f"{path}: recipe file not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
        lines = _line_index(yaml.compose(text)) if data is not None else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise EdgecraftError(f"{where}: malformed YAML: {problem}") from None
    if not isinstance(data, dict):
        raise EdgecraftError(f"{path}: a recipe must be a YAML mapping, got {type(data).__name__}")
    try:
        recipe = Recipe.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        messages = []
        for error in exc.errors(include_url=False):
            field, line = _locate(error["loc"], lines)
            where = f"{path}:{line}" if line else str(path)
            got = f" (got {error['input']!r})" if error["type"] not in ("missing",) and _short(error["input"]) else ""
            messages.append((line or 0, f"{where}: {field}: {error['msg']}{got}"))
        raise EdgecraftError("\n".join(message for _, message in sorted(messages))) from None
    return recipe, text


def _short(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 60
