# Medvec: `make demo` and `make test` are all a fresh machine needs (they create .venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU-only machines install this torch first so pip never resolves the multi-GB CUDA build.
# GPU machines: `make install TORCH_SPEC=torch` (or pre-install torch for your CUDA, see README).
TORCH_SPEC ?= torch==2.13.0
export MEDVEC_HOME ?= $(CURDIR)/medvec_home
export DAGSTER_HOME ?= $(MEDVEC_HOME)/dagster

.PHONY: install install-dev image web-deps docs docs-screenshots demo test test-fast test-biomedclip validate dagster benchmark clean

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# What running needs, plus the sample data's two real WG04 radiographs (`pip install -e '.[samples]'`):
# `make demo` installs only this.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if [ "$$(uname -s)" = "Linux" ] && ! command -v nvidia-smi >/dev/null 2>&1 && [ "$(TORCH_SPEC)" = "torch==2.13.0" ]; then \
		echo "CPU-only Linux: installing $(TORCH_SPEC) first"; \
		$(PY) -m pip install --quiet "$(TORCH_SPEC)"; \
	elif [ "$(TORCH_SPEC)" != "torch==2.13.0" ]; then $(PY) -m pip install --quiet "$(TORCH_SPEC)"; fi
	$(PY) -m pip install --quiet -e '.[samples]'
	touch $@

# The test and docs toolchains on top (moto, playwright, torchmetrics, onnx, the cluster extra, mkdocs): its own stamp, so
# `make test` after `make demo` still installs it.
$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,docs]'
	touch $@

demo: install
	$(VENV)/bin/medvec demo

# onnxruntime-web for `medvec bundle` (npm, pinned by package-lock.json); without npm the bundle tests skip.
WEB_DIR := medvec/bundle/web
web-deps: $(WEB_DIR)/node_modules/.package-lock.json

$(WEB_DIR)/node_modules/.package-lock.json: $(WEB_DIR)/package-lock.json
	@if ! command -v npm >/dev/null 2>&1; then echo "npm not found: skipping onnxruntime-web (medvec bundle needs it)"; \
	else cd $(WEB_DIR) && npm ci --ignore-scripts --no-audit --no-fund \
		|| echo "npm ci failed (offline?): medvec bundle and its tests need onnxruntime-web"; fi

# The docs site from docs/ (mkdocs.yml): --strict fails on a broken internal link or anchor; builds offline.
# docs/gen_pages.py generates the configuration, CLI and HTTP API pages from the code during the build.
docs: install-dev
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(PY) -m mkdocs build --strict --quiet

# The screenshots the README and docs show (docs/images/) are taken by the browser tests, not by hand.
docs-screenshots: install-dev
	MEDVEC_DOCS_SCREENSHOTS=1 $(PY) -m pytest -q tests/test_web_page.py -k test_search_shows_thumbnails_scores_detail_and_similar

test: install-dev web-deps docs
	$(PY) -m pytest -q -ra

test-fast: install-dev web-deps
	$(PY) -m pytest -q -m "not slow"

# BiomedCLIP needs open_clip + torchvision, and torchvision pairs only with its own torch build
# (here torch 2.14.1 / torchvision 0.29.1, several GB): a separate venv keeps the default install lean.
BIOMEDCLIP_VENV ?= .venv-biomedclip
BIOMEDCLIP_TORCH ?= torch==2.14.1 torchvision==0.29.1

$(BIOMEDCLIP_VENV)/.installed: pyproject.toml
	test -x $(BIOMEDCLIP_VENV)/bin/python || $(PYTHON) -m venv $(BIOMEDCLIP_VENV)
	$(BIOMEDCLIP_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BIOMEDCLIP_VENV)/bin/python -m pip install --quiet $(BIOMEDCLIP_TORCH)
	$(BIOMEDCLIP_VENV)/bin/python -m pip install --quiet -e '.[dev,biomedclip]'
	touch $@

test-biomedclip: $(BIOMEDCLIP_VENV)/.installed
	$(BIOMEDCLIP_VENV)/bin/python -m pytest -q -ra tests/test_open_clip.py

# Every profile's definitions (MEDVEC_PROFILE, pipelines/profiles.py) must load, on any machine: the
# placeholder URLs only satisfy the profiles' checks, since loading definitions reaches no server or bucket.
VALIDATE := env -u MEDVEC_EMBEDDER $(VENV)/bin/dagster definitions validate -w workspace.yaml
validate: install-dev
	mkdir -p $(DAGSTER_HOME)
	MEDVEC_PROFILE=local $(VALIDATE)
	MEDVEC_PROFILE=gpu-box $(VALIDATE)
	MEDVEC_PROFILE=nim MEDVEC_NIM_URL=http://127.0.0.1:9/v1 $(VALIDATE)
	MEDVEC_PROFILE=cluster MEDVEC_HOME=s3://medvec-validate/home \
		MEDVEC_LANCEDB_URI=s3://medvec-validate/lancedb MEDVEC_PSEUDONYM_KEY=validate-only $(VALIDATE)

dagster: install
	mkdir -p $(DAGSTER_HOME)
	@# Medvec's instance settings (gpu pool, run queue, run monitoring), unless you have your own: the
	@# telemetry-only stub `medvec ingest` writes is replaced.
	if [ ! -f $(DAGSTER_HOME)/dagster.yaml ] || [ "$$(cat $(DAGSTER_HOME)/dagster.yaml)" = "$$(printf 'telemetry:\n  enabled: false')" ]; then \
		cp deploy/dagster.yaml $(DAGSTER_HOME)/dagster.yaml; fi
	$(VENV)/bin/dagster dev -w workspace.yaml

benchmark: install-dev web-deps
	$(PY) benchmarks/normalize.py
	$(PY) benchmarks/search.py
	$(PY) benchmarks/http_search.py
	$(PY) benchmarks/bundle.py

# The cluster image (Dockerfile; deploy/cluster/values.yaml names it). IMAGE_ARGS="--build-arg VARIANT=cuda"
# builds the CUDA variant.
IMAGE ?= registry.example.com/medvec
IMAGE_TAG ?= 2026.11.29
IMAGE_ARGS ?=
image:
	@tool=$$(for t in docker podman buildah; do command -v $$t >/dev/null 2>&1 && echo $$t && break; done); \
	if [ -z "$$tool" ]; then echo "make image needs docker, podman or buildah; none is installed here"; exit 1; fi; \
	if [ "$$tool" = buildah ]; then buildah bud $(IMAGE_ARGS) -t $(IMAGE):$(IMAGE_TAG) .; \
	else $$tool build $(IMAGE_ARGS) -t $(IMAGE):$(IMAGE_TAG) .; fi

clean:
	rm -rf $(MEDVEC_HOME) .pytest_cache
