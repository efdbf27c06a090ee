"""Reading a recipe's YAML: PyYAML's safe loader, stricter, and recording the line of every field.

A key given twice, an alias inside the value it names and nesting or alias expansion past a bound are refused
with their line; ``locate`` turns a pydantic error location into the dotted field and the line to show.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol

import yaml


class _Mark(Protocol):
    """Where a construct is: PyYAML's Python parser and its C parser each have their own mark class."""

    line: int


class _Refused(yaml.YAMLError):
    """A YAML construct a recipe may not use, with where it is."""

    def __init__(self, mark: _Mark, field: tuple, problem: str) -> None:
        super().__init__(problem)
        self.line = mark.line + 1
        self.field = field
        self.problem = problem


_MAX_DEPTH = 32  # recipes nest a few levels; PyYAML's composer recurses once per level
# Values in the document with every alias written out. Aliases are shared, not copied, when YAML is read, but
# validation walks each use: ten-fold aliases nested six deep make 460 bytes a million values.
_MAX_VALUES = 100_000


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader minus what makes a recipe ambiguous or expensive, and recording each field's line.

    Refused: a key given twice (YAML would silently keep the last), an alias inside the value it names (a cycle),
    nesting deeper than ``_MAX_DEPTH``. Anchors and aliases are allowed (recipes share a pass's settings between
    variants with them); ``_parse`` bounds what they expand to.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.lines: dict[tuple, int] = {}  # field path -> 1-based line (a mapping value's: its key's line)
        self._fields: list[tuple] = [()]
        self._open_anchors: list[str] = []
        self._field_of: dict[int, tuple] = {}  # id(node) -> field path, to name the field of a bad scalar

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        field = self._fields[-1] + _path_part(index)
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) and event.anchor in self._open_anchors:
            assert event.start_mark is not None  # the parser marks every event it reads from the text
            raise _Refused(event.start_mark, field, f"alias *{event.anchor} is inside the value it names")
        if len(self._fields) > _MAX_DEPTH:
            raise _Refused(event.start_mark, field, f"nested deeper than {_MAX_DEPTH} levels")
        mark = index.start_mark if isinstance(index, yaml.Node) else event.start_mark
        self.lines.setdefault(field, mark.line + 1)
        anchor = None if isinstance(event, yaml.AliasEvent) else event.anchor
        self._fields.append(field)
        if anchor:
            self._open_anchors.append(anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._fields.pop()
            if anchor:
                self._open_anchors.pop()
        assert node is not None  # PyYAML's composer returns a node for every event it composes
        self._field_of.setdefault(id(node), field)
        return node

    # PyYAML's stubs type the anchor as a dict; the composer passes the anchor's name (or None).
    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:  # type: ignore[override]
        node = super().compose_mapping_node(anchor)  # type: ignore[arg-type]
        first: dict[tuple[str, str], yaml.Node] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                earlier = first.setdefault((key.tag, key.value), key)
                if earlier is not key:
                    raise _Refused(
                        key.start_mark,
                        self._fields[-1] + (key.value,),
                        f"given twice, on lines {earlier.start_mark.line + 1} and {key.start_mark.line + 1} "
                        "(YAML would silently keep only the last)",
                    )
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # noqa: BLE001 - PyYAML raises ValueError, KeyError... for a bad tagged scalar
            raise _Refused(
                node.start_mark,
                self._field_of.get(id(node), ()),
                f"cannot read {node.value!r} as {node.tag.rpartition(':')[2]}: {first_line(exc)}",
            ) from None


def _path_part(index: Any) -> tuple:
    """The path step PyYAML's composer is on: a sequence position, a mapping value's key, or none (a key)."""
    if isinstance(index, int):
        return (index,)
    if isinstance(index, yaml.ScalarNode):
        return (index.value,)
    return () if index is None else ("?",)


def dotted(path: tuple) -> str:
    """('variants', 1, 'passes') -> 'variants[1].passes'; a key that is not a plain word is quoted: ['a b']."""
    text = ""
    for part in path:
        if isinstance(part, int) or not re.fullmatch(r"[\w-]+", str(part)):
            text += f"[{part!r}]"
        else:
            text += f".{part}" if text else part
    return text or "recipe"


def locate(loc: tuple, lines: dict[tuple, int], missing: bool) -> tuple[str, int | None]:
    """Turn a pydantic error location into 'a.b[2].c' and the line of its deepest part present in the file."""
    path: tuple = ()
    shown: tuple = ()
    for position, part in enumerate(loc):
        present = (*path, part) in lines
        if present:
            path += (part,)
        # Parts absent from the file are pydantic's union tags (skipped) or the missing field (the last part).
        if present or (missing and position == len(loc) - 1):
            shown += (part,)
    return dotted(shown), lines.get(path)


def parse(text: str) -> tuple[Any, dict[tuple, int]]:
    """The YAML document and the line of each of its fields."""
    loader = _RecipeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, loader.lines
        _refuse_expansion(node)
        return loader.construct_document(node), loader.lines
    finally:
        loader.dispose()


def _refuse_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases, written out, exceed ``_MAX_VALUES``; counted once per distinct node."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            children = (
                [part for pair in node.value for part in pair]
                if isinstance(node, yaml.MappingNode)
                else (node.value if isinstance(node, yaml.SequenceNode) else [])
            )
            sizes[id(node)] = 1 + sum(size(child) for child in children)
        return sizes[id(node)]

    if size(root) > _MAX_VALUES:
        entries = root.value if isinstance(root, yaml.MappingNode) else [(None, root)]
        key, _ = max(entries, key=lambda pair: size(pair[1]))
        field = (key.value,) if isinstance(key, yaml.ScalarNode) else ()
        raise _Refused(
            key.start_mark if key else root.start_mark,
            field,
            f"its aliases expand to more than {_MAX_VALUES} values; write it out without nested aliases",
        )


def yaml_error(path: Path, text: str, exc: yaml.YAMLError) -> str:
    if isinstance(exc, _Refused):
        return f"{path}:{exc.line}: {dotted(exc.field)}: {exc.problem}"
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow; it has a position, no mark
        line = text.count("\n", 0, exc.position) + 1
        return f"{path}:{line}: malformed YAML: unacceptable character #x{exc.character:04x}"
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    return f"{where}: malformed YAML: {getattr(exc, 'problem', None) or first_line(exc)}"


def first_line(exc: BaseException) -> str:
    return next(iter(str(exc).strip().splitlines()), type(exc).__name__)


def one_line(text: str) -> str:
    """A file name or a value may hold a line break; the message must not."""
    return " ".join(text.splitlines())
