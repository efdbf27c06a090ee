"""Writing the files of a run folder so that a reader, or a run killed halfway, never sees half a file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a uniquely named temporary file in the same folder, then
    ``os.replace`` it: ``path`` holds either its old content or the whole new one, even if the writer dies.

    Same folder, because a rename is atomic only within one file system; a unique name, because two writers
    sharing a fixed temporary name would mix their bytes. Returns ``path``."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with temporary.open("x", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
