# The README's two commands: `make demo` (set up, run the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export MAX_JOBS ?= 2
# Build the CUDA kernels too wherever nvcc exists, GPU or not, so a broken .cu never lands.
ifneq ($(shell command -v nvcc 2>/dev/null),)
export FORCE_CUDA ?= 1
endif

.PHONY: setup demo test test-python test-cpp bench clean

setup: $(VENV)/.deps-installed
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	$(PY) -m saliency_fast info

$(VENV)/.deps-installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

demo: setup
	$(VENV)/bin/saliency-fast explain "This movie was incredibly bad, I hated every second of it." --out out

test: setup test-cpp test-python

test-python:
	$(PY) -m pytest -q -p no:cacheprovider tests

test-cpp:
	cmake -S . -B ctest-build -G Ninja -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')" -DPython3_EXECUTABLE=$(PY) > ctest-build.log 2>&1 || (cat ctest-build.log; exit 1)
	cmake --build ctest-build -j $(MAX_JOBS) >> ctest-build.log 2>&1 || (cat ctest-build.log; exit 1)
	ctest --test-dir ctest-build --output-on-failure

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf build ctest-build ctest-build.log saliency_fast/_C*.so *.egg-info
