"""PyTorch → ONNX, the interchange format every other target converts from."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def export_torch(model: Any, input_shape: tuple[int, ...], path: Path) -> Path:
    """Export ``model`` (an eval-mode ``nn.Module``) with a dynamic batch dimension to a single ONNX file.

    Uses the dynamo exporter, the maintained one in torch 2.13; weights stay inside the file so that its
    size on disk is the model's size.
    """
    import logging
    import warnings

    import torch
    from torch.export import Dim

    # The exporter warns about every torchvision op it cannot register and about its own deprecations:
    # noise for a user who exports a plain nn.Module.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    model.eval()
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    # dynamic_shapes is keyed by forward()'s real argument name (nn.Sequential calls it ``input``).
    argument = forward_argument(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            external_data=False,
            dynamic_shapes={argument: {0: Dim("batch")}},
            input_names=["input"],
            output_names=["logits"],
            verbose=False,
        )
    program.save(str(path), external_data=False)
    return path


def forward_argument(model: Any) -> str:
    """The name of ``forward``'s input: ``dynamic_shapes`` must be keyed by it."""
    import inspect

    return next(iter(inspect.signature(model.forward).parameters))
