# The two commands a newcomer runs: `make demo` (the toy RL run) and `make test` (the whole suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint setup clean

$(BIN)/.installed: pyproject.toml setup.py
	$(PY) -m venv $(VENV)
	# torch first, pinned: on CPU machines this resolves to the local CPU wheel, never CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/slime-rl train experiment=toy $(ARGS)

test: setup
	$(BIN)/ruff check slime_rl tests benchmarks launch examples setup.py
	$(BIN)/ruff format --check slime_rl tests benchmarks launch examples setup.py
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests $(ARGS)

clean:
	rm -rf $(VENV) outputs
