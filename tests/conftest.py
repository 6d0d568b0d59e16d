"""Shared test fixtures. Tests run with a fixed torch thread count so that "bit-identical" means
the same kernels in the same order."""

from __future__ import annotations

import functools
import signal

import pytest
import torch

from edgesplit import graph, models

torch.set_num_threads(1)

# A shell that starts a job in the background sets SIGINT to "ignored", and children inherit an
# ignored signal across exec: then a Python child never raises KeyboardInterrupt, and the tests
# that press Ctrl-C on `edgesplit run`/`emulate` would test nothing. Children inherit a *handled*
# SIGINT as the default action, as under an interactive terminal.
signal.signal(signal.SIGINT, signal.default_int_handler)


@functools.cache
def traced(name: str, input_size: int = 224) -> tuple[torch.nn.Module, graph.UnitGraph]:
    """A zoo model with seeded random weights and its UnitGraph, cached across tests."""
    torch.manual_seed(0)
    model = models.build(name, num_classes=10)
    return model, graph.trace(model, (3, input_size, input_size))


@pytest.fixture(scope="session")
def zoo_names() -> list[str]:
    return models.known_models()
