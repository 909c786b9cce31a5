# The README's two commands: `make demo` (set up, run the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export MAX_JOBS ?= 2
# Build the CUDA kernels too wherever nvcc exists, GPU or not, so a broken .cu never lands.
ifneq ($(shell command -v nvcc 2>/dev/null),)
export FORCE_CUDA ?= 1
endif

.PHONY: setup deps-system deps-browser demo test test-python test-cpp bench clean

setup: $(VENV)/.extension-built
	$(PY) -m saliency_fast info

# Rebuild the extension only when its sources or the build script change (a CUDA build takes minutes).
$(VENV)/.extension-built: $(VENV)/.deps-installed setup.py pyproject.toml $(shell find csrc -type f)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

$(VENV)/.deps-installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

demo: setup
	$(VENV)/bin/saliency-fast explain "This movie was incredibly bad, I hated every second of it." --out out

test: setup test-cpp test-python

test-python: deps-browser
	$(PY) -m pytest -q -p no:cacheprovider tests

# System packages the C++ tests need (GoogleTest), installed on fresh machines when we are root.
deps-system:
	@if [ ! -f /usr/include/gtest/gtest.h ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -q libgtest-dev || (apt-get update -q && apt-get install -y -q libgtest-dev)) >/dev/null; \
	  else echo "GoogleTest headers missing: install libgtest-dev (apt-get install -y libgtest-dev)"; exit 1; fi; \
	fi

# Headless Chromium renders the HTML view in tests/test_viz.py; installed when we are root, else
# that one test skips and says why.
deps-browser:
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) >/dev/null; \
	  else echo "chromium missing (apt-get install -y chromium): the headless HTML render test will skip"; fi; \
	fi

test-cpp: deps-system
	cmake -S . -B ctest-build -G Ninja > ctest-build.log 2>&1 || (cat ctest-build.log; exit 1)
	cmake --build ctest-build -j $(MAX_JOBS) >> ctest-build.log 2>&1 || (cat ctest-build.log; exit 1)
	ctest --test-dir ctest-build --output-on-failure

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf build ctest-build ctest-build.log saliency_fast/_C*.so *.egg-info
