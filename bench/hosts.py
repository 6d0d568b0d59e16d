"""Emulated hosts (issue #24): kernel-shaped links measured by the profiler, and a run on
namespaced hosts against the planner's prediction. Needs root and iproute2.

1. **Link probes.** For each rate (50, 100, 940 Mbit/s) a 3-device namespaced cluster whose
   every link (device to device, coordinator to device) the kernel shapes to that rate (HTB on
   the veths); the profiler's link probes (``probe_links``, the sizes and repeats ``edgesplit
   profile`` uses: streamed probes of 1 KiB .. 2 MiB, and 8 MiB on a fast link) fit latency and
   bandwidth per link. Reported: fitted / configured bandwidth per link, the sizes and median
   ms behind each fit and the seconds all probes took. A shaped rate is a rate on the wire:
   TCP carries about 95 % of it as payload.
2. **Run vs prediction.** ``edgesplit run``'s library path on a 3-device namespaced cluster at
   100 Mbit/s per link (0.5 CPU per device, auto plan from a fresh profile): measured
   throughput against the planner's predicted throughput, for the default job (MobileNetV2,
   Fashion-MNIST at 32 px) and for MobileNetV2 at 224 px (synthetic images, batch 8), where the
   100 Mbit/s links, not the CPUs, set the pace. Each case also on loopback (links shaped in
   the send path) as the baseline, and, on hosts, the bytes the kernel sent from the
   coordinator to the devices over the whole job (model shipping, probes, heartbeats and
   uploads) against the uploads' payload.

    .venv/bin/python bench/hosts.py            # ~3 min on an idle 2-core machine
    .venv/bin/python bench/hosts.py --quick    # the link probes only
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import _common as common

from edgesplit.app.job import run_job
from edgesplit.cluster.emulate import EmulatedCluster, uniform_devices
from edgesplit.cluster.emulate_hosts import run_ip, unavailable_reason
from edgesplit.config import LinkSpec
from edgesplit.plan.profile import ProfileSettings, probe_links
from edgesplit.runconfig import RunConfig
from edgesplit.runtime.coordinator import Coordinator

RATES_MBPS = (50.0, 100.0, 940.0)
TARGET_SHARE = 0.10
"""Fitted bandwidth within 10 % of the configured rate (issue #24)."""
LATENCY_MS = 0.2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--devices", type=int, default=3, help="namespaced devices (3)")
    p.add_argument("--cpus", type=float, default=0.5, help="CPU share of each device (0.5)")
    p.add_argument("--run-mbps", type=float, default=100.0, help="links of the runs (100)")
    p.add_argument("--images", type=int, default=2000, help="images of the 224 px run (2000)")
    p.add_argument("--quick", action="store_true", help="the link probes only")
    p.add_argument("--name", default="hosts", help="results file bench/results/NAME.json")
    return p.parse_args(argv)


def probe_case(rate_mbps: float, devices: int, cpus: float, hosts: bool = True) -> dict[str, Any]:
    link = LinkSpec(bandwidth_mbps=rate_mbps, latency_ms=LATENCY_MS)
    with (
        EmulatedCluster.start(uniform_devices(devices, cpus), link, hosts=hosts) as cluster,
        Coordinator(cluster.spec) as coordinator,
    ):
        coordinator.check()
        t0 = time.monotonic()
        links = probe_links(coordinator, ProfileSettings(), lambda text: None)
        probe_s = time.monotonic() - t0
    rows = []
    for k in links:
        ratio = k.bandwidth_mbps / rate_mbps if k.bandwidth_mbps else None
        rows.append(
            {
                "link": f"{k.a}-{k.b}",
                "configured_mbps": rate_mbps,
                "fitted_mbps": k.bandwidth_mbps,
                "fitted_latency_ms": k.latency_ms,
                "ratio": ratio,
                "within_target": ratio is not None and abs(ratio - 1) <= TARGET_SHARE,
                "sizes": list(k.sizes),
                "median_ms": list(k.median_ms),
            }
        )
    network = "hosts" if hosts else "loopback"
    return {
        "rate_mbps": rate_mbps,
        "cpus": cpus,
        "network": network,
        "probe_s": probe_s,
        "links": rows,
    }


def uploaded_bytes(cluster: EmulatedCluster) -> int | None:
    """Bytes the kernel sent from the coordinator to the devices (their HTB class 1:2): the
    whole job's, so the profile's link probes, the stage models and the pilot's images too,
    not only the run's uploads."""
    if cluster.network is None:
        return None
    layout, total = cluster.network.layout, 0
    for name in layout.devices:
        cmd = ["tc", "-s", "class", "show", "dev", layout.host_veth(name), "classid", "1:2"]
        words = run_ip(cmd).stdout.split()
        total += int(words[words.index("Sent") + 1])
    return total


def run_case(
    args: argparse.Namespace, name: str, config: RunConfig, hosts: bool = True
) -> dict[str, Any]:
    link = LinkSpec(bandwidth_mbps=args.run_mbps, latency_ms=LATENCY_MS)
    devices = uniform_devices(args.devices, args.cpus)
    network = "hosts" if hosts else "loopback"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EDGESPLIT_CACHE_DIR"] = str(Path(tmp) / "cache")
        with EmulatedCluster.start(devices, link, hosts=hosts) as cluster:
            before = uploaded_bytes(cluster)
            outcome = run_job(replace(config, out=Path(tmp) / "run", network=network), cluster.spec)
            after = uploaded_bytes(cluster)
            with (Path(tmp) / "run" / "requests.csv").open() as fh:
                uploads = [r for r in csv.DictReader(fh) if r["stage"] == "-1"]
    summary = outcome.summary
    assert summary.predicted is not None and summary.throughput_ips is not None
    predicted = summary.predicted.throughput_ips
    measured = summary.throughput_ips
    return {
        "case": name,
        "network": network,
        "images": summary.images,
        "upload_payload_bytes": sum(int(r["bytes_out"] or 0) for r in uploads),
        "coordinator_sent_bytes": after - before
        if after is not None and before is not None
        else None,
        "partition": summary.partition,
        "predicted_ips": predicted,
        "measured_ips": measured,
        "measured_over_predicted": measured / predicted,
        "within_target": abs(measured / predicted - 1) <= TARGET_SHARE,
        "notes": outcome.notes,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    reason = unavailable_reason()
    if reason is not None:
        raise SystemExit(f"bench/hosts.py: {reason}")
    logging.basicConfig(level=logging.WARNING)
    machine = common.machine_facts()  # the load average at the start
    probes = [probe_case(rate, args.devices, args.cpus) for rate in RATES_MBPS]
    # 940 Mbit/s again with 2 CPUs per device (does the devices' CPU limit the probe?), and on
    # loopback with the rate applied in the send path, for reference.
    probes.append(probe_case(RATES_MBPS[-1], args.devices, 2.0))
    probes.append(probe_case(RATES_MBPS[-1], args.devices, args.cpus, hosts=False))
    print(
        common.table(
            ["network", "cpus", "rate Mbit/s", "link", "fitted Mbit/s", "fitted/rate"],
            [
                [
                    p["network"],
                    p["cpus"],
                    p["rate_mbps"],
                    r["link"],
                    f"{r['fitted_mbps'] or 0:.1f}",
                    f"{r['ratio'] or 0:.3f}",
                ]
                for p in probes
                for r in p["links"]
            ],
        )
    )
    runs = []
    if not args.quick:
        cases = [
            ("default job (MobileNetV2, Fashion-MNIST 32 px)", RunConfig()),
            (
                "MobileNetV2 224 px, synthetic, batch 8",
                RunConfig(dataset="synthetic", input_size=224, batch_size=8, limit=args.images),
            ),
        ]
        # The same runs on loopback (links shaped in the send path): the baseline.
        runs = [run_case(args, name, c, hosts) for name, c in cases for hosts in (True, False)]
        print(
            common.table(
                [
                    "case",
                    "network",
                    "images",
                    "predicted img/s",
                    "measured img/s",
                    "measured/predicted",
                    "coordinator wire bytes / run upload",
                ],
                [
                    [
                        r["case"],
                        r["network"],
                        r["images"],
                        f"{r['predicted_ips']:.1f}",
                        f"{r['measured_ips']:.1f}",
                        f"{r['measured_over_predicted']:.3f}",
                        f"{r['coordinator_sent_bytes'] / r['upload_payload_bytes']:.2f}"
                        if r["coordinator_sent_bytes"]
                        else "-",
                    ]
                    for r in runs
                ],
            )
        )
    path = common.write_result(
        args.name,
        {
            "machine": machine,
            "loadavg_at_end": list(os.getloadavg()),
            "devices": args.devices,
            "cpus": args.cpus,
            "latency_ms": LATENCY_MS,
            "probes": probes,
            "runs_link_mbps": args.run_mbps,
            "runs": runs,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
