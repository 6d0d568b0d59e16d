"""The run's first phase, ``prepare``: everything checked before a device is touched (no
cluster, no processes; ``cluster`` is a plain spec nobody listens on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgesplit.app.job import prepare
from edgesplit.config import ClusterSpec
from edgesplit.errors import EdgesplitError
from edgesplit.runconfig import RunConfig

CLUSTER = ClusterSpec.model_validate(
    {
        "token": "t",
        "devices": [
            {"name": "a", "address": "127.0.0.1:1"},
            {"name": "b", "address": "127.0.0.1:2"},
        ],
    }
)


def _config(tmp_path: Path, **fields: object) -> RunConfig:
    base: dict[str, object] = dict(
        model="squeezenet1_1", dataset="synthetic", limit=8, batch_size=4, input_size=32,
        engine="torch", out=tmp_path / "run",
    )  # fmt: skip
    return RunConfig(**{**base, **fields})  # type: ignore[arg-type]


def test_a_fixed_partition_is_cut_before_the_cluster_starts(tmp_path: Path) -> None:
    prep = prepare(_config(tmp_path, partition="equal"), CLUSTER, False, lambda _: None)
    assert not prep.auto and prep.costs is not None
    assert prep.ranges is not None and len(prep.ranges) == 2
    assert prep.ranges[0][0] == 0 and prep.ranges[-1][1] == prep.ug.num_units
    assert prep.total == 8 and prep.earlier == [] and prep.folder == tmp_path / "run"
    assert any("synthetic dataset" in note for note in prep.notes)


def test_auto_leaves_the_plan_to_the_planner(tmp_path: Path) -> None:
    prep = prepare(_config(tmp_path), CLUSTER, False, lambda _: None)
    assert prep.auto and prep.ranges is None and prep.costs is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"adaptive": True, "partition": "equal"}, "--adaptive plans from the devices' profile"),
        ({"precision": "auto", "partition": "0-5,5-"}, "--precision auto compares"),
        ({"partition": "0-5,5-,9-"}, "only the last stage may leave its end open"),
        ({"limit": 0}, "--limit selects no images"),
        ({"inject": ("kill:a@1",)}, "--inject needs an emulated cluster"),
    ],
)
def test_bad_requests_fail_in_prepare(
    tmp_path: Path, fields: dict[str, object], expected: str
) -> None:
    with pytest.raises(EdgesplitError, match=expected):
        prepare(_config(tmp_path, **fields), CLUSTER, False, lambda _: None)
    assert not (tmp_path / "run").exists()  # nothing written
