# Discrete Latents: build the book and run the tests. Everything installs into $(VENV).
#   make book   create the environment, execute every chapter (profile $(PROFILE)), write _build/html
#   make test   create the environment, run the unit tests and execute every chapter in `smoke`
#   make classroom      student and teacher notebooks of every chapter in classroom/
#   make browser-test   the built book in headless Chromium, with screenshots in _build/screenshots/
#   make gpu-check      on a CUDA machine: unit tests, chapters and full recipes on the GPU (scripts/gpu_check.sh)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= quick
JOBS ?= 2
# A reader on a CPU-only machine elsewhere may set TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: install test unit chapters book ci bench classroom browser-test gpu-wheels gpu-check gpu-check-cpu clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned, so that nothing later resolves it to a build with CUDA wheels
	$(BIN)/python -m pip install --quiet -c constraints.txt $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[book,test]"
	# build matplotlib's font cache now, not inside a chapter (its message would land in the page)
	MPLBACKEND=Agg $(BIN)/python -c "import matplotlib.pyplot"
	touch $@

# one thread per test process: JOBS processes share the cores (small models run slower on oversubscribed threads)
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

test: install
	$(TEST_ENV) $(BIN)/python -m pytest -n $(JOBS) -q

unit: install
	$(TEST_ENV) $(BIN)/python -m pytest -n $(JOBS) -q -m "not chapter"

chapters: install
	$(TEST_ENV) $(BIN)/python -m pytest -n $(JOBS) -q -m chapter

book: install
	VQLIB_BUILD=1 VQLIB_PROFILE=$(PROFILE) $(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "The book is at _build/html/index.html"

ci: test book

# student notebooks (solutions replaced by stubs) and teacher notebooks, one per chapter, in classroom/
classroom: install
	$(BIN)/python book/classroom.py --out classroom

# the built book (run `make book` first) in headless Chromium; needs Debian's chromium and chromium-driver.
# Screenshots of every page go to _build/screenshots/.
browser-test: $(VENV)/.browser
	$(BIN)/python -m pytest -q tests/browser

$(VENV)/.browser: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[browser]"
	touch $@

bench: install
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[bench]"
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The GPU check runs with a CUDA machine's own python3 and PyTorch, offline (scripts/gpu_check.sh):
# `make gpu-wheels` downloads here what its image lacks (scripts/gpu_wheels.txt, pinned by constraints.txt)
# as Python 3.12 x86-64 wheels into $(GPU_WHEELS)/, to carry there. Results: _build/gpu_check.json.
GPU_WHEELS ?= gpu_wheels
GPU_PLATFORMS := $(foreach p,manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1,\
	--platform $(p)_x86_64)

gpu-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(GPU_PLATFORMS) -c constraints.txt -r scripts/gpu_wheels.txt -d $(GPU_WHEELS)
	@du -sh $(GPU_WHEELS)

gpu-check:
	bash scripts/gpu_check.sh

# its CPU half, here: the device tests, one chapter and every full recipe for one step, on the CPU
gpu-check-cpu: install
	PYTHON=$(BIN)/python bash scripts/gpu_check.sh --cpu

clean:
	rm -rf _build
