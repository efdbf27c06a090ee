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

    def describe(self) -> str:
        dims = "×".join("?" if d is None else str(d) for d in self.shape) if self.shape is not None else "?"
        layout = f" {self.layout}" if self.layout else ""
        return f"{self.name}: {self.dtype or '?'} [{dims}]{layout}"


class Signature(StrictModel):
    """A model's named inputs and outputs, in the model's own order."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]
