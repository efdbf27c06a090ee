"""``edgecraft agent serve | token | fingerprint``: the command line of the device agent.

Only the standard library at import time: the ``edgecraft`` command line imports this module on every start,
whatever the command.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path

from edgecraft.bench.agent.limits import Limits
from edgecraft.bench.agent.tokens import check_private, check_token, new_token, write_private

DEFAULT_PORT = 8765
TOKEN_VARIABLE = "EDGECRAFT_AGENT_TOKEN"


def add_agent_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``agent serve``, ``agent token`` and ``agent fingerprint`` on the command line's subcommands."""
    agent = commands.add_parser("agent", help="run the device agent that measures models sent to this machine")
    actions = agent.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    serve = actions.add_parser(
        "serve",
        help="serve benchmark jobs over HTTPS, one at a time",
        description="Measure model files that clients send (edgecraft's remote targets) with the benchmark "
        "protocol, one job at a time in fresh processes. Every request must carry the token as "
        f"'Authorization: Bearer TOKEN'; the token comes from --token-file (mode 600) or ${TOKEN_VARIABLE}, never "
        "from the command line (other users would see it in the process list). Off loopback the agent speaks TLS "
        "with a certificate of its own, made on its first start; it prints the certificate's fingerprint, which "
        "the device entry pins ('fingerprint: sha256:...').",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface, with TLS)",
    )
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)")
    _add_folder(serve)
    serve.add_argument(
        "--token-file", type=Path, metavar="PATH", help=f"file holding the token (else ${TOKEN_VARIABLE})"
    )
    serve.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="speak TLS (default: on unless --host is a loopback address)",
    )
    serve.add_argument(
        "--insecure-http",
        action="store_true",
        help="serve plain HTTP off loopback: the token crosses the network in clear text (a trusted network only)",
    )
    for name, kind, default, text in Limits.fields():
        serve.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            default=default,
            metavar=_metavar(name),
            help=f"{text}; default {default:g}",
        )
    serve.add_argument(
        "--emulated",
        metavar="REASON",
        help="declare this machine emulated (recorded with every result); detected for qemu-user",
    )
    serve.set_defaults(handler=_serve)

    token = actions.add_parser("token", help="make a new agent token (256 random bits)")
    token.add_argument(
        "--file",
        type=Path,
        metavar="PATH",
        help="write it to PATH, readable by you only (an existing file is kept); else print it",
    )
    token.set_defaults(handler=_new_token)

    fingerprint = actions.add_parser(
        "fingerprint", help="print the fingerprint of the agent's certificate, for a device entry's 'fingerprint:'"
    )
    _add_folder(fingerprint)
    fingerprint.set_defaults(handler=_fingerprint)


def _add_folder(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--folder",
        type=Path,
        default=None,
        help="where uploads, jobs, results and the agent's certificate are kept (default $EDGECRAFT_CACHE_DIR/agent, "
        "else ~/.cache/edgecraft/agent)",
    )


def _metavar(name: str) -> str:
    if name.endswith("_mb"):
        return "MIB"
    if name.endswith(("timeout", "ttl")):
        return "SECONDS"
    return "N"


def _token(token_file: Path | None) -> str:
    from edgecraft.core.errors import EdgecraftError

    if token_file is not None:
        try:
            check_private(token_file)
            token = token_file.read_text().strip()
        except OSError as exc:
            raise EdgecraftError(f"--token-file: cannot read {token_file}: {exc.strerror}") from None
        except ValueError as exc:
            raise EdgecraftError(f"--token-file: {exc}") from None
        where = str(token_file)
    else:
        token, where = os.environ.get(TOKEN_VARIABLE, "").strip(), f"${TOKEN_VARIABLE}"
    if not token:
        raise EdgecraftError(
            f"no token: the agent refuses to run without one; put it in a file passed as "
            f"--token-file or in ${TOKEN_VARIABLE} ({where} is empty or unset)"
        )
    try:
        check_token(token, where)
    except ValueError as exc:
        raise EdgecraftError(str(exc)) from None
    return token


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def _use_tls(host: str, tls: bool | None, insecure_http: bool) -> bool:
    """TLS unless the agent listens on loopback only; plain HTTP off loopback only when asked for by name."""
    from edgecraft.core.errors import EdgecraftError

    if tls and insecure_http:
        raise EdgecraftError("--tls and --insecure-http contradict each other: keep one")
    loopback = _is_loopback(host)
    if tls is None:
        tls = not (loopback or insecure_http)
    if not (tls or loopback or insecure_http):
        raise EdgecraftError(
            f"--host {host} without TLS would send the token across the network in clear text: drop --no-tls "
            "(TLS is the default off loopback), or listen on 127.0.0.1 and reach the agent through an SSH tunnel "
            "(ssh -L 8765:127.0.0.1:8765 BOARD), or add --insecure-http on a network you trust"
        )
    return tls


def _folder(folder: Path | None) -> Path:
    if folder is not None:
        return folder.expanduser()
    cache = os.environ.get("EDGECRAFT_CACHE_DIR")
    return Path(cache) / "agent" if cache else Path.home() / ".cache" / "edgecraft" / "agent"


def _serve(args: argparse.Namespace) -> int:
    from edgecraft.core.errors import EdgecraftError

    token = _token(args.token_file)
    try:
        limits = Limits(**{name: getattr(args, name) for name, *_ in Limits.fields()})
    except ValueError as exc:
        raise EdgecraftError(str(exc)) from None
    use_tls = _use_tls(args.host, args.tls, args.insecure_http)
    from edgecraft.bench.agent.server import serve

    try:
        return serve(
            host=args.host,
            port=args.port,
            folder=_folder(args.folder),
            token=token,
            limits=limits,
            use_tls=use_tls,
            emulated=args.emulated,
        )
    except OSError as exc:  # the port is taken, the folder is not writable
        raise EdgecraftError(f"the agent cannot start: {exc}") from None


def _new_token(args: argparse.Namespace) -> int:
    from edgecraft.core.errors import EdgecraftError

    token = new_token()
    if args.file is None:
        print(token)
        return 0
    if args.file.exists():
        raise EdgecraftError(f"{args.file} exists: its token is kept (delete the file first to make a new one)")
    args.file.parent.mkdir(parents=True, exist_ok=True)
    write_private(args.file, f"{token}\n".encode())
    print(f"wrote a new token to {args.file} (readable by you only)")
    return 0


def _fingerprint(args: argparse.Namespace) -> int:
    from edgecraft.bench.agent.tls import read_fingerprint
    from edgecraft.core.errors import EdgecraftError

    try:
        print(read_fingerprint(_folder(args.folder)))
    except ValueError as exc:
        raise EdgecraftError(str(exc)) from None
    return 0
