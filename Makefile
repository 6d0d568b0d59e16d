# edgesplit: two commands on a fresh machine.
#   make run    set up everything, then run the main job on the embedded default
#   make test   set up everything, then lint and run the whole test suite (tiers timed)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR := /usr/share/datasets/fashion-mnist

.PHONY: run test lint setup data browser hosts-tools proto bench check-arm clean help

help:
	@echo "make run    - set up and run the default job (emulated 3-device cluster)"
	@echo "make test   - set up, lint, and run every test tier"
	@echo "make lint   - ruff check, ruff format --check, mypy on src/"
	@echo "make proto  - regenerate the gRPC code from src/edgesplit/runtime/edgesplit.proto"
	@echo "make bench  - run the benchmarks in bench/ (writes bench/results/*.json)"
	@echo "make check-arm - the shipped models under qemu-aarch64 as a Raspberry Pi 4B's CPU"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs only when pyproject.toml or constraints.txt change.
# The venv takes about 6 GB (torch's x86_64 wheel is a CUDA build); say so before pip runs out.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	@free_kb=$$(df -Pk $(VENV) | awk 'NR==2 {print $$4}'); \
	if [ -n "$$free_kb" ] && [ "$$free_kb" -lt 7000000 ]; then \
	  echo "WARNING: $$((free_kb / 1024)) MB free where $(VENV) lives; installing torch needs about 6,500 MB."; \
	  echo "         If pip fails with 'No space left on device', free disk space and run make again."; \
	fi
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) data hosts-tools

# The real Fashion-MNIST test set comes from Debian's dataset-fashion-mnist package.
data:
	@if [ -d $(DATA_DIR) ]; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing dataset-fashion-mnist with apt-get"; \
	  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)); \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then \
	  echo "installing dataset-fashion-mnist with sudo apt-get"; \
	  sudo apt-get update -q >/dev/null && sudo apt-get install -y -q dataset-fashion-mnist >/dev/null; \
	else \
	  echo "NOTE: $(DATA_DIR) not found and apt-get is not usable here."; \
	  echo "      Install Debian/Ubuntu's dataset-fashion-mnist, or pass --data-dir / --download."; \
	fi

# Emulated hosts (run/emulate --network hosts, issue #24) need iproute2; the firewall test
# needs nftables. Installed as root with apt-get; elsewhere those tests skip and say why.
hosts-tools:
	@if command -v ip >/dev/null && command -v tc >/dev/null && command -v nft >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing iproute2 and nftables with apt-get"; \
	  (apt-get install -y -q iproute2 nftables >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q iproute2 nftables >/dev/null)); \
	else \
	  echo "NOTE: ip, tc or nft missing: emulated hosts (--network hosts) and their firewall"; \
	  echo "      test need root with iproute2 and nftables; loopback emulation works without."; \
	fi

run: setup
	$(BIN)/edgesplit run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python scripts/check_layering.py

test: setup browser
	@bash scripts/test-tiers.sh

# The serve page test (tests/cluster/test_serve_cluster.py) loads the page in Debian's headless chromium;
# without it (and without root to install it) that one test skips and says why.
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium with apt-get (the serve page test)"; \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) || \
	  echo "NOTE: chromium could not be installed; the serve page test will skip"; \
	else \
	  echo "NOTE: chromium not found; the serve page test will skip (apt-get install chromium)"; \
	fi

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

bench: setup
	@for b in bench/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The Pi's CPU architecture under user-mode QEMU (issue #17): build (once, cached) an aarch64
# Python root; run the shipped models' fp32 and int8 ONNX models there against x86; then one
# aarch64 worker under QEMU as a device next to two x86 workers. Needs root and apt-get the
# first time; ~2 min for the root, then tens of minutes (emulation; see docs/SETUP.md).
ARM_ROOT ?= $(HOME)/.cache/edgesplit/arm64-root
ARM_IMAGES ?= 2000
ARM_OUT ?= bench/results/aarch64.json
check-arm: setup
	$(BIN)/python scripts/arm/make_root.py --root $(ARM_ROOT)
	EDGESPLIT_ARM_ROOT=$(ARM_ROOT) $(BIN)/python scripts/arm/check_models.py \
	  --images $(ARM_IMAGES) --out $(ARM_OUT)
	EDGESPLIT_ARM_ROOT=$(ARM_ROOT) $(BIN)/python scripts/arm/cluster_check.py \
	  --images $(ARM_IMAGES) --out $(ARM_OUT)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
