"""Cut points, units and stage modules, checked against the whole model."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from edgesplit.errors import GraphError
from edgesplit.model import graph, models
from tests.conftest import traced

MIN_UNITS = {"mobilenet_v2": 18}
ZOO = models.known_models()


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_have_enough_units(name: str) -> None:
    _, ug = traced(name)
    assert ug.num_units >= MIN_UNITS.get(name, 8)
    assert sum(u.params for u in ug.units) == ug.total_params
    assert all(u.macs >= 0 for u in ug.units)
    assert [u.index for u in ug.units] == list(range(ug.num_units))


def test_mobilenet_v2_macs_match_the_published_count() -> None:
    # MobileNetV2 (1.0, 224) is published with 300M multiply-adds (Sandler et al. 2018, table 3);
    # our head has 10 classes instead of 1000, which removes 1280 * 990 MACs.
    _, ug = traced("mobilenet_v2")
    total = ug.macs_in(0, ug.num_units) + 1280 * 990
    assert 295e6 < total < 305e6


def _partitions(n: int) -> st.SearchStrategy[tuple[tuple[int, int], ...]]:
    def to_ranges(cuts: list[int]) -> tuple[tuple[int, int], ...]:
        bounds = [0, *sorted(cuts), n]
        return tuple(itertools.pairwise(bounds))

    return (
        st.integers(2, 4)
        .flatmap(
            lambda k: st.lists(st.integers(1, n - 1), min_size=k - 1, max_size=k - 1, unique=True)
        )
        .map(to_ranges)
    )


_REFERENCE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _reference(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if name not in _REFERENCE:
        model, _ = traced(name)
        x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            _REFERENCE[name] = (x, model(x))
    return _REFERENCE[name]


@pytest.mark.parametrize("name", ZOO)
def test_chained_stages_equal_the_whole_model(name: str) -> None:
    _, ug = traced(name)

    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_partitions(ug.num_units))
    def check(ranges: tuple[tuple[int, int], ...]) -> None:
        x, reference = _reference(name)
        with torch.inference_mode():
            y = x
            for start, end in ranges:
                y = ug.stage(start, end)(y)
        assert torch.equal(y, reference), f"{name} {ranges}: max diff {(y - reference).abs().max()}"

    check()


@pytest.mark.parametrize("name", ZOO)
def test_out_bytes_is_the_real_tensor_size(name: str) -> None:
    _, ug = traced(name, 64)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        for unit in ug.units:
            y = ug.stage(unit.index, unit.index + 1)(x)
            assert y.nbytes == unit.out_bytes, f"unit {unit.index}"
            assert tuple(y.shape[1:]) == unit.out_shape
            x = y


class ResidualCNN(nn.Module):
    """A small user model: stem, one residual block, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(x)


def test_user_model_with_residual_block_splits_exactly() -> None:
    torch.manual_seed(0)
    model = ResidualCNN().eval()
    ug = graph.trace(model, (1, 16, 16))
    # No cut inside the residual block (its input is live until the add); the pool and flatten
    # have no weights, so they join the unit before them.
    assert [u.nodes for u in ug.units] == [
        ("stem_0", "stem_1"),
        ("block_0", "block_1", "block_2", "block_3", "add", "relu", "head_0", "head_1"),
        ("head_2",),
    ]
    x = torch.randn(3, 1, 16, 16)
    with torch.inference_mode():
        ref = model(x)
        y = ug.stage(1, 3)(ug.stage(0, 1)(x))
    assert torch.equal(ref, y)
    assert sum(u.params for u in ug.units) == sum(p.numel() for p in model.parameters())
    assert ug.units[0].macs == 16 * 16 * 8 * 9


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:
            return y
        return -y


def test_untraceable_model_names_the_failing_operation() -> None:
    with pytest.raises(GraphError) as info:
        graph.trace(DataDependent(), (3, 8, 8))
    message = str(info.value)
    assert "DataDependent" in message
    assert "if y.sum() > 0:" in message
    assert "test_graph.py" in message


def test_stage_range_is_checked() -> None:
    _, ug = traced("squeezenet1_1", 64)
    with pytest.raises(GraphError, match=r"unit range \[3, 3\)"):
        ug.stage(3, 3)
    with pytest.raises(GraphError, match="not inside"):
        ug.stage(0, ug.num_units + 1)


def test_stage_modules_share_the_models_parameters() -> None:
    _, ug = traced("mobilenet_v2", 64)
    stage = ug.stage(0, 2)
    shared = {id(p) for p in ug.module.parameters()}
    assert all(id(p) in shared for p in stage.parameters())
