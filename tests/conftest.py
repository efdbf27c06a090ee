"""Shared fixtures: one trained digits-cnn and one quickstart run per test session, in a private model cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test (and every CLI subprocess it starts) shares one fresh cache of trained built-in models."""
    path = tmp_path_factory.mktemp("model-cache")
    os.environ["EDGECRAFT_CACHE_DIR"] = str(path)
    return path


def edgecraft(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The real command line, in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "edgecraft", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="session")
def quickstart_run(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped quickstart recipe, with the --quick benchmark profile (few timed runs)."""
    out = tmp_path_factory.mktemp("runs")
    completed = edgecraft("run", "recipes/quickstart.yaml", "--quick", "--output-dir", str(out))
    assert completed.returncode == 0, completed.stderr
    report = Path(completed.stdout.strip().splitlines()[-1])
    assert report.name == "report.html" and report.is_file()
    return report.parent


@pytest.fixture(scope="session")
def digits_cnn(model_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """The trained built-in digits-cnn, its fp32 ONNX export and the data splits it was trained on."""
    from compress.base import Artifact, PassContext
    from compress.zoo import REFERENCE_MODELS
    from edgecraft import data, model_source
    from compress.onnx_export import export_torch

    x, y = data.digits(REFERENCE_MODELS["digits-cnn"].input_shape)
    splits = data.split(x, y, (0.6, 0.2, 0.2), 0)
    model = model_source.builtin_model("digits-cnn", splits.train, lambda *_: None)
    folder = tmp_path_factory.mktemp("digits-cnn")
    onnx_path = export_torch(model, (1, 32, 32), folder / "fp32.onnx")
    context = PassContext(
        train=splits.train, calibration=splits.calibration, evaluation=splits.evaluation, work_dir=folder
    )
    return {
        "model": model,
        "onnx": Artifact("onnx", (1, 32, 32), path=onnx_path),
        "context": context,
        "splits": splits,
    }


def onnx_logits(path: Path, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]
