"""The one plan type (issue #16): a tuple of stages, printed as ``pi2:0-12,pi1:12-`` and parsed
back from that text, exactly."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgesplit.errors import PartitionError
from edgesplit.plan.planner import DeviceCost, LinkCost, Problem, UnitCost, choose_plan
from edgesplit.shared.plan import Stage, Stages, as_plan, parse_plan, plan_text
from tests.summaries import a_summary, stage

NAMES = st.text("abcxyzAZ019_.-", min_size=1, max_size=8)


@st.composite
def plans(draw: st.DrawFn) -> tuple[Stages, int]:
    """A valid plan (unique device names, contiguous non-empty stages) and its model's units."""
    sizes = draw(st.lists(st.integers(1, 12), min_size=1, max_size=8))
    names = draw(st.lists(NAMES, min_size=len(sizes), max_size=len(sizes), unique=True))
    stages, start = [], 0
    for name, size in zip(names, sizes, strict=True):
        stages.append(Stage(name, start, start + size))
        start += size
    return tuple(stages), start


def test_a_stage_prints_as_its_text_and_is_a_tuple() -> None:
    s = Stage("pi1", 0, 7)
    assert str(s) == "pi1:0-7" and f"{s}" == "pi1:0-7"
    assert s.units == 7
    assert s == ("pi1", 0, 7)
    device, start, end = s
    assert (device, start, end) == ("pi1", 0, 7)
    assert plan_text([s, ("pi2", 7, 20)]) == "pi1:0-7,pi2:7-20"


def test_as_plan_makes_stages_of_triples() -> None:
    plan = as_plan([("a", 0, 3), ["b", 3, 5]])  # type: ignore[list-item]
    assert plan == (("a", 0, 3), ("b", 3, 5))
    assert all(type(s) is Stage for s in plan)
    assert isinstance(plan, tuple)


@given(plans())
def test_the_text_of_a_plan_parses_back_to_the_plan(plan_units: tuple[Stages, int]) -> None:
    plan, units = plan_units
    text = plan_text(plan)
    assert parse_plan(text, units) == plan
    devices = [s.device for s in reversed(plan)]  # named stages keep their own order
    assert parse_plan(text, units, devices) == plan
    assert all(type(s) is Stage for s in parse_plan(text, units))


@given(plans())
def test_the_unnamed_form_takes_the_devices_in_order(plan_units: tuple[Stages, int]) -> None:
    plan, units = plan_units
    ranges = ",".join(f"{s.start}-{s.end}" for s in plan)
    devices = [s.device for s in plan] + ["spare"]
    assert parse_plan(ranges, units, devices) == plan


def test_the_last_end_may_be_left_open() -> None:
    assert parse_plan("pi2:0-12,pi1:12-", 20) == (("pi2", 0, 12), ("pi1", 12, 20))
    assert parse_plan(" 0-12 , 12- ", 20, ["a", "b", "c"]) == (("a", 0, 12), ("b", 12, 20))


@pytest.mark.parametrize(
    ("text", "devices", "message"),
    [
        ("a:0-5,b:6-", None, "stage 1 starts at unit 6 but the previous stage ended at 5 (a gap)"),
        (
            "a:0-5,b:4-",
            None,
            "stage 1 starts at unit 4 but the previous stage ended at 5 (an overlap)",
        ),
        ("a:0-5,b:5-5,c:5-", None, "stage 1 is 5-5, which is empty"),
        ("", ["a"], "empty partition"),
        ("a:0-5,b:5-30", None, "stage 1 ends at unit 30, past the model's 20 units"),
        ("a:0-5,b:5-15", None, "the last stage ends at unit 15 but the model has 20 units"),
        ("a:0-5,a:5-", None, "gives a two stages; one each"),
        ("a:0-5,5-", None, "names the device of some stages only"),
        (":0-5,b:5-", None, "stage 0 has an empty device name"),
        ("a:0-5,z:5-", ["a", "b"], "names z; the devices are a, b"),
        ("0-5,5-", None, "names no device and no devices were given"),
        ("0-5,5-10,10-", ["a", "b"], "has 3 stages but there are 2 devices (a, b)"),
        ("a:0-x,b:x-", None, "'x' is not a non-negative unit index"),
    ],
)
def test_bad_plans_say_what_was_expected(
    text: str, devices: list[str] | None, message: str
) -> None:
    with pytest.raises(PartitionError) as info:
        parse_plan(text, 20, devices)
    assert message in str(info.value)


def test_the_planners_printed_plan_parses_back_to_its_plan() -> None:
    """The plan a planner prints (its table's ``plan`` line) is the plan it chose, also when
    its device order is not the problem's (which the unnamed form would lose)."""
    units = tuple(UnitCost(out_bytes=1000, weight_bytes=1, activation_bytes=1) for _ in range(6))
    problem = Problem(
        units=units,
        devices=(
            DeviceCost("slow", (40.0,) * 6),
            DeviceCost("fast", (5.0,) * 6),
            DeviceCost("mid", (10.0,) * 6),
        ),
        batch_size=4,
        input_bytes=1000,
        default_link=LinkCost(bandwidth_mbps=100.0, latency_ms=0.1),
    )
    chosen = choose_plan(problem, "throughput")
    found = re.search(r"plan (\S+), upload", chosen.table())
    assert found is not None, chosen.table()
    assert parse_plan(found.group(1), problem.num_units) == chosen.assignment()
    names = [s.device for s in chosen.stages]
    assert names != sorted(names, key=problem.device_names.index), "order kept by chance"


def test_the_run_output_plan_line_parses_back_to_the_table_plan() -> None:
    from edgesplit.cli.run import plan_line

    summary = a_summary(plan={"epoch": 1, "stages": [stage("pi2", 0), stage("pi1", 1)]})
    line = plan_line(summary)
    assert line == "plan: pi2:0-1,pi1:1-2"
    assert parse_plan(line.removeprefix("plan: "), 2) == (("pi2", 0, 1), ("pi1", 1, 2))
