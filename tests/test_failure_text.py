"""A converter's failure keeps its full message (issue 25): ``failure_text`` for the row, the report's first lines
with the whole text in ``<details>``."""

from __future__ import annotations

from pathlib import Path

import pytest
from markupsafe import escape

from edgecraft.core.errors import failure_text
from edgecraft.core.results import RunResults
from edgecraft.reports.html import write_report
from tests.results_factory import mixed_run, not_measured, ok, run, save

OPENVINO = (
    "FrontEnd API failed with OpConversionFailure:   \n"
    "Check 'is_op_supported' failed at src/frontends/onnx/frontend/src/op_table.cpp:\n"
    "OpenVINO does not support the following ONNX operations: custom.domain.FancyOp   \n"
    "[ONNX Frontend] Conversion failed for node 'fancy_1' (FancyOp): no translator\n"
    "Summary: 1 operation(s) could not be converted\n"
)


def test_failure_text_keeps_every_line() -> None:
    text = failure_text(RuntimeError(OPENVINO))
    assert text.startswith("RuntimeError: FrontEnd API failed with OpConversionFailure:\n")
    assert text.splitlines()[1:] == [line.rstrip() for line in OPENVINO.splitlines()[1:]]
    assert not any(line != line.rstrip() for line in text.splitlines()) and not text.endswith("\n")


def test_failure_text_of_an_empty_message_is_the_type() -> None:
    assert failure_text(ValueError()) == "ValueError"
    assert failure_text(ValueError("\n  \n")) == "ValueError"
    assert failure_text(KeyError("missing")) == "KeyError: 'missing'"


def test_failure_text_is_capped_with_the_count_of_what_was_cut() -> None:
    message = "\n".join(f"line {i}: " + "x" * 90 for i in range(100))
    full = f"RuntimeError: {message}"
    text = failure_text(RuntimeError(message), cap=1000)
    assert len(text) <= 1000
    kept, note = text.rsplit("… (", 1)
    assert full.startswith(kept) and note == f"{len(full) - len(kept)} more characters)"
    assert failure_text(RuntimeError(message), cap=len(full)) == full
    default = failure_text(RuntimeError("y" * 10_000))
    assert len(default) <= 4000 and default.endswith("more characters)")


def _report(results: RunResults, folder: Path) -> str:
    """The report as ``edgecraft report`` renders it from a results.json on disk."""
    save(results, folder)
    return write_report(RunResults.model_validate_json((folder / "results.json").read_text()), folder).read_text()


def test_report_shows_the_first_lines_and_the_whole_reason_in_details(tmp_path: Path) -> None:
    reason = "pass failed: " + failure_text(RuntimeError(OPENVINO))
    results = run(
        [ok("fp32", 1.0, 0.98, 400_000), not_measured("int8", "failed", reason, target="openvino:cpu")],
    )
    page = _report(results, tmp_path)
    table = page[page.index('<table id="results"') : page.index("</table>", page.index('<table id="results"'))]
    first = "pass failed: RuntimeError: FrontEnd API failed with OpConversionFailure:"
    last = "Summary: 1 operation(s) could not be converted"
    for part in (table, page[: page.index('<table id="results"')]):  # the table and the "Not measured" list
        cell = part[part.index(first) - 200 :]
        cell = cell[: cell.index("</details>") + len("</details>")]
        head, details = cell[: cell.index("<details")], cell[cell.index("<details") :]
        assert first in head and last not in head  # the first lines outside, the fourth on is not
        assert str(escape(reason.strip())) in details  # the whole text, every line, inside
        assert "<summary>" in details
    assert "<script" not in page[page.index("<details") - 2000 : page.index("<details")]  # plain HTML, no JS


def test_short_reasons_show_whole_without_details(tmp_path: Path) -> None:
    page = _report(mixed_run(), tmp_path)
    assert "<details" not in page
    assert "benchmark process exited with code 1: boom" in page


def test_a_long_one_line_reason_is_cut_in_the_page_and_whole_in_details(tmp_path: Path) -> None:
    reason = "export failed: ValueError: " + "word " * 200
    page = _report(run([ok("fp32", 1.0, 0.98, 400_000), not_measured("dyn", "failed", reason)]), tmp_path)
    table = page[page.index('<table id="results"') :]
    head = table[table.index("export failed") : table.index("<details")]
    assert len(head) < 420 and head.rstrip().endswith("…")
    assert reason.strip() in table[table.index("<details") :]


def _unconvertible_onnx(path: Path) -> Path:
    """An ONNX file with an operation OpenVINO has no conversion rule for."""
    import onnx
    from onnx import TensorProto, helper

    vector = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 2]) for name in ("x", "y")]
    graph = helper.make_graph(
        [helper.make_node("FancyOp", ["x"], ["y"], domain="custom.domain")], "g", vector[:1], vector[1:]
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.domain", 1)]
    )
    onnx.save(model, str(path))
    return path


def test_openvino_conversion_failures_keep_the_failing_operations(tmp_path: Path) -> None:
    """OpenVINO's first lines say only "FrontEnd API failed with OpConversionFailure:"; the operation that could not
    be converted is named after them. Neither ``convert.openvino`` nor the OpenVINO target's export wraps the error,
    so the row's ``failure_text`` has it."""
    from edgecraft.compress.base import Artifact
    from edgecraft.compress.passes.openvino import _read
    from edgecraft.core.signature import Signature, TensorSpec
    from edgecraft.targets import registry

    source = _unconvertible_onnx(tmp_path / "fancy.onnx")
    signature = Signature(inputs=[TensorSpec(name="x", dtype="float32", shape=[1, 2])], outputs=[TensorSpec(name="y")])
    failures = []
    with pytest.raises(Exception) as converted:
        _read(Artifact("onnx", signature, path=source))
    failures.append(converted.value)
    with pytest.raises(Exception) as exported:
        registry.get("openvino").export(source, "onnx", tmp_path)
    failures.append(exported.value)
    for failure in failures:
        text = failure_text(failure)
        assert "OpConversionFailure" in text and "custom.domain.FancyOp" in text, text
        assert len(text.splitlines()) > 3  # what the first three lines alone would have lost
