# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install the
# package when it is missing or pyproject.toml changed (the stamp file caches the torch install).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
VENDOR_DIR ?= ../shared/vendor
VENDOR_D2 := $(firstword $(wildcard $(VENDOR_DIR)/detectron2-*-cp311-cp311-linux_x86_64.whl))
export PYTHONUNBUFFERED := 1

.PHONY: demo test lint bench images compile clean-venv help

help:
	@echo "make demo   - run the active-learning pipeline locally on a generated SynthDrive set"
	@echo "make test   - run the test suite"
	@echo "make lint   - ruff"
	@echo "make bench  - run the benchmarks (see benchmarks/README.md)"
	@echo "make images - build the GPU (and GPU + detectron2), CPU and MLflow container images (needs Docker)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# detectron2 (the optional second detector backend) from the shared vendored wheel when present (CI has it):
	@# the wheel is built for CPython 3.11 against torch 2.14.1 (../shared/vendor/README.md); elsewhere its tests skip
	@if [ -n "$(VENDOR_D2)" ] && $(BIN)/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then \
		echo "installing detectron2 from $(VENDOR_D2)"; \
		$(BIN)/python -m pip install --quiet $(VENDOR_D2) 'setuptools<80'; \
	fi
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/activedet demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests pipelines components benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# Container images: wheel first, then both images; names/tags from activedet.images (like the components).
IMAGE_GPU = $(shell $(BIN)/python -c 'from activedet import images; print(images.gpu_image())')
IMAGE_CPU = $(shell $(BIN)/python -c 'from activedet import images; print(images.cpu_image())')
IMAGE_GPU_D2 = $(shell $(BIN)/python -c 'from activedet import images; print(images.gpu_d2_image())')
IMAGE_MLFLOW = $(shell $(BIN)/python -c 'from activedet import images; print(images.mlflow_image())')
images: $(STAMP)
	rm -rf dist && $(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist .
	docker build -f images/gpu/Dockerfile -t $(IMAGE_GPU) dist
	docker build -f images/gpu-d2/Dockerfile --build-arg BASE=$(IMAGE_GPU) -t $(IMAGE_GPU_D2) dist
	docker build -f images/cpu/Dockerfile -t $(IMAGE_CPU) dist
	docker build -f images/mlflow/Dockerfile -t $(IMAGE_MLFLOW) images/mlflow
	@echo "built $(IMAGE_GPU), $(IMAGE_GPU_D2), $(IMAGE_CPU) and $(IMAGE_MLFLOW); push them with docker push"

clean-venv:
	rm -rf $(VENV)
