# sd-serving — `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
TOOLS := .tools
HELM := $(TOOLS)/bin/helm
CHECKOV := $(TOOLS)/checkov/bin/checkov
UV := $(TOOLS)/uv/bin/uv
# Upstream CRDs and Grafana schemas the chart and dashboards are validated against (see crds-info).
# Tools' variables stay off the SD_ prefix: every SD_* variable must name a service setting.
# They sit in the workspace's shared/ beside this checkout, or beside the checkout it was cloned
# from (a clone made elsewhere, e.g. `git clone . $(mktemp -d)/fresh`).
ORIGIN := $(shell git remote get-url origin 2>/dev/null)
SHARED ?= $(firstword $(wildcard $(abspath ../shared) $(ORIGIN)/../shared) $(abspath ../shared))
export CRD_DIR ?= $(abspath $(SHARED)/crds)
export GRAFANA_SCHEMA_DIR ?= $(abspath $(SHARED)/schemas/grafana)
export HELM_BIN := $(abspath $(HELM))
export CHECKOV_BIN := $(abspath $(CHECKOV))
# pip notes every unused local index path; keep the output readable.
PIP_QUIET := grep -v "is ignored: it is neither a file nor a directory" || true
# Every Python dependency is pinned in requirements/*.lock (`make lock` re-resolves them); torch is
# its CPU build, which pip takes from a local wheel folder where pip is configured with one
# (find-links, as on our CI machines), else from PyTorch's CPU index.
PIP_LOCAL_WHEELS := $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
TORCH_INDEX ?= $(if $(PIP_LOCAL_WHEELS),,https://download.pytorch.org/whl/cpu)
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
UV_COMPILE = SSL_CERT_FILE=$(CA_BUNDLE) $(UV) pip compile pyproject.toml --quiet \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --override requirements/torch-cpu.txt --no-emit-find-links --no-emit-index-url \
  --custom-compile-command "make lock" \
  $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX) --index-strategy unsafe-best-match,$(foreach d,$(PIP_LOCAL_WHEELS),--find-links $(d)))

.PHONY: help install lock tools debian-tools serve test test-fast test-unit test-integration test-image image test-chart lint format export-model demo-model render-k8s loadtest bench bench-adherence bench-families bench-gpu bench-adapters bench-protocols tune-report tuning-loop fuzz reliability protos dashboards crds crds-info clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv with the service, test and lint tools (torch 2.13.0 CPU here)

$(STAMP): pyproject.toml requirements/dev.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | $(PIP_QUIET)
	$(BIN)/python -m pip install -q $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) \
	  -r requirements/dev.lock 2>&1 | $(PIP_QUIET)
	$(BIN)/python -m pip install -q --no-deps -e . 2>&1 | $(PIP_QUIET)
	$(BIN)/python -c "import serving, torch, ray, diffusers"
	touch $@

lock: $(UV) ## re-resolve requirements/service.lock (the image) and dev.lock (make install) from pyproject.toml
	$(UV_COMPILE) -o requirements/service.lock
	$(UV_COMPILE) --extra dev --constraint requirements/service.lock -o requirements/dev.lock

tools: $(HELM) $(CHECKOV) debian-tools ## helm, checkov in .tools/; Prometheus, promtool, Chromium, podman (Debian)

# Debian's prometheus package brings promtool; the tests run a real Prometheus on loopback and
# drive the web page in a real headless Chromium through Debian's chromedriver. They build and run
# the image with podman on runc, from a base that mmdebstrap makes where no registry answers, and
# run the durable store against a real redis-server.
DEBIAN_TOOLS := prometheus promtool chromium chromedriver podman runc mmdebstrap redis-server
debian-tools:
	@for tool in $(DEBIAN_TOOLS); do command -v $$tool >/dev/null || missing=1; done; \
	[ -z "$${missing:-}" ] || { \
	  echo "installing Debian's prometheus, chromium, chromium-driver, podman, runc, mmdebstrap, redis-server (needs root)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends prometheus chromium chromium-driver \
	    podman runc containernetworking-plugins iptables mmdebstrap redis-server >/dev/null; }

$(HELM): scripts/fetch_helm.py
	$(PYTHON) scripts/fetch_helm.py $@ 2>&1 | $(PIP_QUIET)

$(UV):
	$(PYTHON) -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/python -m pip install -q uv==0.13.9 2>&1 | $(PIP_QUIET)
	touch $@

# checkov pins many packages of its own: it gets a venv apart from the service's.
$(CHECKOV):
	$(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/python -m pip install -q checkov==3.2.495 2>&1 | $(PIP_QUIET)
	touch $@

serve: install ## start the service on the embedded model at http://127.0.0.1:8000 (Ctrl-C stops it)
	$(BIN)/sd-serving serve

test: install tools ## run every test: the fast tier (no Ray), chart (offline), integration (the real Serve app)
	$(BIN)/pytest $(PYTEST_ARGS)

test-fast: install tools ## only the tests that start no Ray, no server process and no container (unit + chart)
	$(BIN)/pytest -m 'not integration and not container' $(PYTEST_ARGS)

test-unit: install ## the fast tier's unit tests: engines, data plane, both transports in-process
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: install tools ## only the tests against the running Serve app (one `sd-serving serve`)
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

test-image: install tools ## only the container image tests: build it (make image) and run it as the chart does
	$(BIN)/pytest tests/container $(PYTEST_ARGS)

image: ## build the cpu image with docker or podman (TARGET=cuda for the GPU one; a local Debian base without a registry)
	$(PYTHON) scripts/image.py --target $(or $(TARGET),cpu)

test-chart: install tools ## only the offline chart checks (helm lint/template, schemas, checkov, drift)
	$(BIN)/pytest tests/chart $(PYTEST_ARGS)

render-k8s: install tools ## re-render k8s/ (plain manifests) from the chart's documented profiles
	$(BIN)/python scripts/render_k8s.py --write

loadtest: install ## locust profile (PROFILE=smoke|ramp|spike|soak|overload, RATE=arrivals/s for overload) against :8000, starting the service if needed
	$(BIN)/python -m loadtest.run --profile $(or $(PROFILE),smoke) --rate $(or $(RATE),1)

bench: install ## benchmark: bare pipeline vs monolithic Ray Serve vs this system (writes loadtest/results/cpu)
	$(BIN)/python -m loadtest.bench

bench-families: install ## every model family's test model served next to its diffusers pipeline, concurrency 1 and 8 (writes loadtest/results/cpu/families.*)
	$(BIN)/python -m loadtest.families

bench-adherence: install ## prompt adherence of a model (MODEL=dir, default the demo model) in the captioned world, with controls (writes loadtest/results/cpu/adherence.*)
	$(BIN)/python -m loadtest.adherence $(if $(MODEL),--model $(MODEL))

bench-adapters: install ## LoRA adapters mixed in one UNet batch vs one adapter vs none (and diffusers per adapter), and image-to-image latency served vs bare (writes loadtest/results/cpu/adapters.*)
	$(BIN)/python -m loadtest.adapters

bench-gpu: install ## GPU profile: SD 1.5 512²/50 steps and SDXL 1024²/30 steps at full size, bare vs served (writes loadtest/results/gpu; GPU=tiny for the CPU variant)
	$(BIN)/python -m loadtest.gpu $(if $(filter tiny,$(GPU)),--tiny --out loadtest/out)

bench-protocols: install ## overhead of every protocol over the bare pipeline (a running service, or starts one)
	$(BIN)/python -m loadtest.protocols

fuzz: install ## schemathesis over /openapi.json (examples, coverage, fuzzing) and Hypothesis over v2 gRPC, against :8000/:9000 or a service it starts with tiny limits (writes loadtest/results/cpu/fuzz.*)
	$(BIN)/python -m loadtest.fuzz

reliability: install tools ## faults (40 jobs; denoiser, ingress, Redis killed), overload (3x capacity, 60 s, open loop), fairness under a flood, fuzzing; each starts its own service (writes loadtest/results/cpu/faults.*, overload.*, fairness.*, fuzz.*)
	$(BIN)/python -m loadtest.faults
	$(BIN)/python -m loadtest.overload
	$(BIN)/python -m loadtest.fairness
	$(BIN)/python -m loadtest.fuzz

protos: install ## regenerate the Python client's v2 messages from serving/client/open_inference.proto
	$(BIN)/python -m grpc_tools.protoc -I serving/client --python_out=serving/client \
	  --pyi_out=serving/client serving/client/open_inference.proto

dashboards: install ## regenerate the Grafana dashboards from scripts/dashboards.py
	$(BIN)/python scripts/dashboards.py --write

crds-info: ## which pinned upstream CRD releases the chart checks validate against (CRD_DIR)
	@echo "CRD_DIR=$(CRD_DIR)"; grep -E '^ +"|^RAW' scripts/fetch_crds.py

crds: ## download the pinned upstream CRDs into CRD_DIR (needs network to GitHub)
	$(PYTHON) scripts/fetch_crds.py $(CRD_DIR)

lint: install ## ruff (lint + format check) and mypy
	$(BIN)/ruff check serving tests scripts loadtest
	$(BIN)/ruff format --check serving tests scripts loadtest
	$(BIN)/mypy

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix serving tests scripts loadtest
	$(BIN)/ruff format serving tests scripts loadtest

DEMO_MODEL := serving/models/demo
demo-model: install ## retrain the demo model (the default) from scratch on the CPU, about 35 min on 2 cores (at most about 75): writes serving/models/demo
	rm -rf $(DEMO_MODEL).new
	$(BIN)/sd-serving train $(DEMO_MODEL).new --half
	rm -rf $(DEMO_MODEL) && mv $(DEMO_MODEL).new $(DEMO_MODEL)

# The tuning scenario: the demo model tuned on new concepts (purple, cross) by every strategy.
TUNE_DIR := out/tune-scenario
TUNE_STEPS ?= 600  # sd-serving tune's default
tuning-loop: install tools ## the README's loop at a reduced size: serve, rate images, export the feedback, tune, canary, promote (about 5 min; ports 8000, 8080, 9090)
	scripts/tuning_loop.sh

tune-report: install ## the demo model tuned on new concepts by every strategy, compared: about 15 min on 2 cores (writes loadtest/results/cpu/tuning.*)
	rm -rf $(TUNE_DIR)
	$(BIN)/sd-serving world $(TUNE_DIR)/original --count 240 --seed 0
	$(BIN)/sd-serving world $(TUNE_DIR)/new --count 240 --seed 1 --new-concepts
	$(BIN)/sd-serving tune $(TUNE_DIR)/tuned --original $(TUNE_DIR)/original \
	  --new $(TUNE_DIR)/new --compare --steps $(TUNE_STEPS)
	for kind in md png json; do cp $(TUNE_DIR)/tuned/report.$$kind loadtest/results/cpu/tuning.$$kind; done

export-model: install ## write an embedded model as a diffusers directory: make export-model DIR=out/model [FAMILY=sdxl]
	$(BIN)/sd-serving export-model $(or $(DIR),out/embedded-$(or $(FAMILY),sd)) --family $(or $(FAMILY),sd)

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache *.egg-info
