"""The public API on real workers: a sweep on one emulated cluster starts its workers once, and a
run's result reads back as DataFrames and figures and round-trips through its folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from matplotlib.figure import Figure

import edgesplit
from edgesplit.config import load_cluster
from edgesplit.errors import ConfigError

pytestmark = pytest.mark.slow

PARTITIONS = ["0-11,11-22,22-", "0-5,5-", "equal"]
BATCH_SIZES = [8, 16]
LIMIT = 64


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[edgesplit.EmulatedCluster]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGESPLIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        with edgesplit.EmulatedCluster(cpus=[1, 0.5, 0.5]) as running:
            yield running


def test_a_sweep_of_3_partitions_by_2_batch_sizes_starts_the_workers_once(
    cluster: edgesplit.EmulatedCluster, tmp_path: Path
) -> None:
    assert cluster.worker_starts == 3  # one per device, when the block began
    pids = cluster.pids
    seen: list[tuple[int, int, dict[str, object]]] = []
    df = edgesplit.sweep(
        cluster,
        models=["mobilenet_v2"],
        partitions=PARTITIONS,
        batch_sizes=BATCH_SIZES,
        limit=LIMIT,
        out=tmp_path,
        progress=lambda done, total, row: seen.append((done, total, row)),
    )
    assert cluster.worker_starts == 3
    assert cluster.pids == pids
    assert len(df) == 6 and [s[:2] for s in seen] == [(i, 6) for i in range(1, 7)]
    assert sorted(zip(df["asked"], df["batch_size"], strict=True)) == sorted(
        (p, b) for p in PARTITIONS for b in BATCH_SIZES
    )
    assert (df["images"] == LIMIT).all() and (df["throughput_ips"] > 0).all()
    assert set(df.loc[df["asked"] == "0-5,5-", "partition"]) == {"0-5,5-33"}
    assert set(df.loc[df["asked"] == "0-5,5-", "stage_devices"]) == {"pi1,pi2"}
    for folder in df["folder"]:
        used = load_cluster(Path(folder) / "cluster.yaml")
        # Every run used the workers the cluster started, not new ones.
        assert {d.name: d.emulation.pid for d in used.devices if d.emulation} == pids


def test_a_result_is_data_figures_and_a_folder_that_round_trips(
    cluster: edgesplit.EmulatedCluster, tmp_path: Path
) -> None:
    result = edgesplit.run(
        model="mobilenet_v2",
        cluster=cluster,
        partition="0-11,11-22,22-",
        batch_size=8,
        limit=LIMIT,
        out=tmp_path / "run",
    )
    assert result.folder == tmp_path / "run"
    assert result.complete and result.completed_images == LIMIT
    assert result.partition == "0-11,11-22,22-33"
    assert result.stage_devices == ("pi1", "pi2", "pi3")
    assert result.accuracy is not None and result.accuracy > 0.5  # the shipped checkpoint
    assert result.latency_ms.p50 is not None
    devices = result.devices
    assert list(devices["name"]) == ["pi1", "pi2", "pi3"]
    assert (devices["images"] == LIMIT).all()
    requests = result.requests
    assert set(requests["stage"]) == {-1, 0, 1, 2}
    assert requests["request_id"].nunique() == LIMIT // 8
    predictions = result.predictions
    assert list(predictions["index"]) == list(range(LIMIT))
    accuracy = float((predictions["prediction"] == predictions["label"]).mean())
    assert accuracy == pytest.approx(result.accuracy)
    assert {"device", "t"} <= set(result.samples.columns)
    assert isinstance(result.plot.timeline(), Figure)
    assert isinstance(result.plot.devices(), Figure)

    saved = result.save(tmp_path / "kept")
    loaded = edgesplit.RunResult.load(tmp_path / "kept")
    assert loaded.folder == tmp_path / "kept" == saved.folder
    assert loaded.summary == result.summary
    assert loaded.throughput_ips == result.throughput_ips
    assert loaded.devices.equals(devices)
    assert loaded.requests.equals(requests)
    with pytest.raises(ConfigError, match="already holds a run"):
        result.save(tmp_path / "kept")


def test_a_plan_runs_on_the_devices_it_names(
    cluster: edgesplit.EmulatedCluster, tmp_path: Path
) -> None:
    prof = edgesplit.profile(cluster, "mobilenet_v2", batch_size=8, repeats=3, warmup=1)
    assert list(prof.devices["name"]) == ["pi1", "pi2", "pi3"]
    plan = edgesplit.plan(prof, objective="throughput")
    result = edgesplit.run(
        model="mobilenet_v2",
        cluster=cluster,
        partition=plan,
        batch_size=8,
        limit=LIMIT,
        out=tmp_path / "planned",
    )
    assert result.partition == plan.partition
    assert result.stage_devices == plan.devices
    sim = edgesplit.simulate(prof, plan, images=400)
    assert sim.stages == tuple(
        (d, int(a), int(b))
        for d, (a, b) in zip(
            plan.devices, zip(plan.stages["start"], plan.stages["end"], strict=True), strict=True
        )
    )
    assert cluster.worker_starts == 3
