"""``edgecraft agent serve``: the command line of the device agent.

Only argparse and the standard library at import time: the ``edgecraft`` command line imports this module on
every start, whatever the command.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD_MB = 512
DEFAULT_JOB_TIMEOUT_S = 3600.0
TOKEN_VARIABLE = "EDGECRAFT_AGENT_TOKEN"


def add_agent_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``agent serve`` on the ``edgecraft`` command line's subcommands."""
    agent = commands.add_parser("agent", help="run the device agent that measures models sent to this machine")
    actions = agent.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    serve = actions.add_parser(
        "serve",
        help="serve benchmark jobs over HTTP, one at a time",
        description="Measure model files that clients send (edgecraft's remote targets) with the benchmark "
        "protocol, one job at a time in fresh processes. Every request must carry the token as "
        f"'Authorization: Bearer TOKEN'; the token comes from --token-file or ${TOKEN_VARIABLE}, never from the "
        "command line (other users would see it in the process list). Plain HTTP: use it on a trusted network or "
        "through an SSH tunnel.",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)"
    )
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)")
    serve.add_argument(
        "--folder",
        type=Path,
        default=None,
        help="where uploads, jobs and results are kept (default $EDGECRAFT_CACHE_DIR/agent, else "
        "~/.cache/edgecraft/agent)",
    )
    serve.add_argument(
        "--token-file", type=Path, metavar="PATH", help=f"file holding the token (else ${TOKEN_VARIABLE})"
    )
    serve.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest file a client may upload, in MiB (default {DEFAULT_MAX_UPLOAD_MB})",
    )
    serve.add_argument(
        "--job-timeout",
        type=float,
        default=DEFAULT_JOB_TIMEOUT_S,
        metavar="SECONDS",
        help=f"longest a job may measure, every repetition together (default {DEFAULT_JOB_TIMEOUT_S:g})",
    )
    serve.add_argument(
        "--emulated",
        metavar="REASON",
        help="declare this machine emulated (recorded with every result); detected for qemu-user",
    )
    serve.set_defaults(handler=_serve)


def _token(token_file: Path | None) -> str:
    from edgecraft.core.errors import EdgecraftError

    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise EdgecraftError(f"--token-file: cannot read {token_file}: {exc.strerror}") from None
        where = str(token_file)
    else:
        token, where = os.environ.get(TOKEN_VARIABLE, "").strip(), f"${TOKEN_VARIABLE}"
    if not token:
        raise EdgecraftError(
            f"no token: the agent refuses to run without one; put it in a file passed as "
            f"--token-file or in ${TOKEN_VARIABLE} ({where} is empty or unset)"
        )
    return token


def _folder(folder: Path | None) -> Path:
    if folder is not None:
        return folder.expanduser()
    cache = os.environ.get("EDGECRAFT_CACHE_DIR")
    return Path(cache) / "agent" if cache else Path.home() / ".cache" / "edgecraft" / "agent"


def _serve(args: argparse.Namespace) -> int:
    from edgecraft.core.errors import EdgecraftError

    token = _token(args.token_file)
    if not args.max_upload_mb > 0 or not args.job_timeout > 0:
        raise EdgecraftError("--max-upload-mb and --job-timeout must be positive")
    from edgecraft.bench.agent.server import serve

    try:
        return serve(
            host=args.host,
            port=args.port,
            folder=_folder(args.folder),
            token=token,
            max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
            job_timeout_s=args.job_timeout,
            emulated=args.emulated,
        )
    except OSError as exc:  # the port is taken, the folder is not writable
        raise EdgecraftError(f"the agent cannot start: {exc}") from None
