# certpilot: two commands on a fresh Debian machine.
#   make demo   creates .venv, installs certpilot, runs `certpilot demo`
#   make test   installs what is missing (Debian packages when root, test extras), then
#               ruff, mypy, import contracts and pytest (unit, integration with real services)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck contracts pytest system-deps venv bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/certpilot demo

system-deps:
	@scripts/install-system-deps.sh

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

contracts: venv
	$(BIN)/lint-imports

pytest: venv system-deps
	$(BIN)/pytest

test: venv system-deps lint typecheck contracts pytest

bench: venv system-deps
	$(BIN)/python benchmarks/probe_vs_blackbox.py
	$(BIN)/python benchmarks/inventory_upsert.py
	$(BIN)/python benchmarks/slo_eval.py
	$(BIN)/python benchmarks/remediation.py
	$(BIN)/python benchmarks/openbao_scan.py
	$(BIN)/python benchmarks/k8s_scan.py
	$(BIN)/python benchmarks/ct_match.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build dist
