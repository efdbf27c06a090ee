"""GPU targets, exercised where the machine has a GPU runtime and skipped with the reason elsewhere.

Imports only ONNX Runtime among the runtimes, so that it also runs on a GPU box that has nothing else.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgecraft.compress import registry as passes
from edgecraft.compress.base import PassContext
from edgecraft.targets import registry
from tests.conftest import images, labels


def test_onnxruntime_cuda_runs_fp32_and_fp16_like_the_cpu(digits_cnn: dict, tmp_path) -> None:
    target = registry.get("onnxruntime")
    reason = target.unavailable_reason("cuda")
    if reason:
        pytest.skip(reason)
    fp16 = passes.get("convert.fp16")
    context = PassContext(**{**vars(digits_cnn["context"]), "work_dir": tmp_path})
    fp16_path = fp16.apply(digits_cnn["onnx"], fp16.config_model(), context).artifact.path
    x, y = images(digits_cnn["splits"]), labels(digits_cnn["splits"])
    options = target.options_model()
    for path, tolerance in ((digits_cnn["onnx"].path, 1e-2), (fp16_path, 5e-2)):
        on_cpu = target.run(target.load(path, "cpu", 1, options), {"input": x})["logits"]
        session = target.load(path, "cuda", 1, options)
        assert target.describe(session)["providers"][0] == "CUDAExecutionProvider"
        on_gpu = np.concatenate([target.run(session, {"input": x[i : i + 1]})["logits"] for i in range(len(x))])
        assert np.abs(on_gpu - on_cpu).max() <= tolerance, path.name
        assert (on_gpu.argmax(1) == y).mean() >= (on_cpu.argmax(1) == y).mean() - 0.01, path.name
