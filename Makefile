# natix-miner — the two quick-start targets work on a fresh machine (they create .venv first).
#   make dry-run   miner (--mock, embedded CPU profile) + local mock chain + mock validator on loopback
#   make test      the test suite, offline
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.natix-installed
CHALLENGES ?= 60
export HF_HUB_OFFLINE ?= 1
export YOLO_OFFLINE ?= 1

.PHONY: venv dry-run test test-fast lint wire-venv bench soak doctor clean-venv

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

dry-run: venv
	$(VPY) scripts/dry_run.py --challenges $(CHALLENGES) --report reports/dry_run.json

test: venv lint
	$(VPY) -m pytest

# layer contracts (.importlinter) and ruff (ruff.toml) on the package; part of make test and CI
lint: venv
	$(VENV)/bin/ruff check natix_miner
	$(VENV)/bin/lint-imports

test-fast: venv
	$(VPY) -m pytest -m "not wire and not slow"

wire-venv:
	bash scripts/wire/make_venv.sh

bench: venv
	$(VPY) scripts/bench_engine.py --out reports/bench_engine.json

soak: venv
	$(VPY) scripts/soak.py --validators 10 --minutes 5 --report reports/soak.json --png reports/soak.png

doctor: venv
	$(VPY) scripts/doctor.py

clean-venv:
	rm -rf $(VENV) .venv-wire
