"""PyTorch → ONNX, the interchange format every other target converts from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecraft.core.signature import Signature


def export_torch(model: Any, signature: Signature, path: Path) -> Path:
    """Export ``model`` (an eval-mode ``nn.Module``) to a single ONNX file with the signature's input and output
    names, its batch and other symbolic axes (e.g. ``sequence``) kept dynamic.

    Uses the dynamo exporter, the maintained one in torch 2.13; weights stay inside the file so that its
    size on disk is the model's size.
    """
    import logging
    import warnings

    import torch

    from edgecraft.compress.torch_io import dynamic_shapes, example_inputs

    # The exporter warns about every torchvision op it cannot register and about its own deprecations:
    # noise for a user who exports a plain nn.Module.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        # Two inputs sharing a 'batch' axis: the exporter says it keeps one name for both, which is the point.
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape constraints")
        program = torch.onnx.export(
            model,
            example_inputs(signature),
            dynamo=True,
            external_data=False,
            dynamic_shapes=dynamic_shapes(model, signature),
            verbose=False,
        )
    assert program is not None  # dynamo=True always returns an ONNXProgram (None is the legacy exporter's)
    exported = program.model_proto
    graph = exported.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [value.name for value in graph.input if value.name not in initializers]
    rename_io(
        exported,
        {
            **dict(zip(inputs, signature.input_names)),
            **dict(zip([value.name for value in graph.output], signature.output_names)),
        },
    )
    import onnx

    onnx.save(exported, str(path))
    return path


def all_graphs(graph: Any) -> list[Any]:
    """``graph`` and every subgraph inside it (the branches of ``If``, the bodies of ``Loop`` and ``Scan``, ...),
    at any depth."""
    import onnx

    found = [graph]
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found += all_graphs(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    found += all_graphs(subgraph)
    return found


def rename_io(model: Any, names: dict[str, str]) -> None:
    """Rename graph inputs and outputs in place (``names``: old → new); any other value that already has one of
    the new names is renamed out of the way first.

    The exporter's own ``output_names`` fails on a name the graph already uses inside (an output called
    ``embedding`` beside an ``aten::embedding`` node gave "Duplicate definition of name"); no ONNX tool does this
    rename, hence these lines.

    Subgraphs (an ``If``'s branches, a ``Loop``'s body) read outer values by name, so every renaming reaches into
    them too: a branch that read the graph input ``sr`` reads it under its new name (left as it was, the written
    graph read a name nothing defines, "Nodes in a graph must be topologically sorted"). Each renaming is one
    one-to-one substitution applied to every scope alike, definitions and uses, so that a name a subgraph defines
    for itself (shadowing an outer one or not) still refers to what it did."""
    graphs = all_graphs(model.graph)

    def values(graph: Any) -> list[Any]:
        return [*graph.input, *graph.output, *graph.value_info, *graph.initializer]

    def apply(renames: dict[str, str]) -> None:
        for graph in graphs:
            for node in graph.node:
                node.input[:] = [renames.get(name, name) for name in node.input]
                node.output[:] = [renames.get(name, name) for name in node.output]
            for value in values(graph):
                value.name = renames.get(value.name, value.name)
            for sparse in graph.sparse_initializer:
                sparse.values.name = renames.get(sparse.values.name, sparse.values.name)
            for annotation in graph.quantization_annotation:
                annotation.tensor_name = renames.get(annotation.tensor_name, annotation.tensor_name)

    def used() -> set[str]:
        return {
            name
            for graph in graphs
            for name in [
                *(name for node in graph.node for name in (*node.input, *node.output)),
                *(value.name for value in values(graph)),
                *(sparse.values.name for sparse in graph.sparse_initializer),
            ]
        }

    temporary = {old: f"__io_{index}" for index, old in enumerate(names)}
    apply(temporary)
    taken = used()
    inner = {}
    for name in sorted(taken & set(names.values())):
        fresh = f"{name}__inner"
        while fresh in taken or fresh in names.values():
            fresh += "_"
        inner[name] = fresh
        taken.add(fresh)
    apply(inner)
    apply({temporary[old]: new for old, new in names.items()})
