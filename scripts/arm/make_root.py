"""Build an aarch64 Python 3.11 root in which edgesplit's worker side runs under user-mode QEMU.

A Raspberry Pi 4B is a Cortex-A72 (ARMv8.0-A: NEON, no dot-product instructions). This script
makes the Pi's CPU architecture testable on an x86-64 Debian host (issue #17, item 4):

1. ``qemu-aarch64-static`` from Debian's ``qemu-user-static`` (apt-get installs it if missing);
2. Debian's arm64 ``python3.11-minimal`` and ``libpython3.11-stdlib`` plus every library they
   need, found by walking ``apt-cache depends`` (Depends and Pre-Depends, first alternative of
   each group), fetched with ``apt-get download`` and unpacked with ``dpkg -x`` into
   ``ROOT/sysroot`` (nothing is installed on the host: maintainer scripts never run, so
   architecture-independent data packages and Essential tools such as dpkg or tar, which only
   those scripts use, are left out);
3. the worker's aarch64 wheels, ``pip install --platform ... --only-binary=:all: --target
   ROOT/wheels``;
4. a check that the emulated Python imports every native module the stages and the worker use.

It is idempotent and cached: ``ROOT/root.json`` records the recipe it was built from, and a
second call with the same recipe does nothing. The default ROOT is
``~/.cache/edgesplit/arm64-root`` (``--root`` or ``EDGESPLIT_ARM_ROOT`` overrides it). Building
needs root and apt-get; using a built root (``scripts/arm/run.sh``) needs neither.

Usage: ``python3 scripts/arm/make_root.py [--root DIR] [--force]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ARCH = "arm64"
EMULATED_CPU = "cortex-a72"
"""The Raspberry Pi 4B's core; qemu's model of it has NEON and no dot-product (asimddp)."""

DEBIAN_ROOTS = (
    "python3.11-minimal",  # the interpreter and the minimal stdlib
    "libpython3.11-stdlib",  # the rest of the stdlib (json, logging, ctypes, sqlite3, ...)
    # Wheels built to the manylinux policy link the system's libstdc++ and libgcc_s and do not
    # bundle them; nothing of python's own closure pulls libstdc++ in.
    "libstdc++6",
)

WHEELS = (
    # onnxruntime's newest aarch64 wheels (1.32) die with SIGSEGV at import under QEMU 7.2
    # (Debian 12's qemu-user-static), with -cpu cortex-a72 and with -cpu max alike; 1.17.3 imports
    # and runs fp32 and QDQ int8 models there. The pin is for this emulated check only: a real Pi
    # installs the range in pyproject.toml.
    "onnxruntime==1.17.3",
    # onnxruntime 1.17 is compiled against numpy 1.x's C ABI and cannot import with numpy 2.
    "numpy>=1.24,<2",
    # The rest as pyproject.toml asks for them: what `edgesplit worker` imports on its
    # onnxruntime path (checked under QEMU on the torch-free worker): gRPC and its messages,
    # the device sampler, the config (YAML, pydantic models), the CLI (click), live metrics,
    # and onnx, with which a worker cuts its stages out of the model's ONNX graph.
    "grpcio>=1.85.1",
    "protobuf>=7.35.1",
    "psutil>=5.9",
    "pyyaml>=6.0",
    "pydantic>=2.7",
    "click>=8.1",
    "prometheus-client>=0.17",  # `edgesplit worker --metrics-port`
    # onnxruntime 1.17.3's quantization tools (a worker quantizes its own int8 stages) use
    # onnx.mapping, which onnx 1.17 removed: "module 'onnx' has no attribute 'mapping'".
    "onnx>=1.15,<1.17",
)

IMPORT_CHECK = (
    "import ssl, sqlite3, ctypes, lzma, bz2, zlib, hashlib, decimal, json, platform\n"
    "import numpy, onnxruntime, grpc, google.protobuf, psutil, yaml, pydantic, click, onnx\n"
    "from importlib.metadata import version\n"
    "names = ['numpy', 'onnxruntime', 'grpcio', 'protobuf', 'psutil', 'pyyaml', 'pydantic',\n"
    "         'click', 'onnx']\n"
    "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(),\n"
    "                  **{n: version(n) for n in names}}))\n"
)

RECIPE_VERSION = 1
"""Bump when the layout or the way the root is built changes (invalidates cached roots)."""


class BuildError(Exception):
    """A step of the build failed; the message says which and what to do."""


def default_root() -> Path:
    env = os.environ.get("EDGESPLIT_ARM_ROOT")
    return Path(env) if env else Path.home() / ".cache" / "edgesplit" / "arm64-root"


def recipe() -> dict[str, object]:
    return {
        "version": RECIPE_VERSION,
        "arch": ARCH,
        "debian_roots": list(DEBIAN_ROOTS),
        "wheels": list(WHEELS),
    }


# ----------------------------------------------------------------------------- pure helpers


def dependency_groups(depends_output: str) -> dict[str, list[list[str]]]:
    """The Depends / Pre-Depends groups of each package in ``apt-cache depends`` output: per
    package, a list of groups, each the names that satisfy it in apt's order (alternatives
    joined by ``|``; a virtual package ``<name>`` replaced by its providers). Names lose their
    ``:arch`` suffix."""
    groups: dict[str, list[list[str]]] = {}
    current: list[list[str]] = []
    open_group = False  # the previous dependency line ended with "|": this one joins its group
    lines = depends_output.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line and not line.startswith(" "):
            current = groups.setdefault(line.strip().split(":")[0], [])
            open_group = False
            continue
        match = re.match(r"^ (\||\s)(PreDepends|Depends): (<)?([^>\s]+)>?$", line)
        if not match:
            if re.match(r"^ [ |]\w+: ", line):
                open_group = False  # another kind of relation (Recommends, Breaks, ...)
            continue
        alternative, _, virtual, name = match.groups()
        providers = []
        while i < len(lines) and lines[i].startswith("    "):
            providers.append(lines[i].strip().split(":")[0])
            i += 1
        names = providers if virtual else [name.split(":")[0]]
        if open_group and current:
            current[-1].extend(names)
        else:
            current.append(names)
        open_group = alternative == "|"
    return groups


def control_stanzas(show_output: str) -> dict[str, dict[str, str]]:
    """The fields of each stanza of ``apt-cache show`` output, by package name (the first
    stanza of a name wins: with ``--no-all-versions`` that is the candidate)."""
    stanzas: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n\s*\n", show_output):
        fields = control_fields(block)
        if "Package" in fields:
            stanzas.setdefault(fields["Package"], fields)
    return stanzas


def control_fields(show_output: str) -> dict[str, str]:
    """The fields of the first stanza of ``apt-cache show`` output."""
    fields: dict[str, str] = {}
    for line in show_output.splitlines():
        if not line.strip():
            break
        match = re.match(r"^([\w-]+): (.*)$", line)
        if match:
            fields[match.group(1)] = match.group(2)
    return fields


def glibc_minor(libc6_version: str) -> int:
    """``36`` for Debian's libc6 version ``2.36-9+deb12u10``."""
    match = re.match(r"^(?:\d+:)?2\.(\d+)", libc6_version)
    if not match:
        raise BuildError(f"cannot read the glibc version from libc6 version {libc6_version!r}")
    return int(match.group(1))


def manylinux_platforms(glibc: int, machine: str = "aarch64") -> list[str]:
    """Every manylinux platform tag a glibc ``2.<glibc>`` system accepts, newest first (pip
    does not expand ``--platform manylinux_2_X`` to the older tags by itself)."""
    if glibc < 17:
        raise BuildError(f"glibc 2.{glibc} is older than any aarch64 manylinux tag (2.17)")
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(glibc, 16, -1)]
    return [*tags, f"manylinux2014_{machine}"]


def deb_filename(package: str, version: str, arch: str) -> str:
    """The file name ``apt-get download`` gives a package (an epoch's colon becomes ``%3a``)."""
    return f"{package}_{version.replace(':', '%3a')}_{arch}.deb"


# ----------------------------------------------------------------------------- the shell


def say(message: str) -> None:
    print(f"[make_root] {message}", flush=True)


def run(
    cmd: list[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd, env=env)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise BuildError(
            f"{what} failed (exit {result.returncode}): {' '.join(cmd)}\n  " + "\n  ".join(detail)
        )
    return str(result.stdout)


def require_apt_as_root() -> None:
    missing = [tool for tool in ("apt-get", "apt-cache", "dpkg") if shutil.which(tool) is None]
    if missing:
        raise BuildError(
            "building the aarch64 root needs Debian's apt-get, apt-cache and dpkg (Debian 12 or "
            f"a derivative); not on PATH here: {', '.join(missing)}"
        )
    if os.geteuid() != 0:
        raise BuildError(
            "building the aarch64 root needs root (apt-get install, dpkg --add-architecture); "
            "run it as root or with sudo, e.g. sudo python3 scripts/arm/make_root.py"
        )


def ensure_qemu() -> str:
    path = shutil.which("qemu-aarch64-static")
    if path is None:
        say("installing qemu-user-static with apt-get")
        run(["apt-get", "update", "-q"], "apt-get update")
        run(
            ["apt-get", "install", "-y", "-q", "qemu-user-static"],
            "apt-get install qemu-user-static",
        )
        path = shutil.which("qemu-aarch64-static")
        if path is None:
            raise BuildError("qemu-user-static is installed but qemu-aarch64-static is not on PATH")
    version = run([path, "--version"], "qemu-aarch64-static --version").splitlines()[0]
    say(f"using {version}")
    return version


def ensure_arch() -> None:
    foreign = run(["dpkg", "--print-foreign-architectures"], "dpkg").split()
    if ARCH not in foreign:
        say(f"dpkg --add-architecture {ARCH}")
        run(["dpkg", "--add-architecture", ARCH], "dpkg --add-architecture")
    probe = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", f"{DEBIAN_ROOTS[0]}:{ARCH}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if probe.returncode != 0 or not probe.stdout.strip():
        say("apt-get update (the arm64 package lists are missing)")
        run(["apt-get", "update", "-q"], "apt-get update")


@dataclass(frozen=True)
class Package:
    name: str
    version: str


def _show(names: list[str]) -> dict[str, dict[str, str]]:
    """The candidate stanza of each name apt has for arm64, either built for it or
    architecture-independent (unknown names are simply absent)."""

    def show(args: list[str]) -> dict[str, dict[str, str]]:
        out = subprocess.run(["apt-cache", "show", "--no-all-versions", *args],
                             capture_output=True, text=True, check=False)  # fmt: skip
        return control_stanzas(out.stdout)

    found = show([f"{n}:{ARCH}" for n in names]) if names else {}
    rest = [n for n in names if n not in found]
    if rest:
        for name, fields in show(rest).items():
            if fields.get("Architecture") == "all":
                found[name] = fields
    return found


def resolve() -> tuple[list[Package], dict[str, str]]:
    """The arm64 packages to unpack (closure of :data:`DEBIAN_ROOTS` over Depends and
    Pre-Depends) and those left out, with the reason. apt is asked once per level of the
    closure, not once per package (each call reads the whole package lists)."""
    chosen: dict[str, Package] = {}
    skipped: dict[str, str] = {}
    level = list(DEBIAN_ROOTS)
    while level:
        stanzas = _show(level)
        unknown = [n for n in level if n not in stanzas]
        if unknown:
            raise BuildError(f"apt has no {ARCH} package {', '.join(unknown)}; run apt-get update")
        expand = []
        for name in level:
            fields = stanzas[name]
            if fields.get("Architecture") == "all":
                skipped[name] = "architecture-independent data, not needed to run python"
            elif fields.get("Essential") == "yes":
                skipped[name] = "Essential tool, used by maintainer scripts that dpkg -x never runs"
            else:
                chosen[name] = Package(name, fields["Version"])
                expand.append(name)
        if not expand:
            break
        depends = run(
            ["apt-cache", "depends", *(f"{n}:{ARCH}" for n in expand)], "apt-cache depends"
        )
        groups = [g for gs in dependency_groups(depends).values() for g in gs]
        known = _show(sorted({n for g in groups for n in g}))
        level = []
        for group in groups:
            if any(n in chosen or n in skipped or n in level for n in group):
                continue
            pick = next((n for n in group if n in known), None)
            if pick is None:
                raise BuildError(f"no {ARCH} package satisfies the dependency {' | '.join(group)}")
            level.append(pick)
    return sorted(chosen.values(), key=lambda p: p.name), skipped


def unpack(packages: list[Package], debs: Path, sysroot: Path) -> None:
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not (debs / deb_filename(p.name, p.version, ARCH)).exists()]
    if missing:
        say(f"apt-get download {len(missing)} arm64 packages")
        run(["apt-get", "download", *(f"{p.name}:{ARCH}={p.version}" for p in missing)],
            "apt-get download", cwd=debs)  # fmt: skip
    for p in packages:
        run(["dpkg", "-x", str(debs / deb_filename(p.name, p.version, ARCH)), str(sysroot)],
            f"dpkg -x {p.name}")  # fmt: skip
    say(f"unpacked {len(packages)} packages into {sysroot}")
    # Debian compiles the stdlib's bytecode in postinst scripts, which dpkg -x does not run;
    # compiling it natively (same 3.11 bytecode) spares every emulated start doing it slowly.
    stdlib = sysroot / "usr" / "lib" / "python3.11"
    run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(stdlib)], "compileall")


def install_wheels(wheels: Path, glibc: int) -> None:
    if wheels.exists():
        shutil.rmtree(wheels)
    platforms = [arg for tag in manylinux_platforms(glibc) for arg in ("--platform", tag)]
    say(f"pip install --target {wheels}: {', '.join(WHEELS)}")
    run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--target", str(wheels), "--only-binary=:all:", "--python-version", "3.11",
         "--implementation", "cp", *platforms, *WHEELS],
        "pip install of the aarch64 wheels",
    )  # fmt: skip


def check(root: Path, qemu_version: str) -> dict[str, str]:
    """Import every native module the worker side needs, under emulation; their versions."""
    runner = Path(__file__).with_name("run.sh")
    say(f"checking the root under qemu -cpu {EMULATED_CPU} (imports onnxruntime: ~10-30 s)")
    env = {**os.environ, "EDGESPLIT_ARM_ROOT": str(root)}
    out = run(["bash", str(runner), "-c", IMPORT_CHECK], "the import check under qemu", env=env)
    versions = json.loads(out.strip().splitlines()[-1])
    if versions.get("machine") != "aarch64":
        raise BuildError(
            f"the emulated python reports machine {versions.get('machine')!r}, expected 'aarch64'"
        )
    return {**versions, "qemu": qemu_version}


def build(root: Path, force: bool) -> Path:
    stamp = root / "root.json"
    if not force and stamp.exists():
        try:
            built = json.loads(stamp.read_text())
        except json.JSONDecodeError:
            built = {}
        if built.get("recipe") == recipe():
            say(f"up to date: {root} (built {built.get('versions', {})})")
            return root
        say("the recipe changed since the last build: rebuilding")
    require_apt_as_root()
    qemu_version = ensure_qemu()
    ensure_arch()
    packages, skipped = resolve()
    say(f"{len(packages)} arm64 packages: {' '.join(p.name for p in packages)}")
    for name, reason in sorted(skipped.items()):
        say(f"  left out {name}: {reason}")
    if stamp.exists():
        stamp.unlink()
    sysroot = root / "sysroot"
    if sysroot.exists():
        shutil.rmtree(sysroot)
    unpack(packages, root / "debs", sysroot)
    libc6 = next(p for p in packages if p.name == "libc6")
    install_wheels(root / "wheels", glibc_minor(libc6.version))
    versions = check(root, qemu_version)
    stamp.write_text(json.dumps({
        "recipe": recipe(),
        "packages": {p.name: p.version for p in packages},
        "left_out": skipped,
        "versions": versions,
    }, indent=2) + "\n")  # fmt: skip
    say(f"done: {root} ({versions})")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--root",
        type=Path,
        default=default_root(),
        help="where to build (default $EDGESPLIT_ARM_ROOT or ~/.cache/edgesplit/arm64-root)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        build(args.root.expanduser().resolve(), args.force)
    except BuildError as exc:
        print(f"make_root: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
