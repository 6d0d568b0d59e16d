#!/usr/bin/env bash
# Runs the aarch64 root's python3.11 (built by scripts/arm/make_root.py) under user-mode QEMU as
# a Raspberry Pi 4B's CPU (Cortex-A72), with the root's aarch64 wheels and this repository's
# src/ (edgesplit is pure Python) on PYTHONPATH. Arguments go to python:
#   scripts/arm/run.sh -c 'import platform; print(platform.machine())'
# EDGESPLIT_ARM_ROOT overrides the root (default ~/.cache/edgesplit/arm64-root);
# EDGESPLIT_ARM_CPU the emulated CPU model (default cortex-a72).
set -euo pipefail
root=${EDGESPLIT_ARM_ROOT:-$HOME/.cache/edgesplit/arm64-root}
cpu=${EDGESPLIT_ARM_CPU:-cortex-a72}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=$root/sysroot/usr/bin/python3.11

if ! command -v qemu-aarch64-static >/dev/null; then
  echo "run.sh: error: qemu-aarch64-static is not installed; build the root first:" \
       "python3 scripts/arm/make_root.py (installs Debian's qemu-user-static)" >&2
  exit 2
fi
if [[ ! -x $python || ! -d $root/wheels ]]; then
  echo "run.sh: error: no aarch64 python root at $root (expected $python and $root/wheels);" \
       "build it with: python3 scripts/arm/make_root.py --root $root" >&2
  exit 2
fi
# The host's PYTHONHOME / user site would point the emulated python at x86 modules.
exec env -u PYTHONHOME PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 \
  PYTHONPATH="$root/wheels:$repo/src" \
  qemu-aarch64-static -cpu "$cpu" -L "$root/sysroot" "$python" "$@"
