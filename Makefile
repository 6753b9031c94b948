# The two commands of the README: `make demo` (the main job) and `make test`.
# Each creates the virtual environment first when it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On these machines torch==2.13.0 is a CPU wheel on local disk; elsewhere pip fetches the build
# for your platform (CUDA on Linux). Never torchvision: its CPU build breaks torch here.
TORCH ?= torch==2.13.0

.PHONY: demo test lint format clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	# clip-retrieval's own client and page, for tests/test_clip_api.py: without its requirements,
	# which pin numpy<2 and torchvision (a torchvision build breaks this torch)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps clip-retrieval==2.45.0
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python scripts/demo.py

# The browser tests drive Debian's Chromium (Playwright cannot download a browser here).
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	command -v apt-get >/dev/null && (apt-get update -q && apt-get install -y -q chromium) \
		|| echo "no apt-get: install Chromium yourself, or the browser tests are skipped"

test: $(VENV)/.installed $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
