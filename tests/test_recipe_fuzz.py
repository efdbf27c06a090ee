"""Fuzzed recipes: whatever the file holds, ``edgecraft recipe validate`` answers exit 0, or exit 2 with one
``file:line: field: problem`` line per problem, quickly; a recipe that validates also gets through the run's
preparation of settings and folders.

Recipes are drawn from the known fields (pass options from each pass's JSON Schema, targets from the target
registry) and then mutated: a value replaced by a wrong type, an out-of-range number or an odd name, a key
dropped or unknown, and YAML-only traps (alias bombs, self-referencing aliases, duplicate keys, deep nesting,
tagged scalars that cannot be read).
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from edgecraft.bench.settings import BenchmarkSpec
from edgecraft.cli import main
from edgecraft.compress import registry as pass_registry
from edgecraft.compress.zoo import REFERENCE_MODELS
from edgecraft.recipe.load import load_recipe
from edgecraft.runner import bench_settings

# The files a drawn recipe may name, next to it (tests/test_recipe.py checks the error for each broken one).
FILES = ["tiny.onnx", "broken.onnx", "data.npz", "broken.npz", "absent.onnx"]
TARGETS = ["onnxruntime:cpu", "openvino:cpu", "litert:cpu", "openvino:cpu[inference_precision=f16]"]

SLUG = st.from_regex(r"[a-z][a-z0-9_.-]{0,8}", fullmatch=True)
ODD_NAMES = st.one_of(
    st.sampled_from(
        [
            "",
            ".",
            "..",
            "../x",
            "../../../../tmp/escaped",
            "a/b",
            "a\\b",
            "/abs",
            "~",
            "-x",
            ".hidden",
            "ü",
            "名前",
            "a b",
            "a\nb",
            "a\0b",
            "x" * 300,
            "CON",
            "models",
        ]
    ),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
)
ODD_NUMBERS = st.sampled_from(
    [-1, 0, 1, 2**31, 2**32, 2**64, 10**30, -(10**30), math.inf, -math.inf, math.nan, 1e-320, 1e308, 0.5, -0.5]
)
HOSTILE = st.one_of(
    ODD_NUMBERS,
    ODD_NAMES,
    st.booleans(),
    st.none(),
    st.just([]),
    st.just({}),
    st.lists(st.integers(-5, 5000), max_size=3),
    st.dictionaries(SLUG, st.integers(), max_size=2),
)


def from_schema(schema: dict[str, Any], definitions: dict[str, Any]) -> st.SearchStrategy:
    """Values a JSON Schema property allows (within small bounds), for the fields of pass options and settings."""
    if "$ref" in schema:
        return from_schema(definitions[schema["$ref"].rpartition("/")[2]], definitions)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([from_schema(option, definitions) for option in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1)
        return st.integers(low, min(schema.get("maximum", low + 300), low + 300))
    if kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0.0))
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 10.0))
        return st.floats(low, high, exclude_min="exclusiveMinimum" in schema, exclude_max="exclusiveMaximum" in schema)
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        return SLUG
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), definitions), min_size=1, max_size=3)
    if kind == "null":
        return st.none()
    return st.nothing()


def options_of(model: Any, required: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """An entry of a pydantic model: ``required`` plus any of its other fields, drawn from its JSON Schema."""
    schema = model.model_json_schema()
    optional = {
        name: from_schema(prop, schema.get("$defs", {}))
        for name, prop in schema["properties"].items()
        if name not in required
    }
    return st.fixed_dictionaries(required, optional={k: v for k, v in optional.items() if not v.is_empty})


PASS_ENTRIES = st.one_of(
    [
        options_of(model, {"type": st.just(model.model_fields["type"].default)})
        for model in pass_registry.config_models()
    ]
)
EVALUATORS = st.sampled_from(["classification", "agreement", "embedding", "regression", "tests.helpers:mean_output"])
FACTORY = st.fixed_dictionaries(
    {"factory": st.just("tests.helpers:tiny_net")},
    optional={
        "input_shape": st.lists(st.integers(1, 16), min_size=1, max_size=3),
        "inputs": st.lists(
            st.fixed_dictionaries(
                {"name": SLUG, "shape": st.lists(st.integers(1, 16) | SLUG, max_size=3)},
                optional={
                    "dtype": st.sampled_from(["float32", "int64"]),
                    "range": st.tuples(st.floats(-1, 0), st.floats(0, 1)),
                },
            ),
            min_size=1,
            max_size=2,
        ),
        "outputs": st.lists(
            SLUG
            | st.fixed_dictionaries(
                {"name": SLUG}, optional={"kind": st.sampled_from(["scores", "embedding", "values"])}
            ),
            max_size=2,
        ),
        "weights": st.sampled_from(FILES),
        "evaluator": EVALUATORS | st.fixed_dictionaries({"type": EVALUATORS}, optional={"k": st.integers(1, 10)}),
    },
)
MODELS = st.one_of(
    st.fixed_dictionaries({"builtin": st.sampled_from(list(REFERENCE_MODELS))}),
    FACTORY,
    st.fixed_dictionaries({"onnx": st.sampled_from(FILES)}),
).flatmap(lambda model: st.fixed_dictionaries({k: st.just(v) for k, v in model.items()}, optional={"name": SLUG}))
TARGET_ENTRIES = st.sampled_from(TARGETS[:3]) | st.fixed_dictionaries(
    {"target": st.sampled_from(TARGETS[:3])},
    optional={"options": st.fixed_dictionaries({}, optional={"inference_precision": st.sampled_from(["f32", "f16"])})},
)
VARIANTS = st.fixed_dictionaries(
    {"name": SLUG},
    optional={
        "passes": st.lists(PASS_ENTRIES, max_size=2),
        "targets": st.lists(st.sampled_from(TARGETS), min_size=1, max_size=2, unique=True),
    },
)


def recipes() -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {
            "name": SLUG,
            "models": st.lists(MODELS, min_size=1, max_size=2),
            "variants": st.lists(VARIANTS, min_size=1, max_size=3, unique_by=lambda variant: variant["name"]),
        },
        optional={
            "data": st.fixed_dictionaries(
                {},
                optional={
                    "source": st.sampled_from(
                        ["auto", "digits", "data.npz", "broken.npz", "tests.helpers:random_data"]
                    ),
                    "seed": st.integers(0, 2**32 - 1),
                    "splits": st.fixed_dictionaries(
                        {
                            "train": st.floats(0, 0.5),
                            "calibration": st.floats(0.01, 0.25),
                            "evaluation": st.floats(0.01, 0.25),
                        }
                    ),
                },
            ),
            "passes": st.lists(PASS_ENTRIES, max_size=1),
            "targets": st.lists(TARGET_ENTRIES, min_size=1, max_size=3, unique_by=str),
            "benchmark": options_of(BenchmarkSpec, {}),
            "report": st.fixed_dictionaries({}, optional={"max_accuracy_drop": st.floats(0, 0.5)}),
            "output_dir": st.just("runs"),
        },
    )


def paths_in(value: Any, path: tuple = ()) -> list[tuple]:
    """Every place in a drawn recipe a mutation may hit (the root excluded)."""
    found = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths_in(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths_in(item, (*path, index))
    return found


def mutate(data: st.DataObject, recipe: dict) -> None:
    """Replace a value, drop a key or add an unknown one, somewhere in the recipe."""
    path = data.draw(st.sampled_from(paths_in(recipe)))
    parent = recipe
    for part in path[:-1]:
        parent = parent[part]
    action = data.draw(st.sampled_from(["replace", "drop", "unknown key"]))
    if action == "replace" or not isinstance(parent, dict):
        parent[path[-1]] = data.draw(HOSTILE)
    elif action == "drop":
        del parent[path[-1]]
    else:
        parent[data.draw(ODD_NAMES)] = data.draw(HOSTILE)


def alias_bomb(levels: int, fanout: int) -> str:
    lines = [f"  l0: &l0 [{', '.join(['lol'] * fanout)}]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]" for i in range(1, levels)]
    return "extra:\n" + "\n".join(lines) + "\n"


# Text appended to the YAML, for what a dict cannot hold.
YAML_TRAPS = st.one_of(
    st.builds(alias_bomb, st.integers(1, 7), st.integers(2, 12)),
    st.just("extra: &a [*a]\n"),
    st.just("extra: &a {b: *a}\n"),
    st.just("variants: [{name: again}]\n"),  # a key given twice
    st.just("name: twice\n"),
    st.integers(1, 200).map(lambda depth: "extra: " + "[" * depth + "]" * depth + "\n"),
    st.sampled_from(
        [
            "extra: 2024-13-45\n",
            "extra: !!bool maybe\n",
            "extra: !!int 0x\n",
            "extra: !!float abc\n",
            "extra: !!binary '???'\n",
            "extra: !!python/name:os.system\n",
            "? [a]\n: b\n",
            "extra: *nowhere\n",
            "---\nname: second\n",
            'extra: "\\0"\n',
            "extra: [unclosed\n",
        ]
    ),
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the files that drawn recipes name: good and broken models and data."""
    folder = tmp_path_factory.mktemp("fuzz")
    tensor = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4]) for name in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "tiny", [tensor[0]], [tensor[1]])
    onnx.save(helper.make_model(graph), folder / "tiny.onnx")
    (folder / "broken.onnx").write_text("not a model")
    np.savez(folder / "data.npz", input=np.zeros((4, 1, 16, 16), np.float32))
    (folder / "broken.npz").write_text("not an archive")
    return folder


# file:line[:column]: field: problem
ERROR_LINE = re.compile(r":\d+(:\d+)?: \S.*: \S")


def test_fuzzed_recipes_validate_or_fail_in_one_line_per_problem(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    timings: list[float] = []
    valid: list[str] = []
    path = workspace / "recipe.yaml"
    run_dir = (workspace / "runs" / "run").resolve()

    @settings(max_examples=500, deadline=None, database=None)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        recipe = data.draw(recipes())
        for _ in range(data.draw(st.integers(0, 2))):
            mutate(data, recipe)
        text = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
        text += data.draw(st.one_of(st.just(""), YAML_TRAPS))
        path.write_text(text, encoding="utf-8")

        started = time.perf_counter()
        code = main(["recipe", "validate", str(path)])
        timings.append(time.perf_counter() - started)
        out, err = capsys.readouterr()
        assert timings[-1] < 5, "a hang guard, not a performance figure"
        assert "Traceback" not in err
        if code == 2:
            lines = err.splitlines()
            assert lines and lines[0].startswith(f"error: {path}:"), err
            for line in [lines[0].removeprefix("error: "), *lines[1:]]:
                assert line.startswith(f"{path}:") and ERROR_LINE.match(line[len(str(path)) :]), line
            return
        assert code == 0 and out.startswith(f"{path}: ok") and not err, (code, out, err)
        valid.append(text)
        prepare(load_recipe(path)[0], run_dir)

    check()
    with capsys.disabled():
        print(f"\n{len(timings)} fuzzed recipes, {len(valid)} valid; slowest validation {max(timings):.3f} s")
    assert len(timings) >= 500 and valid  # the strategy must also reach valid recipes to test the preparation


def prepare(recipe: Any, run_dir: Path) -> None:
    """What a run does before it trains or exports anything: settle the protocol and name its folders."""
    for profile in (None, "quick", "rigorous"):  # --quick and --rigorous replace the recipe's phase settings
        bench_settings(recipe.benchmark, profile)
    assert (run_dir.parent / f"{recipe.name}-20250101-000000").resolve().parent == run_dir.parent
    for model in recipe.models:
        for variant in recipe.variants:
            folder = (run_dir / "models" / model.display_name / variant.name).resolve()
            assert folder.is_relative_to(run_dir / "models") and folder.parent.parent == run_dir / "models"
    assert all(recipe.targets_for(variant) for variant in recipe.variants)  # every variant gives rows
