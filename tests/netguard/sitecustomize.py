"""A network guard for tests, loaded by every Python process that has this folder first on ``PYTHONPATH``.

``tests/test_offline.py`` runs the CLI with this folder on ``PYTHONPATH`` and ``EDGECRAFT_NETGUARD_LOG`` set; the
CLI's own child processes (benchmark workers, which add to ``PYTHONPATH`` and keep the environment) load it too.
Every attempt to reach the network from Python — ``connect`` / ``connect_ex`` / ``sendto`` on a socket that is
not ``AF_UNIX``, a name lookup (``getaddrinfo``, ``gethostbyname``, ``gethostbyname_ex``, ``gethostbyaddr``) of a
host other than this machine — is appended to that file (pid, what, where, the caller's stack) and fails with
``ConnectionRefusedError``, as it would on an offline machine. Native code that opens sockets without Python
(a C++ runtime's own HTTP client) is outside what this sees.
"""

from __future__ import annotations

import errno
import os
import socket
import traceback

_LOG = os.environ.get("EDGECRAFT_NETGUARD_LOG")
_LOCAL_HOSTS = {None, "", "localhost", "localhost.localdomain", "ip6-localhost", socket.gethostname()}


def _is_local(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if host in _LOCAL_HOSTS:
        return True
    text = str(host)
    return text.startswith("127.") or text in {"::1", "0.0.0.0", "::"}


def _refuse(what: str, where: object) -> ConnectionRefusedError:
    stack = "".join(traceback.format_stack()[:-2])
    if _LOG:
        with open(_LOG, "a", encoding="utf-8") as log:
            log.write(f"--- pid {os.getpid()}: {what} {where!r}\n{stack}")
    return ConnectionRefusedError(f"network access blocked by tests/netguard: {what} {where!r}")


def _guard_socket_method(name: str, address_index: int) -> None:
    original = getattr(socket.socket, name)

    def guarded(self: socket.socket, *args: object) -> object:
        if self.family != getattr(socket, "AF_UNIX", None):
            refused = _refuse(f"socket.{name}", args[address_index] if args else args)
            if name == "connect_ex":  # it reports an error number rather than raising
                return errno.ECONNREFUSED
            raise refused
        return original(self, *args)

    setattr(socket.socket, name, guarded)


def _guard_lookup(name: str) -> None:
    original = getattr(socket, name)

    def guarded(host: object, *args: object, **kwargs: object) -> object:
        if not _is_local(host):
            raise _refuse(f"socket.{name}", host)
        return original(host, *args, **kwargs)

    setattr(socket, name, guarded)


if _LOG:
    _guard_socket_method("connect", 0)
    _guard_socket_method("connect_ex", 0)
    _guard_socket_method("sendto", -1)  # sendto(data, address) or sendto(data, flags, address)
    for _name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
        _guard_lookup(_name)
