"""Clusters that are not in front of you: many devices of kinds someone profiled.

``16xpi,4xfast`` names device kinds by the profile's device names: 16 copies of the profile's
``pi`` and 4 of ``fast``, named ``pi_1 .. pi_16`` and ``fast_1 .. fast_4``. Every copy has its
kind's unit times, spread, memory budget and power model. They are separate devices (no shared
host). Links are the default link (the profile's, or one given) between all endpoints, with
overrides between kinds (``between: [pi, fast]``, or ``[coordinator, pi]``) in the form of the
cluster file's ``default_link`` and ``links``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from edgesplit.config import LinkSpec, PairLink
from edgesplit.errors import ConfigError
from edgesplit.plan.profile import DeviceProfile, LinkProfile, Profile
from edgesplit.shared.names import COORDINATOR
from edgesplit.simulate.kinds import Kinds

_COUNT = re.compile(r"^\s*(?:(\d+)\s*[xX]\s*)?([A-Za-z0-9_.]+)\s*$")
MAX_DEVICES = 1024


def parse_devices(text: str) -> list[tuple[int, str]]:
    """``"16xpi,4xfast"`` -> ``[(16, "pi"), (4, "fast")]`` (a bare name counts once)."""
    out = []
    for part in text.split(","):
        match = _COUNT.match(part)
        if not match:
            raise ConfigError(
                f"--devices {text!r}: {part!r} is not COUNTxKIND (e.g. 16xpi,4xfast) or a "
                "device name"
            )
        count = int(match.group(1) or 1)
        if count < 1:
            raise ConfigError(f"--devices {text!r}: counts must be >= 1, got {count}")
        out.append((count, match.group(2)))
    kinds = [k for _, k in out]
    dupes = sorted({k for k in kinds if kinds.count(k) > 1})
    if dupes:
        raise ConfigError(f"--devices {text!r}: kind {dupes[0]!r} appears twice; give it once")
    if sum(c for c, _ in out) > MAX_DEVICES:
        raise ConfigError(f"--devices {text!r}: at most {MAX_DEVICES} devices")
    return out


def load_links(path: Path) -> tuple[LinkSpec | None, list[PairLink]]:
    """``default_link`` and ``links`` from a YAML file in the cluster file's form."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read links file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"links file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"links file {path}: expected a mapping with default_link and links")
    unknown = sorted(set(data) - {"default_link", "links", "devices"})
    if unknown:
        raise ConfigError(
            f"links file {path}: unknown keys {unknown}; expected default_link and links"
        )
    try:
        default = LinkSpec.model_validate(data["default_link"]) if "default_link" in data else None
        links = [PairLink.model_validate(k) for k in data.get("links") or []]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"links file {path}: {where}: {first['msg']}") from None
    return default, links


def synthetic_profile(
    profile: Profile,
    devices: Sequence[tuple[int, str]],
    default_link: LinkSpec | None = None,
    links: Sequence[PairLink] = (),
) -> tuple[Profile, Kinds]:
    """The profile of a cluster of ``devices`` (count, kind) built from ``profile``'s devices,
    with its kinds. Raises :class:`ConfigError` for a kind the profile does not have."""
    names: list[str] = []
    members: list[tuple[str, ...]] = []
    copies: list[DeviceProfile] = []
    for count, kind in devices:
        base = profile.device(kind)
        group = tuple(f"{kind}_{i}" for i in range(1, count + 1))
        names.append(kind)
        members.append(group)
        copies.extend(dataclasses.replace(base, name=n) for n in group)
    known = {*names, COORDINATOR}
    pair_links = []
    for link in links:
        for end in link.between:
            if end not in known:
                raise ConfigError(
                    f"link between {list(link.between)} names {end!r}; expected a kind of "
                    f"--devices or {COORDINATOR}: {sorted(known)}"
                )
        a, b = link.between
        ends_a = members[names.index(a)] if a != COORDINATOR else (COORDINATOR,)
        ends_b = members[names.index(b)] if b != COORDINATOR else (COORDINATOR,)
        for x in ends_a:
            for y in ends_b:
                if x != y:
                    pair_links.append(LinkProfile(x, y, link.latency_ms, link.bandwidth_mbps))
    bandwidth, latency = profile.default_bandwidth_mbps, profile.default_latency_ms
    if default_link is not None:
        bandwidth, latency = default_link.bandwidth_mbps, default_link.latency_ms
    built = dataclasses.replace(
        profile,
        devices=tuple(copies),
        links=tuple(pair_links),
        default_bandwidth_mbps=bandwidth,
        default_latency_ms=latency,
        host_cpus=None,
    )
    return built, Kinds(tuple(names), tuple(members))
