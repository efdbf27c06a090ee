"""edgecraft: compress PyTorch models for edge devices, export them to every runtime and measure them.

    import edgecraft
    run = edgecraft.run(edgecraft.Recipe.from_yaml("recipes/quickstart.yaml"), profile="quick")
    run.verdict(); run.to_pandas(); run.report_path

    # your own torch.nn.Module and data, in memory (no file, no module:function)
    recipe = edgecraft.Recipe(name="mine", models=[edgecraft.Model(module=net)],
                              data=edgecraft.Data(arrays={"x": x}, targets=y),
                              variants=[{"name": "fp32"}, {"name": "int8", "passes": [{"type": "quantize.static"}]}])

Everything not listed in ``__all__`` is private. Names are imported on first use, so ``import edgecraft`` stays
cheap (no torch, no runtime).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

# OpenVINO sends a usage event to Google Analytics at every `import openvino`, NNCF at every quantize call, unless
# the user opted out; edgecraft opens no connection at run time. Both fall back to no-op stubs when this package
# cannot be imported, which a None entry in sys.modules makes so (tests/test_offline.py holds it).
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]

__all__ = ["Data", "EdgecraftError", "Model", "Recipe", "Run", "run"]

# public name -> (module, name there): Model and Data are the recipe's ModelSpec and DataSpec
_WHERE = {
    "Data": ("edgecraft.recipe.schema", "DataSpec"),
    "EdgecraftError": ("edgecraft.core.errors", "EdgecraftError"),
    "Model": ("edgecraft.recipe.schema", "ModelSpec"),
    "Recipe": ("edgecraft.recipe.schema", "Recipe"),
    "Run": ("edgecraft.api", "Run"),
    "run": ("edgecraft.api", "run"),
}

if TYPE_CHECKING:
    from edgecraft.api import Run, run
    from edgecraft.core.errors import EdgecraftError
    from edgecraft.recipe.schema import DataSpec as Data
    from edgecraft.recipe.schema import ModelSpec as Model
    from edgecraft.recipe.schema import Recipe


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'edgecraft' has no attribute {name!r}")
    import importlib

    module, attribute = _WHERE[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
