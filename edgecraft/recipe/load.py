"""``load_recipe``: a recipe file read, validated, and every problem turned into ``file:line: field: problem``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from edgecraft.core.errors import EdgecraftError
from edgecraft.recipe.schema import Recipe
from edgecraft.recipe.yaml_loader import locate, one_line, parse, yaml_error


def load_recipe(path: Path) -> tuple[Recipe, str]:
    """Read and validate a recipe file; return it with its text (stored verbatim in results).

    Every problem is one line ``file:line: field: problem``; several problems are several lines."""
    path = Path(path)
    if not path.is_file():
        raise EdgecraftError(f"{path}: recipe file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise EdgecraftError(f"{path}: cannot read the recipe: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise EdgecraftError(f"{path}: a recipe must be UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data, lines = parse(text)
    except yaml.YAMLError as exc:
        raise EdgecraftError(one_line(yaml_error(path, text, exc))) from None
    if not isinstance(data, dict):
        raise EdgecraftError(
            f"{path}:{lines.get((), 1)}: recipe: must be a YAML mapping (name, models, variants, "
            f"...), got {type(data).__name__}"
        )
    try:
        recipe = Recipe.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        messages: dict[tuple[int, str], str] = {}
        for error in exc.errors(include_url=False):
            field, line = locate(error["loc"], lines, missing=error["type"] == "missing")
            where = f"{path}:{line}" if line else str(path)
            problem = error["msg"].removeprefix("Value error, ")
            quoted = error["type"] != "missing" and _short(error["input"]) and f"got {error['input']!r}" not in problem
            got = f" (got {error['input']!r})" if quoted else ""
            # The branches of a union each report the same value: its first complaint is enough.
            messages.setdefault((line or 0, field), one_line(f"{where}: {field}: {problem}{got}"))
        # A branch that rejects a value whole ("not a string") beside one that finds a problem inside it: the inner.
        inner = {field for _, field in messages}
        shown = [
            message
            for (_, field), message in sorted(messages.items())
            if not any(other.startswith((f"{field}.", f"{field}[")) for other in inner)
        ]
        raise EdgecraftError("\n".join(shown)) from None
    return recipe, text


def _short(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) and len(repr(value)) <= 60
