"""An emulated aarch64 box: a Debian arm64 root run under qemu-user, with edgecraft's device agent in a venv.

For the slow device test and for developers without a board. Plain functions, no pytest; importing this module
does nothing. Everything here needs root (debootstrap, chroot, mount).

    root = ensure_root()                       # builds it once (minutes), then only re-syncs edgecraft's source
    agent = start_agent(root, root / "srv/token", 8766, root / "srv/models")   # agent.url, agent.fingerprint
    ...                                        # AgentClient(url, token) from the host
    stop_agent(proc)

Or from a shell: ``sudo .venv/bin/python tests/aarch64_box.py serve --port 8766`` (prints the URL and the token file;
``--executorch`` serves from the venv with ExecuTorch).

Inside the root: Debian bookworm arm64 (minbase, python3 3.11), ``/opt/edgecraft`` (a venv with
``edgecraft[agent]`` installed from ``/src/edgecraft``, a copy of this working tree). ``/proc`` is mounted; the
host's ``/sys`` never is: onnxruntime's cpuinfo segfaults under qemu when it can read it. The root's ``/sys`` holds
only copies of the host's two CPU lists, ``devices/system/cpu/possible`` and ``present``: without them cpuinfo
cannot count the processors, so ExecuTorch's XNNPACK delegate fails to initialise ("XNNPACK status: 0x5",
unsupported hardware) and refuses every lowered program; with them it runs, and onnxruntime and LiteRT still do.
qemu emulates its "max" CPU without SME (``QEMU_CPU``: qemu 7.2 computes XNNPACK's SME int8 kernels wrong).

On demand (``ensure_root(venv=EXECUTORCH_VENV)``, ``start_agent(..., venv=EXECUTORCH_VENV)``), a second venv,
``/opt/edgecraft-executorch``, with ``edgecraft[agent-executorch]`` from the same copy: ExecuTorch's Python
bindings link libtorch, so a board that runs ``.pte`` jobs carries torch, and that venv is where it lives. The
first venv stays what the plain ``agent`` extra installs, free of torch (the arm slow test checks it).
"""

from __future__ import annotations

import argparse
import fcntl
import fnmatch
import hashlib
import http.client
import io
import json
import os
import platform
import queue
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tomllib
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT_ENV = "EDGECRAFT_AARCH64_ROOT"
REPO = Path(__file__).resolve().parents[1]
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "python3-pip")
VENV = "/opt/edgecraft"  # inside the root: edgecraft[agent], no torch
# inside the root: edgecraft[agent-executorch] (torch and executorch on top of the agent), built only when asked for
EXECUTORCH_VENV = "/opt/edgecraft-executorch"
EXTRAS = {VENV: "agent", EXECUTORCH_VENV: "agent-executorch"}  # each venv of the root and the extra it installs
SOURCE = "/src/edgecraft"  # inside the root: the copy of the working tree that the venvs are installed from
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
QEMU_BINFMT = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
COMPLETE = ".edgecraft-root-complete"  # in the root, written once debootstrap and the venv succeeded
MARKER = ".edgecraft-source-sha256"  # in each venv: the hash of the tree last installed there
INSTALLED = f"{VENV.lstrip('/')}/{MARKER}"  # in the root: the [agent] venv's
LISTENING = re.compile(r"edgecraft agent listening on (https?://\S+)")
FINGERPRINT_LINE = re.compile(r"certificate fingerprint: (sha256:[0-9a-f]{64})")
# Under qemu, importing onnxruntime alone takes ~25 s; a cold start of the agent well under a minute.
START_TIMEOUT_S = 300.0
# Under qemu, on a busy 2-core host, importing ExecuTorch's bindings (torch with them) took 30-65 s (measured:
# torch 23 s, executorch.runtime 30-45 s more; the first import after installing also compiles their modules).
WARM_TIMEOUT_S = 600.0
# The CPU qemu-user emulates (qemu reads QEMU_CPU from the environment of each program it starts): its "max" CPU
# without SME. qemu 7.2 (Debian bookworm's) advertises SME in "max", XNNPACK then picks its SME int8 kernels
# (KleidiAI's), and qemu computes them wrong: the arm recipe's et-int8 program agreed with the reference on 9% of
# the digits (chance) and was off by up to 28 in the logits, where the same program with sme=off (or on
# cortex-a76, a Raspberry Pi 5's core) gave bit for bit the x86 host's outputs (measured). fp32 programs, ONNX
# Runtime and LiteRT were right either way. The host's QEMU_CPU, where set, wins (e.g. cortex-a76).
QEMU_CPU = "max,sme=off"
# The host's pip settings that also hold inside the root. Its find-links and file:// indexes are host folders
# (x86 wheels only) and are not carried.
_CARRIED_ENV = (
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_TRUSTED_HOST",
    "PIP_DEFAULT_TIMEOUT",
    "PIP_RETRIES",
)

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"[aarch64-box] {message}", file=sys.stderr, flush=True)


def default_root() -> Path:
    """``$EDGECRAFT_AARCH64_ROOT``, else ``~/.cache/edgecraft/aarch64-root``."""
    return Path(os.environ.get(ROOT_ENV) or Path.home() / ".cache/edgecraft/aarch64-root").expanduser()


def _native() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64")


def _binfmt_enabled() -> bool:
    try:
        return QEMU_BINFMT.read_text().splitlines()[0].strip() == "enabled"
    except (OSError, IndexError):
        return False


def _reachable(host: str, port: int, timeout: float = 5.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def why_unavailable(root: Path | None = None, venv: str = VENV) -> str | None:
    """Why this machine cannot build or run the box with ``venv`` (a reason to skip with), or None when it can."""
    if sys.platform != "linux":
        return f"needs Linux (chroot, binfmt_misc), this is {sys.platform}"
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, mount)"
    if not shutil.which("chroot") or not shutil.which("mount"):
        return "chroot or mount is missing"
    if not _native():
        if not (Path("/usr/bin/qemu-aarch64-static").exists() or Path("/usr/libexec/qemu-binfmt").exists()):
            return "qemu-user-static is not installed (apt-get install qemu-user-static binfmt-support)"
        if not _binfmt_enabled() and not shutil.which("update-binfmts"):
            return "binfmt_misc has no enabled qemu-aarch64 entry and update-binfmts is missing"
    root = root or default_root()
    if not (root / COMPLETE).exists():
        if not shutil.which("debootstrap"):
            return "debootstrap is not installed (apt-get install debootstrap)"
        if not os.environ.get("http_proxy") and not _reachable("deb.debian.org", 80):
            return f"the box is not built at {root} and deb.debian.org is unreachable"
    proxied = os.environ.get("https_proxy") or os.environ.get("PIP_INDEX_URL")
    stale = {_installed_hash(root, VENV), _installed_hash(root, venv)} != {source_hash()}
    if stale and not proxied and not _reachable("pypi.org", 443):
        return "edgecraft must be (re)installed in the box and pypi.org is unreachable"
    return None


# --- the source tree ------------------------------------------------------------------------------------------------


def source_files(repo: Path = REPO) -> list[str]:
    """The files of the working tree that go into edgecraft's package, sorted: pyproject.toml, the README and the
    top-level packages its setuptools ``include`` patterns name. Git's view (tracked, plus untracked files not
    ignored), so caches and build output never count; tests and recipes do not either."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            check=True,
            capture_output=True,
        ).stdout.decode()
        names = {name for name in listed.split("\0") if name}
    except (OSError, subprocess.CalledProcessError):  # not a checkout: everything but the usual clutter
        skip = {".git", ".venv", "runs", "__pycache__", ".pytest_cache", "build", "dist"}
        names = {
            str(path.relative_to(repo))
            for path in repo.rglob("*")
            if path.is_file() and not skip.intersection(path.relative_to(repo).parts)
        }
    # edgecraft/compress is a link to ../compress (one namespace over the top-level folders): its files are
    # packaged under the link's path, as setuptools packages them.
    for link in [name for name in names if (repo / name).is_symlink() and (repo / name).is_dir()]:
        folder = str((repo / link).resolve().relative_to(repo.resolve()))
        names |= {link + name[len(folder) :] for name in names if name.startswith(folder + "/")}
    with open(repo / "pyproject.toml", "rb") as handle:
        include = tomllib.load(handle)["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.split(".")[0] for pattern in include}  # "edgecraft.*" -> the top-level folder edgecraft

    def packaged(name: str) -> bool:
        top, _, rest = name.partition("/")
        return (not rest and top in ("pyproject.toml", "README.md", "setup.py", "setup.cfg", "MANIFEST.in")) or (
            bool(rest) and any(fnmatch.fnmatch(top, pattern) for pattern in packages)
        )

    return sorted(name for name in names if packaged(name) and (repo / name).is_file())


def source_hash(repo: Path = REPO) -> str:
    """One hash of the names and contents of ``source_files``: what decides whether the box reinstalls."""
    digest = hashlib.sha256()
    for name in source_files(repo):
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256((repo / name).read_bytes()).digest())
    return digest.hexdigest()


def _installed_hash(root: Path, venv: str = VENV) -> str | None:
    try:
        return (root / venv.lstrip("/") / MARKER).read_text().strip()
    except OSError:
        return None


# --- running inside -------------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    """A clean environment for the root: the host's PIP_FIND_LINKS and the like name host folders. With the CPU
    qemu emulates (``QEMU_CPU``)."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "QEMU_CPU": os.environ.get("QEMU_CPU") or QEMU_CPU,
    }
    env.update(
        {
            name: os.environ[name]
            for name in _CARRIED_ENV
            if name in os.environ and not os.environ[name].startswith("file:")
        }
    )
    return env


def inside(root: Path, *command: str, log: Log | None = _stderr, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``command`` in the root (chroot), its output captured; raise with the output's tail on failure."""
    mount_proc(root)
    started = time.monotonic()
    done = subprocess.run(["chroot", str(root), *command], env=_env(), capture_output=True, text=True, check=False)
    if log:
        log(f"{' '.join(command)[:120]}: {time.monotonic() - started:.1f} s")
    if check and done.returncode:
        tail = (done.stdout + done.stderr)[-4000:]
        raise RuntimeError(f"in {root}: {' '.join(command)} exited {done.returncode}:\n{tail}")
    return done


def mount_proc(root: Path) -> None:
    """Mount /proc in the root (idempotent). Never the host's /sys: onnxruntime's cpuinfo segfaults under qemu;
    only its CPU lists are copied (``_cpu_lists``)."""
    target = root / "proc"
    target.mkdir(exist_ok=True)
    if not os.path.ismount(target):
        subprocess.run(["mount", "-t", "proc", "proc", str(target)], check=True)
    _cpu_lists(root)
    shm = root / "dev/shm"  # POSIX semaphores (multiprocessing) need it; debootstrap leaves a plain folder
    shm.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(shm):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", str(shm)], check=True)


def _cpu_lists(root: Path) -> None:
    """Copy the host's ``/sys/devices/system/cpu/{possible,present}`` into the root's (otherwise empty) ``/sys``.

    cpuinfo's ARM Linux code (in XNNPACK, which ExecuTorch's delegate initialises on the first lowered program)
    counts processors from these lists only and gives up without them: "failed to parse both lists of possible
    and present processors", then "XNNPACK status: 0x5" and "Backend XnnpackBackend is not available". Every
    other figure it reads (MIDR, frequencies, topology) is optional and stays absent, as the host's would be
    wrong for the emulated CPU; the core count is the host's, which is what qemu-user runs the threads on."""
    folder = root / "sys/devices/system/cpu"
    for name in ("possible", "present"):
        host = Path("/sys/devices/system/cpu") / name
        target = folder / name
        try:
            wanted = host.read_text()
        except OSError:  # a host without sysfs: its processors, as the list's range syntax writes them
            wanted = f"0-{(os.cpu_count() or 1) - 1}\n"
        if not target.exists() or target.read_text() != wanted:
            folder.mkdir(parents=True, exist_ok=True)
            target.write_text(wanted)


def unmount(root: Path) -> None:
    """Undo ``mount_proc`` (before deleting the root)."""
    for target in (root / "dev/shm", root / "proc"):
        if os.path.ismount(target):
            subprocess.run(["umount", "--lazy", str(target)], check=True)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One builder at a time (two pytest processes, or a developer and a test)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- building -------------------------------------------------------------------------------------------------------


def _enable_binfmt(log: Log) -> None:
    if _native() or _binfmt_enabled():
        return
    binfmt_misc = QEMU_BINFMT.parent
    if not os.path.ismount(binfmt_misc):
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt_misc)], check=False)
    subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=False, capture_output=True)
    if not _binfmt_enabled():
        raise RuntimeError("could not enable qemu-aarch64 in binfmt_misc (update-binfmts --enable qemu-aarch64)")
    log("enabled qemu-aarch64 in binfmt_misc")


def _pip_conf() -> str:
    """pip's settings inside the root: the host's CA bundle and timeout. PyPI itself (its aarch64 wheels); the
    host's own wheel folders and file:// indexes are x86-only and not reachable from the root."""
    lines = [
        "[global]",
        f"cert = {CA_BUNDLE}",
        f"timeout = {os.environ.get('PIP_DEFAULT_TIMEOUT', '180')}",
        "disable-pip-version-check = true",
    ]
    index = os.environ.get("PIP_INDEX_URL")
    if index and not index.startswith("file:"):
        lines.append(f"index-url = {index}")
    return "\n".join(lines) + "\n"


def _configure(root: Path) -> None:
    """Name resolution, CA certificates and pip settings as on the host."""
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)  # may be a dangling link to the host's resolver
    shutil.copyfile(Path("/etc/resolv.conf").resolve(), resolv)
    if CA_BUNDLE.exists():
        (root / CA_BUNDLE.relative_to("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CA_BUNDLE, root / CA_BUNDLE.relative_to("/"))
    (root / "etc/pip.conf").write_text(_pip_conf())


def _bootstrap(root: Path, log: Log) -> None:
    if root.exists():  # a build that stopped half way
        unmount(root)
        if _mounts_under(root):
            raise RuntimeError(f"{root} is incomplete and has mounts under it: {_mounts_under(root)}")
        log(f"removing the incomplete root {root}")
        shutil.rmtree(root)
    started = time.monotonic()
    log(f"debootstrap arm64 {SUITE} into {root} (several minutes)")
    subprocess.run(
        [
            "debootstrap",
            "--arch=arm64",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(root),
            MIRROR,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    log(f"debootstrap: {time.monotonic() - started:.0f} s")
    _configure(root)
    inside(root, "python3", "-m", "venv", VENV, log=log)
    (root / COMPLETE).write_text(f"{SUITE} arm64\n")


def _sync_source(root: Path, repo: Path) -> None:
    """Replace the root's copy of the working tree."""
    target = root / SOURCE.lstrip("/")
    if target.exists():
        shutil.rmtree(target)
    for name in source_files(repo):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target / name)


def ensure_root(root: Path | None = None, *, repo: Path = REPO, log: Log = _stderr, venv: str = VENV) -> Path:
    """The box at ``root`` (default ``default_root()``), built if missing, with this working tree's edgecraft
    installed in ``VENV`` and, when ``venv`` names another of ``EXTRAS``, in that one too (created on first use).
    Idempotent: when the hash of the packaged files matches a venv's installed one it only mounts /proc (well
    under a second); when they changed it re-copies them and reinstalls edgecraft (~30 s under qemu; its
    dependencies stay). The first install of ``EXECUTORCH_VENV`` took ~5 min and fills 4.8 GB: PyPI's aarch64
    torch 2.13 is a CUDA build, which brings triton and ~3 GB of nvidia-* packages (no CUDA ever runs here)."""
    if venv not in EXTRAS:
        raise ValueError(f"{venv} is none of the box's venvs ({', '.join(EXTRAS)})")
    reason = why_unavailable(root, venv)
    if reason:
        raise RuntimeError(f"cannot build the aarch64 box: {reason}")
    root = (root or default_root()).resolve()
    with _locked(root):
        _enable_binfmt(log)
        if not (root / COMPLETE).exists():
            _bootstrap(root, log)
        else:
            _configure(root)  # the host's resolver or certificates may have changed
        mount_proc(root)
        wanted = source_hash(repo)
        # The [agent] venv always (the root's own: the other one does not replace it), first.
        stale = [each for each in dict.fromkeys((VENV, venv)) if _installed_hash(root, each) != wanted]
        if stale:
            _sync_source(root, repo)
        for each in stale:
            _install(root, each, wanted, log)
        return root


def _install(root: Path, venv: str, wanted: str, log: Log) -> None:
    """Install ``SOURCE`` with the venv's extra into ``venv`` (made on first use) and mark it with ``wanted``."""
    if not (root / venv.lstrip("/") / "bin/python").exists():
        inside(root, "python3", "-m", "venv", venv, log=log)
    pip = f"{venv}/bin/pip"
    if not (root / venv.lstrip("/") / "bin/edgecraft").exists():
        inside(root, pip, "install", "--upgrade", "pip", log=log)
    # pip always reinstalls a project from a local folder; its installed requirements stay unless they no longer
    # satisfy it. --no-compile for torch's venv: pip would byte-compile every module of torch, sympy and pandas
    # under qemu (thousands), where the agent's imports compile (and cache) only the modules they load.
    options = ["--no-compile"] if venv != VENV else []
    inside(root, pip, "install", *options, f"{SOURCE}[{EXTRAS[venv]}]", log=log)
    (root / venv.lstrip("/") / MARKER).write_text(wanted + "\n")


def versions(root: Path, venv: str = VENV) -> dict[str, str]:
    """The versions pip installed in one of the box's venvs (name → version)."""
    done = inside(root, f"{venv}/bin/pip", "list", "--format=freeze", log=None)
    return dict(line.split("==", 1) for line in done.stdout.splitlines() if "==" in line)


# --- the agent ------------------------------------------------------------------------------------------------------


def _inside_path(root: Path, path: Path | str) -> str:
    """``path`` on the host, which must lie in the root, as the root sees it."""
    resolved = Path(path).resolve()
    try:
        return "/" + str(resolved.relative_to(root.resolve()))
    except ValueError:
        raise ValueError(f"{path} is not inside the box's root {root}: the agent cannot see it") from None


@dataclass
class BoxAgent:
    """An agent running in the box: its process, the URL it printed and, over TLS, its certificate's fingerprint."""

    process: subprocess.Popen
    url: str
    fingerprint: str | None
    output: deque[str]  # the agent's last lines, for a failing test's message


def start_agent(
    root: Path,
    token_file: Path,
    port: int,
    folder: Path,
    *,
    emulated: str | None = None,
    timeout_s: float = START_TIMEOUT_S,
    extra: list[str] | None = None,
    tls: bool = True,
    host: str = "127.0.0.1",
    venv: str = VENV,
) -> BoxAgent:
    """Start ``edgecraft agent serve`` in the root; return it with the URL (and fingerprint) it printed.

    ``token_file`` and ``folder`` are host paths inside the root (the folder is created). TLS by default, as on a
    board (``--tls``: the box listens on loopback, where plain HTTP is the agent's default). ``emulated`` passes
    ``--emulated REASON``; by default the agent detects emulation itself. ``venv``: which of the root's venvs runs
    it (``EXECUTORCH_VENV`` for ``.pte`` jobs; ``ensure_root(venv=...)`` installs it). Raises (with the agent's
    output) when no "listening on" line (and, with TLS, no fingerprint line) came within ``timeout_s`` or the agent
    exited first."""
    root = root.resolve()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mount_proc(root)
    command = [
        "chroot",
        str(root),
        f"{venv}/bin/edgecraft",
        "agent",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--token-file",
        _inside_path(root, token_file),
        "--folder",
        _inside_path(root, folder),
    ]
    if tls:
        command.append("--tls")
    if emulated:
        command += ["--emulated", emulated]
    command += extra or []
    agent = watch_agent(command, timeout_s, tls, what=f"the agent of {venv} in {root}")
    if venv == EXECUTORCH_VENV:
        try:
            warm_executorch(agent, token_file)
        except BaseException:
            stop_agent(agent.process)
            raise
    return agent


def warm_executorch(agent: BoxAgent, token_file: Path, timeout_s: float = WARM_TIMEOUT_S) -> None:
    """Have the agent import ExecuTorch's bindings before the first real job, with a program it refuses.

    The agent checks a program when a job is submitted (ExecuTorch's own structural check), inside the request,
    and the first check imports ``executorch.runtime`` and torch with it: under qemu that took 30-65 s, longer than
    the 30 s of silence an ``AgentClient`` waits for, so the first ``.pte`` row failed with "cannot reach the
    agent: The read operation timed out" (a board imports them in seconds). A submission whose
    program is the file identifier and nothing else costs that import once, here, and is refused ("truncated or
    corrupt"); the agent keeps no job. The certificate is checked against the agent's printed fingerprint."""
    import numpy as np

    from edgecraft.bench.settings import profile_settings

    token = token_file.read_text().strip()

    def request(method: str, path: str, body: bytes) -> tuple[int, bytes]:
        address = agent.url.split("://", 1)[1]
        host, port = address.rsplit(":", 1)
        connection: http.client.HTTPConnection
        if agent.url.startswith("https://"):
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # pinned below instead
            connection = http.client.HTTPSConnection(host, int(port), timeout=timeout_s, context=context)
            connection.connect()
            certificate = connection.sock.getpeercert(binary_form=True) or b""
            if f"sha256:{hashlib.sha256(certificate).hexdigest()}" != agent.fingerprint:
                connection.close()
                raise RuntimeError(f"the agent at {agent.url} presented another certificate than it printed")
        else:
            connection = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
        try:
            connection.request(method, f"/v1{path}", body=body, headers={"Authorization": f"Bearer {token}"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def blob(data: bytes) -> str:
        name = hashlib.sha256(data).hexdigest()
        status, answer = request("PUT", f"/blobs/{name}", data)
        if status != 200:
            raise RuntimeError(f"the agent at {agent.url} refused a blob: {status} {answer[-400:]!r}")
        return name

    program = b"\0\0\0\0ET12" + bytes(56)  # a program's file identifier (after its root offset), and nothing
    inputs = io.BytesIO()
    np.savez(inputs, input=np.zeros((1, 1), np.float32))
    manifest = {
        "runtime": "executorch",
        "device": "arm",
        "model": {"format": "executorch", "files": [blob(program)]},
        "inputs": blob(inputs.getvalue()),
        "settings": profile_settings("quick").model_dump(mode="json"),
    }
    started = time.monotonic()
    status, answer = request("POST", "/jobs", json.dumps(manifest).encode())
    if status != 400 or b"ExecuTorch refuses the program" not in answer:
        raise RuntimeError(f"the agent at {agent.url} did not load ExecuTorch: {status} {answer[-2000:]!r}")
    _stderr(f"the agent imported ExecuTorch's bindings: {time.monotonic() - started:.1f} s")


def watch_agent(command: list[str], timeout_s: float, tls: bool, what: str) -> BoxAgent:
    """Run an agent command and wait for its "listening on" line (and its fingerprint line with TLS)."""
    proc = subprocess.Popen(
        command,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    tail: deque[str] = deque(maxlen=200)

    def drain() -> None:  # keeps reading after the lines too, so the agent never blocks on a full pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            lines.put(line)
        lines.put(None)

    threading.Thread(target=drain, name="aarch64-agent-output", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    url: str | None = None
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = ""
        if (match := LISTENING.search(line or "")) is not None:
            url = match.group(1)
            if not tls:
                return BoxAgent(proc, url, None, tail)
        if url and (match := FINGERPRINT_LINE.search(line or "")) is not None:
            return BoxAgent(proc, url, match.group(1), tail)
        if line is None or (line == "" and time.monotonic() >= deadline):
            stop_agent(proc)
            wanted = "'listening on' and fingerprint lines" if tls else "'listening on' line"
            why = f"exited {proc.returncode}" if line is None else f"printed no {wanted} in {timeout_s:.0f} s"
            raise RuntimeError(f"{what} {why}:\n" + "\n".join(tail))


def stop_agent(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """Stop the agent and whatever it started (its own process group): SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    try:  # workers the agent left behind in its group
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def serving_agent(prefix: str, venv: str = VENV) -> Iterator[tuple[BoxAgent, Path, Path]]:
    """The box with this tree's edgecraft in ``venv``, its agent listening over TLS from a fresh folder under the
    root's ``/srv`` (the agent sees only the root): (agent, token file, root); stopped and removed afterwards."""
    root = ensure_root(venv=venv)
    (root / "srv").mkdir(exist_ok=True)
    here = Path(tempfile.mkdtemp(prefix=prefix, dir=root / "srv"))
    token_file = here / "token"
    write_token(token_file)
    agent = start_agent(root, token_file, 0, here / "folder", venv=venv)
    try:
        yield agent, token_file, root
    finally:
        stop_agent(agent.process)
        shutil.rmtree(here, ignore_errors=True)


def box_recipe(head: str, agent: BoxAgent, token_file: Path) -> str:
    """A recipe measured on the box: ``head`` (its name, models, variants and targets, unindented), then the box
    as device ``box`` and a handful of runs on 180 evaluation images. Emulation is ~300x slower than native: the
    point of a remote row here is that it is a real row, not its timings."""
    return head + textwrap.dedent(f"""\
        data:
          splits: {{train: 0.6, calibration: 0.2, evaluation: 0.1}}   # 180 images: evaluating is emulated too
        devices:
          box:
            url: {agent.url}
            token_file: {token_file}
            fingerprint: {agent.fingerprint}
        benchmark:
          profile: quick
          threads: 2
          warmup_runs: 1
          warmup_s: 0
          runs: 3
          measure_s: 0
          max_runs: 20
          max_s: 5
          repetitions: 1
          batch_sizes: [1]
          throughput_s: 0
          operator_profile: false
        """)


def write_token(path: Path) -> str:
    """A fresh random token in ``path`` (mode 600)."""
    token = secrets.token_urlsafe(24)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests/aarch64_box.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["ensure", "serve", "versions", "unmount"])
    parser.add_argument("--root", type=Path, default=None, help=f"default: ${ROOT_ENV} or {default_root()}")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument(
        "--executorch",
        action="store_true",
        help=f"{EXECUTORCH_VENV} (edgecraft[agent-executorch], with torch) rather than {VENV}",
    )
    args = parser.parse_args(argv)
    venv = EXECUTORCH_VENV if args.executorch else VENV
    root = (args.root or default_root()).resolve()
    if args.command == "unmount":
        unmount(root)
        return 0
    root = ensure_root(root, venv=venv)
    if args.command == "versions":
        for name, version in sorted(versions(root, venv).items()):
            print(f"{name}=={version}")
        return 0
    if args.command == "serve":
        token_file = root / "srv/edgecraft/token"
        if not token_file.exists():
            write_token(token_file)
        agent = start_agent(root, token_file, args.port, root / "srv/edgecraft/models", venv=venv)
        print(
            f"agent (aarch64, emulated) at {agent.url}, fingerprint {agent.fingerprint}; token in {token_file}; "
            "Ctrl-C stops it",
            flush=True,
        )
        try:
            agent.process.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop_agent(agent.process)
        return 0
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
