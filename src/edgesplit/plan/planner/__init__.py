"""The planner: pure functions from a :class:`Problem` (unit costs, devices, links) and an
objective to a :class:`Plan` with its prediction. No I/O, no torch.

Cost model (every number is per micro-batch of ``batch_size`` images; ranges are half-open):

- A plan is a sequence of stages ``(device d_k, units [start_k, end_k))`` covering all units in
  order, on *distinct* devices in any order; a device may be left out.
- compute_k = sum of ``d_k.unit_ms`` over the stage's units + ``d_k.boundary_ms`` at the
  stage's two cuts (zero when the device has none); a stage in ``d_k.measured_stages`` costs
  its measured time instead.
- transfer_k = ``link(d_k, d_{k+1}).transfer_ms(units[end_k - 1].out_bytes)``; the last stage's
  transfer is the result return ``link(d_last, COORDINATOR)`` with the last unit's out_bytes.
  upload = ``link(COORDINATOR, d_1).transfer_ms(input_bytes)``. ``transfer_ms(b) = latency_ms +
  b * 8 / (bandwidth_mbps * 1e3)``, or latency_ms alone when the bandwidth is None.
- bottleneck = max(prepare + upload, max over stages of max(compute_k, transfer_k)) (a device
  computes and sends in parallel; the coordinator prepares a micro-batch, ``prepare_ms``, then
  uploads it); throughput_ips = batch_size * 1000 / bottleneck;
  latency = upload + sum over stages of (compute_k + transfer_k).
- memory_k = weights of the stage's units + the largest activation_bytes among them; a stage is
  allowed on a device only if memory_k <= its memory_budget_bytes (None: unlimited).
- energy over one period T = bottleneck: every device of the cluster draws idle_w * T (used or
  not), plus (busy_w - idle_w) * busy_fraction * compute_k on the stage it runs; transfers cost no
  extra power. W x ms = mJ; energy_j_per_image = total mJ / 1000 / batch_size. When the planner
  is told to use only some ``devices``, the others are not part of the cluster (no idle power).

Objectives (all exact; :mod:`edgesplit.plan.planner.dp` has the dynamic program):

- ``throughput``: least bottleneck; among those, least latency, then fewest stages.
- ``latency``: least latency, which may use fewer devices; among equal latencies, fewest
  stages. If one device wins although several exist, the plan's notes say by how much it beats
  the best split.
- ``energy``: least energy_j_per_image subject to latency <= ``max_latency_ms`` and throughput >=
  ``min_throughput_ips`` when given; ties (equal up to rounding): fewest stages, then least
  latency. A :class:`~edgesplit.errors.PlanError` gives the best achievable latency and
  throughput if no plan meets the bounds.
"""

from edgesplit.plan.planner.evaluate import evaluate, objective_value
from edgesplit.plan.planner.search import choose_plan
from edgesplit.plan.planner.types import (
    OBJECTIVES,
    DeviceCost,
    LinkCost,
    Plan,
    Prediction,
    Problem,
    StagePlan,
    UnitCost,
)

__all__ = [
    "OBJECTIVES",
    "DeviceCost",
    "LinkCost",
    "Plan",
    "Prediction",
    "Problem",
    "StagePlan",
    "UnitCost",
    "choose_plan",
    "evaluate",
    "objective_value",
]
