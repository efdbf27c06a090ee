"""The Python API with in-memory objects: a ``torch.nn.Module`` and data given as named arrays or a torch
``Dataset``, no file and no ``module:function``. They run like a factory model (signature, evaluator, every
target), are stored as descriptions, never in the schema, and key the step cache by their content."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

import edgecraft
from edgecraft.recipe.load import load_recipe
from edgecraft.recipe.schema import recipe_json_schema
from edgecraft.reports.results_file import load_results
from edgecraft.targets import registry as target_registry

QUICK = {"profile": "quick", "batch_sizes": [1], "operator_profile": False}


class TwoInTwoOut(nn.Module):
    """An image and a feature vector in; class scores and one value out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.tabular = nn.Linear(4, 8)
        self.classes = nn.Linear(16, 3)
        self.value = nn.Linear(16, 1)

    def forward(self, image: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.cat([self.conv(image), torch.relu(self.tabular(features))], dim=1)
        return self.classes(hidden), self.value(hidden)


def make_net(seed: int = 0) -> TwoInTwoOut:
    torch.manual_seed(seed)
    return TwoInTwoOut()


def make_arrays(count: int = 90, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "image": rng.normal(size=(count, 3, 16, 16)).astype(np.float32),
        "features": rng.normal(size=(count, 4)).astype(np.float32),
    }
    return arrays, np.arange(count) % 3


class PairDataset(torch.utils.data.Dataset):
    """Items ((image, features), label), as a torchvision-style dataset gives them."""

    def __init__(self, arrays: dict[str, np.ndarray], labels: np.ndarray) -> None:
        self.arrays, self.labels = arrays, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return (
            (torch.from_numpy(self.arrays["image"][index]), torch.from_numpy(self.arrays["features"][index])),
            int(self.labels[index]),
        )


class DictDataset(PairDataset):
    """Items {'image': ..., 'features': ..., 'labels': ...}."""

    def __getitem__(self, index: int):
        return {
            "image": torch.from_numpy(self.arrays["image"][index]),
            "features": torch.from_numpy(self.arrays["features"][index]),
            "labels": torch.tensor(self.labels[index]),
        }


def recipe_for(
    net: nn.Module, data: edgecraft.Data, variants: list, targets: list[str], name: str = "mine", **model: object
) -> edgecraft.Recipe:
    return edgecraft.Recipe(
        name=name,
        models=[edgecraft.Model(module=net, **model)],
        data=data,
        variants=variants,
        targets=targets,
        benchmark=QUICK,
    )


def available(*labels: str) -> list[str]:
    return [
        label
        for label in labels
        if target_registry.get(label.split(":")[0]).unavailable_reason(label.split(":")[1]) is None
    ]


def test_module_and_arrays_on_every_target(tmp_path: Path) -> None:
    net = make_net()
    net.train()
    before = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    arrays, labels = make_arrays()
    targets = available("onnxruntime:cpu", "openvino:cpu", "litert:cpu")
    variants = [
        {"name": "fp32"},
        {"name": "int8-static", "passes": [{"type": "quantize.static"}]},
        {"name": "int8-dynamic", "passes": [{"type": "quantize.dynamic"}], "targets": ["onnxruntime:cpu"]},
    ]
    if "litert:cpu" in targets:
        variants.append({"name": "tflite-int8", "passes": [{"type": "convert.tflite", "quantization": "int8"}]})
    recipe = recipe_for(
        net,
        edgecraft.Data(arrays=arrays, targets=labels),
        variants,
        targets,
        outputs=["logits", {"name": "value", "kind": "values"}],
        evaluator={"type": "classification", "outputs": ["logits"]},
    )
    run = edgecraft.run(recipe, output_dir=tmp_path)

    assert {row.target for row in run.rows} == set(targets) and len(run.rows) >= 4
    assert all(row.status == "ok" for row in run.rows), [(r.variant, r.target, r.reason) for r in run.rows]
    assert all(row.measurement.accuracy is not None for row in run.rows)
    for row in run.rows:  # both outputs are compared with the fp32 PyTorch model, by name, on every runtime
        assert set(row.measurement.fidelity.outputs) == {"logits", "value"}, row.target
    model = run.results.models[0]
    assert model.name == "TwoInTwoOut" and model.source == f"in-memory:{__name__}.TwoInTwoOut"
    assert model.signature.input_names == ["image", "features"]  # forward()'s order
    assert model.signature.output_names == ["logits", "value"]
    assert model.signature.inputs[0].layout == "NCHW"
    # The user's module is untouched: a copy was exported, put in eval mode and quantized.
    assert net.training and all(torch.equal(net.state_dict()[name], before[name]) for name in before)
    # Stored as descriptions, in results.json and the run's recipe.yaml; never as pickles.
    stored = json.loads((run.run_dir / "results.json").read_text())["recipe"]
    assert stored["models"][0]["module"].startswith("<in-memory torch.nn.Module TwoInTwoOut, ")
    assert "sha256 of weights" in stored["models"][0]["module"]
    assert stored["data"]["arrays"].startswith("<in-memory arrays image float32 [90, 3, 16, 16], features ")
    assert stored["data"]["targets"].startswith("<in-memory array int64 [90]")
    assert "dataset" not in stored["data"] and "source" not in stored["data"]
    text = (run.run_dir / "recipe.yaml").read_text()
    assert yaml.safe_load(text)["models"][0]["module"] == stored["models"][0]["module"]
    assert load_results(run.run_dir) == run.results


@pytest.mark.parametrize("dataset_type", [PairDataset, DictDataset])
def test_a_torch_dataset(tmp_path: Path, dataset_type: type) -> None:
    arrays, labels = make_arrays(60)
    recipe = recipe_for(
        make_net(),
        edgecraft.Data(dataset=dataset_type(arrays, labels)),
        [{"name": "int8-dynamic", "passes": [{"type": "quantize.dynamic"}]}],
        ["onnxruntime:cpu"],
        outputs=["logits", "value"],
    )
    run = edgecraft.run(recipe, output_dir=tmp_path)
    assert [row.status for row in run.rows] == ["ok"], run.rows[0].reason
    model = run.results.models[0]
    assert model.signature.input_names == ["image", "features"]  # named after forward()'s parameters
    assert run.rows[0].measurement.accuracy is not None  # the labels came through: classification
    assert run.results.recipe["data"]["dataset"] == f"<in-memory torch Dataset {dataset_type.__qualname__}, 60 items>"
    # The same samples as the arrays they were read from: the same evaluation data.
    from_arrays = edgecraft.run(
        recipe_for(
            make_net(),
            edgecraft.Data(arrays=arrays, targets=labels),
            [{"name": "fp32"}],
            ["onnxruntime:cpu"],
            outputs=["logits", "value"],
        ),
        output_dir=tmp_path,
    )
    assert from_arrays.results.models[0].evaluation_data == model.evaluation_data


def test_changed_weights_recompute_the_steps(tmp_path: Path) -> None:
    arrays, labels = make_arrays(60)
    variants = [{"name": "int8-dynamic", "passes": [{"type": "quantize.dynamic"}]}]
    shared = [{"type": "prune.unstructured", "sparsity": 0.3}]

    def run_with(net: nn.Module) -> edgecraft.Run:
        recipe = edgecraft.Recipe(
            name="cache",
            models=[edgecraft.Model(module=net, outputs=["logits", "value"])],
            data=edgecraft.Data(arrays=arrays, targets=labels),
            passes=shared,
            variants=variants,
            targets=["onnxruntime:cpu"],
            benchmark=QUICK,
        )
        return edgecraft.run(recipe, output_dir=tmp_path)

    def cached(run: edgecraft.Run) -> list[bool]:
        return [record.cached for record in run.results.passes]

    net = make_net(seed=1)
    first = run_with(net)
    assert cached(first) == [False, False] and first.rows[0].status == "ok"
    # Another object with the same weights and architecture is the same model: every step is reused.
    assert cached(run_with(make_net(seed=1))) == [True, True]
    # One weight changed in place, on the very object that ran: no stale step is reused.
    with torch.no_grad():
        net.classes.weight[0, 0] += 0.5
    changed = run_with(net)
    assert cached(changed) == [False, False]
    assert changed.rows[0].sha256 != first.rows[0].sha256
    # The same weights in another architecture (a module setting that has no weights) is another model.
    other = make_net(seed=1)
    other.conv[2] = nn.ReLU6()
    assert cached(run_with(other)) == [False, False]
    # Changed data is another step input too.
    arrays["features"] = arrays["features"] + 1
    assert cached(run_with(make_net(seed=1))) == [False, False]


def test_the_schema_has_no_python_object_field() -> None:
    schema = recipe_json_schema()
    definitions = schema["$defs"]
    assert "module" not in definitions["ModelSpec"]["properties"]
    assert {"arrays", "targets", "dataset"}.isdisjoint(definitions["DataSpec"]["properties"])
    assert "source" in definitions["DataSpec"]["properties"] and "factory" in definitions["ModelSpec"]["properties"]
    # A recipe without in-memory objects dumps exactly as before: no empty in-memory fields.
    recipe = edgecraft.Recipe.from_yaml(Path(__file__).parent.parent / "recipes" / "quickstart.yaml")
    dumped = recipe.model_dump(mode="json")
    assert "module" not in dumped["models"][0] and not {"arrays", "targets", "dataset"} & set(dumped["data"])


def test_yaml_cannot_give_an_in_memory_field(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\nmodels:\n  - module: mypkg.models:build\nvariants: [{name: fp32}]\n")
    with pytest.raises(edgecraft.EdgecraftError) as error:
        load_recipe(path)
    assert str(error.value) == (
        f"{path}:3: models[0].module: expected a torch.nn.Module object, got str (in a YAML "
        "recipe, name a function that builds it: factory: 'package.module:function') "
        "(got 'mypkg.models:build')"
    )


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_bad_python_objects_are_one_line_errors(tmp_path: Path) -> None:
    arrays, labels = make_arrays(30)
    with pytest.raises(edgecraft.EdgecraftError) as error:
        edgecraft.Model(module=nn.Linear)  # the class, not a module
    assert one_line(error) == "model.module: expected a torch.nn.Module object, got type"
    with pytest.raises(edgecraft.EdgecraftError) as error:
        edgecraft.Recipe(name="x", models=[{"module": make_net().state_dict()}], variants=[{"name": "fp32"}])
    assert one_line(error) == "models[0].module: expected a torch.nn.Module object, got OrderedDict"
    with pytest.raises(edgecraft.EdgecraftError) as error:
        edgecraft.Data(arrays={"image": arrays["image"], "features": arrays["features"][:29]})
    assert one_line(error) == (
        "data: arrays of different lengths: every array needs the same number of samples "
        "(first dimension), got {'image': 30, 'features': 29}"
    )
    with pytest.raises(edgecraft.EdgecraftError) as error:
        edgecraft.Data(arrays=arrays, targets=labels[:10])
    assert "got {'image': 30, 'features': 30, 'targets': 10}" in one_line(error)
    with pytest.raises(edgecraft.EdgecraftError) as error:
        edgecraft.Data(dataset=arrays)
    assert one_line(error).startswith("data.dataset: expected a torch.utils.data.Dataset, got dict")
    with pytest.raises(edgecraft.EdgecraftError) as error:
        edgecraft.Data(arrays=arrays, source="digits")
    assert one_line(error) == "data: give one of source, arrays or dataset (got source, arrays)"
    with pytest.raises(edgecraft.EdgecraftError) as error:
        edgecraft.Model(module=make_net(), factory="pkg.models:build")
    assert one_line(error) == "model: give exactly one of builtin, factory, onnx or module (got ['factory', 'module'])"

    # A missing input: the model's forward() takes (image, features).
    recipe = recipe_for(
        make_net(),
        edgecraft.Data(arrays={"image": arrays["image"]}, targets=labels),
        [{"name": "fp32"}],
        ["onnxruntime:cpu"],
    )
    with pytest.raises(edgecraft.EdgecraftError) as error:
        edgecraft.run(recipe, output_dir=tmp_path)
    assert one_line(error) == (
        "the model's forward() takes (image, features); the data has ['image'], with no features"
    )
    # Declared inputs: the data must hold each by name.
    declared = [{"name": "image", "shape": ["batch", 3, 16, 16]}, {"name": "features", "shape": ["batch", 4]}]
    recipe = recipe_for(
        make_net(),
        edgecraft.Data(arrays={"image": arrays["image"], "extra": arrays["features"]}),
        [{"name": "fp32"}],
        ["onnxruntime:cpu"],
        inputs=declared,
    )
    with pytest.raises(edgecraft.EdgecraftError) as error:
        edgecraft.run(recipe, output_dir=tmp_path)
    assert "features" in one_line(error) and "data.arrays" in one_line(error)


def test_dataset_items_of_different_forms_are_named(tmp_path: Path) -> None:
    class Ragged(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int):
            return torch.zeros(3, 16 + index, 16), 0

    recipe = recipe_for(make_net(), edgecraft.Data(dataset=Ragged()), [{"name": "fp32"}], ["onnxruntime:cpu"])
    with pytest.raises(edgecraft.EdgecraftError) as error:
        edgecraft.run(recipe, output_dir=tmp_path)
    assert one_line(error) == (
        "data.dataset (test_dataset_items_of_different_forms_are_named.<locals>.Ragged): input "
        "'image': item 1 has shape [3, 17, 16], item 0 [3, 16, 16]: items must have one shape "
        "(pad sequences to one length)"
    )
