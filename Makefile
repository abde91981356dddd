# Every target bootstraps .venv (idempotent: rebuilt only when the pins change).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench lint clean fuzz

install: $(STAMP)

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-lock.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lipbound demo --out demo-output

test: $(STAMP)
	$(PY) -m pytest -n 2 tests

fuzz: $(STAMP)  # long soundness campaign (not part of test): FUZZ_CASES=10000 FUZZ_SEED=0
	LIPBOUND_HYPOTHESIS_PROFILE=thorough $(PY) -m pytest -n 2 -q tests/test_local_soundness.py tests/test_global_lipsdp.py tests/test_global_norms.py tests/test_nn_layers.py tests/test_normalization_bounds.py
	$(PY) scripts/fuzz.py --cases $(or $(FUZZ_CASES),10000) --seed $(or $(FUZZ_SEED),0)

bench: $(STAMP)
	$(PY) benchmarks/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

clean:
	rm -rf $(VENV) demo-output
