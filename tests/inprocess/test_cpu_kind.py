"""The CPU kind (issue #15): how flags map to kinds, the int8 settings each kind gets, the int8
stage cache keyed by kind, and the kind a worker reports under an emulated CPU."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgesplit.engines import EngineSpec, StageKey, cpu, quantize
from edgesplit.engines.onnx_engine import compiled_stage
from edgesplit.model import graph
from edgesplit.model.models import build


@pytest.mark.parametrize(
    ("flags", "kind"),
    [
        ({"avx2", "avx512f", "avx512bw", "avx512_vnni"}, "x86-vnni"),
        ({"avx2", "avx_vnni"}, "x86-vnni"),  # Alder Lake: AVX-VNNI without AVX-512
        ({"avx2", "avx512f", "avx512bw"}, "x86-avx512"),  # Skylake-SP
        ({"avx2", "avx512_vnni"}, "x86-avx2"),  # VNNI flag without usable AVX-512 registers
        ({"avx2"}, "x86-avx2"),  # Haswell, AMD Zen 1-3
        ({"sse4_2"}, "x86"),
        (set(), "x86"),
    ],
)
def test_x86_flags_name_the_kind(flags: set[str], kind: str) -> None:
    assert cpu.x86_kind(flags) == kind


@pytest.mark.parametrize(
    ("features", "kind"),
    [
        ({"asimd"}, "arm64-neon"),  # Cortex-A72 (Raspberry Pi 4B)
        ({"asimd", "asimddp"}, "arm64-dotprod"),  # Cortex-A76 (Raspberry Pi 5)
        ({"asimd", "asimddp", "i8mm"}, "arm64-i8mm"),
    ],
)
def test_arm64_features_name_the_kind(features: set[str], kind: str) -> None:
    assert cpu.arm64_kind(features) == kind


def test_this_machine_has_a_named_kind_and_model() -> None:
    kind = cpu.cpu_kind()
    print(f"\nthis CPU: {cpu.describe()}")
    assert kind in cpu.KINDS or cpu.arch() not in ("x86_64", "aarch64")
    assert cpu.cpu_model()


def test_only_vnni_keeps_full_range_uint8_times_int8_on_x86() -> None:
    assert quantize.settings("x86-vnni") == quantize.Int8Settings("uint8", reduce_range=False)
    for kind in ("x86-avx512", "x86-avx2", "x86"):
        assert quantize.settings(kind) == quantize.Int8Settings("uint8", reduce_range=True), kind
    for kind in ("arm64-neon", "arm64-dotprod", "arm64-i8mm", "riscv64"):
        assert quantize.settings(kind) == quantize.Int8Settings("int8", reduce_range=False), kind
    assert quantize.settings() == quantize.settings(cpu.cpu_kind())


def test_int8_stages_are_cached_per_cpu_kind(tmp_path: Path) -> None:
    """The same stage built for two kinds is two files; a kind's second build reads its file."""
    torch.manual_seed(0)
    ug = graph.trace(build("squeezenet1_1", 10).eval(), (3, 32, 32))
    calibration = torch.randn(8, 3, 32, 32)
    key = StageKey("squeezenet1_1", "weights-sha", (3, 32, 32), 0, 3)
    spec = EngineSpec("onnxruntime", "int8")
    built = {}
    for kind in ("x86-vnni", "x86-avx2"):
        data, path = compiled_stage(ug, 0, 3, spec, key, calibration, tmp_path, kind=kind)
        assert path is not None and path.exists()
        built[kind] = (data, path)
    assert built["x86-vnni"][1] != built["x86-avx2"][1]
    assert built["x86-vnni"][0] != built["x86-avx2"][0]  # 7-bit weights are other bytes
    stamp = built["x86-avx2"][1].stat().st_mtime_ns
    again, path = compiled_stage(ug, 0, 3, spec, key, calibration, tmp_path, kind="x86-avx2")
    assert (again, path) == built["x86-avx2"] and path.stat().st_mtime_ns == stamp


QEMU = shutil.which("qemu-x86_64-static")


@pytest.mark.slow
@pytest.mark.skipif(
    QEMU is None or cpu.arch() != "x86_64",
    reason="needs Debian's qemu-user-static on an x86-64 host (apt-get install qemu-user-static)",
)
def test_a_process_on_an_emulated_haswell_reports_x86_avx2() -> None:
    """cpuid, not /proc/cpuinfo: under user-mode QEMU the host's flags would say otherwise."""
    assert QEMU is not None
    code = "from edgesplit.engines import cpu; print(cpu.cpu_kind())"
    result = subprocess.run(
        [QEMU, "-cpu", "Haswell", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "x86-avx2"
