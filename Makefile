# Everything runs from a local virtual environment, created on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install test lint run bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,ray]'
	touch $@

lint: install
	$(BIN)/ruff check bnbench tests
	$(BIN)/ruff format --check bnbench tests

test: install lint
	$(BIN)/python -m pytest -q

run: install
	$(BIN)/bnbench run configs/lenet_bn.yaml

bench: install
	$(BIN)/bnbench bench --device cpu --rounds 5 --out bench.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
