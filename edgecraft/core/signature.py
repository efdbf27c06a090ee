"""A model's signature: its named inputs and outputs, the types every layer passes a model's interface in."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """Base of every stored record: unknown fields and non-finite numbers are refused where they are named."""

    # JSON has no NaN or infinity: one would be written as null and the file would no longer load. Refuse it here,
    # where the field is named, rather than in the next command that reads the file.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TensorSpec(StrictModel):
    """One named input or output of a model: the model's signature is a list of these.

    ``shape`` keeps symbolic dimensions as names (``batch``, ``sequence``); ``layout`` says whether a 4-D input is
    an image in NCHW or NHWC (only image inputs are ever transposed between runtimes); ``range`` bounds the
    synthetic values drawn for it when there is no data (token ids within the vocabulary, images in [0, 1])."""

    name: str
    dtype: str | None = Field(None, description="numpy dtype name, e.g. float32, int64; None where unknown.")
    shape: list[int | str | None] | None = Field(None, description="Dimensions; a name for a symbolic one.")
    layout: Literal["NCHW", "NHWC"] | None = None
    range: tuple[float, float] | None = None
    kind: Literal["scores", "embedding", "values"] | None = Field(
        None, description="What an output holds, where declared: evaluators refuse one that does not fit."
    )
    batch_axis: int | None = Field(
        0,
        ge=0,
        description="The axis that holds the batch (a recurrent state [2, batch, 128] has it on 1), or null for "
        "a tensor without one (a scalar sample rate, a state of fixed size): given once, fed to every call.",
    )

    def describe(self) -> str:
        dims = "×".join("?" if d is None else str(d) for d in self.shape) if self.shape is not None else "?"
        layout = f" {self.layout}" if self.layout else ""
        batch = (
            ""
            if self.batch_axis == 0
            else " (no batch axis)"
            if self.batch_axis is None
            else (f" (batch on axis {self.batch_axis})")
        )
        return f"{self.name}: {self.dtype or '?'} [{dims}]{layout}{batch}"

    def sample_shape(self) -> list[int | str | None] | None:
        """The shape of one sample: the batch axis taken out (an unbatched tensor is one sample as it is)."""
        if self.shape is None or self.batch_axis is None or self.batch_axis >= len(self.shape):
            return self.shape
        return self.shape[: self.batch_axis] + self.shape[self.batch_axis + 1 :]


class Signature(StrictModel):
    """A model's named inputs and outputs, in the model's own order."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    state_from: dict[str, str] = Field(
        default_factory=dict,
        description="A stateful model's inputs fed from an output of the previous call ({input: output}): "
        "samples then run one at a time, in order, as a deployed sequence does.",
    )

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]
