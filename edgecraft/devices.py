"""Remote devices: a recipe's ``devices:`` entries and the link to each device's agent during a run.

A target written ``runtime:device@name`` is exported here and measured on the agent of device ``name``
(``edgecraft agent serve`` on the board). The agent runs the same fresh-process worker and returns its raw
numbers; this side aggregates them with the recipe's own evaluator and fp32 reference, so a remote row means
exactly what a local one means. An agent is untrusted input: one that cannot be reached, stops mid-job or answers
anything but the protocol fails its own rows only, with the reason, and the run goes on.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from edgecraft.bench.agent.protocol import JobStatus, parse_fingerprint
from edgecraft.bench.harness import MeasureJob, MeasurementFailed
from edgecraft.bench.settings import BenchSettings
from edgecraft.core import formats
from edgecraft.core.errors import EdgecraftError, brief
from edgecraft.targets import feeds

log = logging.getLogger(__name__)


class RemoteDevice(BaseModel):
    """Where a device's agent listens, its pinned certificate and where its bearer token is read (never written in
    the recipe)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    url: str = Field(description="The agent's address, e.g. 'https://192.168.1.20:8765'.")
    token_file: str | None = Field(
        None, description="A file holding the agent's bearer token (e.g. ~/.config/edgecraft/pi5.token)."
    )
    token_env: str | None = Field(None, description="An environment variable holding the agent's bearer token.")
    fingerprint: str | None = Field(
        None,
        validate_default=True,
        description="The agent's TLS certificate, 'sha256:<64 hex digits>' as the agent prints it on start; an https "
        "URL needs it. Checked before the token is sent, like SSH's known hosts.",
    )
    job_timeout_s: float = Field(
        3600.0, gt=0, description="How long one row may take on the device, queue included, before it fails."
    )
    max_outputs_mb: float = Field(
        256.0,
        gt=0,
        description="The most one row's outputs may weigh as the agent sends them (each job is also bounded by a few "
        "times its reference outputs).",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when it is read
        except ValueError as exc:
            raise ValueError(f"{value!r}: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL such as 'https://192.168.1.20:8765', got {value!r}")
        return value.rstrip("/")

    @field_validator("fingerprint")
    @classmethod
    def _pinned_for_https(cls, value: str | None, info: ValidationInfo) -> str | None:
        pinned = None if value is None else parse_fingerprint(value)
        url = info.data.get("url")
        if url is None:  # the URL itself was refused: that is the error to read
            return pinned
        https = urlsplit(url).scheme == "https"
        if https and pinned is None:
            raise ValueError(
                "an https agent needs its certificate pinned: add 'fingerprint: sha256:…' as the agent printed it on "
                "start (or as `edgecraft agent fingerprint` prints it on the board)"
            )
        if pinned is not None and not https:
            raise ValueError(f"a certificate is only checked over https: make the url https:// (it is {url!r})")
        return pinned

    @model_validator(mode="after")
    def _one_token_source(self) -> RemoteDevice:
        if (self.token_file is None) == (self.token_env is None):
            raise ValueError("give exactly one of token_file and token_env (where the agent's token is read)")
        return self

    def cleartext_warning(self, name: str) -> str | None:
        """What to say when the token travels in clear text (plain HTTP to another machine), else None."""
        parts = urlsplit(self.url)
        if parts.scheme != "http" or _loopback(parts.hostname or ""):
            return None
        return (
            f"devices.{name}: {self.url} is plain HTTP to another machine: its token travels in clear text; serve "
            "the agent over TLS (its default off loopback) and pin its fingerprint, or reach it through an SSH tunnel"
        )

    def token(self, name: str) -> str:
        """The bearer token; a missing or empty source raises, naming the device and the source."""
        if self.token_env is not None:
            token = os.environ.get(self.token_env, "").strip()
            if not token:
                raise EdgecraftError(f"devices.{name}.token_env: the environment variable {self.token_env} is not set")
            return token
        assert self.token_file is not None  # _one_token_source: exactly one of token_file and token_env
        path = Path(self.token_file).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise EdgecraftError(f"devices.{name}.token_file: cannot read {path}: {exc.strerror}") from None
        if not token:
            raise EdgecraftError(f"devices.{name}.token_file: {path} is empty")
        return token


class DevicesFile(BaseModel):
    """A file of device entries alone (``--devices FILE``), in the same form as a recipe's ``devices:``."""

    model_config = ConfigDict(extra="ignore")  # a recipe is a devices file too: its other sections are not ours

    devices: dict[str, RemoteDevice] = {}


def load_devices(path: Path) -> dict[str, RemoteDevice]:
    """The ``devices:`` of a recipe or devices file; problems are one line naming the file and the field."""
    import yaml
    from pydantic import ValidationError

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise EdgecraftError(f"{path}: cannot read it: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise EdgecraftError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    try:
        devices = DevicesFile.model_validate(data if isinstance(data, dict) else {"devices": data}).devices
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(map(str, error["loc"]))
        raise EdgecraftError(f"{path}: {where}: {error['msg'].removeprefix('Value error, ')}") from None
    if not devices:
        raise EdgecraftError(f"{path}: has no 'devices:' entries")
    return devices


class DeviceLink:
    """One configured device during a run: asked for its description once, then sent each row's job."""

    def __init__(self, name: str, config: RemoteDevice):
        self.name = name
        self.config = config
        self.description: dict[str, Any] | None = None
        self.problem: str | None = None
        self._client: Any = None
        self._connected = False

    def connect(self) -> DeviceLink:
        """Ask the agent what it is and can run; an unreachable agent or a bad token is kept as ``problem``."""
        if self._connected:
            return self
        self._connected = True
        from edgecraft.bench.agent.client import AgentClient, AgentError

        cleartext = self.config.cleartext_warning(self.name)
        if cleartext:
            log.warning("%s", cleartext)
        try:
            self._client = AgentClient(
                self.config.url,
                self.config.token(self.name),
                fingerprint=self.config.fingerprint,
                max_outputs_bytes=int(self.config.max_outputs_mb * (1 << 20)),
            )
            self.description = self._client.describe()
        except (AgentError, EdgecraftError) as exc:  # each names the agent's URL or the device's field
            self.problem = f"device {self.name}: {exc}"
        except Exception as exc:  # noqa: BLE001 - whatever an agent answers fails this device's rows, not the run
            self.problem = f"device {self.name} ({self.config.url}): unexpected {brief(exc, 300)}"
        return self

    @property
    def emulated(self) -> str | None:
        """Why this device's timings are not device timings (an emulator), else None."""
        return (self.description or {}).get("emulated")

    def unavailable_reason(self, runtime: str, device: str) -> str | None:
        """Why the agent cannot run ``runtime:device`` (``None`` when it can), from its own description."""
        targets = (self.description or {}).get("targets", {})
        key = f"{runtime}:{device}"
        if key not in targets:
            return f"device {self.name} does not know the target {key} (its agent runs an older edgecraft?)"
        reason = targets[key]
        return f"on device {self.name}: {reason}" if reason else None

    def measure(self, job: MeasureJob, settings: BenchSettings, files: list[Path]) -> list[dict]:
        """Every repetition of ``job`` on the device: the worker's raw numbers; the outputs go where the harness
        reads a local worker's (``job.work_dir/outputs.npz``)."""
        from edgecraft.bench.agent.client import AgentError

        if self.problem:
            raise MeasurementFailed(self.problem)
        fmt = formats.for_path(job.model)  # the format the agent is told the runnable file is in
        if fmt is None:
            raise MeasurementFailed(f"device {self.name}: cannot send a {job.model.suffix} file")
        layout = feeds.load_layout(job.inputs)
        # The device's own CPU numbering is unknown here: pinning is the agent's business.
        remote_settings = settings.model_dump(mode="json") | {"pin_cpus": None}
        try:
            result = self._client.measure(
                runtime=job.runtime,
                device=job.device,
                options=job.options,
                model_format=fmt.name,
                model_files=files,
                inputs={name: np.asarray(array) for name, array in feeds.load(job.inputs).items()},
                expected_outputs=job.reference_outputs,
                settings=remote_settings,
                deadline_s=self.config.job_timeout_s,
                # Sent where it is not the plain one, or where token inputs are timed at their own lengths.
                layout=None if layout.batch_first and not layout.lengths else layout.to_json(),
                on_status=self._log_queue,
            )
        except AgentError as exc:
            raise MeasurementFailed(f"device {self.name}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - whatever an agent answers fails this row, not the run
            raise MeasurementFailed(f"device {self.name} ({self.config.url}): unexpected {brief(exc, 300)}") from None
        job.work_dir.mkdir(parents=True, exist_ok=True)
        outputs: dict[str, Any] = result.outputs  # Any: mypy checks ** against savez's allow_pickle too
        np.savez(job.work_dir / "outputs.npz", **outputs)
        self.description = result.device
        return result.raws

    def _log_queue(self, status: JobStatus) -> None:
        """Say (with -v) when a row waits behind other jobs on the device, and where it stands."""
        if status.state == "queued" and (status.position or 1) > 1:
            log.info("device %s: job %s waits in the queue at position %s", self.name, status.job, status.position)


def _loopback(host: str) -> bool:
    """Whether ``host`` is this machine (plain HTTP there is read by no one else)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def links(devices: dict[str, RemoteDevice]) -> dict[str, DeviceLink]:
    """A link per configured device; none is contacted until a row needs it."""
    return {name: DeviceLink(name, config) for name, config in devices.items()}
