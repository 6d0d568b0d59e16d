"""The run folder: every number of a run, as files that tools and people read.

``summary.json`` (a :class:`~edgesplit.shared.runsummary.RunSummary`; its schema is
docs/summary.schema.json), ``devices.csv`` (the per-device table), ``requests.csv`` (one row
per micro-batch per hop, the coordinator's upload as stage -1), ``samples.csv`` (each device's
sampler time series), ``predictions.csv`` (per image: prediction, label), ``plan.json`` (stages
with device and unit range, and every unit), and ``cluster.yaml`` (the cluster as used), and
``events.jsonl`` (device state changes, plan changes and injected faults, one JSON object a
line, by ``time_s`` since the run started). ``manifest.json`` (:mod:`edgesplit.metrics.manifest`)
and ``results.jsonl`` (:mod:`edgesplit.metrics.resultlog`) are written from the run's start, so
even a killed run leaves them.
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from edgesplit.config import ClusterSpec, dump_cluster
from edgesplit.errors import ConfigError
from edgesplit.model.graph import Unit
from edgesplit.runtime.records import RunRecord
from edgesplit.shared import runsummary
from edgesplit.shared.runsummary import DeviceRow, RunSummary

FILES = (
    "summary.json",
    "devices.csv",
    "requests.csv",
    "samples.csv",
    "predictions.csv",
    "plan.json",
    "cluster.yaml",
    "events.jsonl",
    "manifest.json",
    "results.jsonl",
)


def default_folder(model: str) -> Path:
    """``runs/<date>-<time>-<model>``; a model given as a file (``path/net.py:Net``,
    ``path/net.onnx``) is named by its last part (``net.py-Net``, ``net.onnx``)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name).strip("-") or "model"
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"


def refuse_existing(folder: Path) -> None:
    """:class:`ConfigError` when ``folder`` already holds a run (a new run would mix with it)."""
    held = [
        name
        for name in ("summary.json", "manifest.json", "results.jsonl")
        if (folder / name).exists()
    ]
    if held:
        raise ConfigError(
            f"{folder} already holds a run ({', '.join(held)}): pass --resume {folder} to finish "
            "it, or another --out"
        )


def earlier_events(folder: Path) -> list[dict[str, Any]]:
    """The events of the interrupted run in ``folder``; when it stopped without writing them
    (killed), one ``interrupted`` event saying so."""
    path = folder / "events.jsonl"
    if not (folder / "summary.json").exists() or not path.exists():
        return [
            {
                "event": "interrupted",
                "time_s": None,
                "reason": "the coordinator stopped without writing its summary (killed)",
            }
        ]
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def _write_csv(path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})


def write(
    folder: Path | None,
    *,
    summary: RunSummary,
    rows: Sequence[DeviceRow],
    record: RunRecord,
    spec: ClusterSpec,
    predictions: torch.Tensor,
    labels: torch.Tensor | None,
    units: Sequence[Unit],
    events: Sequence[Mapping[str, Any]] = (),
) -> Path:
    """Write the run folder (created if needed) and return its path."""
    folder = Path(folder) if folder is not None else default_folder(summary.model)
    folder.mkdir(parents=True, exist_ok=True)
    runsummary.write(folder, summary)
    device_dicts = [r.to_dict() for r in rows]
    columns = list(device_dicts[0]) if device_dicts else ["name"]
    _write_csv(folder / "devices.csv", device_dicts, columns)
    hop_dicts = [h.to_dict() for h in (*record.uploads, *record.hops)]
    hop_dicts.sort(key=lambda h: (h["request_id"], h["stage"]))
    hop_columns = list(hop_dicts[0]) if hop_dicts else ["request_id"]
    _write_csv(folder / "requests.csv", hop_dicts, hop_columns)
    sample_rows = [
        {"device": device, **sample}
        for device, samples in record.samples.items()
        for sample in samples
    ]
    sample_columns = (
        ["device", *(sample_rows[0].keys() - {"device"})] if sample_rows else ["device"]
    )
    _write_csv(folder / "samples.csv", sample_rows, sorted(sample_columns, key=_sample_order))
    label_list = labels[: len(predictions)].tolist() if labels is not None else None
    _write_csv(
        folder / "predictions.csv",
        (
            {
                "index": i,
                "prediction": p if p >= 0 else None,
                "label": label_list[i] if label_list else None,
            }
            for i, p in enumerate(predictions.tolist())
        ),
        ["index", "prediction", "label"],
    )
    plan = summary.plan.model_dump(mode="json")
    plan["partition"] = summary.partition
    plan["units"] = [u.to_dict() for u in units]
    (folder / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    dump_cluster(spec, folder / "cluster.yaml")
    with open(folder / "events.jsonl", "w") as f:
        f.writelines(json.dumps(event) + "\n" for event in events)
    return folder


def _sample_order(column: str) -> tuple[int, str]:
    first = ("device", "t")
    return (first.index(column), "") if column in first else (len(first), column)
