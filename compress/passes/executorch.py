"""PyTorch → ExecuTorch: one ``.pte`` program whose supported ops run in the XNNPACK delegate, in fp32, fp16 or int8.

``torch.export`` captures the model with every symbolic axis dynamic up to an upper bound, and ExecuTorch plans
each tensor's memory for the elements those bounds allow: a call whose tensor holds more fails, while one past an
axis's bound whose tensor still fits (a longer sequence in a smaller batch) runs. The note beside the program
(``write_note``) records the signature and the bounds for the runtime target. int8 goes through torchao's PT2E
flow with XNNPACK's own quantizer (``prepare_pt2e`` → calibrate → ``convert_pt2e``), which annotates what
XNNPACK's int8 kernels take.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from edgecraft.compress.accuracy_control import AccuracyAwareOptions, Int8Format, Judgement, Layer, output_error, search
from edgecraft.compress.base import Artifact, Dataset, Pass, PassContext, PassOutcome, Validation
from edgecraft.compress.registry import register
from edgecraft.core.errors import EdgecraftError
from edgecraft.core.formats.executorch import write_note
from edgecraft.core.signature import Signature, TensorSpec

# Samples per calibration call (at most ``max_batch``: the captured graph refuses more).
CALIBRATION_BATCH = 32
# Namespace of the quantize / dequantize ops around each int8 op: bookkeeping, not compute.
QDQ_NAMESPACE = "quantized_decomposed."


class ExecuTorchConfig(AccuracyAwareOptions):
    """What the program computes in, and the largest inputs it takes (ExecuTorch plans its memory for them); with
    ``max_drop``, the most sensitive ops stay in float (left out of the XNNPACK quantizer's annotations)."""

    type: Literal["convert.executorch"] = "convert.executorch"
    quantization: Literal["none", "fp16", "int8", "dynamic-int8"] = Field(
        "none",
        description="'none': fp32; 'fp16': fp16 compute, float32 inputs and outputs (XNNPACK keeps convolution "
        "weights float32 in the file and converts them when loading: a conv net's file shrinks little); 'int8': "
        "int8 per-channel weights and per-tensor activations calibrated on the calibration split (XNNPACK "
        "quantizer); 'dynamic-int8': int8 per-channel weights, activations quantized at each call (XNNPACK "
        "quantizer): for transformers' Linear layers.",
    )
    calibration_samples: int = Field(200, gt=0, description="With 'int8': calibration-split samples observed.")
    max_batch: int = Field(
        8,
        gt=0,
        description="The batch axis's upper bound: ExecuTorch plans the program's memory for it (EfficientNet-Lite0: "
        "461 MB of activations at 64, measured), and a call with more samples fails; the target runs the accuracy "
        "pass in calls of at most this many. 8 is the benchmark's largest default batch.",
    )
    upper_bounds: dict[str, PositiveInt] = Field(
        {},
        description="An upper bound per other symbolic axis, by name (e.g. {sequence: 128}). An axis not named "
        "here gets the largest size it has in the data splits.",
    )

    @model_validator(mode="after")
    def _accuracy_options_need_int8(self) -> ExecuTorchConfig:
        if self.accuracy_aware() and self.quantization not in ("int8", "dynamic-int8"):
            raise ValueError("max_drop, sensitivity and first_last_float apply to quantization int8 or dynamic-int8")
        return self

    @field_validator("upper_bounds")
    @classmethod
    def _batch_is_max_batch(cls, bounds: dict[str, int]) -> dict[str, int]:
        if "batch" in bounds:
            raise ValueError("the batch axis's bound is max_batch, not upper_bounds")
        return bounds


@register
class ExecuTorchConversion(Pass[ExecuTorchConfig]):
    config_model = ExecuTorchConfig
    input_formats = ("torch",)
    output_format = "executorch"
    libraries = ("executorch", "torchao", "torch")

    def is_lossless(self, config: ExecuTorchConfig) -> bool:
        return config.quantization == "none"

    def apply(self, artifact: Artifact, config: ExecuTorchConfig, context: PassContext) -> PassOutcome:
        import warnings

        with warnings.catch_warnings():
            # torch's and executorch's notices about their own internals (pytree's LeafSpec, importlib.resources'
            # read_text, the bindings' "experimental API"), dozens per conversion: nothing a user can act on.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message="This API is experimental")
            return self._convert(artifact, config, context)

    def _convert(self, artifact: Artifact, config: ExecuTorchConfig, context: PassContext) -> PassOutcome:
        signature = artifact.signature
        bounds = upper_bounds(signature, config, [context.train, context.calibration, context.evaluation])
        examples, shapes = _examples_and_shapes(signature, bounds)
        model = artifact.model.eval()
        if config.quantization == "fp16":
            model = _in_fp16(model)
        program = Captured(_export(model, examples, shapes), examples, shapes, signature, bounds)
        details: dict[str, Any] = {"quantization": config.quantization, "upper_bounds": bounds}
        output = context.work_dir / "model.pte"
        if config.quantization in ("int8", "dynamic-int8"):
            # dynamic-int8 observes only the weights, which one sample runs through.
            count = config.calibration_samples if config.quantization == "int8" else 1
            calibration = context.calibration.head(count)
            if not len(calibration):
                raise ValueError(f"convert.executorch quantization {config.quantization} needs calibration samples")
            fmt = ExecuTorchInt8(program, calibration, config, context.validation)
            path, control = search(fmt, context.validation, config, context.work_dir, context.progress)
            output.write_bytes(path.read_bytes())
            write_note(output, signature, bounds)
            details.update(fmt.lowered[path])
            if config.quantization == "int8":
                details["calibration_samples"] = len(calibration)
            if control:
                details["accuracy_control"] = control
        else:
            details.update(program.lower(program.exported, output))
        details["size_bytes"] = output.stat().st_size
        return PassOutcome(Artifact("executorch", signature, path=output), details)


class Captured:
    """A model captured by ``torch.export`` at its bounds, and what lowering any version of it to a ``.pte`` needs."""

    def __init__(
        self, exported: Any, examples: tuple[Any, ...], shapes: tuple[Any, ...], signature: Signature, bounds: dict
    ) -> None:
        self.exported = exported
        self.examples = examples
        self.shapes = shapes
        self.signature = signature
        self.bounds = bounds

    def lower(self, exported: Any, path: Path) -> dict[str, Any]:
        """``exported`` lowered to XNNPACK and written to ``path`` with its note; what was delegated."""
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        lowered = to_edge_transform_and_lower(
            exported, partitioner=[XnnpackPartitioner(configs=_partitioner_configs())]
        )
        delegated = delegation(lowered.exported_program().graph_module)  # before to_executorch rewrites its ops
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(lowered.to_executorch().buffer)
        write_note(path, self.signature, self.bounds)
        return delegated


class ExecuTorchInt8(Int8Format):
    """PT2E int8 with XNNPACK's quantizer, with ops kept in float by leaving them out of the quantizer's annotations.

    Every annotated op is a candidate (convolutions and linears, and also the residual adds, pooling, concatenations
    and clamps whose outputs the quantizer observes), so with all of them left out the program is the fp32 one.
    Each trial is a full quantize → export → lower (about a minute for EfficientNet-Lite0 on 2 cores), so ranking
    lowers nothing: it judges PT2E's reference model (the converted graph run by PyTorch, quantize / dequantize
    around float ops) calibrated once, with one op's inputs taken before their observers."""

    target = "executorch"
    measure = (
        "share of the int8 model's output error (relative L2², against fp32) removed by keeping only this op in "
        "float, judged on PT2E's reference model of the int8 program (run by PyTorch)"
    )

    def __init__(
        self, program: Captured, calibration: Dataset, config: ExecuTorchConfig, validation: Validation | None
    ) -> None:
        self.program = program
        self.calibration = calibration
        self.config = config
        self.validation = validation  # what ranking judges by (the search judges its trials by the same)
        # Per .pte written: the ops left in float, the ops that read int8 (dequantized) inputs, what was delegated.
        self.float_of: dict[Path, list[str]] = {}
        self.int8_ops: dict[Path, list[str]] = {}
        self.lowered: dict[Path, dict[str, Any]] = {}
        self._candidates: list[Layer] | None = None

    def quantize(self, float_layers: list[str], out_dir: Path) -> Path:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        converted = convert_pt2e(self._calibrated(float_layers))
        path = out_dir / "model.pte"
        self.float_of[path] = list(float_layers)
        self.int8_ops[path] = _reading_int8(converted.graph)
        self.lowered[path] = self.program.lower(_export(converted, self.program.examples, self.program.shapes), path)
        return path

    def layers(self, quantized: Path) -> list[Layer]:
        """The ops XNNPACK's quantizer annotates on the captured model, in graph order, named by node and module."""
        if self._candidates is None:
            from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

            # Prepared, not only annotated: preparing folds batch norms into their convolutions before annotating.
            module = prepare_pt2e(self.program.exported.module(), self._quantizer(set()))
            self._candidates = [
                Layer(_layer_name(node), _op_name(node))
                for node in module.graph.nodes
                if node.op == "call_function" and _annotated(node)
            ]
        return self._candidates

    def quantized_ops(self, path: Path) -> list[str]:
        return self.int8_ops[path]

    def rank(
        self,
        quantized: Path,
        layers: list[Layer],
        judge: Callable[[Path], Judgement],
        work_dir: Path,
        progress: Callable[[int], None],
    ) -> dict[str, Judgement]:
        import copy

        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        from edgecraft.compress.torch_io import predict

        validation = self.validation
        assert validation is not None  # the search ranks only with a validation split
        calibrated = self._calibrated(self.float_of[quantized])
        judged = {}
        for index, layer in enumerate(layers):
            model = copy.deepcopy(calibrated)
            _read_before_observers(model, _node_name(layer.name))
            outputs = predict(convert_pt2e(model), validation.data.inputs, self.program.signature, self._batch())
            judged[layer.name] = Judgement(validation.score(outputs), output_error(outputs, validation.reference))
            progress(index + 1)
        return judged

    def _batch(self) -> int:
        return min(CALIBRATION_BATCH, self.config.max_batch)

    def _quantizer(self, float_nodes: set[str]) -> Any:
        return _quantizer(self.config.quantization == "dynamic-int8", float_nodes)

    def _calibrated(self, float_layers: list[str]) -> Any:
        """The captured model prepared with ``float_layers`` unannotated, observed on the calibration samples."""
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

        from edgecraft.compress.torch_io import predict

        prepared = prepare_pt2e(self.program.exported.module(), self._quantizer({_node_name(n) for n in float_layers}))
        predict(prepared, self.calibration.inputs, self.program.signature, batch_size=self._batch())
        return prepared


def _layer_name(node: Any) -> str:
    """``module.path/node``: the module tells a reader where the op is, the node which one it is."""
    stack = node.meta.get("nn_module_stack") or {}
    module = next(reversed(stack.values()))[0] if stack else ""
    return f"{module}/{node.name}" if module else node.name


def _node_name(layer: str) -> str:
    return layer.rsplit("/", 1)[-1]


def _op_name(node: Any) -> str:
    return str(getattr(node.target, "__name__", node.target)).split(".")[0]


def _annotated(node: Any) -> bool:
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    annotation = node.meta.get(Q_ANNOTATION_KEY)
    return annotation is not None and bool(annotation.input_qspec_map or annotation.output_qspec)


def _reading_int8(graph: Any) -> list[str]:
    """The compute ops of a converted graph that read a dequantized (int8) tensor, named as layers are."""
    names = []
    for node in graph.nodes:
        if (
            node.op == "call_function"
            and str(node.target).startswith(QDQ_NAMESPACE)
            and "dequantize" in str(node.target)
        ):
            names += [_layer_name(user) for user in node.users if not str(user.target).startswith(QDQ_NAMESPACE)]
    return list(dict.fromkeys(names))


def _read_before_observers(model: Any, node_name: str) -> None:
    """Node ``node_name`` of a prepared model reads its inputs (activations and weights) before their observers, so
    that conversion leaves its inputs in float; an observer nothing else reads is removed."""
    from torchao.quantization.pt2e.observer import _is_activation_post_process

    node = next((node for node in model.graph.nodes if node.name == node_name), None)
    if node is None:
        raise EdgecraftError(f"convert.executorch: the prepared model has no op {node_name!r} to keep in float")
    for argument in list(node.all_input_nodes):
        if argument.op == "call_module" and _is_activation_post_process(model.get_submodule(str(argument.target))):
            node.replace_input_with(argument, argument.args[0])
            if not argument.users:
                model.graph.erase_node(argument)
    model.recompile()


def _axis_in_data(spec: TensorSpec, axis: int) -> int:
    """Where the model's ``axis`` of input ``spec`` is in the data's arrays, which hold one sample per index on
    axis 0 (the model's batch axis, wherever it is)."""
    return 1 + [index for index in range(len(spec.shape or [])) if index != spec.batch_axis].index(axis)


def upper_bounds(signature: Signature, config: ExecuTorchConfig, splits: list[Dataset]) -> dict[str, int]:
    """Every symbolic axis's upper bound by name: ``max_batch`` for the batch axis, else the recipe's, else the
    largest size the axis has in the data. A bound below the data's would refuse the recipe's own samples."""
    from edgecraft.compress.torch_io import symbolic_axes

    axes = {name for spec in signature.inputs for name in symbolic_axes(spec).values()}
    unknown = sorted(config.upper_bounds.keys() - axes)
    if unknown:
        raise ValueError(
            f"convert.executorch upper_bounds: unknown axis {unknown}; the inputs' axes are {sorted(axes)}"
        )
    bounds: dict[str, int] = {}
    for spec in signature.inputs:
        for axis, name in symbolic_axes(spec).items():
            if axis == spec.batch_axis:
                bounds[name] = config.max_batch
                continue
            seen = [
                split.inputs[spec.name].shape[_axis_in_data(spec, axis)]
                for split in splits
                if spec.name in split.inputs
            ]
            largest = max([*seen, bounds.get(name, 0)])
            bound = config.upper_bounds.get(name, largest)
            if not bound:
                raise ValueError(
                    f"convert.executorch: axis {name!r} of input {spec.name!r} has no upper bound: no data split "
                    f"holds the input; set upper_bounds: {{{name}: N}}"
                )
            if bound < largest:
                raise ValueError(
                    f"convert.executorch upper_bounds: {name} {bound} is below the {largest} the data holds: the "
                    "program would refuse the recipe's own samples"
                )
            bounds[name] = bound
    return bounds


def _examples_and_shapes(signature: Signature, bounds: dict[str, int]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Example inputs with every symbolic axis at its upper bound, and ``torch.export``'s dynamic shapes (one per
    input, by position: ``forward`` takes the signature's inputs positionally, whatever it calls its arguments).

    At the bound, not below it: lowering re-runs ops on the symbolic shapes and narrows an axis's range to what its
    example size satisfies (the fake convolution's CPU backend choice, ``batch >= 16``, made a batch bound of 64
    a planned 15 at an example batch of 2), and a range that keeps the bound keeps the memory planned for it. An
    axis whose bound is 1 stays fixed (torch.export specialises size 1)."""
    from torch.export import Dim

    from edgecraft.compress.torch_io import example_inputs, symbolic_axes

    dims = {name: Dim(re.sub(r"\W", "_", name), max=bound) for name, bound in bounds.items() if bound > 1}
    shapes = tuple(
        {axis: dims[name] for axis, name in symbolic_axes(spec).items() if name in dims} for spec in signature.inputs
    )
    at_bounds = []
    for spec in signature.inputs:
        names = symbolic_axes(spec)
        shape = [bounds[names[axis]] if axis in names else dim for axis, dim in enumerate(spec.shape or [])]
        at_bounds.append(spec.model_copy(update={"shape": shape}))
    return example_inputs(signature.model_copy(update={"inputs": at_bounds})), shapes


def _export(model: Any, examples: tuple[Any, ...], shapes: tuple[Any, ...]) -> Any:
    """``torch.export.export``, its refusal said in one line with what to do."""
    import torch

    try:
        return torch.export.export(model, examples, dynamic_shapes=shapes)
    except Exception as exc:  # torch.export raises many types; the pass fails with its first line
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        raise EdgecraftError(
            f"convert.executorch: torch.export could not capture the model ({type(exc).__name__}: {first[:300]}). "
            "A branch or a shape that depends on input values needs torch.cond or a fixed shape; an axis the model "
            "limits needs upper_bounds at most that limit (or a fixed size in the signature)"
        ) from exc


def _partitioner_configs() -> list[Any]:
    """XNNPACK's partitioner configs, with PReLU delegated on 4-D (image) inputs only.

    executorch 1.5.1's XNNPACK lowering assumes a PReLU's input can be made channels-last: a PReLU after a Linear
    (a [batch, features] input, MTCNN's heads) fails the whole lowering ("Attempting to convert non-NHWC compatible
    node to NHWC" in ChannelsLastTaggedReshapePass). Such a PReLU runs on the portable kernels instead (as
    ``gt`` + ``where``); every other op is partitioned as XNNPACK's defaults say."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.node_configs import PreluConfig

    class ImagePreluConfig(PreluConfig):
        def check_constraints(self, node: Any, ep: Any) -> bool:
            value = node.all_input_nodes[0].meta.get("val")
            return value is not None and value.dim() == 4 and super().check_constraints(node, ep)

    return [ImagePreluConfig if config is PreluConfig else config for config in ALL_PARTITIONER_CONFIGS]


def _in_fp16(model: Any) -> Any:
    """A half copy of ``model`` that takes and returns float32: float inputs are cast to half on the way in and
    float outputs back to float32 on the way out, so the program's interface is the fp32 model's."""
    import copy

    import torch
    from torch.utils._pytree import tree_map

    def cast(dtype: Any) -> Any:
        return lambda value: value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    half = copy.deepcopy(model).half()
    half.register_forward_pre_hook(lambda module, inputs: tree_map(cast(torch.float16), inputs))
    half.register_forward_hook(lambda module, inputs, outputs: tree_map(cast(torch.float32), outputs))
    return half


def _quantizer(dynamic: bool, float_nodes: set[str]) -> Any:
    """XNNPACK's quantizer (static int8 with convolution + clamp fused, or dynamic int8), annotating nothing on the
    nodes named in ``float_nodes``: those stay float, and so do their inputs unless another int8 op reads them."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    base = XNNPACKQuantizer if dynamic else _clamp_fusing_quantizer()

    class LeavingInFloat(base):  # type: ignore[misc, valid-type]
        def annotate(self, model: Any) -> Any:
            model = super().annotate(model)
            for node in model.graph.nodes:
                if node.name in float_nodes:
                    node.meta.pop(Q_ANNOTATION_KEY, None)
            return model

    return LeavingInFloat().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))


def _clamp_fusing_quantizer() -> type:
    """XNNPACK's quantizer class, with a convolution followed by a clamp (ReLU6, ``hardtanh``) quantized as one op.

    XNNPACK's quantizer fuses only ReLU into a convolution; a ReLU6 shares the convolution's observer, so the
    convolution's output is quantized over its whole pre-clamp range (on EfficientNet-Lite0, tens of units) and the
    [0, 6] the next layer reads gets a few dozen of the 256 steps: its int8 program agreed with fp32 on 34 % of
    the evaluation crops. Quantized like a ReLU (the convolution's output unobserved, the clamp's observed), it
    agreed on 94 %; XNNPACK's lowering fuses the clamp into the int8 convolution as it does a ReLU. The
    annotation mirrors the quantizer's own ``conv_relu`` annotator, which the library hard-codes to ReLU."""
    import torch
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer_utils as utils
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torch.fx import Node
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    clamps = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default, torch.ops.aten.relu6.default)

    class ClampFusingQuantizer(XNNPACKQuantizer):
        def annotate(self, model: Any) -> Any:
            config = self.global_config
            for clamp in model.graph.nodes:
                if clamp.op != "call_function" or clamp.target not in clamps:
                    continue
                conv = clamp.args[0]
                if not isinstance(conv, Node) or not utils._is_conv_node(conv) or len(conv.users) > 1:
                    continue
                weight, bias = conv.args[1], conv.args[2] if len(conv.args) > 2 else None
                partition = [clamp, conv, weight, *([bias] if isinstance(bias, Node) else [])]
                if utils._is_annotated(partition):
                    continue
                inputs = {conv.args[0]: utils.get_input_act_qspec(config), weight: utils.get_weight_qspec(config)}
                if isinstance(bias, Node):
                    inputs[bias] = utils.get_bias_qspec(config)
                conv.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=inputs, _annotated=True)
                clamp.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
                    output_qspec=utils.get_output_act_qspec(config), _annotated=True
                )
                utils._mark_nodes_as_annotated(partition)
            return super().annotate(model)

    return ClampFusingQuantizer


def delegation(graph_module: Any) -> dict[str, Any]:
    """What runs where in a lowered program: its XNNPACK calls, the compute ops inside them (quantize / dequantize
    not counted) and the ops left to ExecuTorch's portable kernels, by name (size arithmetic, which the runtime
    does itself, is no kernel)."""
    from executorch.exir.dialects.edge._ops import EdgeOpOverload
    from executorch.exir.lowered_backend_module import LoweredBackendModule

    def kernels(graph: Any) -> list[str]:
        return [str(node.target.__name__) for node in graph.nodes if isinstance(node.target, EdgeOpOverload)]

    lowered = [module for module in graph_module.children() if isinstance(module, LoweredBackendModule)]
    delegated = [
        name
        for module in lowered
        for name in kernels(module.original_module.graph)
        if not name.startswith(QDQ_NAMESPACE)
    ]
    return {
        "delegate_calls": len(lowered),
        "delegated_ops": len(delegated),
        "portable_ops": sorted(set(kernels(graph_module.graph))),
    }
