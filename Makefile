# The README's two commands: `make bench` (the main job) and `make test`. Each does its own set-up
# on a fresh Debian 12 machine: missing system packages, the project-local .venv, the build.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
MESON := $(VENV)/bin/meson
BUILD := build

.PHONY: all setup build build-bench test test-cpp test-sanitizers test-python bench bench-full install clean

all: build

setup:
	@tools/setup.sh all

$(BUILD)/build.ninja: | setup
	$(MESON) setup $(BUILD) --buildtype=release -Dpython=disabled

build: setup $(BUILD)/build.ninja
	@$(MESON) compile -C $(BUILD)
	@tools/install_python.sh

# What `make bench` needs: the benchmark executables and the Python package, not the test suites.
# (A build directory configured before the `benches` target existed builds everything instead.)
build-bench: setup $(BUILD)/build.ninja
	@$(MESON) compile -C $(BUILD) benches 2>/dev/null || $(MESON) compile -C $(BUILD)
	@tools/install_python.sh

test: build
	@tools/run_tests.sh

bench: build-bench
	@$(PY) bench/run.py --quick $(ARGS)

bench-full: build-bench
	@$(PY) bench/run.py --full $(ARGS)

install: build
	$(MESON) install -C $(BUILD)

clean:
	rm -rf $(BUILD) build-asan build-tsan build-fuzz bench-results
