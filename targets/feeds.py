"""Feeds: named input arrays that match a model's signature, as every target's ``run`` takes them.

numpy only (no torch, no TensorFlow): the benchmark worker and the remote agent read their inputs with this.
A data set on disk is a folder of ``<input name>.npy`` files, so that a worker can memory-map it instead of
holding the whole evaluation split in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecraft.core.signature import Signature, TensorSpec

Feeds = dict[str, np.ndarray]

# Sizes given to symbolic axes when inputs are made up from a signature alone.
SYNTHETIC_SIZES = {"sequence": 32}
DEFAULT_SYMBOLIC_SIZE = 16
# Token ids drawn for an input whose vocabulary is unknown stay below this: every real vocabulary is larger.
SAFE_VOCABULARY = 100


class DataMismatch(ValueError):
    """Data that does not fit a model's signature; the message names the input and the problem."""


def count(feeds: Feeds) -> int:
    return len(next(iter(feeds.values())))


def take(feeds: Feeds, start: int, stop: int) -> Feeds:
    """Samples ``start:stop`` of every input."""
    return {name: array[start:stop] for name, array in feeds.items()}


def concatenate(batches: list[Feeds]) -> Feeds:
    """Batches of outputs joined per name, in order."""
    return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}


def save(feeds: Feeds, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in feeds.items():
        np.save(folder / f"{_file_name(name)}.npy", np.ascontiguousarray(array))
    (folder / "names.txt").write_text("\n".join(feeds) + "\n")
    return folder


def load(folder: Path, mmap: bool = True) -> Feeds:
    """The feeds saved by ``save``; memory-mapped by default (pages are read only when a sample is used)."""
    names = (folder / "names.txt").read_text().split("\n")
    return {
        name: np.load(folder / f"{_file_name(name)}.npy", mmap_mode="r" if mmap else None) for name in names if name
    }


def read(folder: Path, start: int, stop: int) -> Feeds:
    """Samples ``start:stop`` of the feeds saved by ``save``, read with plain file reads into fresh arrays.

    Unlike slicing the memory map, this maps no page of the file into the process, so reading the samples adds
    only their own bytes to its resident memory (what the benchmark worker's memory figures must not include)."""
    samples = {}
    for name in filter(None, (folder / "names.txt").read_text().split("\n")):
        with (folder / f"{_file_name(name)}.npy").open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = header(handle)
            if fortran:
                raise ValueError(f"{name}: a Fortran-ordered array cannot be read a sample at a time")
            per_sample = int(np.prod(shape[1:], dtype=np.int64))
            stop = min(stop, shape[0])
            handle.seek(handle.tell() + start * per_sample * dtype.itemsize)
            values = np.fromfile(handle, dtype=dtype, count=(stop - start) * per_sample)
            samples[name] = values.reshape((stop - start, *shape[1:]))
    return samples


def sample_bytes(feeds: Feeds) -> int:
    """Bytes of one sample of every input, from the shapes alone (a memory map is not touched)."""
    return sum(array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64)) for array in feeds.values())


def _file_name(name: str) -> str:
    return "".join(char if char.isalnum() or char in "._-" else "_" for char in name)


def conform(inputs: Feeds, signature: Signature, origin: str) -> tuple[Feeds, list[str]]:
    """``inputs`` checked against ``signature`` and cast to its dtypes; with the names of extra arrays ignored.

    A missing input, a dtype of another kind (float data for int64 token ids), a fixed dimension that differs or
    inputs of different lengths raise ``DataMismatch`` naming the input. A cast within a kind (float64 →
    float32, int32 → int64) is what a user means and is done silently."""
    wanted = signature.input_names
    missing = [name for name in wanted if name not in inputs]
    extra = [name for name in inputs if name not in wanted]
    if missing:
        raise DataMismatch(
            f"{origin}: the model's input(s) {missing} are missing from the data; it has {sorted(inputs)} "
            f"and the model takes {wanted}"
        )
    conformed: Feeds = {}
    for spec in signature.inputs:
        array = np.asarray(inputs[spec.name])
        conformed[spec.name] = _conform_one(array, spec, origin)
    lengths = {name: len(array) for name, array in conformed.items()}
    if len(set(lengths.values())) > 1:
        raise DataMismatch(f"{origin}: inputs have different numbers of samples: {lengths}")
    return conformed, extra


def _conform_one(array: np.ndarray, spec: TensorSpec, origin: str) -> np.ndarray:
    if spec.dtype:
        expected = np.dtype(spec.dtype)
        if array.dtype.kind != expected.kind and not (array.dtype.kind in "iu" and expected.kind in "iu"):
            raise DataMismatch(
                f"{origin}: input {spec.name!r} has dtype {array.dtype.name} but the model takes {expected.name}"
            )
        array = array.astype(expected, copy=False)
    if spec.shape is not None:
        if array.ndim != len(spec.shape):
            raise DataMismatch(
                f"{origin}: input {spec.name!r} has shape {list(array.shape)}; the model takes "
                f"{_shape_text(spec.shape)} ({len(spec.shape)} dimensions, the first the batch)"
            )
        for axis, (have, want) in enumerate(zip(array.shape[1:], spec.shape[1:]), start=1):
            if isinstance(want, int) and have != want:
                raise DataMismatch(
                    f"{origin}: input {spec.name!r} has shape {list(array.shape)}; the model takes "
                    f"{_shape_text(spec.shape)} (dimension {axis} must be {want})"
                )
    return np.ascontiguousarray(array)


def _shape_text(shape: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def synthetic(signature: Signature, samples: int, seed: int = 0, vocabulary: dict[str, int] | None = None) -> Feeds:
    """Inputs made up from the signature alone, for latency and memory when there is no data.

    dtype-aware: attention masks are ones, token-type ids zeros, token ids drawn below the vocabulary size
    (``vocabulary[name]``, else a size every real vocabulary exceeds), floats uniform in the declared range
    (default [0, 1]). Symbolic axes get ``SYNTHETIC_SIZES`` (sequence 32), the batch axis ``samples``."""
    rng = np.random.default_rng(seed)
    feeds: Feeds = {}
    for spec in signature.inputs:
        if spec.shape is None or spec.dtype is None:
            raise DataMismatch(f"input {spec.name!r}: the model file does not say its shape and dtype; pass data")
        shape = [samples] + [
            d if isinstance(d, int) else SYNTHETIC_SIZES.get(str(d), DEFAULT_SYMBOLIC_SIZE) for d in spec.shape[1:]
        ]
        dtype = np.dtype(spec.dtype)
        lowered = spec.name.lower()
        if dtype.kind in "iub":
            if "mask" in lowered:
                array = np.ones(shape, dtype)
            elif "type" in lowered or "segment" in lowered or "position" in lowered:
                array = np.zeros(shape, dtype)
            else:
                bound = int(spec.range[1]) if spec.range else (vocabulary or {}).get(spec.name, SAFE_VOCABULARY)
                array = rng.integers(0, max(1, bound), size=shape).astype(dtype)
        else:
            low, high = spec.range or (0.0, 1.0)
            array = rng.uniform(low, high, size=shape).astype(dtype)
        feeds[spec.name] = array
    return feeds


def measured_shapes(feeds: Feeds) -> dict[str, list[int]]:
    """Each input's per-sample shape as fed (batch axis 1): what the latency figures were measured at."""
    return {name: [1, *array.shape[1:]] for name, array in feeds.items()}
