"""The CPU kind: the architecture plus the features that change ONNX Runtime's int8 kernels.

ONNX Runtime's int8 matrix kernels (MLAS) are chosen at start-up from what the CPU reports:

- ``x86-vnni``: AVX-512 VNNI or AVX-VNNI. ``vpdpbusd`` multiplies uint8 activations by int8
  weights and accumulates straight into int32: nothing saturates.
- ``x86-avx512`` and ``x86-avx2``: ``vpmaddubsw`` adds two uint8 x int8 products into an
  *int16* first, which saturates when both products are large (255 x 127 x 2 > 32767). ONNX
  Runtime's quantization guide names this and recommends ``reduce_range`` (7-bit weights) or
  uint8 weights on such CPUs. It is why int8 lost up to 3.2 points on an AMD EPYC without VNNI
  (issue #15).
- ``x86``: neither AVX2 nor VNNI (SSE kernels).
- ``arm64-i8mm``, ``arm64-dotprod``, ``arm64-neon``: ARMv8.6 int8 matrix multiply, ARMv8.2
  ``sdot``/``udot``, or plain NEON (a Raspberry Pi 4B's Cortex-A72).
- ``arm32`` or another ``platform.machine()``: generic kernels.

The kind is read the way ONNX Runtime reads it: from ``cpuid`` (and the OS's enabled register
state, ``xgetbv``) on x86-64, from the auxiliary vector's hardware capabilities on aarch64
Linux. Both are what a user-mode emulator presents too, so a worker under
``qemu-x86_64-static -cpu Haswell`` reports ``x86-avx2`` and one under ``qemu-aarch64-static
-cpu cortex-a72`` reports ``arm64-neon``; ``/proc/cpuinfo`` would show the host's CPU there.
When ``cpuid`` cannot be called (a system that forbids executable memory), the flags in
``/proc/cpuinfo`` are used instead.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import logging
import mmap
import platform
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

X86_KINDS = ("x86-vnni", "x86-avx512", "x86-avx2", "x86")
ARM_KINDS = ("arm64-i8mm", "arm64-dotprod", "arm64-neon", "arm32")
KINDS = (*X86_KINDS, *ARM_KINDS)
"""Every kind this module names (another architecture reports its ``platform.machine()``)."""

_X86 = ("x86_64", "amd64", "x64")
_ARM64 = ("aarch64", "arm64")
_ARM32 = ("armv7l", "armv8l", "armv6l")

# x86-64 System V: void cpuid(uint32 leaf, uint32 subleaf, uint32 out[4]);
# push rbx; mov eax, edi; mov ecx, esi; mov r8, rdx; cpuid;
# mov [r8], eax; mov [r8+4], ebx; mov [r8+8], ecx; mov [r8+12], edx; pop rbx; ret
_CPUID = bytes.fromhex("53 89f8 89f1 4989d0 0fa2 418900 41895804 41894808 4189500c 5b c3")
# uint64 xgetbv(uint32 index): mov ecx, edi; xgetbv; shl rdx, 32; or rax, rdx; ret
_XGETBV = bytes.fromhex("89f9 0f01d0 48c1e220 4809d0 c3")
_AT_HWCAP, _AT_HWCAP2 = 16, 26
_HWCAP_ASIMDDP = 1 << 20
_HWCAP2_I8MM = 1 << 13
_PAGES: list[mmap.mmap] = []


def arch() -> str:
    """``x86_64``, ``aarch64``, ``arm32`` or this machine's ``platform.machine()``."""
    machine = platform.machine().lower()
    if machine in _X86:
        return "x86_64"
    if machine in _ARM64:
        return "aarch64"
    if machine in _ARM32:
        return "arm32"
    return machine or "unknown"


@functools.cache
def cpu_kind() -> str:
    """This machine's CPU kind (see the module doc); computed once per process."""
    machine = arch()
    if machine == "x86_64":
        flags = _x86_cpuid_flags()
        if flags is None:
            flags = _cpuinfo_flags()
        return x86_kind(flags)
    if machine == "aarch64":
        return arm64_kind(_arm64_hwcaps())
    return machine


def x86_kind(flags: set[str]) -> str:
    """The kind of an x86-64 CPU with these ``/proc/cpuinfo``-style flags."""
    if ("avx512_vnni" in flags and {"avx512f", "avx512bw"} <= flags) or "avx_vnni" in flags:
        return "x86-vnni"
    if {"avx512f", "avx512bw"} <= flags:
        return "x86-avx512"
    if "avx2" in flags:
        return "x86-avx2"
    return "x86"


def arm64_kind(features: set[str]) -> str:
    """The kind of an aarch64 CPU with these ``/proc/cpuinfo``-style features."""
    if "i8mm" in features:
        return "arm64-i8mm"
    if "asimddp" in features:
        return "arm64-dotprod"
    return "arm64-neon"


@functools.cache
def cpu_model() -> str:
    """A human name for this CPU (``lscpu``'s model name), for benchmark output."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def describe() -> str:
    """``"<model> (<kind>)"``, the way benchmarks and tests name the CPU they ran on."""
    return f"{cpu_model()} ({cpu_kind()})"


@functools.cache
def package_version(name: str) -> str:
    """An installed distribution's version without importing it; ``""`` when it is absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def _x86_cpuid_flags() -> set[str] | None:
    """The int8-relevant flags from ``cpuid``/``xgetbv``, or None when they cannot be read."""
    try:
        cpuid, xgetbv = _x86_functions()
    except (OSError, ValueError, AttributeError) as exc:
        log.debug("cpuid unavailable (%s); reading /proc/cpuinfo", exc)
        return None
    out = (ctypes.c_uint32 * 4)()

    def regs(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        cpuid(leaf, subleaf, out)
        return out[0], out[1], out[2], out[3]

    max_leaf = regs(0)[0]
    _, _, ecx1, _ = regs(1)
    xcr0 = xgetbv(0) if ecx1 & (1 << 27) else 0  # OSXSAVE: the OS saves AVX state
    ymm = xcr0 & 0x6 == 0x6
    zmm = xcr0 & 0xE6 == 0xE6
    flags: set[str] = set()
    if max_leaf >= 7:
        _, ebx7, ecx7, _ = regs(7, 0)
        eax71 = regs(7, 1)[0]
        bits = {
            "avx2": (ebx7, 5, ymm),
            "avx512f": (ebx7, 16, zmm),
            "avx512bw": (ebx7, 30, zmm),
            "avx512_vnni": (ecx7, 11, zmm),
            "avx_vnni": (eax71, 4, ymm),
        }
        flags = {name for name, (reg, bit, usable) in bits.items() if usable and reg >> bit & 1}
    return flags


@functools.cache
def _x86_functions() -> tuple[Callable[..., None], Callable[[int], int]]:
    """``cpuid`` and ``xgetbv`` as C functions in a small executable page (ctypes has no call
    for them). Cached: the page stays mapped for the life of the process."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(_CPUID + _XGETBV)
    base = ctypes.addressof(ctypes.c_char.from_buffer(page))
    cpuid = ctypes.CFUNCTYPE(
        None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32 * 4)
    )(base)
    xgetbv = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_uint32)(base + len(_CPUID))
    _PAGES.append(page)
    return cpuid, xgetbv


def _arm64_hwcaps() -> set[str]:
    """aarch64 Linux hardware capabilities as ``/proc/cpuinfo`` feature names."""
    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return _cpuinfo_flags()
    getauxval.restype = ctypes.c_ulong
    getauxval.argtypes = [ctypes.c_ulong]
    hwcap, hwcap2 = getauxval(_AT_HWCAP), getauxval(_AT_HWCAP2)
    features = {"asimd"}
    if hwcap & _HWCAP_ASIMDDP:
        features.add("asimddp")
    if hwcap2 & _HWCAP2_I8MM:
        features.add("i8mm")
    return features
