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
    from edgecraft import data, model_source
    from edgecraft.bench.evaluators import EvaluatorSpec
    from edgecraft.compress.base import Artifact, PassContext
    from edgecraft.compress.onnx_export import export_torch
    from edgecraft.compress.zoo import REFERENCE_MODELS
    from edgecraft.preparation import validation_for

    reference = REFERENCE_MODELS["digits-cnn"]
    splits = data.split(data.digits(reference.input_shape), (0.6, 0.2, 0.2), 0)
    model = model_source.builtin_model("digits-cnn", splits.train, lambda *_: None)
    signature = model_source.with_outputs(model, reference.signature)
    folder = tmp_path_factory.mktemp("digits-cnn")
    onnx_path = export_torch(model, signature, folder / "fp32.onnx")
    torch_artifact = Artifact("torch", signature, model=model)
    context = PassContext(
        train=splits.train,
        calibration=splits.calibration,
        evaluation=splits.evaluation,
        work_dir=folder,
        validation=validation_for(EvaluatorSpec(type="classification"), torch_artifact, splits.calibration),
    )
    return {
        "model": model,
        "signature": signature,
        "torch": torch_artifact,
        "onnx": Artifact("onnx", signature, path=onnx_path),
        "context": context,
        "splits": splits,
    }


def images(splits, count: int | None = None, split: str = "evaluation") -> np.ndarray:
    """The digits images of one split (the single input 'input')."""
    return getattr(splits, split).inputs["input"][:count]


def labels(splits, count: int | None = None, split: str = "evaluation") -> np.ndarray:
    return getattr(splits, split).targets[:count]


def torch_logits(model, x: np.ndarray) -> np.ndarray:
    """A single-input classifier's logits through the same code path as every pass."""
    from edgecraft.compress.torch_io import predict
    from edgecraft.compress.zoo import image_classifier

    return predict(model, {"input": x}, image_classifier(tuple(x.shape[1:])))["logits"]


def onnx_logits(path: Path, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


def accuracy(logits: np.ndarray, labels_: np.ndarray) -> float:
    return float((logits.argmax(1) == labels_).mean())
