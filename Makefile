# Discrete Latents: build the book and run the tests. Everything installs into $(VENV).
#   make book   create the environment, execute every chapter (profile $(PROFILE)), write _build/html
#   make test   create the environment, run the unit tests and execute every chapter in `smoke`
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROFILE ?= quick
JOBS ?= 2
# A reader on a CPU-only machine elsewhere may set TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: install test unit chapters book ci bench classroom clean

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

test: install
	$(BIN)/python -m pytest -n $(JOBS) -q

unit: install
	$(BIN)/python -m pytest -n $(JOBS) -q -m "not chapter"

chapters: install
	$(BIN)/python -m pytest -n $(JOBS) -q -m chapter

book: install
	VQLIB_BUILD=1 VQLIB_PROFILE=$(PROFILE) $(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "The book is at _build/html/index.html"

ci: test book

bench: install
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[bench]"
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf _build
