# Medvec: `make demo` and `make test` are all a fresh machine needs (they create .venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU-only machines install this torch first so pip never resolves the multi-GB CUDA build.
# GPU machines: `make install TORCH_SPEC=torch` (or pre-install torch for your CUDA, see README).
TORCH_SPEC ?= torch==2.13.0
export MEDVEC_HOME ?= $(CURDIR)/medvec_home
export DAGSTER_HOME ?= $(MEDVEC_HOME)/dagster

.PHONY: install demo test test-fast validate dagster benchmark clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if [ "$$(uname -s)" = "Linux" ] && ! command -v nvidia-smi >/dev/null 2>&1 && [ "$(TORCH_SPEC)" = "torch==2.13.0" ]; then \
		echo "CPU-only Linux: installing $(TORCH_SPEC) first"; \
		$(PY) -m pip install --quiet "$(TORCH_SPEC)"; \
	elif [ "$(TORCH_SPEC)" != "torch==2.13.0" ]; then $(PY) -m pip install --quiet "$(TORCH_SPEC)"; fi
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(VENV)/bin/medvec demo

test: install
	$(PY) -m pytest -q -ra

test-fast: install
	$(PY) -m pytest -q -m "not slow"

validate: install
	$(VENV)/bin/dagster definitions validate -w workspace.yaml

dagster: install
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || printf 'telemetry:\n  enabled: false\n' > $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -w workspace.yaml

benchmark: install
	$(PY) benchmarks/normalize.py

clean:
	rm -rf $(MEDVEC_HOME) .pytest_cache
