"""Multi-output test models: a three-head PyTorch face net (MTCNN-ONet-like) and a native two-output TFLite file.

``ThreeHeadFaceNet`` exercises everything that a single-output classifier does not: several named outputs of
different shapes (which converters may reorder), PReLU (per-channel slopes, so a wrong channel axis shows), a
flatten after an NCHW trunk (so a wrong NHWC ↔ NCHW transposition shows) and a softmax head.
``write_native_tflite`` writes a .tflite built with TensorFlow itself (not via ONNX or edgecraft), with a
signature whose input and output names are known, as a user would bring one.
``write_stateful_vad`` writes a voice-activity-style ONNX model whose state has its batch on axis 1 beside a
scalar input. ``mobilenet_v3_small_like`` is a MobileNetV3-Small-shaped image classifier with random weights at 224×224
(hard-swish, squeeze-excite, depthwise convolutions): the shape on which ONNX Runtime's static int8 can run
slower than fp32, for the operator profile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

THREE_HEAD_INPUT = "image"
THREE_HEAD_OUTPUTS = ["boxes", "landmarks", "face_probability"]
THREE_HEAD_SHAPE = (3, 48, 48)

NATIVE_TFLITE_INPUT = "image"
NATIVE_TFLITE_OUTPUTS = {"boxes": (8, 4), "scores": (8,)}  # per-sample shapes
NATIVE_TFLITE_SHAPE = (64, 64, 3)  # NHWC, batch dimension dynamic in the signature

MOBILENET_V3_SHAPE = (3, 224, 224)


class ThreeHeadFaceNet(nn.Module):
    """ONet-like: 48×48 RGB face crop → (boxes [N, 4], landmarks [N, 10], face_probability [N, 2] softmax)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 16, 3),  # 46
            nn.PReLU(16),
            nn.MaxPool2d(2, 2),  # 23
            nn.Conv2d(16, 32, 3),  # 21
            nn.PReLU(32),
            nn.MaxPool2d(2, 2),  # 10
            nn.Conv2d(32, 32, 3),  # 8
            nn.PReLU(32),
            nn.MaxPool2d(2, 2),  # 4
            nn.Conv2d(32, 64, 2),  # 3
            nn.PReLU(64),
        )
        self.fc = nn.Linear(64 * 3 * 3, 128)
        self.fc_act = nn.PReLU(128)
        self.boxes = nn.Linear(128, 4)
        self.landmarks = nn.Linear(128, 10)
        self.classifier = nn.Linear(128, 2)
        # He-normal weights and non-zero biases keep activations at unit scale (PyTorch's default init shrinks
        # them ~20× over this depth: near-constant outputs would hide conversion errors), and distinct
        # per-channel PReLU slopes (the default is 0.25 everywhere) make a slope applied along the wrong axis show.
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(module.weight, a=0.25, nonlinearity="leaky_relu", generator=generator)
                    nn.init.uniform_(module.bias, -0.1, 0.1, generator=generator)
                elif isinstance(module, nn.PReLU):
                    module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 0.4 + 0.05)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.fc_act(self.fc(torch.flatten(self.trunk(image), 1)))
        return (
            self.boxes(features),
            self.landmarks(features),
            torch.softmax(self.classifier(features), dim=1),
        )


def three_head_net(seed: int = 0) -> ThreeHeadFaceNet:
    """A model factory in the style of ``tests.helpers``: seeded, in eval mode."""
    return ThreeHeadFaceNet(seed).eval()


def three_head_dataset(n: int = 240, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Random square crops of scikit-learn's two bundled photos, resized to 48×48 and scaled to [-1, 1].

    Returns ``({"image": float32 [n, 3, 48, 48]}, targets int64 [n])`` where the target is 0 for a crop of
    china.jpg and 1 for a crop of flower.jpg (alternating, so any prefix is balanced).
    """
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # [china.jpg, flower.jpg], uint8 427×640×3
    rng = np.random.default_rng(seed)
    images = np.empty((n, *THREE_HEAD_SHAPE), dtype=np.float32)
    targets = np.arange(n, dtype=np.int64) % 2
    for i, label in enumerate(targets):
        photo = photos[label]
        height, width = photo.shape[:2]
        size = int(rng.integers(48, 200))
        top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        crop = Image.fromarray(photo[top : top + size, left : left + size]).resize((48, 48), Image.BILINEAR)
        images[i] = np.transpose(np.asarray(crop, dtype=np.float32), (2, 0, 1)) / 127.5 - 1.0
    return {THREE_HEAD_INPUT: images}, targets


def write_native_tflite(path: Path, seed: int = 0, int8: bool = False) -> Path:
    """A TensorFlow-built .tflite: ``image`` [batch, 64, 64, 3] → ``boxes`` [batch, 8, 4], ``scores`` [batch, 8].

    The single signature ("serving_default") carries those names; the batch dimension is dynamic
    (shape_signature -1, allocated as 1). The tensor names themselves are TensorFlow's
    (``serving_default_image:0``, ``StatefulPartitionedCall:0``...): only the signature has the user's names.
    fp32 by default; ``int8=True`` writes a full-integer model with int8 input and outputs (calibrated on
    uniform noise in [0, 1]). Takes a few seconds; imports TensorFlow.
    """
    import tensorflow as tf

    tf.random.set_seed(seed)
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> tf.Variable:
        fan_in = int(np.prod(shape[:-1]))
        return tf.Variable(rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32))

    class Detector(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bias1 = weight(3, 3, 3, 16), tf.Variable(np.zeros(16, np.float32))
            self.conv2, self.bias2 = weight(3, 3, 16, 32), tf.Variable(np.zeros(32, np.float32))
            self.dense_boxes = weight(32, 8 * 4)
            self.dense_scores = weight(32, 8)

        @tf.function(input_signature=[tf.TensorSpec([None, *NATIVE_TFLITE_SHAPE], tf.float32, name="image")])
        def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            x = tf.nn.relu(tf.nn.conv2d(image, self.conv1, 2, "SAME") + self.bias1)  # 32×32
            x = tf.nn.relu(tf.nn.conv2d(x, self.conv2, 2, "SAME") + self.bias2)  # 16×16
            features = tf.reduce_mean(x, axis=[1, 2])
            boxes = tf.reshape(tf.sigmoid(features @ self.dense_boxes), [-1, 8, 4])
            scores = tf.sigmoid(features @ self.dense_scores)
            return {"boxes": boxes, "scores": scores}

    module = Detector()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)
    if int8:
        calibration = rng.uniform(0.0, 1.0, (16, 1, *NATIVE_TFLITE_SHAPE)).astype(np.float32)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([sample] for sample in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(converter.convert())
    return path


class _SqueezeExcite(nn.Module):
    """MobileNetV3's squeeze-excite: global average → 1×1 reduce → ReLU → 1×1 expand → hard-sigmoid → scale."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * nn.functional.hardsigmoid(self.expand(nn.functional.relu(self.reduce(scale))))


class _InvertedResidual(nn.Module):
    """Expand 1×1 → depthwise k×k (stride s) → optional squeeze-excite → project 1×1, each with batch norm;
    a skip connection where the shape allows it."""

    def __init__(self, cin: int, expand: int, cout: int, kernel: int, stride: int, se: bool, hswish: bool) -> None:
        super().__init__()
        act = nn.Hardswish if hswish else nn.ReLU
        layers: list[nn.Module] = []
        if expand != cin:
            layers += [nn.Conv2d(cin, expand, 1, bias=False), nn.BatchNorm2d(expand), act()]
        layers += [
            nn.Conv2d(expand, expand, kernel, stride, kernel // 2, groups=expand, bias=False),
            nn.BatchNorm2d(expand),
            act(),
        ]
        if se:
            layers.append(_SqueezeExcite(expand, max(8, expand // 4)))
        layers += [nn.Conv2d(expand, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.skip else y


class MobileNetV3SmallLike(nn.Module):
    """A reduced MobileNetV3-Small: 3×224×224 → 16 (stride 2, hard-swish) → six inverted-residual blocks (the
    real net's first six, with its kernels, strides, squeeze-excite and activations) → 1×1 conv 288 → global
    average → 128 hard-swish → ``classes`` logits. Random (He) weights and batch-norm statistics, seeded."""

    # (expand, out, kernel, stride, squeeze-excite, hard-swish), as in the paper's table 2
    BLOCKS = (
        (16, 16, 3, 2, True, False),
        (72, 24, 3, 2, False, False),
        (88, 24, 3, 1, False, False),
        (96, 40, 5, 2, True, True),
        (240, 40, 5, 1, True, True),
        (120, 48, 5, 1, True, True),
    )

    def __init__(self, classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()]
        channels = 16
        for expand, out, kernel, stride, se, hswish in self.BLOCKS:
            layers.append(_InvertedResidual(channels, expand, out, kernel, stride, se, hswish))
            channels = out
        layers += [nn.Conv2d(channels, 288, 1, bias=False), nn.BatchNorm2d(288), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(288, 128), nn.Hardswish(), nn.Linear(128, classes))
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(module.weight, generator=generator)
                    if module.bias is not None:
                        nn.init.uniform_(module.bias, -0.1, 0.1, generator=generator)
                elif isinstance(module, nn.BatchNorm2d):
                    # Statistics as after training, so that folding them into the convolutions is not a no-op.
                    module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                    module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                    module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                    module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = nn.functional.adaptive_avg_pool2d(self.features(image), 1)
        return self.head(torch.flatten(features, 1))


def mobilenet_v3_small_like(seed: int = 0) -> MobileNetV3SmallLike:
    """A model factory for recipes (``factory: tests.fixtures_models:mobilenet_v3_small_like``): seeded, eval mode."""
    return MobileNetV3SmallLike(seed=seed).eval()


def mobilenet_v3_dataset(n: int = 48, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Random crops of scikit-learn's two bundled photos at 224×224, ImageNet-normalised: ``({"image": float32
    [n, 3, 224, 224]}, targets int64 [n])``, target 0 for china.jpg and 1 for flower.jpg (alternating)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    images = np.empty((n, *MOBILENET_V3_SHAPE), dtype=np.float32)
    targets = np.arange(n, dtype=np.int64) % 2
    for i, label in enumerate(targets):
        photo = photos[label]
        height, width = photo.shape[:2]
        size = int(rng.integers(224, min(height, width) + 1))
        top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        crop = Image.fromarray(photo[top : top + size, left : left + size]).resize((224, 224), Image.BILINEAR)
        images[i] = (np.transpose(np.asarray(crop, dtype=np.float32), (2, 0, 1)) / 255.0 - mean) / std
    return {"image": images}, targets


def write_stateful_vad(path: Path) -> Path:
    """A voice-activity-style model: audio [batch, 8], a recurrent state [2, batch, 4] (batch on axis 1) and a
    scalar int64 sample rate; outputs a probability [batch, 1] and the next state [2, batch, 4]."""
    import onnx
    from onnx import TensorProto, helper

    weights = helper.make_tensor("w", TensorProto.FLOAT, [8, 4], np.linspace(-1, 1, 32, dtype=np.float32))
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["projected"]),  # [batch, 4]
        helper.make_node("Unsqueeze", ["projected", "zero"], ["lifted"]),  # [1, batch, 4]
        helper.make_node("Add", ["state", "lifted"], ["summed"]),  # [2, batch, 4]
        helper.make_node("Tanh", ["summed"], ["stateN"]),
        helper.make_node("ReduceMean", ["stateN", "zero"], ["pooled"], keepdims=0),  # [batch, 4]
        helper.make_node("Cast", ["sr"], ["rate"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["rate", "scale"], ["gain"]),
        helper.make_node("Mul", ["pooled", "gain"], ["scaled"]),
        helper.make_node("ReduceSum", ["scaled", "one"], ["logit"], keepdims=1),  # [batch, 1]
        helper.make_node("Sigmoid", ["logit"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vad",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", 4]),
        ],
        [
            weights,
            helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
            helper.make_tensor("one", TensorProto.INT64, [1], [1]),
            helper.make_tensor("scale", TensorProto.FLOAT, [], [16000.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path
