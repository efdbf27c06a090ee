"""The one check every pass's output file passes before the pass counts as done: it loads in the runtime its
format is meant for (the format's first runtime, on the CPU, one thread, default options), and an ONNX file also
passes ``onnx.checker``.

Without it a pass could write a file no runtime loads (per-channel int8 on an opset-12 model gives
``DequantizeLinear`` an ``axis`` attribute that opset 12 does not have) and be reported as done: every row of
its variant then failed at benchmark time, far from the pass that caused it. ``edgecraft.steps`` calls
``verify_artifact`` on every pass's new artifact; a PyTorch model (no file) is not checked here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecraft.compress.base import Artifact
from edgecraft.core import formats
from edgecraft.core.errors import EdgecraftError
from edgecraft.targets import registry as target_registry
from edgecraft.targets.base import Target


class OutputCheckFailed(EdgecraftError):
    """A pass wrote a model file that the runtime it is meant for cannot load (or that ``onnx.checker`` rejects)."""

    def __init__(self, pass_name: str, path: Path, runtime: str, message: str) -> None:
        self.pass_name, self.path, self.runtime, self.message = pass_name, path, runtime, message
        super().__init__(f"{pass_name} wrote a model that {runtime} cannot load ({path}): {message}")


def verify_artifact(artifact: Artifact, pass_name: str) -> list[str]:
    """Load ``artifact``'s file in its format's first runtime (and run ``onnx.checker`` on an ONNX file).

    Returns notes worth recording with the pass (empty when it simply loads): the runtime not installed here, so
    the file was not loaded, or how it loaded (e.g. LiteRT without XNNPACK). Raises ``OutputCheckFailed`` naming
    the pass, the file, the runtime and the runtime's whole message when the file does not load."""
    if artifact.path is None or artifact.format == "torch":
        return []
    path = artifact.path
    runtime = formats.get(artifact.format).runtimes[0]
    notes: list[str] = []
    target = target_registry.get(runtime)
    unavailable = target.unavailable_reason("cpu")
    if unavailable:
        notes.append(f"not loaded in {runtime}: {unavailable}")
    else:
        try:
            session = target.load(path, "cpu", 1, target.options_model())
        except Exception as exc:  # any load failure fails the pass, in the runtime's own words
            raise OutputCheckFailed(pass_name, path, runtime, _message(exc)) from exc
        notes += _load_notes(target, session, runtime)
    if artifact.format == "onnx":
        import onnx

        try:
            onnx.checker.check_model(str(path))
        except Exception as exc:  # ValidationError, or a protobuf or external-data error
            raise OutputCheckFailed(pass_name, path, "onnx.checker", _message(exc)) from exc
    return notes


def _message(exc: BaseException) -> str:
    """The exception's whole text (never cut: it is the only account of why the file is refused)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _load_notes(target: Target[Any, Any], session: Any, runtime: str) -> list[str]:
    """What the loaded session says about a degraded load, e.g. LiteRT's delegate refused the file."""
    try:
        described = target.describe(session)
    except Exception:  # noqa: BLE001 - describing is informative only; the file did load
        return []
    return [f"{runtime}: {warning}" for warning in target.warnings(described)]
