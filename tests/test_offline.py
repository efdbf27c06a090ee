"""Nothing reaches the network at run time (issue 25, finding 6): the CLI converts, quantizes and measures with
every network attempt refused and recorded, in its own process and in every process it starts.

``tests/netguard/sitecustomize.py`` is the guard: first on ``PYTHONPATH`` with ``EDGECRAFT_NETGUARD_LOG`` naming a
file, it makes every socket ``connect`` / ``connect_ex`` / ``sendto`` to a non-``AF_UNIX`` address and every name
lookup of another host fail, and appends each attempt to that file. The benchmark workers inherit both.

The image model has a 3-channel input with a dynamic height and width: ``convert.tflite`` fixes its shape to one
sample ([1, 3, 16, 16]) for onnx2tf, which is exactly when onnx2tf 1.28 fetched its sample images from GitHub
(``calibration_image_sample_data_20x128x128x3_float32.npy``), even for fp32.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecraft.reports.results_file import load_results

REPO = Path(__file__).resolve().parent.parent
GUARD = Path(__file__).resolve().parent / "netguard"


def _guarded_env(log: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GUARD), str(REPO), env.get("PYTHONPATH")]))
    env["EDGECRAFT_NETGUARD_LOG"] = str(log)
    return env


def _python(log: Path, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python ARGS`` in a fresh interpreter, guarded."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=_guarded_env(log), timeout=600
    )


def _attempts(log: Path) -> str:
    return log.read_text() if log.exists() else ""


# --- the guard catches what it must ----------------------------------------------------------------------------------


def test_the_guard_records_and_refuses_network_attempts_in_children_too(tmp_path: Path) -> None:
    log = tmp_path / "attempts.log"
    script = """
import socket, subprocess, sys
try:
    socket.create_connection(("example.com", 80), timeout=5)
except OSError as exc:
    print("refused:", exc)
else:
    sys.exit("connected")
with socket.socket() as raw:
    print("connect_ex:", raw.connect_ex(("192.0.2.2", 80)))
    try:
        raw.connect(("192.0.2.1", 80))
    except OSError:
        print("refused raw connect")
left, right = socket.socketpair(socket.AF_UNIX)  # local inter-process sockets stay allowed
left.sendall(b"x"); assert right.recv(1) == b"x"
socket.getaddrinfo("localhost", 80)  # this machine stays allowed
child = "import socket\\ntry:\\n    socket.getaddrinfo('example.org', 443)\\nexcept OSError:\\n    pass"
subprocess.run([sys.executable, "-c", child], check=True)
"""
    completed = _python(log, "-c", script, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert "refused: network access blocked by tests/netguard" in completed.stdout
    assert "refused raw connect" in completed.stdout
    attempts = _attempts(log)
    assert "socket.getaddrinfo 'example.com'" in attempts  # create_connection's lookup
    assert "socket.connect ('192.0.2.1', 80)" in attempts  # a connect to an address, no lookup
    assert "socket.connect_ex ('192.0.2.2', 80)" in attempts and f"connect_ex: {errno.ECONNREFUSED}" in completed.stdout
    assert "socket.getaddrinfo 'example.org'" in attempts  # from a grandchild process
    assert "localhost" not in attempts and "AF_UNIX" not in attempts
    assert len({line.split(":")[0] for line in attempts.splitlines() if line.startswith("--- pid")}) == 2


# --- the CLI, guarded ------------------------------------------------------------------------------------------------


def _image_model(path: Path) -> Path:
    """conv-relu-pool-linear on a [batch, 3, height, width] image, 4 classes; built directly (no exporter)."""
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
        "b": np.zeros(8, np.float32),
        "fw": rng.standard_normal((4, 8)).astype(np.float32),
        "fb": np.zeros(4, np.float32),
    }
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv"], ["relu"]),
            helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"], transB=1),
        ],
        "image",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


# Every quantizing and converting pass on one model, on every runtime. The fp16 variant runs on ONNX Runtime only:
# on OpenVINO its row fails for a reason unrelated to the network (the CPU plugin's compiled model names the output
# after the fp16 converter's inner Cast, "graph_output_cast_0", and the target reads outputs by that name).
RECIPE = """name: offline
models:
  - onnx: image.onnx
data:
  source: data.npz
  splits: {train: 0.0, calibration: 0.5, evaluation: 0.5}
variants:
  - name: fp32
  - name: static
    passes: [{type: quantize.static}]
  - name: dynamic
    passes: [{type: quantize.dynamic}]
  - name: fp16
    passes: [{type: convert.fp16}]
    targets: [onnxruntime:cpu]
  - name: nncf
    passes: [{type: quantize.nncf}]
  - name: ir
    passes: [{type: convert.openvino}]
  - name: tflite
    passes: [{type: convert.tflite}]
  - name: tflite-int8
    passes: [{type: convert.tflite, quantization: int8}]
targets: [onnxruntime:cpu, openvino:cpu, litert:cpu]
benchmark: {profile: quick, batch_sizes: [1], parallel_requests: [1], operator_profile: false}
"""


def test_run_and_bench_never_touch_the_network(tmp_path: Path) -> None:
    log = tmp_path / "attempts.log"
    _image_model(tmp_path / "image.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "data.npz", image=rng.random((40, 3, 16, 16), dtype=np.float32), labels=rng.integers(0, 4, 40))
    (tmp_path / "recipe.yaml").write_text(RECIPE)

    completed = _python(log, "-m", "edgecraft", "run", str(tmp_path / "recipe.yaml"), "--output-dir", str(tmp_path))
    assert completed.returncode == 0, completed.stderr[-3000:]
    run_dir = Path(completed.stdout.strip().splitlines()[-1]).parent
    results = load_results(run_dir)
    rows = {(row.variant, row.target): row for row in results.rows}
    assert all(row.status == "ok" for row in rows.values()), [
        (k, r.reason) for k, r in rows.items() if r.status != "ok"
    ]
    assert {
        ("tflite", "litert:cpu"),
        ("tflite-int8", "litert:cpu"),
        ("ir", "openvino:cpu"),
        ("nncf", "openvino:cpu"),
    } <= set(rows)
    assert {"static", "dynamic", "fp16"} <= {variant for variant, target in rows if target == "onnxruntime:cpu"}
    # onnx2tf saw the fixed 3-channel shape: the case in which it downloaded sample images.
    tflite = [p for p in results.passes if p.name == "convert.tflite"]
    assert tflite and all(p.details.get("fixed_input_shapes") == {"image": [1, 3, 16, 16]} for p in tflite), tflite

    exported = run_dir / str(rows[("nncf", "openvino:cpu")].artifact)  # an int8 IR the run wrote
    bench = _python(
        log,
        "-m",
        "edgecraft",
        "bench",
        str(exported),
        "--shape",
        "image=1,3,16,16",
        "--quick",
        "--output-dir",
        str(tmp_path / "bench"),
    )
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert [row.status for row in load_results(Path(bench.stdout.strip().splitlines()[-1]).parent).rows] == ["ok"]

    assert _attempts(log) == "", _attempts(log)[:4000]
