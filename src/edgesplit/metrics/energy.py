"""Energy per device and per image, from the power models and the measured CPU utilisation.

A device draws ``idle_w + (busy_w - idle_w) * u`` watts at utilisation ``u`` (the fraction of
all its cores busy; linear model, see :class:`edgesplit.config.PowerModel`). ``u`` is the
worker process's CPU time over wall time divided by the device's cores: an emulated device's
cores are its CPU share; a real device's are all its cores, and there the system-wide CPU %
is used (it includes everything the device does). Every device of the cluster draws power for
the whole run, also the ones the plan left idle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgesplit.config import ClusterSpec
from edgesplit.metrics.summary import DeviceRow


@dataclass(frozen=True)
class DeviceEnergy:
    name: str
    utilisation: float
    power_w: float
    energy_j: float
    energy_j_per_image: float


def utilisation(row: DeviceRow | None, cpus: float | None) -> float:
    """Mean utilisation in [0, 1] of a device during the run (0 when it was not sampled)."""
    if row is None:
        return 0.0
    if cpus is not None:
        percent = row.cpu_percent or 0.0
        return min(1.0, max(0.0, percent / 100.0 / cpus))
    percent = row.system_cpu_percent if row.system_cpu_percent is not None else 0.0
    return min(1.0, max(0.0, percent / 100.0))


def device_energy(
    spec: ClusterSpec, rows: Sequence[DeviceRow], wall_s: float, images: int
) -> list[DeviceEnergy]:
    """Joules of every device of ``spec`` over ``wall_s``, and per image of the run."""
    by_name = {row.name: row for row in rows}
    out = []
    for device in spec.devices:
        cpus = device.emulation.cpus if device.emulation is not None else None
        u = utilisation(by_name.get(device.name), cpus)
        power = device.power.power_w(u)
        energy = power * wall_s
        out.append(
            DeviceEnergy(
                name=device.name,
                utilisation=u,
                power_w=power,
                energy_j=energy,
                energy_j_per_image=energy / images if images else 0.0,
            )
        )
    return out


def energy_summary(energies: Sequence[DeviceEnergy]) -> dict[str, object]:
    """The ``energy`` entry of ``summary.json``."""
    total = sum(e.energy_j for e in energies)
    per_image = sum(e.energy_j_per_image for e in energies)
    return {
        "energy_j": total,
        "energy_j_per_image": per_image,
        "devices": {
            e.name: {
                "utilisation": round(e.utilisation, 4),
                "power_w": e.power_w,
                "energy_j": e.energy_j,
                "energy_j_per_image": e.energy_j_per_image,
            }
            for e in energies
        },
    }
