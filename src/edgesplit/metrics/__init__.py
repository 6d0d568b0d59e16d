"""Measurements of devices and runs: device sampler (this package), power, run records, report."""

from edgesplit.runtime.sampler import DeviceSample, DeviceSampler

__all__ = ["DeviceSample", "DeviceSampler"]
