"""PyTorch → ONNX, the interchange format every other target converts from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reports.schema import Signature


def export_torch(model: Any, signature: Signature, path: Path) -> Path:
    """Export ``model`` (an eval-mode ``nn.Module``) to a single ONNX file with the signature's input and output
    names, its batch and other symbolic axes (e.g. ``sequence``) kept dynamic.

    Uses the dynamo exporter, the maintained one in torch 2.13; weights stay inside the file so that its
    size on disk is the model's size.
    """
    import logging
    import warnings

    import torch

    from compress.torch_io import dynamic_shapes, example_inputs

    # The exporter warns about every torchvision op it cannot register and about its own deprecations:
    # noise for a user who exports a plain nn.Module.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(
            model,
            example_inputs(signature),
            dynamo=True,
            external_data=False,
            dynamic_shapes=dynamic_shapes(model, signature),
            input_names=signature.input_names,
            output_names=signature.output_names,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    return path
