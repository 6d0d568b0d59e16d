"""Typed, validated specs: the cluster file and its parts.

A cluster file is YAML::

    token_file: ~/.config/edgesplit/token      # shared token (or `token:` inline, or per device)
    default_link: {bandwidth_mbps: 940, latency_ms: 0.2}
    links:                                      # per-pair overrides; "coordinator" is a name too
      - {between: [pi1, pi2], bandwidth_mbps: 100, latency_ms: 1.0}
    coordinator_host: 192.168.1.10              # where workers send results (default 127.0.0.1)
    result_port: 50052                          # its result service's port (default: any free)
    bandwidth_shaping: network                  # the network limits bandwidth (default: sender)
    devices:
      - name: pi1
        address: 192.168.1.11:50051
        memory_budget_mb: 3000
        power: {idle_w: 2.7, busy_w: 6.4}
        power_command: read-usb-meter --watts       # a meter read by a program (optional)
        power_channels: [ina3221:1]                # which hwmon channels count (optional)
        emulation: {cpus: 0.5, mechanism: cgroup-v1}   # only on emulated devices

Every model here forbids unknown fields, so a typo is an error that names the field.
Environment variables are read only in :func:`env_token`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgesplit.errors import ConfigError
from edgesplit.shared.names import COORDINATOR

TOKEN_ENV = "EDGESPLIT_TOKEN"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PowerModel(Strict):
    """Device power, linear in CPU utilisation between idle and all cores busy.

    Defaults are for a Raspberry Pi 4B (about 2.7 W idle, 6.4 W with four busy cores).
    """

    idle_w: float = Field(2.7, gt=0)
    busy_w: float = Field(6.4, gt=0)

    def power_w(self, utilisation: float) -> float:
        """Power at ``utilisation`` in [0, 1] (fraction of all cores busy)."""
        u = min(max(utilisation, 0.0), 1.0)
        return self.idle_w + (self.busy_w - self.idle_w) * u


class LinkSpec(Strict):
    """A network link. ``bandwidth_mbps=None`` means unshaped (as fast as the host allows)."""

    bandwidth_mbps: float | None = Field(None, gt=0)
    latency_ms: float = Field(0.0, ge=0)
    wire: Literal["fp32", "fp16", "int8"] | None = None
    """Activation format on this link (edgesplit.runtime.wire); None: the run's choice."""


class PairLink(LinkSpec):
    """A link override between two named endpoints (devices or ``coordinator``), both ways."""

    between: tuple[str, str]


class EmulationSpec(Strict):
    """How an emulated device is limited on the host that runs it."""

    cpus: float = Field(1.0, gt=0)
    mechanism: Literal["cgroup-v1", "cgroup-v2", "affinity", "none"] = "none"
    pid: int | None = None


POWER_CHANNEL = r"^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.+-]+)?$"
"""``CHIP`` or ``CHIP:CHANNEL`` (channel number or label), see edgesplit.runtime.power."""


class TlsSpec(Strict):
    """PEM files for mutual TLS: the cluster CA, and this end's certificate and key."""

    ca: Path
    cert: Path
    key: Path


class DeviceSpec(Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    address: str
    token: str | None = None
    token_file: Path | None = None
    threads: int | None = Field(None, ge=1)
    memory_budget_mb: float | None = Field(None, gt=0)
    power: PowerModel = PowerModel()
    power_command: str | None = Field(None, min_length=1)
    """A program on the device that prints its power in watts (the worker runs it; it is never
    sent over the network). Used when no hwmon sensor or Pi 5 PMIC is found."""
    power_channels: list[str] = []
    """hwmon channels that make up the device's power, ``CHIP`` or ``CHIP:CHANNEL``; empty: the
    first known power monitor, all its channels."""
    power_timeout_s: float = Field(2.0, gt=0)
    """``power_command`` is killed after this long (that sample has no power reading)."""
    emulation: EmulationSpec | None = None
    tls: TlsSpec | None = None

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT with a port in 1..65535, got {value!r}")
        return value

    @field_validator("power_channels")
    @classmethod
    def _channels(cls, value: list[str]) -> list[str]:
        bad = [c for c in value if not re.fullmatch(POWER_CHANNEL, c)]
        if bad:
            raise ValueError(f"expected CHIP or CHIP:CHANNEL (e.g. ina3221:1), got {bad}")
        return value


class ClusterSpec(Strict):
    devices: list[DeviceSpec] = Field(min_length=1)
    default_link: LinkSpec = LinkSpec()
    links: list[PairLink] = []
    token: str | None = None
    token_file: Path | None = None
    tls: TlsSpec | None = None
    """The coordinator's own certificate; workers use theirs from their device entry."""
    coordinator_host: str = "127.0.0.1"
    """The address workers use to reach the coordinator's result service."""
    result_port: int | None = Field(None, ge=1, le=65535)
    """The port of the coordinator's result service on ``coordinator_host``, for a firewall
    to let through (see SETUP "Ports and firewall"); None: a free port the kernel picks."""
    bandwidth_shaping: Literal["sender", "network"] = "sender"
    """Who limits a link's bandwidth: ``sender`` (our send path waits bytes * 8 / bandwidth,
    the emulated cluster on loopback) or ``network`` (the network itself: real devices, or
    kernel-shaped links between network namespaces); the links' bandwidth then informs the
    planner only. Latency is added in the send path either way (see :meth:`sender_link`)."""

    @model_validator(mode="after")
    def _names(self) -> ClusterSpec:
        names = [d.name for d in self.devices]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"device names must be unique, repeated: {dupes}")
        if COORDINATOR in names:
            raise ValueError(f"{COORDINATOR!r} is reserved and cannot name a device")
        known = {*names, COORDINATOR}
        for link in self.links:
            for end in link.between:
                if end not in known:
                    raise ValueError(
                        f"link between {list(link.between)} names {end!r}; "
                        f"expected one of {sorted(known)}"
                    )
        return self

    def device(self, name: str) -> DeviceSpec:
        for d in self.devices:
            if d.name == name:
                return d
        raise ConfigError(
            f"no device named {name!r}; devices: {', '.join(d.name for d in self.devices)}"
        )

    def link(self, a: str, b: str) -> LinkSpec:
        """The link between endpoints ``a`` and ``b`` (either order)."""
        for link in self.links:
            if set(link.between) == {a, b}:
                return LinkSpec(
                    bandwidth_mbps=link.bandwidth_mbps, latency_ms=link.latency_ms, wire=link.wire
                )
        return self.default_link

    def sender_link(self, a: str, b: str) -> LinkSpec:
        """What our send path applies from ``a`` to ``b``: the link, without its bandwidth when
        the network shapes it (``bandwidth_shaping="network"``; the kernel here has no netem,
        so latency stays ours)."""
        link = self.link(a, b)
        if self.bandwidth_shaping == "network":
            return LinkSpec(latency_ms=link.latency_ms, wire=link.wire)
        return link

    def token_for(self, name: str) -> str:
        """The token for device ``name``: its own, else the cluster's, else $EDGESPLIT_TOKEN."""
        device = self.device(name)
        token = _read_token(device.token, device.token_file) or _read_token(
            self.token, self.token_file
        )
        token = token or env_token()
        if not token:
            raise ConfigError(
                f"no token for device {name!r}: set token or token_file in the cluster file, "
                f"or the {TOKEN_ENV} environment variable"
            )
        return token


def env_token() -> str | None:
    """The token from the environment, if any."""
    value = os.environ.get(TOKEN_ENV, "").strip()
    return value or None


def _read_token(token: str | None, token_file: Path | None) -> str | None:
    if token:
        return token
    if token_file is None:
        return None
    return read_token_file(token_file)


def read_token_file(path: Path) -> str:
    path = path.expanduser()
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from exc
    if not value:
        raise ConfigError(f"token file {path} is empty; expected one line with the token")
    return value


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_cluster(data: object, source: str = "cluster spec") -> ClusterSpec:
    """Validate a parsed cluster document; errors name the field and the expected form."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping with a 'devices' list, got {type(data).__name__}"
        )
    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error in one line (its own message spans lines and quotes the source)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def load_cluster(path: Path) -> ClusterSpec:
    """Read and validate a cluster file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read cluster file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cluster file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    return parse_cluster(data, source=f"cluster file {path}")


def dump_cluster(spec: ClusterSpec, path: Path) -> None:
    """Write ``spec`` as YAML that :func:`load_cluster` reads back to an equal spec."""
    data = spec.model_dump(mode="json", exclude_none=True, exclude_defaults=False)
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
