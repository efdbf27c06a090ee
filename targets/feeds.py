"""Feeds: named input arrays that match a model's signature, as every target's ``run`` takes them.

numpy only (no torch, no TensorFlow): the benchmark worker and the remote agent read their inputs with this.
A data set on disk is a folder of ``<input name>.npy`` files, so that a worker can memory-map it instead of
holding the whole evaluation split in memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecraft.core.signature import Signature, TensorSpec

Feeds = dict[str, np.ndarray]
LAYOUT_FILE = "layout.json"

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


def save(feeds: Feeds, folder: Path, layout: Layout | None = None) -> Path:
    """Write ``feeds`` (sample-major) as one .npy per input, with the model's ``layout`` beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in feeds.items():
        np.save(folder / f"{_file_name(name)}.npy", np.ascontiguousarray(array))
    (folder / "names.txt").write_text("\n".join(feeds) + "\n")
    (folder / LAYOUT_FILE).write_text(json.dumps((layout or Layout()).to_json()))
    return folder


def load_layout(folder: Path) -> Layout:
    """The layout saved with the feeds; the plain one (batch first, any size) for a folder written without it."""
    path = folder / LAYOUT_FILE
    return Layout.from_json(json.loads(path.read_text())) if path.is_file() else Layout()


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
    """``inputs`` (sample-major: one entry per sample on axis 0) checked against ``signature`` and cast to its
    dtypes; with the names of extra arrays ignored.

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
    sample = spec.sample_shape()
    if sample is not None:
        if array.ndim != len(sample) + 1:
            raise DataMismatch(
                f"{origin}: input {spec.name!r} has shape {natural_shape(array, spec)}; the model takes "
                f"{_shape_text(spec.shape or [])} ({_batch_text(spec)})"
            )
        for axis, (have, want) in enumerate(zip(array.shape[1:], sample)):
            if isinstance(want, int) and have != want:
                model_axis = axis if spec.batch_axis is None or axis < spec.batch_axis else axis + 1
                raise DataMismatch(
                    f"{origin}: input {spec.name!r} has shape {natural_shape(array, spec)}; the model takes "
                    f"{_shape_text(spec.shape or [])} ({_batch_text(spec)}; dimension {model_axis} must be {want})"
                )
    return np.ascontiguousarray(array)


def natural_shape(array: np.ndarray, spec: TensorSpec) -> list[int]:
    """A sample-major array's shape as the model takes it: its samples on the input's batch axis (an unbatched
    input: one sample's shape)."""
    if spec.batch_axis is None:
        return list(array.shape[1:])
    shape = list(array.shape[1:])
    shape.insert(min(spec.batch_axis, len(shape)), array.shape[0])
    return shape


def _batch_text(spec: TensorSpec) -> str:
    if spec.batch_axis is None:
        return "no batch axis: one value fed to every call"
    return f"{len(spec.shape or [])} dimensions, the batch on axis {spec.batch_axis}"


def _shape_text(shape: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def infer_batch_axes(signature: Signature) -> Signature:
    """``signature`` with each input's and output's batch axis read from the file's shapes.

    The batch is the symbolic dimension most inputs lead with (``batch``, ``N``), wherever an input has it (a
    recurrent state ``[2, batch, 128]`` has it on axis 1). A rank-0 tensor has none; a fully fixed shape has it
    on axis 0 when it leads with the model's fixed batch (``[1, 128, 128, 3]``), else none (a state of fixed
    size). Where nothing says otherwise, the batch is the first axis."""
    leading = [spec.shape[0] for spec in signature.inputs if spec.shape and isinstance(spec.shape[0], str)]
    symbol = max(set(leading), key=leading.count) if leading else None
    # Unnamed dynamic dimensions (exporters that write none) cannot be matched by name: an input that leads
    # with a fixed size and has exactly one of them (a state [2, ?, 128]) is taken to hold the batch there.
    unnamed_batch = symbol is None and any(spec.shape and spec.shape[0] is None for spec in signature.inputs)
    # A fixed batch larger than 1 is read only off inputs of rank 2 or more: a vector [2] is a value, not 2 samples.
    fixed = {
        spec.shape[0]
        for spec in signature.inputs
        if spec.shape and len(spec.shape) > 1 and isinstance(spec.shape[0], int)
    }
    any_dynamic = any(spec.shape and not isinstance(spec.shape[0], int) for spec in signature.inputs)
    fixed_batch = fixed.pop() if len(fixed) == 1 and not any_dynamic else None

    def axis(spec: TensorSpec, is_input: bool) -> int | None:
        shape = spec.shape
        if shape is None:
            return 0
        if not shape:
            return None
        if symbol is not None and symbol in shape:
            return shape.index(symbol)
        if not isinstance(shape[0], int):
            return 0
        if is_input and unnamed_batch and shape.count(None) == 1:
            return shape.index(None)
        if shape[0] == 1 or shape[0] == fixed_batch:
            return 0
        return None

    return signature.model_copy(
        update={
            "inputs": [spec.model_copy(update={"batch_axis": axis(spec, True)}) for spec in signature.inputs],
            "outputs": [spec.model_copy(update={"batch_axis": axis(spec, False)}) for spec in signature.outputs],
        }
    )


def fixed_batch(signature: Signature) -> int | None:
    """The batch size the file fixes (a TFLite file made for ``[1, 128, 128, 3]``), None where it is free."""
    sizes = {
        spec.shape[spec.batch_axis]
        for spec in signature.inputs
        if spec.shape is not None and spec.batch_axis is not None and spec.batch_axis < len(spec.shape)
    }
    fixed = [size for size in sizes if isinstance(size, int)]
    return min(fixed) if fixed else None


@dataclass(frozen=True)
class Layout:
    """How sample-major data becomes a model's own calls, and its outputs sample-major again.

    Data is kept one sample per index on axis 0 (so it can be split, cut and memory-mapped); a model takes each
    input with its batch on its own axis, or no batch at all. ``max_batch`` is the most samples one call may
    hold (None: any), ``exact`` whether calls must hold exactly that many (a fixed batch), ``limit`` why the
    batch is limited (shown where a batched figure is not measured), ``state_from`` the inputs fed from the
    previous call's outputs."""

    inputs: dict[str, int | None] = field(default_factory=dict)
    outputs: dict[str, int | None] = field(default_factory=dict)
    max_batch: int | None = None
    exact: bool = False
    limit: str | None = None
    state_from: dict[str, str] = field(default_factory=dict)
    # Integer inputs (token ids, masks) with one open axis besides the batch, the same for all of them: that axis
    # in the data (sample-major). Data pads them to the longest sample; a deployed model gets each at its length.
    lengths: dict[str, int] = field(default_factory=dict)

    def own_length(self, sample: Feeds) -> int | None:
        """How long one sample (axis 0 of size 1) is along its sequence axis: up to the last position where any
        integer input holds a non-zero value (padding is zeros: ids and mask alike); None without such axes."""
        if not self.lengths:
            return None
        length = 1
        for name, axis in self.lengths.items():
            positions = np.moveaxis(np.asarray(sample[name]), axis, -1)
            used = np.flatnonzero(positions.reshape(-1, positions.shape[-1]).any(axis=0))
            length = max(length, int(used[-1]) + 1 if used.size else 1)
        return length

    def cut(self, batch: Feeds, length: int) -> Feeds:
        """``batch`` (sample-major) with its sequence inputs cut to ``length`` positions: for a batch of samples
        of different lengths, cut to the longest, the padding a deployment adds per batch."""
        return {
            name: np.take(array, np.arange(length), axis=self.lengths[name]) if name in self.lengths else array
            for name, array in batch.items()
        }

    @property
    def per_call(self) -> int:
        """Samples in the smallest call the model takes: its fixed batch, else one."""
        return self.max_batch if self.exact and self.max_batch else 1

    @property
    def batch_first(self) -> bool:
        """Every input and output batched on axis 0, any batch size, no state: how models were fed before
        layouts (and the only way the device agent feeds them)."""
        axes = [*self.inputs.values(), *self.outputs.values()]
        return all(axis == 0 for axis in axes) and self.max_batch is None and not self.state_from

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Layout:
        return cls(**data) if data else cls()

    def batch_sizes(self, wanted: int) -> int | None:
        """Samples per call for a pass that would like ``wanted``; None when the model cannot take that many."""
        if self.max_batch is None:
            return wanted
        if self.exact:
            return self.max_batch if wanted >= self.max_batch else None
        return min(wanted, self.max_batch)

    def to_model(self, batch: Feeds) -> Feeds:
        """Samples (axis 0) of every input as one call of the model takes them."""
        fed: Feeds = {}
        for name, array in batch.items():
            axis = self.inputs.get(name, 0)
            if axis is None:
                fed[name] = np.array(array[0])  # not ascontiguousarray, which makes a scalar [1]
            elif axis == 0:
                fed[name] = array
            else:
                fed[name] = np.ascontiguousarray(np.moveaxis(array, 0, axis))
        return fed

    def from_model(self, outputs: Feeds, samples: int) -> Feeds:
        """One call's outputs, sample-major: the batch axis first (an unbatched output, from a one-sample call,
        gets one), cut to ``samples`` (a fixed batch runs padded)."""
        result: Feeds = {}
        for name, array in outputs.items():
            axis = self.outputs.get(name, 0)
            if axis is None or array.ndim == 0:
                result[name] = array[None]
            else:
                result[name] = np.moveaxis(array, axis, 0)[:samples] if axis else array[:samples]
        return result

    def run_all(self, run: Callable[[Feeds], Feeds], inputs: Feeds, batch_size: int) -> list[Feeds]:
        """Every output for every sample of ``inputs``, in calls of a size the model takes (at most
        ``batch_size``); a stateful model's state carried from call to call, in order."""
        size = self.batch_sizes(batch_size) or self.max_batch or 1
        total = count(inputs)
        carried: Feeds = {}
        results = []
        for start in range(0, total, size):
            chunk = take(inputs, start, start + size)
            samples = count(chunk)
            if samples < size and self.exact:
                chunk = {name: np.take(a, range(size), axis=0, mode="wrap") for name, a in chunk.items()}
            fed = self.to_model(chunk)
            fed.update({name: carried[source] for name, source in self.state_from.items() if source in carried})
            outputs = run(fed)
            carried = outputs
            results.append(self.from_model(outputs, samples))
        return results

    def call_shapes(self, inputs: Feeds) -> dict[str, list[int]]:
        """Each input's shape in one call at the smallest batch the model takes: what latency is measured at."""
        one = {name: np.take(a, range(self.per_call), axis=0, mode="wrap") for name, a in take(inputs, 0, 1).items()}
        return {name: list(array.shape) for name, array in self.to_model(one).items()}


def layout(signature: Signature, inputs: Feeds | None = None) -> Layout:
    """The layout of ``signature``'s model; with the data (sample-major), an unbatched input whose value differs
    from sample to sample limits calls to one sample."""
    limits: list[tuple[int, str]] = []
    fixed = fixed_batch(signature)
    if fixed is not None:
        limits.append((fixed, f"fixed batch {fixed}"))
    unbatched_outputs = [spec.name for spec in signature.outputs if spec.batch_axis is None]
    if unbatched_outputs:
        limits.append((1, f"output {unbatched_outputs[0]!r} has no batch axis"))
    if signature.state_from:
        limits.append((1, "stateful: each call takes the state of the one before"))
    for spec in signature.inputs:
        if spec.batch_axis is None and inputs is not None and spec.name in inputs:
            array = inputs[spec.name]
            if len(array) > 1 and not bool(np.all(array == array[:1])):
                limits.append((1, f"input {spec.name!r} has no batch axis and differs from sample to sample"))
    smallest = min(limits, default=None)
    return Layout(
        inputs={spec.name: spec.batch_axis for spec in signature.inputs},
        outputs={spec.name: spec.batch_axis for spec in signature.outputs},
        max_batch=smallest[0] if smallest else None,
        exact=fixed is not None and smallest is not None and smallest[0] == fixed,
        limit=smallest[1] if smallest else None,
        state_from=dict(signature.state_from),
        lengths=_sequence_axes(signature),
    )


def _sequence_axes(signature: Signature) -> dict[str, int]:
    """Each integer input's one open non-batch axis, in the data's sample-major layout, when every such input has
    one and they share its name (``sequence``); else none: lengths are not guessed across different axes."""
    found: dict[str, tuple[int, str]] = {}
    for spec in signature.inputs:
        if spec.batch_axis is None or not (spec.dtype or "").startswith(("int", "uint")):
            continue
        open_axes = dynamic_axes(spec)
        if len(open_axes) != 1:
            return {}
        axis = open_axes[0]
        found[spec.name] = (axis + (axis < spec.batch_axis), str((spec.shape or [])[axis]))
    if len({name for _, name in found.values()}) != 1:
        return {}
    return {name: axis for name, (axis, _) in found.items()}


def dynamic_axes(spec: TensorSpec) -> list[int]:
    """The axes of an input, other than its batch axis, whose size the file leaves open."""
    return [axis for axis, dim in enumerate(spec.shape or []) if not isinstance(dim, int) and axis != spec.batch_axis]


def synthetic(
    signature: Signature,
    samples: int,
    seed: int = 0,
    vocabulary: dict[str, int] | None = None,
    shapes: dict[str, list[int]] | None = None,
) -> Feeds:
    """Inputs made up from the signature alone (sample-major), for latency and memory when there is no data.

    dtype-aware: attention masks are ones, token-type ids zeros, token ids drawn below the vocabulary size
    (``vocabulary[name]``, else a size every real vocabulary exceeds), floats uniform in the declared range
    (default [0, 1]). ``shapes`` gives an input's full shape as the model takes it (``--shape``); without it a
    dynamic axis other than the batch cannot be guessed and raises ``DataMismatch`` naming it: a recogniser
    measured at 16×16 pixels is a number that means nothing."""
    rng = np.random.default_rng(seed)
    shapes = shapes or {}
    feeds: Feeds = {}
    for spec in signature.inputs:
        if spec.shape is None or spec.dtype is None:
            raise DataMismatch(f"input {spec.name!r}: the model file does not say its shape and dtype; pass data")
        if spec.name in shapes:
            full = list(shapes[spec.name])
        else:
            open_axes = dynamic_axes(spec)
            if open_axes:
                raise DataMismatch(
                    f"input {spec.name!r} {_shape_text(spec.shape)} has dynamic "
                    f"{'axes' if len(open_axes) > 1 else 'axis'} {', '.join(map(str, open_axes))} besides the "
                    f"batch: say the shape to measure at with --shape {spec.name}="
                    + ",".join(
                        "1" if a == spec.batch_axis else str(d) if isinstance(d, int) else "N"
                        for a, d in enumerate(spec.shape)
                    )
                )
            full = [1 if not isinstance(d, int) else d for d in spec.shape]
        if spec.batch_axis is None or spec.batch_axis >= len(full):
            sample = full
        else:
            sample = full[: spec.batch_axis] + full[spec.batch_axis + 1 :]
        shape = [samples, *sample]
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
        if spec.batch_axis is None:
            # A tensor without a batch axis is a state or a setting: one value, the same for every sample.
            array = np.ascontiguousarray(np.broadcast_to(array[:1], shape))
        feeds[spec.name] = array
    return feeds


def from_natural(arrays: Feeds, signature: Signature) -> Feeds:
    """Arrays as a user writes them (the model's own layout: a state ``[2, N, 128]`` with its samples on axis 1,
    a sample rate given once as ``16000``) made sample-major. An unbatched input given once is repeated for every
    sample (a broadcast view, no copy); given once per sample (one more axis than the model's), it is per-sample
    already. Arrays that fit neither are left for ``conform`` to name."""
    specs = {spec.name: spec for spec in signature.inputs}
    result: Feeds = {}
    once: list[str] = []
    for name, array in arrays.items():
        spec = specs.get(name)
        natural = spec is not None and spec.shape is not None and array.ndim == len(spec.shape)
        if natural and spec is not None and spec.batch_axis is None:
            once.append(name)
        elif natural and spec is not None and spec.batch_axis:
            array = np.moveaxis(array, spec.batch_axis, 0)
        result[name] = array
    samples = next((len(array) for name, array in result.items() if name not in once), 1)
    for name in once:
        result[name] = np.broadcast_to(result[name], (samples, *result[name].shape))
    return result


def override(
    signature: Signature,
    origin: str,
    *,
    batch_axes: dict[str, int | None] | None = None,
    shapes: dict[str, list[int | str | None]] | None = None,
    state_from: dict[str, str] | None = None,
) -> Signature:
    """``signature`` with what the user says about it (a recipe's model entry, ``bench``'s options): an input's
    batch axis (None: it has none), its shape (dynamic axes fixed, the batch axis left as the file has it), and
    which inputs a stateful model takes from its previous call's outputs. A name the model does not have, an axis
    beyond the input's rank or a shape of another rank raises ``DataMismatch`` naming it."""
    by_name = {spec.name: spec for spec in signature.inputs}
    outputs = signature.output_names

    def known(name: str, what: str) -> TensorSpec:
        if name not in by_name:
            raise DataMismatch(f"{origin}: {what} names input {name!r}; the model's inputs are {list(by_name)}")
        return by_name[name]

    for name, axis in (batch_axes or {}).items():
        spec = known(name, "batch_axis")
        rank = len(spec.shape) if spec.shape is not None else None
        if axis is not None and rank is not None and not 0 <= axis < rank:
            raise DataMismatch(
                f"{origin}: batch_axis {axis} of input {name!r}: it has {rank} dimensions "
                f"{_shape_text(spec.shape or [])}"
            )
        by_name[name] = spec.model_copy(update={"batch_axis": axis})
    for name, shape in (shapes or {}).items():
        spec = known(name, "shape")
        if spec.shape is not None and len(shape) != len(spec.shape):
            raise DataMismatch(
                f"{origin}: shape {list(shape)} of input {name!r} has {len(shape)} dimensions; the model's has "
                f"{len(spec.shape)}: {_shape_text(spec.shape)}"
            )
        for axis, (given, have) in enumerate(zip(shape, spec.shape or shape)):
            if isinstance(have, int) and isinstance(given, int) and given != have:
                raise DataMismatch(
                    f"{origin}: shape {list(shape)} of input {name!r}: dimension {axis} is fixed at {have} in the file"
                )
        merged: list[int | str | None] = list(shape)
        if spec.batch_axis is not None and spec.shape is not None:
            merged[spec.batch_axis] = spec.shape[spec.batch_axis]  # the batch stays as free as the file has it
        by_name[name] = spec.model_copy(update={"shape": merged})
    for name, source in (state_from or {}).items():
        known(name, "state_from")
        if source not in outputs:
            raise DataMismatch(
                f"{origin}: state_from feeds input {name!r} from {source!r}, which is not an output; the model's "
                f"outputs are {outputs}"
            )
    # An output that becomes an input on the next call holds its batch where that input does.
    feeds_input = {source: by_name[name].batch_axis for name, source in (state_from or {}).items()}
    return signature.model_copy(
        update={
            "inputs": [by_name[spec.name] for spec in signature.inputs],
            "outputs": [
                spec.model_copy(update={"batch_axis": feeds_input[spec.name]}) if spec.name in feeds_input else spec
                for spec in signature.outputs
            ],
            "state_from": {**signature.state_from, **(state_from or {})},
        }
    )
