# Every target bootstraps .venv itself, so a fresh machine needs only python3 and make.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-compare clean

$(STAMP): setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	# A regular (non-editable) install: editable installs hide twisted/plugins
	# from twistd's plugin scan. Tests import the installed package too.
	$(BIN)/pip install --quiet ".[test]"
	touch $(STAMP)

# Reinstall the package (fast, no dependency resolution) whenever its sources change.
$(VENV)/.code: $(STAMP) $(shell find mbt twisted -name '*.py' 2>/dev/null)
	$(BIN)/pip install --quiet --no-deps --force-reinstall --no-build-isolation .
	$(BIN)/twistd --help >/dev/null  # regenerates Twisted's plugin cache
	touch $(VENV)/.code

demo: $(VENV)/.code
	$(BIN)/python -m mbt.demo

test: $(VENV)/.code
	$(BIN)/python -m pytest -q tests

bench: $(VENV)/.code
	$(BIN)/python benchmarks/run.py

bench-compare: $(VENV)/.code
	$(BIN)/python benchmarks/compare.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache _trial_temp
