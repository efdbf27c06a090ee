"""Model-file formats: what a file of each format is called, which files make one artifact, how its first bytes
look and which runtimes load it. A new format is one module in this package with a registered ``ModelFormat``.

Everything that meets a model file reads these facts from here: the targets (which formats a runtime loads, the
files that travel with a runnable model), ``edgecraft bench`` on a file (the format by suffix, the default
runtime), the remote devices (the format a job declares) and the agent (the names a job's files get, the format
its first bytes must show). Files are recognised by their first bytes, never parsed: the agent has no ``onnx``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from edgecraft.core.registry import Registry

# How many first bytes ``identify`` reads: enough for an OpenVINO IR's XML declaration and <net> tag.
HEAD_BYTES = 4096


@dataclass(frozen=True)
class Companion:
    """A file beside the main one that belongs to the same artifact: the main file's name with this suffix."""

    suffix: str
    required: bool
    what: str


class ModelFormat:
    """One file format; subclasses set the class variables, implement ``matches`` and register themselves."""

    name: ClassVar[str]
    description: ClassVar[str]  # "an ONNX model": the end of "it looks like …"
    suffix: ClassVar[str]  # of the main file, the one a runtime is given
    companions: ClassVar[tuple[Companion, ...]] = ()
    runtimes: ClassVar[tuple[str, ...]]  # the runtimes that load it; the first is a file's default
    # Checked before formats whose bytes are only a heuristic: a fixed identifier cannot be mistaken.
    exact_magic: ClassVar[bool] = True

    @classmethod
    def matches(cls, head: bytes) -> bool:
        """Whether a file's first ``HEAD_BYTES`` bytes are this format's."""
        raise NotImplementedError

    @classmethod
    def files(cls, path: Path) -> list[Path]:
        """The files the artifact whose main file is ``path`` consists of (its size on disk is their sum)."""
        beside = [path.with_suffix(companion.suffix) for companion in cls.companions]
        return [
            path,
            *(file for file, companion in zip(beside, cls.companions) if companion.required or file.is_file()),
        ]

    @classmethod
    def missing(cls, path: Path) -> str | None:
        """What a main file lacks beside it to be loaded (a required companion), else ``None``."""
        for companion in cls.companions:
            if companion.required and not path.with_suffix(companion.suffix).is_file():
                return (
                    f"{cls.description} needs its {companion.what} {path.with_suffix(companion.suffix).name} beside it"
                )
        return None

    @classmethod
    def file_names(cls, stem: str = "model") -> tuple[str, ...]:
        """Generated names for the artifact's files, in ``files`` order (the agent never keeps a client's names)."""
        return (stem + cls.suffix, *(stem + companion.suffix for companion in cls.companions))

    @classmethod
    def least_files(cls) -> int:
        return 1 + sum(companion.required for companion in cls.companions)

    @classmethod
    def check_companions(cls, files: list[Path]) -> None:
        """Raise ``ValueError`` when a companion's content cannot be what it says (the main file is checked by
        ``identify``)."""


FORMATS: Registry[type[ModelFormat]] = Registry(
    "model format", "model formats", key=lambda cls: cls.name, package="edgecraft.core.formats"
)
register = FORMATS.register


def get(name: str) -> type[ModelFormat]:
    return FORMATS.get(name)


def for_path(path: Path) -> type[ModelFormat] | None:
    """The format a file's suffix names, or ``None``."""
    return next((fmt for fmt in FORMATS.items().values() if fmt.suffix == path.suffix.lower()), None)


def suffixes() -> list[str]:
    return [fmt.suffix for fmt in FORMATS.items().values()]


def loaded_by(runtime: str) -> tuple[str, ...]:
    """The formats ``runtime`` loads (or converts on export), by name."""
    return tuple(name for name, fmt in FORMATS.items().items() if runtime in fmt.runtimes)


def identify(head: bytes) -> type[ModelFormat] | None:
    """The format whose first bytes ``head`` shows, exact identifiers before heuristics; ``None`` if none."""
    ordered = sorted(FORMATS.items().values(), key=lambda fmt: not fmt.exact_magic)
    return next((fmt for fmt in ordered if fmt.matches(head)), None)


def read_head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(HEAD_BYTES)
