"""convert.executorch: PyTorch → an ExecuTorch program on XNNPACK, run here by ExecuTorch's own runtime.

Every program is checked by running the .pte, not by reading the pass's record: a dynamic axis that was planned
narrower than asked, or an output in another order, only shows when the program runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecraft.compress.base import Artifact, Dataset, PassContext, PassOutcome
from edgecraft.compress.passes.executorch import ExecuTorchConfig, ExecuTorchConversion
from edgecraft.compress.torch_io import predict
from edgecraft.core.errors import EdgecraftError
from edgecraft.core.formats.executorch import read_note
from edgecraft.core.signature import Signature, TensorSpec
from edgecraft.model_source import with_outputs
from tests.helpers import random_data, tiny_net, token_data, token_pooler

pytest.importorskip("executorch")

IMAGE = TensorSpec(name="image", dtype="float32", shape=["batch", 1, 16, 16], layout="NCHW")
TOKENS = [TensorSpec(name=name, dtype="int64", shape=["batch", "sequence"]) for name in ("input_ids", "attention_mask")]


class ScoresAndFeatures(nn.Module):
    """Two convolutions, pooled features and class scores: two outputs, returned in the opposite order to the
    alphabet (a program that sorted them would fail)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1))
        self.head = nn.Linear(16, 10)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.relu(self.features(image)).mean((2, 3))
        return self.head(pooled), pooled


class ValueBranch(nn.Module):
    """A branch on an input's values: torch.export cannot capture it without torch.cond."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image * 2 if image.sum() > 0 else image


def signature_of(model: nn.Module, inputs: list[TensorSpec], outputs: list[str]) -> Signature:
    return with_outputs(model, Signature(inputs=inputs, outputs=[TensorSpec(name=name) for name in outputs]))


def convert(model: nn.Module, signature: Signature, data: Dataset, work_dir: Path, **options) -> PassOutcome:
    work_dir.mkdir(parents=True, exist_ok=True)
    context = PassContext(train=data, calibration=data, evaluation=data, work_dir=work_dir)
    return ExecuTorchConversion().apply(Artifact("torch", signature, model=model), ExecuTorchConfig(**options), context)


def program(outcome: PassOutcome) -> Path:
    assert outcome.artifact.path is not None
    return outcome.artifact.path


def run(outcome: PassOutcome, feeds: dict[str, np.ndarray], batch: int | None = None) -> dict[str, np.ndarray]:
    """Every output of the program by the signature's names, from ExecuTorch's runtime (inputs in signature order),
    in calls of at most ``batch`` samples."""
    from executorch.runtime import Runtime

    signature = outcome.artifact.signature
    batch = batch or outcome.details["upper_bounds"]["batch"]
    method = Runtime.get().load_program(str(program(outcome))).load_method("forward")
    count = len(feeds[signature.input_names[0]])
    calls = [
        method.execute([torch.from_numpy(feeds[name][start : start + batch]) for name in signature.input_names])
        for start in range(0, count, batch)
    ]
    return {
        name: np.concatenate([call[index].numpy() for call in calls])
        for index, name in enumerate(signature.output_names)
    }


def images(count: int) -> np.ndarray:
    return np.random.default_rng(count).standard_normal((count, 1, 16, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def two_outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, PassOutcome]:
    torch.manual_seed(0)
    model = ScoresAndFeatures().eval()
    signature = signature_of(model, [IMAGE], ["scores", "features"])
    data = Dataset({"image": images(20)})
    return model, convert(model, signature, data, tmp_path_factory.mktemp("fp32"), max_batch=64)


@pytest.mark.parametrize("batch", [1, 5])
def test_fp32_program_matches_pytorch_on_every_output_at_any_batch(two_outputs, batch: int) -> None:
    model, outcome = two_outputs
    feeds = {"image": images(batch)}
    expected = predict(model, feeds, outcome.artifact.signature)
    got = run(outcome, feeds)
    for name in ("scores", "features"):
        assert got[name].shape == expected[name].shape
        np.testing.assert_allclose(got[name], expected[name], atol=1e-4, rtol=0)


def test_the_record_says_what_runs_in_xnnpack_and_the_note_says_names_and_bounds(two_outputs) -> None:
    _, outcome = two_outputs
    details = outcome.details
    assert outcome.artifact.format == "executorch" and program(outcome).name == "model.pte"
    assert details["quantization"] == "none" and details["upper_bounds"] == {"batch": 64}
    assert details["delegate_calls"] >= 1 and details["delegated_ops"] >= 4  # 2 convolutions, 2 ReLUs, the head
    assert "aten.mean.dim" in details["portable_ops"]  # XNNPACK takes a mean only with keepdim (executorch 1.5.1)
    assert details["size_bytes"] == program(outcome).stat().st_size
    json.dumps(details)
    note = read_note(program(outcome))
    assert note.signature is not None and note.signature == outcome.artifact.signature
    assert note.signature.input_names == ["image"] and note.signature.output_names == ["scores", "features"]
    assert note.upper_bounds == {"batch": 64}


def test_a_call_at_max_batch_runs_and_one_past_it_fails(two_outputs) -> None:
    """ExecuTorch plans memory for the bound. At the bound itself, too: exported at a batch of 2, lowering had
    narrowed a convolution's batch bound of 64 to 15 (the pass exports at the bound to keep it)."""
    model, outcome = two_outputs
    feeds = {"image": images(64)}
    np.testing.assert_allclose(
        run(outcome, feeds)["scores"], predict(model, feeds, outcome.artifact.signature)["scores"], atol=1e-4, rtol=0
    )
    with pytest.raises(RuntimeError):
        run(outcome, {"image": images(65)}, batch=65)


def tokens(sequence: int, count: int = 3) -> dict[str, np.ndarray]:
    data = token_data()
    ids = np.zeros((count, sequence), np.int64)
    ids[:, : min(sequence, 12)] = data["input_ids"][:count, :sequence]
    return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)}


def token_split() -> Dataset:
    data = token_data()
    return Dataset({"input_ids": data["input_ids"], "attention_mask": data["attention_mask"]})


def test_a_sequence_axis_is_bounded_by_the_data_and_runs_at_any_length_within(tmp_path: Path) -> None:
    model = token_pooler().eval()
    signature = signature_of(model, TOKENS, ["embedding"])
    outcome = convert(model, signature, token_split(), tmp_path, max_batch=8)
    note = read_note(program(outcome))
    assert note.upper_bounds == outcome.details["upper_bounds"] == {"batch": 8, "sequence": 12}
    assert note.signature is not None and note.signature.input_names == ["input_ids", "attention_mask"]
    for sequence in (5, 12):
        feeds = tokens(sequence)
        expected = predict(model, feeds, signature)["embedding"]
        np.testing.assert_allclose(run(outcome, feeds)["embedding"], expected, atol=1e-5, rtol=0)
    # ExecuTorch bounds each tensor's elements, not each axis: 3 × 13 fits the planned 8 × 12, 8 × 13 does not.
    np.testing.assert_allclose(
        run(outcome, tokens(13))["embedding"], predict(model, tokens(13), signature)["embedding"], atol=1e-5, rtol=0
    )
    with pytest.raises(RuntimeError):
        run(outcome, tokens(13, count=8))


def test_dynamic_int8_quantizes_the_linear_layer_of_a_token_model(tmp_path: Path) -> None:
    model = token_pooler().eval()
    signature = signature_of(model, TOKENS, ["embedding"])
    outcome = convert(
        model, signature, token_split(), tmp_path, quantization="dynamic-int8", upper_bounds={"sequence": 32}
    )
    assert outcome.details["upper_bounds"] == {"batch": 8, "sequence": 32}
    feeds = tokens(20)  # longer than any sample in the data: within the bound asked for
    expected = predict(model, feeds, signature)["embedding"]
    got = run(outcome, feeds)["embedding"]
    # Measured 0.3 % (activations quantized per call over their own range); 2 % is far outside that.
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.02


def test_bounds_the_data_cannot_give_or_would_refuse_are_errors_naming_the_option(tmp_path: Path) -> None:
    model = token_pooler().eval()
    signature = signature_of(model, TOKENS, ["embedding"])
    with pytest.raises(ValueError, match=r"axis 'sequence' of input 'input_ids' has no upper bound.*upper_bounds"):
        convert(model, signature, Dataset({}), tmp_path)
    with pytest.raises(ValueError, match=r"upper_bounds: sequence 8 is below the 12 the data holds"):
        convert(model, signature, token_split(), tmp_path, upper_bounds={"sequence": 8})
    with pytest.raises(ValueError, match=r"unknown axis \['length'\]"):
        convert(model, signature, token_split(), tmp_path, upper_bounds={"length": 8})
    with pytest.raises(ValueError, match="max_batch"):
        ExecuTorchConfig(upper_bounds={"batch": 8})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """tests.helpers' TinyNet (a 20 k-weight Linear head) converted in fp32, its data and its fp32 outputs."""
    model = tiny_net().eval()
    x, _ = random_data()
    signature = signature_of(model, [IMAGE], ["logits"])
    data = Dataset({"image": x})
    fp32 = convert(model, signature, data, tmp_path_factory.mktemp("fp32"))
    return {"model": model, "signature": signature, "data": data, "fp32": fp32, "reference": run(fp32, {"image": x})}


def test_int8_is_smaller_than_fp32_and_agrees_with_it(tiny: dict, tmp_path: Path) -> None:
    outcome = convert(tiny["model"], tiny["signature"], tiny["data"], tmp_path, quantization="int8")
    assert outcome.details["calibration_samples"] == 200
    assert outcome.details["size_bytes"] < 0.4 * tiny["fp32"].details["size_bytes"]  # measured 0.31
    got = run(outcome, tiny["data"].inputs)["logits"]
    reference = tiny["reference"]["logits"]
    # Measured: 96 % top-1 agreement, 1.6 % relative L2 error (calibrated on the same 200 samples; an untrained
    # net's close logits flip more easily than a trained one's).
    assert float((got.argmax(1) == reference.argmax(1)).mean()) >= 0.9
    assert np.linalg.norm(got - reference) / np.linalg.norm(reference) < 0.05


def test_fp16_takes_and_returns_float32_and_stays_close(tiny: dict, tmp_path: Path) -> None:
    outcome = convert(tiny["model"], tiny["signature"], tiny["data"], tmp_path, quantization="fp16")
    got = run(outcome, tiny["data"].inputs)["logits"]
    reference = tiny["reference"]["logits"]
    assert got.dtype == np.float32
    assert np.abs(got - reference).max() < 1e-2 * np.abs(reference).max()  # measured 5e-4 of it


def test_a_model_torch_export_refuses_fails_in_one_line_saying_what_to_do(tmp_path: Path) -> None:
    model = ValueBranch()
    signature = signature_of(model, [IMAGE], ["doubled"])
    with pytest.raises(EdgecraftError, match=r"torch\.export could not capture the model") as caught:
        convert(model, signature, Dataset({"image": images(4)}), tmp_path)
    assert "\n" not in str(caught.value) and "torch.cond" in str(caught.value)


class WideReluSix(nn.Module):
    """A convolution with one channel whose outputs span ±tens of units before a ReLU6 (as a BatchNorm-folded
    EfficientNet layer's do) and fifteen that stay near [0, 6], then a convolution that reads what the clamp
    leaves."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Conv2d(1, 16, 3, padding=1)
        self.clamp = nn.ReLU6()  # exported as aten.hardtanh, as EfficientNet-Lite's are
        self.next = nn.Conv2d(16, 8, 3, padding=1)
        with torch.no_grad():
            self.wide.weight[0].mul_(100.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.next(self.clamp(self.wide(image)))


def test_int8_quantizes_a_convolution_and_its_relu6_as_one_op(tmp_path: Path) -> None:
    """XNNPACK's quantizer alone gives a ReLU6 the convolution's observer (its whole pre-clamp range); the pass
    quantizes the pair like a convolution and its ReLU, so the int8 program keeps the [0, 6] it feeds on. Both
    programs are lowered and run by ExecuTorch."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgecraft.compress.passes.executorch import _examples_and_shapes, _export, _partitioner_configs

    torch.manual_seed(0)
    model = WideReluSix().eval()
    signature = signature_of(model, [IMAGE], ["features"])
    data = Dataset({"image": images(64)})
    reference = predict(model, data.inputs, signature)["features"]
    fused = convert(model, signature, data, tmp_path / "pass", quantization="int8")
    examples, shapes = _examples_and_shapes(signature, {"batch": 64})
    prepared = prepare_pt2e(
        _export(model, examples, shapes).module(),
        XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)),
    )
    predict(prepared, data.inputs, signature)
    lowered = to_edge_transform_and_lower(
        _export(convert_pt2e(prepared), examples, shapes),
        partitioner=[XnnpackPartitioner(configs=_partitioner_configs())],
    )
    library = fused.artifact.path.with_name("library.pte")
    library.write_bytes(lowered.to_executorch().buffer)
    library_outcome = PassOutcome(Artifact("executorch", signature, path=library), {"upper_bounds": {"batch": 64}})

    def error(outcome: PassOutcome) -> float:
        outputs = run(outcome, data.inputs)["features"]
        return float(np.linalg.norm(outputs - reference) / np.linalg.norm(reference))

    # Measured: relative L2 error 0.025 for the pass's program, 0.238 for XNNPACK's quantizer alone.
    assert error(fused) < 0.3 * error(library_outcome), (error(fused), error(library_outcome))
