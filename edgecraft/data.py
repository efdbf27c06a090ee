"""Datasets a recipe can name, resolved to named input arrays (plus optional targets) and split.

A dataset is a set of named input arrays, one per model input, plus optional targets of any shape (class labels,
boxes, embeddings, pair ids). Everything here is numpy only: the arrays are handed to passes, targets and
benchmark workers, none of which should need torch to read them.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecraft.compress.base import Dataset
from edgecraft.core.errors import EdgecraftError
from edgecraft.core.signature import Signature
from edgecraft.imports import call_object
from edgecraft.targets import feeds as feed_tools

log = logging.getLogger(__name__)

# Normalisation of the built-in digits inputs after scaling to [0, 1] (mean/std of the whole set).
DIGITS_MEAN, DIGITS_STD = 0.3051, 0.3799
# Arrays of an .npz or a data function that hold the targets rather than an input.
TARGET_KEYS = ("targets", "labels")


@dataclass(frozen=True)
class Splits:
    """The three disjoint splits every run uses; ``how`` says whether the split was stratified."""

    train: Dataset
    calibration: Dataset
    evaluation: Dataset
    how: str = "stratified"


def digits(input_shape: tuple[int, ...], input_name: str = "input") -> Dataset:
    """scikit-learn's bundled 8×8 digits, upsampled (bilinear) and channel-replicated to ``input_shape``."""
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    if len(input_shape) != 3 or not all(isinstance(d, int) for d in input_shape):
        raise EdgecraftError(f"the digits data set needs a fixed C×H×W image input, got {list(input_shape)}")
    channels, height, width = input_shape
    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0
    images = zoom(images, (1, height / 8, width / 8), order=1, grid_mode=True, mode="grid-constant")
    images = (np.clip(images, 0, 1) - DIGITS_MEAN) / DIGITS_STD
    x = np.repeat(images[:, None], channels, axis=1).astype(np.float32)
    return Dataset({input_name: np.ascontiguousarray(x)}, bunch.target.astype(np.int64))


def load_source(source: str, base_dir: Path, signature: Signature | None) -> Dataset:
    """Resolve a recipe's ``data.source`` for a model with ``signature`` (None when it is not known yet).

    ``digits``; an ``.npz`` keyed by input names (plus ``targets`` or ``labels``; a single-input model may also
    use the key ``inputs``); or ``module:function`` returning such a dict (or a pair (inputs, targets))."""
    if source == "digits":
        image = _single_image_input(signature)
        return digits(tuple(image.shape[1:]), image.name)
    if source.endswith(".npz"):
        path = (base_dir / source).resolve()
        if not path.is_file():
            raise EdgecraftError(f"data.source: file not found: {path}")
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        return _named(arrays, str(path), signature)
    if ":" in source:
        result = call_object(source, "data.source", base_dir)
        if isinstance(result, tuple) and len(result) == 2:
            inputs, targets = result
            arrays = dict(inputs) if isinstance(inputs, dict) else {"inputs": inputs}
            if targets is not None:
                arrays["targets"] = targets
        elif isinstance(result, dict):
            arrays = dict(result)
        else:
            raise EdgecraftError(
                f"data.source {source!r} must return a dict of named arrays or (inputs, targets), "
                f"got {type(result).__name__}"
            )
        return _named(arrays, f"data.source {source!r}", signature)
    raise EdgecraftError(f"data.source {source!r}: expected 'digits', a .npz file or 'module:function'")


def from_arrays(arrays: dict[str, np.ndarray], targets: np.ndarray | None, signature: Signature | None) -> Dataset:
    """In-memory named arrays (the Python API's ``DataSpec.arrays``), plus optional targets."""
    arrays = dict(arrays)
    if targets is not None:
        arrays["targets"] = targets
    return _named(arrays, "data.arrays", signature)


def from_torch_dataset(dataset: Any, input_names: list[str]) -> Dataset:
    """Every item of a map-style torch ``Dataset``, stacked into named arrays (the Python API's ``DataSpec.dataset``).

    An item is a tensor (the inputs), a pair (inputs, target), or a dict of named tensors (``targets`` or
    ``labels`` is the target); inputs are a tensor, a tuple of tensors or a dict of named ones. Tensors given by
    position are named ``input_names`` in order (the model's inputs), else ``input``, ``input_1``, ..."""
    origin = f"data.dataset ({type(dataset).__qualname__})"
    count = len(dataset)
    columns: dict[str, list[np.ndarray]] = {}
    targets: list[np.ndarray] = []
    layout = None
    for index in range(count):
        try:
            item = dataset[index]
        except Exception as exc:  # noqa: BLE001 - the user's __getitem__
            raise EdgecraftError(f"{origin}: item {index} raised {type(exc).__name__}: {_first_line(exc)}") from None
        inputs, target = _item_parts(item, origin, index)
        named = _name_inputs(inputs, input_names, origin, index)
        shape = (tuple(named), target is not None)
        if layout is None:
            layout = shape
        elif shape != layout:
            raise EdgecraftError(
                f"{origin}: item {index} holds inputs {list(shape[0])}"
                f"{' and a target' if shape[1] else ''}, item 0 {list(layout[0])}"
                f"{' and a target' if layout[1] else ''}: every item needs the same form"
            )
        for name, value in named.items():
            columns.setdefault(name, []).append(_sample(value, f"{origin}: item {index}: input {name!r}"))
        if target is not None:
            targets.append(_sample(target, f"{origin}: item {index}: target"))
    arrays = {name: _stack(values, f"{origin}: input {name!r}") for name, values in columns.items()}
    if not arrays:
        raise EdgecraftError(f"{origin}: its items hold no inputs")
    return Dataset(arrays, _stack(targets, f"{origin}: target") if targets else None)


def _item_parts(item: Any, origin: str, index: int) -> tuple[Any, Any]:
    """(inputs, target or None) of one Dataset item."""
    if isinstance(item, dict):
        inputs = dict(item)
        key = next((key for key in TARGET_KEYS if key in inputs), None)
        return inputs, inputs.pop(key) if key else None
    if isinstance(item, (tuple, list)):
        if len(item) != 2:
            raise EdgecraftError(
                f"{origin}: item {index} is a {type(item).__name__} of {len(item)}; an item is a "
                "tensor, a pair (inputs, target) or a dict of named tensors (several inputs: "
                "((x1, x2), target))"
            )
        return item[0], item[1]
    return item, None


def _name_inputs(inputs: Any, input_names: list[str], origin: str, index: int) -> dict[str, Any]:
    if isinstance(inputs, dict):
        return inputs
    values = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
    if len(input_names) >= len(values):
        names = input_names[: len(values)]
    else:
        names = ["input", *(f"input_{i}" for i in range(1, len(values)))]
    return dict(zip(names, values))


def _sample(value: Any, what: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, read without importing torch here
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise EdgecraftError(f"{what} is a {type(value).__name__}, not a tensor or a number")
    return array


def _stack(values: list[np.ndarray], what: str) -> np.ndarray:
    shapes = {value.shape for value in values}
    if len(shapes) > 1:
        first = values[0].shape
        index = next(i for i, value in enumerate(values) if value.shape != first)
        raise EdgecraftError(
            f"{what}: item {index} has shape {list(values[index].shape)}, item 0 {list(first)}: "
            "items must have one shape (pad sequences to one length)"
        )
    return np.ascontiguousarray(np.stack(values))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _single_image_input(signature: Signature | None) -> Any:
    if signature is None:
        raise EdgecraftError(
            "data.source 'digits' needs the model's input shape: set the model's input_shape or inputs"
        )
    images = [spec for spec in signature.inputs if spec.shape and len(spec.shape) == 4]
    if len(signature.inputs) != 1 or not images:
        raise EdgecraftError(
            f"data.source 'digits' feeds one C×H×W image input; the model takes "
            f"{', '.join(spec.describe() for spec in signature.inputs)}"
        )
    return images[0]


def _named(arrays: dict[str, Any], origin: str, signature: Signature | None) -> Dataset:
    """Split a dict of arrays into inputs and targets; the legacy key ``inputs`` names a single-input model's input."""
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    target_key = next((key for key in TARGET_KEYS if key in arrays), None)
    targets = arrays.pop(target_key) if target_key else None
    if (
        "inputs" in arrays
        and signature is not None
        and len(signature.inputs) == 1
        and signature.inputs[0].name not in arrays
    ):
        arrays[signature.inputs[0].name] = arrays.pop("inputs")
    if not arrays:
        raise EdgecraftError(f"{origin}: no input arrays (it holds only {target_key})")
    if signature is not None:
        arrays = feed_tools.from_natural(arrays, signature)
    counts = {name: len(array) for name, array in arrays.items() if array.ndim}
    if targets is not None:
        assert target_key is not None  # the targets were popped from under it
        counts[target_key] = len(targets)
    if len(set(counts.values())) != 1 or len(counts) != len(arrays) + (targets is not None):
        raise EdgecraftError(
            f"{origin}: every array needs the same number of samples (on the input's batch axis), got {counts}"
        )
    return Dataset(arrays, targets)


def conform(dataset: Dataset, signature: Signature, origin: str) -> Dataset:
    """``dataset`` with inputs checked against the model's signature and cast to its dtypes; extra arrays are
    ignored with a warning. A missing input, a wrong dtype or shape is a one-line ``EdgecraftError``."""
    try:
        inputs, extra = feed_tools.conform(dataset.inputs, signature, origin)
    except feed_tools.DataMismatch as exc:
        raise EdgecraftError(str(exc)) from None
    if extra:
        log.warning("%s: ignoring array(s) %s: the model's inputs are %s", origin, extra, signature.input_names)
    return Dataset(inputs, dataset.targets, feed_tools.layout(signature, inputs))


def _sizes(total: int, fractions: tuple[float, float, float]) -> list[int]:
    """Sample counts per split: rounded, never more than ``total`` together (the largest split gives way)."""
    sizes = [round(total * fraction) for fraction in fractions]
    while sum(sizes) > total:
        sizes[sizes.index(max(sizes))] -= 1
    return sizes


def split(dataset: Dataset, fractions: tuple[float, float, float], seed: int, grouped: bool = False) -> Splits:
    """Seeded split into train / calibration / evaluation, each a fraction of the whole set (together ≤ 1).

    Stratified when the targets are class labels with at least two members each; with ``grouped`` the targets
    are group ids (a query and its document) and each group goes whole into one split; otherwise a seeded
    shuffle. Too few samples for a split is a one-line error."""
    names = ("train", "calibration", "evaluation")
    total = len(dataset)
    sizes = _sizes(total, fractions)
    empty = [name for name, size, fraction in zip(names, sizes, fractions) if fraction > 0 and size == 0]
    if empty:
        asked = ", ".join(f"{name} {fraction:g}" for name, fraction in zip(names, fractions))
        raise EdgecraftError(
            f"data.splits: {total} samples are too few for {asked}: {' and '.join(empty)} would get no sample "
            f"(counts {dict(zip(names, sizes))})"
        )
    rng = np.random.default_rng(seed)
    if grouped and dataset.targets is not None:
        blocks, how = _grouped_blocks(dataset.targets, sizes, rng), "grouped by target"
    else:
        blocks, how = _stratified_blocks(dataset.targets, total, sizes, rng)
    train, calibration, evaluation = (dataset.subset(np.sort(np.asarray(block, dtype=np.int64))) for block in blocks)
    return Splits(train, calibration, evaluation, how=how)


def _grouped_blocks(groups: np.ndarray, sizes: list[int], rng: np.random.Generator) -> list[list[int]]:
    """Whole groups, in a seeded order, dealt to the splits in turn: a split takes groups while it is below its
    size, so each size is met to within one group."""
    blocks: list[list[int]] = [[] for _ in sizes]
    position = 0
    for group in rng.permutation(np.unique(groups)):
        while position < len(sizes) and len(blocks[position]) >= sizes[position]:
            position += 1
        if position == len(sizes):
            break
        blocks[position].extend(int(i) for i in np.flatnonzero(groups == group))
    return blocks


def _stratified_blocks(
    targets: np.ndarray | None, count: int, sizes: list[int], rng: np.random.Generator
) -> tuple[list[list[int]], str]:
    """The sample indices of each split, and how they were chosen.

    Stratified by hand rather than with scikit-learn's train_test_split, which refuses classes with a single
    member and sizes that do not divide evenly: here each class is shuffled and dealt to the splits in proportion
    (largest remainder), so every split keeps the class balance as closely as whole samples allow."""
    total = sum(sizes)
    if targets is None or targets.ndim != 1 or targets.dtype.kind not in "iu":
        return _cut(rng.permutation(count), sizes), "shuffled"
    classes, counts = np.unique(targets, return_counts=True)
    if counts.min() < 2:
        return _cut(rng.permutation(count), sizes), "shuffled (a class has fewer than 2 samples)"
    blocks: list[list[int]] = [[] for _ in sizes]
    for label in classes:
        members = rng.permutation(np.flatnonzero(targets == label))
        share = np.array(sizes, dtype=float) * len(members) / count
        dealt = np.floor(share).astype(int)
        for index in np.argsort(-(share - dealt))[: min(len(members), total) - dealt.sum()]:
            dealt[index] += 1
        start = 0
        for block, amount in zip(blocks, dealt):
            block.extend(int(i) for i in members[start : start + amount])
            start += amount
    # Rounding per class may leave a split a sample short or over; move samples between splits to fix it.
    dealt_out = {index for block in blocks for index in block}
    leftover = [int(i) for i in rng.permutation(count) if int(i) not in dealt_out]
    for position, size in enumerate(sizes):
        while len(blocks[position]) > size:
            leftover.append(blocks[position].pop())
    for position, size in enumerate(sizes):
        while len(blocks[position]) < size:
            blocks[position].append(leftover.pop(0))
    return blocks, "stratified"


def _cut(order: np.ndarray, sizes: list[int]) -> list[list[int]]:
    bounds = np.cumsum([0, *sizes])
    return [order[bounds[i] : bounds[i + 1]].tolist() for i in range(len(sizes))]


def fingerprint(dataset: Dataset) -> str:
    """A digest of a data set's arrays (inputs and targets): results record it so that two runs can be checked
    to have been measured on the same data."""
    sha = hashlib.sha256()
    for array in [*dataset.inputs.values(), *([] if dataset.targets is None else [dataset.targets])]:
        sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()[:20]
