"""Datasets a recipe can name, resolved to numpy arrays and split into train / calibration / evaluation.

Everything here is numpy only: the arrays are handed to passes, targets and benchmark workers, none of which
should need torch to read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecraft.errors import EdgecraftError
from edgecraft.imports import load_object

# Normalisation of the built-in digits inputs after scaling to [0, 1] (mean/std of the whole set).
DIGITS_MEAN, DIGITS_STD = 0.3051, 0.3799


@dataclass(frozen=True)
class Splits:
    """The three disjoint splits every run uses, each as (inputs float32 NCHW, integer labels)."""

    train: tuple[np.ndarray, np.ndarray]
    calibration: tuple[np.ndarray, np.ndarray]
    evaluation: tuple[np.ndarray, np.ndarray]


def digits(input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits, upsampled (bilinear) and channel-replicated to ``input_shape``."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    if len(input_shape) != 3:
        raise EdgecraftError(f"the digits data set needs a C×H×W model input, got input shape {list(input_shape)}")
    channels, height, width = input_shape
    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    images = zoom(images, (1, height / 8, width / 8), order=1, grid_mode=True, mode="grid-constant")
    images = (np.clip(images, 0, 1) - DIGITS_MEAN) / DIGITS_STD
    x = np.repeat(images[:, None], channels, axis=1).astype(np.float32)
    return np.ascontiguousarray(x), bunch.target.astype(np.int64)


def load_source(source: str, base_dir: Path, input_shape: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """Resolve a recipe's ``data.source``: ``digits``, an ``.npz`` file (``inputs`` + ``labels``) or ``module:function``."""
    if source == "digits":
        if input_shape is None:
            raise EdgecraftError("data.source 'digits' needs the model's input shape: set model.input_shape")
        return digits(input_shape)
    if source.endswith(".npz"):
        path = (base_dir / source).resolve()
        if not path.is_file():
            raise EdgecraftError(f"data.source: file not found: {path}")
        with np.load(path) as archive:
            missing = {"inputs", "labels"} - set(archive.files)
            if missing:
                raise EdgecraftError(
                    f"data.source {path}: missing array(s) {sorted(missing)}; it holds {sorted(archive.files)}"
                )
            return _checked(archive["inputs"], archive["labels"], str(path))
    if ":" in source:
        result = load_object(source, "data.source")()
        if not (isinstance(result, tuple) and len(result) == 2):
            raise EdgecraftError(f"data.source {source!r} must return (inputs, labels), got {type(result).__name__}")
        return _checked(*result, source)
    raise EdgecraftError(f"data.source {source!r}: expected 'digits', a .npz file or 'module:function'")


def _checked(inputs: np.ndarray, labels: np.ndarray, origin: str) -> tuple[np.ndarray, np.ndarray]:
    inputs, labels = np.asarray(inputs, dtype=np.float32), np.asarray(labels).astype(np.int64)
    if inputs.ndim < 2 or len(inputs) != len(labels):
        raise EdgecraftError(
            f"{origin}: inputs {list(inputs.shape)} and labels {list(labels.shape)} must have the same first dimension"
        )
    return np.ascontiguousarray(inputs), labels


def split(
    x: np.ndarray, y: np.ndarray, fractions: tuple[float, float, float], seed: int
) -> Splits:
    """Stratified, seeded split into train / calibration / evaluation (fractions of the whole set)."""
    from sklearn.model_selection import train_test_split

    train_fraction, calibration_fraction, evaluation_fraction = fractions
    rest = calibration_fraction + evaluation_fraction
    indices = np.arange(len(x))
    train_idx, rest_idx = train_test_split(
        indices, train_size=train_fraction, test_size=rest, stratify=y, random_state=seed
    ) if train_fraction > 0 else (indices[:0], indices)
    calibration_idx, evaluation_idx = train_test_split(
        rest_idx, test_size=evaluation_fraction / rest, stratify=y[rest_idx], random_state=seed
    )
    return Splits(
        train=(x[train_idx], y[train_idx]),
        calibration=(x[calibration_idx], y[calibration_idx]),
        evaluation=(x[evaluation_idx], y[evaluation_idx]),
    )
