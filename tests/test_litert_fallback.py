"""LiteRT where the default XNNPACK delegate refuses a file: it runs on the built-in kernels, says so in
``describe`` (the row's runtime_info), and when those fail too the error names the op and says what to do.

No small file is known that XNNPACK refuses on every CPU (a real one was a full-integer detector: "failed to
create XNNPACK runtime / Node number 26 (TfLiteXNNPackDelegate) failed to prepare"), so the delegate's failure
is simulated on a real full-integer TensorFlow-built file; everything else runs for real."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecraft.compress.base import Artifact
from edgecraft.compress.verify import verify_artifact
from edgecraft.core.signature import Signature
from edgecraft.targets import registry
from edgecraft.targets.runtimes.litert import XNNPACK_REFUSED, LiteRt, name_nodes
from tests.fixtures_models import NATIVE_TFLITE_SHAPE, write_native_tflite

XNNPACK_ERROR = "failed to create XNNPACK runtime\nNode number 8 (TfLiteXNNPackDelegate) failed to prepare."

pytestmark = pytest.mark.skipif(
    registry.get("litert").unavailable_reason("cpu") is not None, reason="no LiteRT interpreter installed"
)


@pytest.fixture(scope="module")
def int8_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-integer file with 8 ops: CONV_2D, CONV_2D, MEAN, FULLY_CONNECTED, LOGISTIC, ... RESHAPE."""
    return write_native_tflite(tmp_path_factory.mktemp("litert") / "detector-int8.tflite", int8=True)


def refusing_xnnpack(monkeypatch, builtin_error: str | None = None) -> list[bool]:
    """Make every load with the default delegate fail the way XNNPACK does (and, with ``builtin_error``, every load
    with the built-in kernels too); returns the ``delegates`` flag of each load tried."""
    real = LiteRt._allocated
    tried: list[bool] = []

    def allocated(self, path: Path, threads: int, delegates: bool):
        tried.append(delegates)
        if delegates:
            raise RuntimeError(XNNPACK_ERROR)
        if builtin_error is not None:
            raise RuntimeError(builtin_error)
        return real(self, path, threads, delegates)

    monkeypatch.setattr(LiteRt, "_allocated", allocated)
    return tried


def test_a_file_xnnpack_refuses_runs_on_the_builtin_kernels_and_says_so(int8_tflite: Path, monkeypatch) -> None:
    target = registry.get("litert")
    images = np.random.default_rng(0).uniform(0, 1, (2, *NATIVE_TFLITE_SHAPE)).astype(np.float32)
    delegated = target.load(int8_tflite, "cpu", 1, target.options_model())
    assert target.describe(delegated)["delegate"] == "XNNPACK (default)"
    expected = target.run(delegated, {"image": images})

    tried = refusing_xnnpack(monkeypatch)
    session = target.load(int8_tflite, "cpu", 1, target.options_model())
    assert tried == [True, False]
    info = target.describe(session)
    assert info["delegate"] == (
        "none (XNNPACK refused: failed to create XNNPACK runtime Node number 8 (TfLiteXNNPackDelegate) "
        "failed to prepare.)"
    )
    assert info["delegate"].startswith(XNNPACK_REFUSED) and info["num_threads"] == 1
    outputs = target.run(session, {"image": images})  # the built-in int8 kernels compute the same model
    assert set(outputs) == {"boxes", "scores"}
    for name, values in expected.items():
        assert np.abs(outputs[name] - values).max() <= 0.05, name
    # A pass that wrote such a file succeeds, and its record notes how the file loads.
    notes = verify_artifact(Artifact("tflite", Signature(inputs=[], outputs=[]), path=int8_tflite), "convert.tflite")
    assert notes == [
        "litert: XNNPACK refused this file; LiteRT ran it on its built-in kernels (slower than XNNPACK): "
        f"{info['delegate']}"
    ]


def test_when_the_builtin_kernels_fail_too_the_error_names_the_op(int8_tflite: Path, monkeypatch) -> None:
    refusing_xnnpack(monkeypatch, builtin_error="Node number 3 (FULLY_CONNECTED) failed to prepare.")
    target = registry.get("litert")
    with pytest.raises(RuntimeError) as raised:
        target.load(int8_tflite, "cpu", 1, target.options_model())
    message = str(raised.value)
    assert message.startswith("ai-edge-litert ") or message.startswith("tflite-runtime ")
    assert "cannot load detector-int8.tflite, with the XNNPACK delegate or with its built-in kernels only." in message
    assert "Node 3 is op FULLY_CONNECTED (int8, int8 → int8)" in message
    assert "Node 8 is TfLiteXNNPackDelegate's own node (the file has 8 ops, 0–7)" in message
    assert "What to do: keep the named op(s) in float" in message
    # Both runtimes' messages, whole.
    assert f"With XNNPACK: {XNNPACK_ERROR}" in message
    assert "With the built-in kernels only: Node number 3 (FULLY_CONNECTED) failed to prepare." in message


def test_node_numbers_are_named_from_the_files_own_op_list(int8_tflite: Path) -> None:
    ops = LiteRt()._ops(int8_tflite)
    assert [op["op_name"] for op in ops][:3] == ["CONV_2D", "CONV_2D", "MEAN"]
    assert name_nodes("Node number 0 (...) failed to prepare.", ops) == [
        "Node 0 is op CONV_2D (int8, int8, int32 → int8)"
    ]
    assert name_nodes("Node number 7 (RESHAPE) failed to prepare.\nNode number 7 (RESHAPE) again", ops) == [
        "Node 7 is op RESHAPE (int8, int32 → int8)"
    ]
    assert name_nodes("no node here", ops) == []
    assert name_nodes("Node number 26 (TfLiteXNNPackDelegate) failed to prepare.", []) == [
        "Node 26 (TfLiteXNNPackDelegate)"
    ]


def test_a_quantized_input_takes_real_values_in_the_range_its_integers_represent() -> None:
    """A full-integer file's int8 input (scale 1, zero point -128: pixels) is fed real values that run() quantizes;
    values drawn for it without data span 0-255, not [0, 1], which would all quantize to one or two integers."""
    from edgecraft.targets.runtimes.litert import _spec

    detail = {"shape_signature": np.array([1, 32, 32, 3]), "dtype": np.int8, "quantization": (1.0, -128)}
    spec = _spec("pixels", detail, False)
    assert (spec.dtype, spec.range, spec.layout) == ("float32", (0.0, 255.0), "NHWC")
    plain = _spec("ids", {**detail, "dtype": np.int32, "quantization": (0.0, 0)}, False)
    assert (plain.dtype, plain.range) == ("int32", None)
