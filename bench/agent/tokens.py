"""The agent's secrets on disk: how strong a token is, and files that only their owner may read.

Standard library only: ``edgecraft agent serve`` checks the token before it imports anything else.
"""

from __future__ import annotations

import math
import os
import secrets
import stat
import string
from pathlib import Path

MIN_TOKEN_BITS = 128
_URL_SAFE = set(string.ascii_letters + string.digits + "-_")


def token_bits(token: str) -> float:
    """A token's strength as if each character were drawn at random from the smallest alphabet that holds them
    all: hex digits (4 bits each), URL-safe base64 (6 bits), printable ASCII (log2 94 bits)."""
    if all(character in string.hexdigits for character in token):
        alphabet = 16
    elif all(character in _URL_SAFE for character in token):
        alphabet = 64
    else:
        alphabet = 94
    return len(token) * math.log2(alphabet)


def check_token(token: str, where: str) -> None:
    """``ValueError`` unless ``token`` carries at least ``MIN_TOKEN_BITS`` bits."""
    bits = token_bits(token)
    if bits < MIN_TOKEN_BITS:
        raise ValueError(
            f"the token in {where} is too short ({len(token)} characters, about {bits:.0f} bits): it needs at "
            f"least {MIN_TOKEN_BITS} bits, i.e. at least 32 hex digits or 22 URL-safe characters; make one with "
            "`edgecraft agent token`"
        )


def check_private(path: Path) -> None:
    """``ValueError`` unless only its owner may read or write ``path`` (a token or a private key)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(f"{path} is open to other users (mode {mode:o}): run: chmod 600 {path}")


def new_token() -> str:
    """256 random bits as 43 URL-safe characters."""
    return secrets.token_urlsafe(32)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from its first byte (never readable by others, not even for a
    moment), through a temporary file renamed over it: a crash leaves the old file or the new one."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
